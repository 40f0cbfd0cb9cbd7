"""CFT speed per category, the CFT paper's Table XIII set-up on random features.

N samples with Z-dimensional float32 features and random labels, ``--known`` of them known
for the category (so n = N * known samples per category), 1,000 epochs / generations:

* ``CFT-BP``        full-batch Adam on ASL (bp-asl), validation score every epoch: the fused
                    one-pass kernel (default) against the PyTorch autograd loop (cxrkit <= 0.1)
                    in the same run, with the largest row difference and both best epochs
* ``CFT-BP together`` the same BP for ``--together`` (14, CheXpert's count) categories whose known
                    rows coincide, fitted in one pass over the features per epoch (fit_rows_bp,
                    what ``cxrkit cft`` does for categories knowing >= 35 % of the rows): seconds
                    per category, and against one category at a time the best epochs compared and
                    the largest row difference (categories 1 and 2 refitted alone)
* ``GA together``   the coco-preset GA of ``--together`` categories knowing the same rows, run
                    side by side with one population product per round (fit_rows_ga, what
                    ``cxrkit cft`` does for such categories), ``--together-generations``
                    generations scaled to ``--generations``; against one category at a time:
                    fitness curves and rows compared (categories 1 and 2 rerun alone)
* ``CFT-GA``        cxrkit's GA: PyGAD + batched fitness with incremental scores and the
                    compiled radix-sort AUC (COCO preset for 50 individuals, as Table XIII's
                    #p=50; CheXpert preset too), against the same GA with NumPy's sort-based
                    AUC and PyGAD's own fitness lookup (cxrkit <= 0.1): the fitness curves of
                    the two must agree to 1e-6
* ``GA batched``    the straightforward batched fitness: one matrix product for the whole
                    population + vectorised AUC each generation (scaled from fewer generations)
* ``GA obvious``    PyGAD evaluating one individual at a time with scikit-learn's
                    ``roc_auc_score`` (scaled from a few generations)

    python benchmarks/cft_speed.py [--samples 300000] [--dim 512] [--known 0.1]
                                   [--generations 1000] [--individuals 50]

Prints one line per method: ``<method> <seconds per category>``, then the ratio against the
obvious implementation. The paper's RTX 4090 figures: 1.07 s (BP), 4.17 s (GA, 10
individuals), 17.65 s (GA, 50 individuals) per category.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--known", type=float, default=0.1)
    ap.add_argument("--generations", type=int, default=1000, help="epochs (BP) and generations (GA) per category")
    ap.add_argument("--individuals", type=int, default=50)
    ap.add_argument("--valid", type=int, default=3000, help="validation samples per category (early stopping)")
    ap.add_argument("--obvious-generations", type=int, default=3)
    ap.add_argument("--batched-generations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="threads for the fitness of a batch")
    ap.add_argument("--together", type=int, default=14, help="categories fitted together by CFT-BP and the GA")
    ap.add_argument("--together-generations", type=int, default=200,
                    help="generations of the side-by-side GA run (scaled to --generations)")
    ap.add_argument("--skip", default="",
                    help="comma-separated methods to skip: bp, bp-old, together, ga, ga-together, ga-old, chexpert, batched, obvious")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import pygad
    import torch
    from sklearn.metrics import roc_auc_score

    from cxrkit.cft.bp import bp_preset, fit_row_bp
    from cxrkit.cft.fitness import BinaryScorer
    from cxrkit.cft.ga import GA_PRESETS, fit_row_ga

    rng = np.random.default_rng(0)
    n = int(args.samples * args.known)
    z = args.dim
    x = rng.standard_normal((n, z), dtype=np.float32)
    y = (rng.random(n) < 0.5).astype(int)
    xv = rng.standard_normal((args.valid, z), dtype=np.float32)
    yv = (rng.random(args.valid) < 0.5).astype(int)
    w0 = (rng.standard_normal(z) * 0.05).astype(np.float32)
    g = args.generations
    print(f"N = {args.samples:,}, known {args.known:.0%} -> n = {n:,} samples per category, Z = {z}, "
          f"{g} epochs / generations, {args.individuals} individuals, validation {args.valid:,}; "
          f"{torch.get_num_threads()} torch threads")
    rows: list[tuple[str, float, str]] = []

    from cxrkit.cft import kernels

    notes: list[str] = []
    if "bp" not in skip:
        cfg = bp_preset("bp-asl", "coco").with_overrides(epochs=g, patience=None, metric="auc")
        fit_row_bp(x[:500], y[:500], xv, yv, w0, 0.0, cfg.with_overrides(epochs=2))  # compile the kernels
        t0 = time.perf_counter()
        new = fit_row_bp(x, y, xv, yv, w0, 0.0, cfg)
        rows.append(("CFT-BP (bp-asl, fused one-pass kernel)", time.perf_counter() - t0, "1.07"))
        if "bp-old" not in skip:
            t0 = time.perf_counter()
            old = fit_row_bp(x, y, xv, yv, w0, 0.0, cfg.with_overrides(fused=False))
            rows.append(("CFT-BP (bp-asl, PyTorch autograd loop, cxrkit 0.1)", time.perf_counter() - t0, "1.07"))
            notes.append(f"BP fused vs autograd: best epoch {new.best_step} vs {old.best_step}, largest row "
                         f"difference {float(np.abs(new.w - old.w).max()):.1e} (bias {abs(new.b - old.b):.1e}), "
                         f"validation AUC {new.val_after:.6f} vs {old.val_after:.6f}")
        t0 = time.perf_counter()
        for _ in range(5):
            x.sum()
        read_ms = (time.perf_counter() - t0) / 5 * 1e3
        notes.append(f"one read of the {x.nbytes / 1e6:.0f} MB feature matrix (x.sum()): {read_ms:.1f} ms -> "
                     f"{read_ms * g / 1e3:.1f} s for {g} epochs: the memory floor of one pass per epoch")
    if "together" not in skip and args.together > 0:
        from cxrkit.cft.bp import fit_rows_bp

        k = args.together
        yk = (rng.random((n, k)) < 0.5).astype(np.float32)
        yvk = (rng.random((args.valid, k)) < 0.5).astype(np.float32)
        wk = (rng.standard_normal((k, z)) * 0.05).astype(np.float32)
        bk = np.zeros(k, np.float32)
        cfg = bp_preset("bp-asl", "coco").with_overrides(epochs=g, patience=None, metric="auc")
        fit_rows_bp(x[:500], yk[:500], xv, yvk, wk, bk, cfg.with_overrides(epochs=2))  # compile
        t0 = time.perf_counter()
        together = fit_rows_bp(x, yk, xv, yvk, wk, bk, cfg)
        rows.append((f"CFT-BP (bp-asl, {k} categories in one pass, per category)",
                     (time.perf_counter() - t0) / k, "1.07"))
        diffs, same = [], 0
        for c in range(min(2, k)):
            alone = fit_row_bp(x, yk[:, c].astype(int), xv, yvk[:, c].astype(int), wk[c], 0.0, cfg)
            diffs.append(float(np.abs(alone.w - together[c].w).max()))
            same += alone.best_step == together[c].best_step
        notes.append(f"BP {k} together vs alone (categories 1-{min(2, k)}): best epoch the same in {same} of "
                     f"{min(2, k)}, largest row difference {max(diffs):.1e}")
    paper_ga = "17.65" if args.individuals == 50 else "4.17" if args.individuals == 10 else "-"
    if "ga" not in skip:
        cfg = GA_PRESETS["coco"].with_overrides(generations=g, patience=None, metric="auc",
                                                individuals=args.individuals, threads=args.threads)
        fit_row_ga(x[:500], y[:500], xv, yv, w0, 0.0, cfg.with_overrides(generations=2))  # compile the kernels
        t0 = time.perf_counter()
        r = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
        rows.append((f"CFT-GA (coco preset, {args.individuals} individuals)", time.perf_counter() - t0, paper_ga))
        stats = r.stats
        if "ga-old" not in skip:
            import cxrkit.cft.ga as ga_mod

            saved = kernels.AVAILABLE, ga_mod._ga_class
            kernels.AVAILABLE, ga_mod._ga_class = False, lambda: pygad.GA
            try:
                t0 = time.perf_counter()
                r_old = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
                rows.append(("CFT-GA (coco preset, NumPy sorts + PyGAD lookup, cxrkit 0.1)",
                             time.perf_counter() - t0, paper_ga))
            finally:
                kernels.AVAILABLE, ga_mod._ga_class = saved
            dt = float(np.abs(np.subtract(r.curves["train"], r_old.curves["train"])).max())
            dv = float(np.abs(np.subtract(r.curves["val"], r_old.curves["val"])).max())
            notes.append(f"GA compiled vs plain: largest fitness difference over {g} generations {dt:.1e} "
                         f"(validation {dv:.1e}), rows {float(np.abs(r.w - r_old.w).max()):.1e} apart")
    if "ga-together" not in skip and args.together > 1:
        from cxrkit.cft.ga import fit_rows_ga

        k, gt = args.together, args.together_generations
        yk = (rng.random((n, k)) < 0.5).astype(int)
        yvk = (rng.random((args.valid, k)) < 0.5).astype(float)
        wk = (rng.standard_normal((k, z)) * 0.05).astype(np.float32)
        cfgs = [GA_PRESETS["coco"].with_overrides(generations=gt, patience=None, metric="auc", seed=c,
                                                  individuals=args.individuals, threads=args.threads)
                for c in range(k)]
        t0 = time.perf_counter()
        together = fit_rows_ga(x, yk, xv, yvk, wk, np.zeros(k, np.float32), cfgs)
        rows.append((f"CFT-GA (coco, {k} categories side by side, per category, x{g / gt:.0f} scaled)",
                     (time.perf_counter() - t0) / k * g / gt, paper_ga))
        same, t_alone = 0, 0.0
        for c in range(2):
            t0 = time.perf_counter()
            alone = fit_row_ga(x, yk[:, c], xv, yvk[:, c].astype(int), wk[c], 0.0, cfgs[c])
            t_alone += time.perf_counter() - t0
            same += (alone.curves["train"] == together[c].curves["train"] and np.array_equal(alone.w, together[c].w))
        rows.append((f"CFT-GA (coco, the same categories one at a time, x{g / gt:.0f} scaled)", t_alone / 2 * g / gt,
                     paper_ga))
        notes.append(f"GA {k} side by side vs alone (categories 1-2): identical fitness curves and rows in {same} of 2")
    if "chexpert" not in skip:
        cfg = GA_PRESETS["chexpert"].with_overrides(generations=g, patience=None, individuals=args.individuals,
                                                    parents_mating=min(14, args.individuals),
                                                    keep_parents=min(10, args.individuals - 1), threads=args.threads)
        t0 = time.perf_counter()
        r2 = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
        rows.append((f"CFT-GA (chexpert preset, {args.individuals} individuals)", time.perf_counter() - t0, "-"))

    from cxrkit.cft.ga import _biased_uniform, _offspring_uniform

    def pygad_run(fitness, generations: int, batch: int | None) -> float:
        # the coco preset's GA with the same (vectorised) operators as cxrkit: only fitness differs
        op_rng = np.random.default_rng(0)
        ga = pygad.GA(num_generations=generations, num_parents_mating=25,
                      initial_population=np.tile(np.r_[w0, 0.0], (args.individuals, 1)), fitness_func=fitness,
                      fitness_batch_size=batch, parent_selection_type="rws", keep_elitism=1, keep_parents=0,
                      crossover_type=_biased_uniform(op_rng, 0.2),
                      mutation_type=_offspring_uniform(op_rng, 0.5, -0.001, 0.001), random_seed=0,
                      suppress_warnings=True)
        t0 = time.perf_counter()
        ga.run()
        return (time.perf_counter() - t0) / generations * g

    if "batched" not in skip:
        scorer = BinaryScorer(y, "auc", threads=args.threads, compiled=False)

        def batched(ga, sols, idx):
            s = np.asarray(sols, np.float32)
            return scorer(s[:, :-1] @ x.T + s[:, -1:]).tolist()

        rows.append((f"GA batched (one product per generation, x{g / args.batched_generations:.0f} scaled)",
                     pygad_run(batched, args.batched_generations, args.individuals), "-"))

    if "obvious" not in skip:
        def one(ga, sol, idx):
            return float(roc_auc_score(y, x @ sol[:-1].astype(np.float32) + sol[-1]))

        rows.append((f"GA obvious (per individual, scikit-learn, x{g / args.obvious_generations:.0f} scaled)",
                     pygad_run(one, args.obvious_generations, None), "-"))

    from cxrkit.inference.runtime import cpu_flags, cpu_model_name

    units = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    width = max(len(r[0]) for r in rows)
    print(f"\nCPU: {cpu_model_name()} ({', '.join(units)}), {torch.get_num_threads()} threads")
    print(f"{'method':{width}}  {'s / category':>13}  {'paper (RTX 4090)':>16}")
    for name, sec, paper in rows:
        print(f"{name:{width}}  {sec:13.2f}  {paper:>16}")
    secs = {name: sec for name, sec, _ in rows}
    for new_name, old_name in (("CFT-BP (bp-asl, fused one-pass kernel)", "CFT-BP (bp-asl, PyTorch autograd loop, cxrkit 0.1)"),
                               (f"CFT-GA (coco preset, {args.individuals} individuals)",
                                "CFT-GA (coco preset, NumPy sorts + PyGAD lookup, cxrkit 0.1)")):
        if new_name in secs and old_name in secs:
            print(f"{new_name}: {secs[old_name] / secs[new_name]:.1f}x faster than {old_name}")
    for line in notes:
        print(line)
    obvious = next((s for name, s, _ in rows if name.startswith("GA obvious")), None)
    if obvious:
        print()
        for name, sec, _ in rows:
            if not name.startswith("GA obvious"):
                print(f"{name:{width}}  {obvious / sec:8.1f}x faster than the obvious GA")
    if "ga" not in skip:
        print(f"\nincremental scoring of the coco-preset run: {stats}")
    if "chexpert" not in skip:
        print(f"incremental scoring of the chexpert-preset run: {r2.stats}")


if __name__ == "__main__":
    main()
