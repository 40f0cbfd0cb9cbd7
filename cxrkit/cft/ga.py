"""CFT-GA: a genetic algorithm (PyGAD) maximising one category's AUC or AP directly.

An individual is ``[w_c, b_c]`` (Z + 1 genes, the bias included: the reference code left it
out); every individual starts as the trained row. Fitness is computed for the whole batch
of new solutions at once (PyGAD ``fitness_batch_size``) by :class:`PopulationScorer`:
children's scores are sparse updates of their nearest scored relative, never one matrix
product per individual. Each generation the best individual is scored on validation; the
individual with the best validation score is returned, and the search stops after
``patience`` generations without validation gain.

Presets (seed 000, sec. IV-A.4 and IV-B.4):

``chexpert``: 30 individuals, 500 generations, roulette wheel selection of 14 parents, 10
parents kept, 2-point crossover with probability 0.8, random mutation with probability 2 %
per gene adding U(-0.02, 0.02), metric AUC.

``coco`` (also Open Images): 50 individuals, 5,000 generations, elitism 1, crossover taking
each gene from the first parent with probability 0.2, both parents of every child drawn
independently by roulette wheel over the population (as the reference code does;
``pairing: fixed`` mates PyGAD's 25 selected parents in fixed pairs instead, which cost
about a quarter of the gain, ``benchmarks/cft_ga_pairing.py``), each offspring mutated with
probability 0.5 by adding U(-0.001, 0.001) to every gene, metric AP.

Both stop after 300 generations without validation gain (the reference code's rule).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..utils import replace_fields
from .fitness import BinaryScorer, PopulationScorer, population_product

log = logging.getLogger(__name__)


@dataclass
class GAConfig:
    individuals: int = 30
    generations: int = 500
    parent_selection: str = "rws"
    parents_mating: int = 14
    keep_parents: int = 10
    keep_elitism: int = 0
    crossover: str = "two_points"  # a PyGAD crossover type, or "biased_uniform"
    crossover_probability: float | None = 0.8
    crossover_bias: float = 0.2  # biased_uniform: probability a gene comes from the first parent
    pairing: str = "roulette"  # biased_uniform: "roulette" draws both parents of every child independently by
    #                            roulette over the population (the reference code); "fixed" pairs the selected
    #                            parents (k, k + 1), so each pair makes two children (cxrkit before 0.2)
    mutation: str = "random"  # "random" (each gene with mutation_probability), "offspring_uniform" (every
    #                           gene of an offspring mutated with mutation_probability), or a PyGAD type
    mutation_probability: float = 0.02
    mutation_min: float = -0.02
    mutation_max: float = 0.02
    patience: int | None = 300
    metric: str = "auc"
    refresh: int = 25  # exact rescoring of the population every this many generations
    threads: int = 0  # threads for the fitness (scores, AUC / AP) of a batch; 0 = the process's cores
    device: str = "cpu"  # "cuda": the population's scores and AUC / AP on the GPU (torch)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **kw: Any) -> GAConfig:
        return replace_fields(self, "GA", **kw)


GA_PRESETS: dict[str, GAConfig] = {
    "chexpert": GAConfig(),
    "coco": GAConfig(individuals=50, generations=5000, parents_mating=25, keep_parents=0, keep_elitism=1,
                     crossover="biased_uniform", crossover_probability=None, crossover_bias=0.2,
                     mutation="offspring_uniform", mutation_probability=0.5, mutation_min=-0.001,
                     mutation_max=0.001, metric="ap"),
}


@dataclass
class RowFit:
    """A fine-tuned row and how it was found."""

    w: np.ndarray
    b: float
    val_before: float
    val_after: float
    improved: bool
    steps: int  # generations (GA) or epochs (BP) run
    best_step: int
    seconds: float
    curves: dict[str, list[float]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def roulette_pairs(fitness: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` x 2 population indices: both parents of every child drawn independently with
    probability proportional to fitness (uniform when every fitness is 0)."""
    f = np.clip(np.asarray(fitness, dtype=np.float64), 0.0, None)
    total = f.sum()
    p = f / total if total > 0 and np.isfinite(total) else None
    return rng.choice(len(f), size=(n, 2), p=p)


def _biased_uniform(rng: np.random.Generator, bias: float, pairing: str = "roulette") -> Any:
    """Each gene from the first parent with probability ``bias``, else from the second.
    ``pairing="roulette"``: each child's two parents are drawn independently by roulette over
    the whole scored population, as the reference code does; ``"fixed"``: the parents PyGAD
    selected, in pairs (k, k + 1)."""

    def crossover(parents: np.ndarray, offspring_size: tuple[int, int], ga: Any) -> np.ndarray:
        if pairing == "roulette" and getattr(ga, "last_generation_fitness", None) is not None:
            pop = np.asarray(ga.population)
            idx = roulette_pairs(ga.last_generation_fitness, offspring_size[0], rng)
            first, second = pop[idx[:, 0]], pop[idx[:, 1]]
        else:
            n_par = parents.shape[0]
            k = np.arange(offspring_size[0])
            first = parents[k % n_par]
            second = parents[(k + 1) % n_par]
        take_first = rng.random(offspring_size) < bias
        return np.where(take_first, first, second)

    return crossover


def _per_gene_uniform(rng: np.random.Generator, prob: float, lo: float, hi: float) -> Any:
    """PyGAD's ``random`` mutation (each gene with probability ``prob`` gets U(lo, hi) added),
    vectorised: PyGAD's own implementation loops over genes in Python."""

    def mutation(offspring: np.ndarray, ga: Any) -> np.ndarray:
        hit = rng.random(offspring.shape) < prob
        k = int(hit.sum())
        if k:
            offspring[hit] = offspring[hit] + rng.uniform(lo, hi, size=k)
        return offspring

    return mutation


def _offspring_uniform(rng: np.random.Generator, prob: float, lo: float, hi: float) -> Any:
    def mutation(offspring: np.ndarray, ga: Any) -> np.ndarray:
        hit = rng.random(offspring.shape[0]) < prob
        if hit.any():
            offspring[hit] = offspring[hit] + rng.uniform(lo, hi, size=(int(hit.sum()), offspring.shape[1]))
        return offspring

    return mutation


def _ga_class() -> Any:
    """pygad.GA with a faster ``cal_pop_fitness`` for cxrkit's use (no saved solutions):
    PyGAD looks each of the population's rows up among the last parents and elites by
    ``tuple(row)``, 513 NumPy scalars per row (about 4 ms a generation at Z = 512); this
    keys them by the rows' bytes instead. The same rows reuse the same cached fitness, the
    rest go to the batched fitness as before, so the results are the same."""
    import pygad

    class FastGA(pygad.GA):  # type: ignore[misc]
        def cal_pop_fitness(self):  # noqa: ANN201 - PyGAD's signature
            if (self.save_solutions or self.save_best_solutions or not hasattr(self, "_evaluate_fitness")
                    or not hasattr(self, "_validate_fitness_value")):
                return super().cal_pop_fitness()
            pop = np.ascontiguousarray(self.population)
            cached: dict[bytes, Any] = {}
            prev = getattr(self, "previous_generation_fitness", None)
            sources = []
            if self.keep_parents != 0 and self.last_generation_parents is not None:
                sources.append((self.last_generation_parents, self.last_generation_parents_indices))
            if self.keep_elitism > 0 and self.last_generation_elitism is not None:
                sources.append((self.last_generation_elitism, self.last_generation_elitism_indices))
            for rows, indices in reversed(sources):  # PyGAD checks elites before parents
                for k, row in enumerate(np.ascontiguousarray(rows, dtype=pop.dtype)):
                    cached.setdefault(row.tobytes(), prev[indices[k]])
            if not getattr(self, "_fitness_run_active", False):
                self._fitness_value_shape = None
            out: list[Any] = [None] * len(pop)
            missing = []
            for i, row in enumerate(pop):
                f = cached.get(row.tobytes()) if cached else None
                if f is None:
                    missing.append(i)
                else:
                    out[i] = self._validate_fitness_value(f, "cached fitness")
            for i, f in zip(missing, self._evaluate_fitness(self.population, missing)):
                out[i] = f
            return np.array(out)

    return FastGA


def fit_row_ga(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               w0: np.ndarray, b0: float, cfg: GAConfig, *, xt: np.ndarray | None = None,
               product: Any = None) -> RowFit:
    """Evolve the row ``(w0, b0)`` to maximise ``cfg.metric`` on (x_train, y_train); return the
    individual with the best validation score (or the original row if none beats it).
    ``xt``: ``x_train.T`` made contiguous already (shared by :func:`fit_rows_ga`);
    ``product``: a :class:`SharedProduct` computing the population's scores together with
    other categories' (the same values)."""
    t0 = time.perf_counter()
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_val = np.ascontiguousarray(x_val, dtype=np.float32)
    row0 = np.concatenate([np.asarray(w0, dtype=np.float64), [float(b0)]])
    val_scorer = BinaryScorer(y_val, cfg.metric)
    val_before = float(val_scorer(x_val @ w0.astype(np.float32) + np.float32(b0))[0])
    train_scorer = BinaryScorer(y_train, cfg.metric)
    if not train_scorer.defined or not val_scorer.defined:
        return RowFit(np.asarray(w0, np.float32).copy(), float(b0), val_before, val_before, False, 0, 0,
                      time.perf_counter() - t0, stats={"skipped": "no positives / negatives"})
    pop_scorer = PopulationScorer(x_train.T if xt is None else xt, y_train, cfg.metric, refresh=cfg.refresh,
                                  threads=cfg.threads, torch_device=None if cfg.device == "cpu" else cfg.device,
                                  product=product)
    rng = np.random.default_rng(cfg.seed)
    best = {"val": val_before, "sol": row0.copy(), "gen": 0, "stale": 0}
    curves: dict[str, list[float]] = {"train": [], "val": []}

    def fitness(ga: Any, sols: np.ndarray, idx: Any) -> list[float]:
        return pop_scorer(np.asarray(sols), alive=ga.population).tolist()

    def on_generation(ga: Any) -> str | None:
        fit = ga.last_generation_fitness
        i = int(np.argmax(fit))
        sol = ga.population[i]
        v = float(val_scorer(x_val @ sol[:-1].astype(np.float32) + np.float32(sol[-1]))[0])
        curves["train"].append(float(fit[i]))
        curves["val"].append(v)
        if v > best["val"] + 1e-12:
            best.update(val=v, sol=np.array(sol, dtype=np.float64), gen=ga.generations_completed, stale=0)
        else:
            best["stale"] += 1
        if cfg.patience is not None and best["stale"] >= cfg.patience:
            return "stop"
        return None

    crossover: Any = cfg.crossover
    if cfg.crossover == "biased_uniform":
        if cfg.pairing not in ("roulette", "fixed"):
            from ..errors import ConfigError

            raise ConfigError(f"ga.pairing must be roulette or fixed, got {cfg.pairing!r}")
        crossover = _biased_uniform(rng, cfg.crossover_bias, cfg.pairing)
    mutation: Any = cfg.mutation
    kw: dict[str, Any] = {}
    if cfg.mutation == "offspring_uniform":
        mutation = _offspring_uniform(rng, cfg.mutation_probability, cfg.mutation_min, cfg.mutation_max)
    elif cfg.mutation == "random":
        mutation = _per_gene_uniform(rng, cfg.mutation_probability, cfg.mutation_min, cfg.mutation_max)
    else:
        kw.update(mutation_probability=cfg.mutation_probability, random_mutation_min_val=cfg.mutation_min,
                  random_mutation_max_val=cfg.mutation_max, mutation_by_replacement=False)
    ga = _ga_class()(
        num_generations=cfg.generations,
        num_parents_mating=min(cfg.parents_mating, cfg.individuals),
        initial_population=np.tile(row0, (cfg.individuals, 1)),
        fitness_func=fitness,
        fitness_batch_size=cfg.individuals,
        parent_selection_type=cfg.parent_selection,
        keep_parents=cfg.keep_parents,
        keep_elitism=cfg.keep_elitism,
        crossover_type=crossover,
        crossover_probability=cfg.crossover_probability,
        mutation_type=mutation,
        random_seed=int(cfg.seed) % (2**32),
        on_generation=on_generation,
        suppress_warnings=True,
        save_solutions=False,
        save_best_solutions=False,
        **kw,
    )
    if pop_scorer.scorer.n_threads > 1 and product is None:  # fit_rows_ga limits BLAS for all its threads
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            ga.run()
    else:
        ga.run()
    sol = best["sol"]
    improved = best["val"] > val_before + 1e-12
    if not improved:
        sol = row0
    return RowFit(sol[:-1].astype(np.float32), float(sol[-1]), val_before, best["val"] if improved else val_before,
                  improved, int(ga.generations_completed), int(best["gen"]), time.perf_counter() - t0,
                  curves, dict(pop_scorer.stats))


class SharedProduct:
    """The population scores of several GAs that share one feature matrix, computed in
    large matrix products: each GA's thread hands its new solutions in, and once
    ceil(live / ``groups``) GAs are waiting, the last to arrive computes all of theirs at
    once (in row chunks over ``threads`` threads, single-threaded BLAS, as
    :meth:`PopulationScorer.exact_scores` does: each row gets bitwise the scores it gets
    alone) and wakes them. One big product keeps the cores busier than many 49-row ones
    (182 vs 111 GFLOP/s measured for 686 vs 49 rows on 2 cores); with two groups, one
    group's product runs while the other group's threads do their GIL-bound GA steps and
    AUCs, which would otherwise leave a core idle. One product at a time."""

    def __init__(self, xt: np.ndarray, members: int, threads: int, groups: int = 2) -> None:
        import threading

        self.xt = xt
        self.live = members
        self.threads = max(1, threads)
        self.groups = max(1, int(groups))
        self.cv = threading.Condition()
        self.compute = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        self._pool: Any = None
        self.rounds = 0

    def _take(self) -> list[dict[str, Any]] | None:
        """The pending batch when it is full (caller holds ``cv``)."""
        if self.pending and len(self.pending) >= max(1, -(-self.live // self.groups)):
            batch, self.pending = self.pending, []
            return batch
        return None

    def __call__(self, sols: np.ndarray) -> np.ndarray:
        slot: dict[str, Any] = {"sols": np.asarray(sols, np.float32), "out": None}
        with self.cv:
            self.pending.append(slot)
            batch = self._take()
        if batch is not None:
            self._run(batch)
        with self.cv:
            while slot["out"] is None:
                self.cv.wait()
        if isinstance(slot["out"], BaseException):
            raise slot["out"]
        return slot["out"]

    def leave(self) -> None:
        """A GA finished (or failed): the others no longer wait for it."""
        with self.cv:
            self.live -= 1
            batch = self._take()
        if batch is not None:
            self._run(batch)

    def _run(self, slots: list[dict[str, Any]]) -> None:
        results: list[Any]
        with self.compute:
            self.rounds += 1
            try:
                allp = np.concatenate([s["sols"] for s in slots])
                if self.threads > 1 and len(allp) > 1 and self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(self.threads)
                out = population_product(allp, self.xt, self._pool, self.threads)
                bounds = np.cumsum([0] + [len(s["sols"]) for s in slots])
                results = [out[bounds[i]:bounds[i + 1]] for i in range(len(slots))]
            except BaseException as e:  # every waiting GA gets the error instead of waiting forever
                results = [e] * len(slots)
        with self.cv:
            for s, r in zip(slots, results):
                s["out"] = r
            self.cv.notify_all()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def fit_rows_ga(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                w0: np.ndarray, b0: np.ndarray, cfgs: list[GAConfig]) -> list[RowFit]:
    """:func:`fit_row_ga` for K categories that know the same training rows: ``y_train``
    n x K (0 / 1), ``y_val`` n_val x K (NaN = unknown), ``w0`` K x Z, ``b0`` K, one
    :class:`GAConfig` per category (its own seed). Each GA runs in its own thread as it
    would alone (same operators, random streams, fitness values: the same best generation
    and row); their population products are computed together (:class:`SharedProduct`)."""
    import threading

    from threadpoolctl import threadpool_limits

    x = np.ascontiguousarray(x_train, dtype=np.float32)
    xt = np.ascontiguousarray(x.T)
    xv = np.ascontiguousarray(x_val, dtype=np.float32)
    y = np.asarray(y_train).reshape(len(x), -1)
    yv = np.asarray(y_val, np.float64).reshape(len(xv), -1)
    k_n = y.shape[1]
    if np.isnan(np.asarray(y, np.float64)).any():
        raise ValueError("fit_rows_ga needs every training label known (group categories by their known rows)")
    n_threads = max(c.threads or 0 for c in cfgs) or BinaryScorer(np.zeros(1, int)).n_threads
    product = SharedProduct(xt, k_n, n_threads)
    # each GA scores its AUCs on its own thread (the GIL released, no lock) when there are at
    # least as many GAs as threads: the GAs are the parallelism; the values do not change
    per_ga = max(1, n_threads // k_n)
    out: list[Any] = [None] * k_n

    def run(k: int) -> None:
        try:
            kv = ~np.isnan(yv[:, k])
            cfg = cfgs[k].with_overrides(threads=per_ga)
            out[k] = fit_row_ga(x, y[:, k].astype(int), xv[kv], yv[kv, k].astype(int), w0[k], float(b0[k]), cfg,
                                xt=xt, product=product)
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
            out[k] = e
        finally:
            product.leave()

    t0 = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        threads = [threading.Thread(target=run, args=(k,), name=f"cxrkit-ga-{k}") for k in range(k_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    product.close()
    for r in out:
        if isinstance(r, BaseException):
            raise r
    seconds = (time.perf_counter() - t0) / max(k_n, 1)
    for r in out:
        r.seconds = seconds
        r.stats["shared_product"] = {"categories": k_n, "rounds": product.rounds}
    return out
