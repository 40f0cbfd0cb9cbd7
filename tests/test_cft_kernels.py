"""CFT's compiled fast paths against the plain code they replace (issue 13): the same values."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrkit.cft import kernels
from cxrkit.cft.bp import bp_preset, fit_row_bp, fused_asl_params
from cxrkit.cft.fitness import BinaryScorer
from cxrkit.cft.ga import GA_PRESETS, fit_row_ga
from cxrkit.losses import build_loss

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed")


def _hard_rows(n, seed=0):
    """Score rows with the cases a sort-based AUC can get wrong: ties across classes, all
    equal, -0.0 next to +0.0, infinities, huge and tiny magnitudes, negative values."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(n), np.round(rng.standard_normal(n), 1), np.full(n, 0.25),
            np.round(rng.standard_normal(n) * 3), -np.abs(rng.standard_normal(n)) * 1e-30,
            rng.standard_normal(n) * 1e30]
    r = rng.standard_normal(n)
    r[: n // 4] = 0.0
    r[n // 4: n // 2] = -0.0
    r[-3:] = [np.inf, -np.inf, np.inf]
    rows.append(r)
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("metric", ["auc", "ap"])
@pytest.mark.parametrize("n,p", [(2000, 0.3), (301, 0.05), (40, 0.5), (7, 0.7)])
def test_compiled_rank_metrics_equal_numpy_and_sklearn(metric, n, p):
    rng = np.random.default_rng(n)
    y = (rng.random(n) < p).astype(int)
    y[0], y[1] = 1, 0
    s = _hard_rows(n)
    fast = BinaryScorer(y, metric)(s)
    plain = BinaryScorer(y, metric, compiled=False)(s)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-12)
    ref = roc_auc_score if metric == "auc" else average_precision_score
    finite = [i for i, r in enumerate(s) if np.isfinite(r).all()]
    np.testing.assert_allclose(fast[finite], [ref(y, s[i]) for i in finite], atol=1e-12)
    for threads in (1, 2):
        np.testing.assert_array_equal(BinaryScorer(y, metric, threads=threads)(s), fast)


def test_rows_with_nan_are_scored_as_numpy_scores_them():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.4).astype(int)
    s = rng.standard_normal((3, 500)).astype(np.float32)
    s[1, ::7] = np.nan
    for metric in ("auc", "ap"):
        fast = BinaryScorer(y, metric)(s)
        np.testing.assert_allclose(fast, BinaryScorer(y, metric, compiled=False)(s), atol=1e-12)
        assert np.isfinite(fast).all()


def test_float64_scores_keep_their_precision():
    """The kernels are float32; float64 rows (differences below float32's resolution) go to NumPy."""
    y = np.array([0, 1, 0, 1])
    s = np.array([1.0, 1.0 + 1e-12, 1.0 + 2e-12, 1.0 + 3e-12])
    assert BinaryScorer(y, "auc")(s)[0] == pytest.approx(0.75)


@pytest.mark.parametrize("params", [dict(gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
                                    dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05),
                                    dict(gamma_pos=1.0, gamma_neg=2.5, clip=0.1, eps=1e-4)])
def test_fused_asl_gradient_equals_autograd(params):
    rng = np.random.default_rng(0)
    n, z = 1500, 48
    x = rng.standard_normal((n, z)).astype(np.float32) * 3  # large logits reach the eps / clip clamps
    y = (rng.random(n) < 0.3).astype(np.float32)
    y[:10] = 0.25  # soft labels weigh both terms
    w = (rng.standard_normal(z) * 0.5).astype(np.float32)
    loss = build_loss("asl", **params)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(0.3, requires_grad=True)
    total = loss((torch.from_numpy(x) @ wt + bt)[:, None], torch.from_numpy(y)[:, None])
    total.backward()
    g, gb, value = kernels.asl_grad(x, y, w, 0.3, params["gamma_pos"], params["gamma_neg"], params["clip"],
                                    params.get("eps", 1e-8))
    np.testing.assert_allclose(g, wt.grad.numpy(), rtol=1e-4, atol=1e-3)
    assert gb == pytest.approx(float(bt.grad), rel=1e-5, abs=1e-3)
    assert value == pytest.approx(float(total.detach()), rel=1e-5)


def _problem(n=2500, z=64, seed=1):
    rng = np.random.default_rng(seed)
    wt = rng.standard_normal(z).astype(np.float32) * 0.1
    x = rng.standard_normal((n, z), dtype=np.float32)
    y = ((x @ wt + rng.standard_normal(n) * 2) > 1).astype(int)
    xv = rng.standard_normal((500, z), dtype=np.float32)
    yv = ((xv @ wt + rng.standard_normal(500) * 2) > 1).astype(int)
    return x, y, xv, yv, wt + rng.standard_normal(z).astype(np.float32) * 0.1


@pytest.mark.parametrize("preset,extra", [("chexpert", {}), ("coco", {}),
                                          ("coco", {"loss_params": {"gamma_neg": 2.0, "clip": 0.05,
                                                                    "reduction": "mean"}, "weight_decay": 1e-3,
                                                    "eval_every": 3})])
def test_fused_bp_equals_autograd_loop(preset, extra):
    """The issue's bar: the same best epoch and the row within 1e-5 of the autograd loop."""
    x, y, xv, yv, w0 = _problem()
    cfg = bp_preset("bp-asl", preset).with_overrides(epochs=150, patience=None, metric="auc", lr=1e-3, **extra)
    assert fused_asl_params(cfg) is not None
    plain = fit_row_bp(x, y, xv, yv, w0, 0.05, cfg.with_overrides(fused=False))
    fast = fit_row_bp(x, y, xv, yv, w0, 0.05, cfg)
    assert fast.stats.get("fused") and not plain.stats.get("fused")
    assert plain.improved and fast.best_step == plain.best_step
    assert fast.val_after == plain.val_after
    np.testing.assert_allclose(fast.w, plain.w, atol=1e-5, rtol=0)
    assert fast.b == pytest.approx(plain.b, abs=1e-5)
    np.testing.assert_allclose(fast.curves["train_loss"], plain.curves["train_loss"], rtol=1e-5)


def test_nearest_cached_solution_equals_the_full_comparison():
    """The GA's nearest-relative search stops counting past the sparse limit; wherever the
    count is within it, the index and count are NumPy's full comparison's argmin."""
    rng = np.random.default_rng(6)
    cache = rng.standard_normal((40, 65)).astype(np.float32)
    sols = np.repeat(cache[[3, 7, 7, 20, 31, 39]], 2, axis=0)
    for i, k in enumerate([0, 1, 2, 5, 6, 7, 9, 30, 64, 65, 0, 3]):
        genes = rng.choice(65, size=k, replace=False)
        sols[i, genes] += 1.0
    sols[-1] = cache[5]  # an exact duplicate of an earlier cached row
    for cap in (0, 3, 6, 64):
        idx, cnt = kernels.nearest_rows(sols, cache, cap)
        full = (sols[:, None, :] != cache[None, :, :]).sum(axis=2)
        ref_idx, ref_cnt = full.argmin(axis=1), full.min(axis=1)
        for i in range(len(sols)):
            if ref_cnt[i] <= cap:
                assert (idx[i], cnt[i]) == (ref_idx[i], ref_cnt[i])
            else:
                assert cnt[i] == cap + 1
    assert kernels.nearest_rows(sols, cache, 6)[1][-1] == 0


def test_rank_metrics_on_one_thread_equal_the_parallel_kernel():
    """GAs side by side score on their own threads (the GIL released): same values."""
    rng = np.random.default_rng(7)
    rows = _hard_rows(900, seed=7)
    y = rng.random(900) < 0.4
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    for fn in (kernels.auc_rows, kernels.ap_rows):
        np.testing.assert_array_equal(fn(rows, pos, neg, threads=1), fn(rows, pos, neg, threads=2))


@pytest.mark.parametrize("params", [dict(gamma_pos=0.0, gamma_neg=0.0, clip=0.0, eps=1e-8),
                                    dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8),
                                    dict(gamma_pos=0.0, gamma_neg=2.5, clip=0.1, eps=1e-8),
                                    dict(gamma_pos=0.0, gamma_neg=3.0, clip=0.0, eps=0.6),  # clamps bind anywhere
                                    dict(gamma_pos=1.0, gamma_neg=4.0, clip=1e-9, eps=1e-8)])
def test_gradient_without_the_loss_equals_the_gradient_with_it(params):
    """Epochs whose loss is not recorded take a branch-free one-exp derivative; it must be
    the derivative the full (logarithm-computing) code gives, clamps included: logits up to
    +-60 reach eps, soft labels weigh both terms, NaN labels are left out."""
    rng = np.random.default_rng(3)
    n, z, k = 997, 40, 3
    x = (rng.standard_normal((n, z)) * 6).astype(np.float32)
    w = (rng.standard_normal((k, z)) * 0.5).astype(np.float32)
    y = (rng.random((n, k)) < 0.3).astype(np.float32)
    y[:20] = 0.3
    y[rng.random((n, k)) < 0.1] = np.nan
    b = np.array([0.2, -1.0, 3.0], np.float32)
    args = (params["gamma_pos"], params["gamma_neg"], params["clip"], params["eps"])
    g1, gb1, loss1 = kernels.asl_grad_rows(x, y, w, b, *args)
    g0, gb0, loss0 = kernels.asl_grad_rows(x, y, w, b, *args, want_loss=False)
    assert np.abs(x @ w.T).max() > 40 and np.all(loss1 > 0) and np.all(loss0 == 0)
    np.testing.assert_allclose(g0, g1, rtol=1e-6, atol=1e-6 * np.abs(g1).max())
    np.testing.assert_allclose(gb0, gb1, rtol=1e-9, atol=1e-9 * np.abs(gb1).max())


def test_bp_records_the_loss_at_the_reports_resolution():
    """A long run keeps ~400 train-loss points (first epoch, then every ceil(epochs / 400)),
    the fused path and the autograd loop the same epochs and values."""
    from cxrkit.cft.bp import CURVE_POINTS, loss_epoch

    x, y, xv, yv, w0 = _problem(n=300, z=16)
    cfg = bp_preset("bp-asl", "coco").with_overrides(epochs=1200, patience=None, metric="auc", lr=1e-3)
    fast = fit_row_bp(x, y, xv, yv, w0, 0.0, cfg)
    plain = fit_row_bp(x, y, xv, yv, w0, 0.0, cfg.with_overrides(fused=False))
    epochs = fast.curves["train_loss_epoch"]
    assert epochs[:4] == [1, 3, 6, 9] and epochs[-1] == 1200 and len(epochs) == CURVE_POINTS + 1
    assert epochs == plain.curves["train_loss_epoch"] == [e for e in range(1, 1201) if loss_epoch(e, cfg)]
    assert len(fast.curves["val"]) == 1200
    np.testing.assert_allclose(fast.curves["train_loss"], plain.curves["train_loss"], rtol=1e-5)
    assert fast.best_step == plain.best_step
    # the report keeps the epochs as integers, the values as floats, both downsampled alike
    from cxrkit.cft.runner import _downsample

    kept = {k: _downsample(v) for k, v in fast.curves.items()}
    assert len(kept["val"]) == CURVE_POINTS and len(kept["train_loss_epoch"]) == CURVE_POINTS
    assert all(type(e) is int for e in kept["train_loss_epoch"]) and kept["train_loss_epoch"][-1] == 1200
    assert all(type(v) is float for v in kept["train_loss"] + kept["val"])


def test_score_columns_equal_each_columns_own_scorer():
    """All categories' validation AUC / AP in one call, each on its known entries."""
    rng = np.random.default_rng(4)
    n, k = 700, 5
    s = np.round(rng.standard_normal((n, k)), 1).astype(np.float32)  # ties
    s[:50, 1] = -0.0
    s[50:100, 1] = 0.0
    y = (rng.random((n, k)) < 0.3).astype(np.float64)
    y[rng.random((n, k)) < 0.2] = np.nan
    y[:, 3] = np.where(np.isnan(y[:, 3]), np.nan, 0.0)  # no positives
    s[7, 4] = np.nan  # a NaN score: left to the caller
    for metric in ("auc", "ap"):
        out = kernels.score_columns(s, y, metric)
        for c in (0, 1, 2):
            kn = ~np.isnan(y[:, c])
            ref = BinaryScorer(y[kn, c].astype(int), metric, compiled=False)(s[kn, c].astype(np.float64))[0]
            assert out[c] == pytest.approx(ref, abs=1e-12)
        assert np.isnan(out[3]) and np.isnan(out[4])


def test_fused_path_only_where_it_applies():
    assert fused_asl_params(bp_preset("bp-wmw", "chexpert")) is None
    assert fused_asl_params(bp_preset("bp-aucm", "chexpert")) is None
    assert fused_asl_params(bp_preset("bp-asl", "coco").with_overrides(batch_size=64)) is None
    assert fused_asl_params(bp_preset("bp-asl", "coco").with_overrides(fused=False)) is None
    cfg = bp_preset("bp-asl", "coco").with_overrides(loss_params={"detach_focal_weight": False})
    assert fused_asl_params(cfg) is None


def test_ga_fitness_values_equal_with_and_without_kernels():
    """For a fixed seed the GA visits the same solutions with the same fitness (1e-6) either way."""
    x, y, xv, yv, w0 = _problem(n=1200, z=24)
    code = ("import sys, json, numpy as np; sys.path.insert(0, {root!r});"
            "from cxrkit.cft.ga import GA_PRESETS, fit_row_ga; from cxrkit.cft import kernels;"
            "d = np.load({f!r}); cfg = GA_PRESETS['coco'].with_overrides(generations=40, patience=None, metric='ap');"
            "r = fit_row_ga(d['x'], d['y'], d['xv'], d['yv'], d['w0'], 0.0, cfg);"
            "print(json.dumps({{'k': kernels.AVAILABLE, 'train': r.curves['train'], 'val': r.curves['val'],"
            "'w': r.w.tolist()}}))")
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "p.npz")
        np.savez(f, x=x, y=y, xv=xv, yv=yv, w0=w0)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        runs = []
        for off in ("0", "1"):
            env = dict(os.environ, CXRKIT_NO_NUMBA=off)
            out = subprocess.run([sys.executable, "-c", code.format(root=root, f=f)], env=env, capture_output=True,
                                 text=True, check=True, timeout=300)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    fast, plain = runs
    assert fast["k"] is True and plain["k"] is False
    np.testing.assert_allclose(fast["train"], plain["train"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast["val"], plain["val"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast["w"], plain["w"], atol=1e-6, rtol=0)
    assert len(fast["train"]) == 40


def test_ga_runs_in_forked_workers_after_the_parent_used_the_kernels():
    """CFT --workers forks after the parent ran a parallel kernel: GNU OpenMP would abort."""
    code = ("import numpy as np, multiprocessing as mp;"
            "from cxrkit.cft import kernels;"
            "rng = np.random.default_rng(0); y = (rng.random(4000) < .3).astype(int);"
            "s = rng.standard_normal((6, 4000)).astype(np.float32);"
            "p, n = np.flatnonzero(y), np.flatnonzero(1 - y); ref = kernels.auc_rows(s, p, n);\n"
            "def f(i):\n    kernels.set_threads(1); return float(kernels.auc_rows(s, p, n)[i])\n"
            "if __name__ == '__main__':\n"
            "    with mp.get_context('fork').Pool(2) as pool: got = pool.map(f, range(6))\n"
            "    assert np.allclose(got, ref, atol=0); print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_ga_preset_uses_the_kernels_by_default():
    x, y, xv, yv, w0 = _problem(n=600, z=16)
    cfg = GA_PRESETS["chexpert"].with_overrides(generations=5, patience=None)
    assert cfg.threads == 0
    r = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
    assert r.steps == 5 and len(r.curves["train"]) == 5


@pytest.mark.parametrize("preset", ["chexpert", "coco"])
def test_fast_pygad_fitness_lookup_gives_pygads_results(preset, monkeypatch):
    """The bytes-keyed cal_pop_fitness reuses exactly the fitness PyGAD's own would."""
    import cxrkit.cft.ga as ga_mod

    x, y, xv, yv, w0 = _problem(n=800, z=20)
    cfg = GA_PRESETS[preset].with_overrides(generations=30, patience=None)
    fast = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
    import pygad

    monkeypatch.setattr(ga_mod, "_ga_class", lambda: pygad.GA)
    plain = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
    assert fast.curves["train"] == plain.curves["train"]
    assert fast.curves["val"] == plain.curves["val"]
    np.testing.assert_array_equal(fast.w, plain.w)
    assert fast.stats == plain.stats  # the same solutions reached the fitness function


@pytest.mark.parametrize("metric", ["auc", "ap"])
def test_torch_rank_metric_equals_the_cpu_scorer(metric):
    """The batched torch AUC / AP (the GPU fitness) gives the CPU scorer's values."""
    from cxrkit.cft.fitness import torch_rank_metric

    for n, p in ((3000, 0.2), (61, 0.5)):
        rng = np.random.default_rng(n)
        y = (rng.random(n) < p).astype(int)
        y[:2] = [1, 0]
        s = _hard_rows(n)[:, :]
        s = s[[i for i, r in enumerate(s) if np.isfinite(r).all()]]
        got = torch_rank_metric(torch.from_numpy(s), torch.from_numpy(y), metric).numpy()
        np.testing.assert_allclose(got, BinaryScorer(y, metric, compiled=False)(s), atol=1e-9, rtol=0)


def test_ga_fitness_through_the_torch_backend_matches():
    """PopulationScorer on a torch device (what ga.device: cuda runs) scores as the CPU one."""
    from cxrkit.cft.fitness import PopulationScorer

    x, y, *_ = _problem(n=900, z=12)
    rng = np.random.default_rng(0)
    sols = rng.standard_normal((9, 13)).astype(np.float32)
    ref = PopulationScorer(x.T, y, "auc")(sols)
    dev = PopulationScorer(x.T, y, "auc", torch_device="cpu")  # the torch path, here on the CPU
    np.testing.assert_allclose(dev(sols), ref, atol=1e-6)
    assert dev.stats["dense"] == 9


def test_bp_autograd_loop_runs_on_a_torch_device_argument():
    x, y, xv, yv, w0 = _problem(n=600, z=10)
    cfg = bp_preset("bp-aucm", "chexpert").with_overrides(epochs=20, device="cpu")
    r = fit_row_bp(x, y, xv, yv, w0, 0.0, cfg)
    assert r.stats["device"] == "cpu" and r.steps == 20


def _multi_problem(n=2003, z=48, k=5, seed=3):
    rng = np.random.default_rng(seed)
    wt = rng.standard_normal((k, z))
    x = rng.standard_normal((n, z)).astype(np.float32)
    y = (x @ wt.T + rng.standard_normal((n, k)) * 2.0 > 0.5).astype(np.float32)
    y[rng.random((n, k)) < 0.25] = np.nan  # unknown labels, different rows per category
    y[:, -1] = np.where(np.isnan(y[:, -1]), np.nan, 0.0)  # one category without positives
    xv = rng.standard_normal((600, z)).astype(np.float32)
    yv = (xv @ wt.T + rng.standard_normal((600, k)) * 2.0 > 0.5).astype(np.float32)
    yv[rng.random((600, k)) < 0.1] = np.nan
    w0 = (wt * 0.1 + rng.standard_normal((k, z)) * 0.1).astype(np.float32)
    return x, y, xv, yv, w0, (rng.standard_normal(k) * 0.1).astype(np.float32)


@pytest.mark.parametrize("params", [(0.0, 0.0, 0.0), (0.0, 4.0, 0.05), (1.0, 2.0, 0.0)])
def test_asl_gradient_of_many_rows_equals_one_row_at_a_time(params):
    """One pass for K categories (unknown labels NaN, n not a multiple of 4) gives each
    category the gradient of its own known rows."""
    x, y, _, _, w, b = _multi_problem()
    g, gb, loss = kernels.asl_grad_rows(x, y, w, b, *params, 1e-8)
    assert g.shape == w.shape and gb.shape == loss.shape == (w.shape[0],)
    for k in range(w.shape[0]):
        known = ~np.isnan(y[:, k])
        g1, gb1, loss1 = kernels.asl_grad(np.ascontiguousarray(x[known]), y[known, k], w[k], float(b[k]), *params,
                                          1e-8)
        np.testing.assert_allclose(g[k], g1, rtol=1e-5, atol=1e-6 * np.abs(g1).max())
        assert gb[k] == pytest.approx(gb1, rel=1e-6, abs=1e-6)
        assert loss[k] == pytest.approx(loss1, rel=1e-9)
        assert np.abs(g[k]).max() > 1.0  # a real gradient, not zeros


@pytest.mark.parametrize("preset", ["chexpert", "coco"])
def test_bp_of_many_categories_together_equals_one_at_a_time(preset):
    """The issue's bar for batched CFT-BP: the same best epoch and the row within 1e-6."""
    from cxrkit.cft.bp import fit_rows_bp

    x, y, xv, yv, w0, b0 = _multi_problem()
    cfg = bp_preset("bp-asl", preset).with_overrides(epochs=120, patience=40, lr=3e-3, metric="auc")
    together = fit_rows_bp(x, y, xv, yv, w0, b0, cfg)
    assert len(together) == w0.shape[0]
    improved = 0
    for k, fit in enumerate(together):
        kt, kv = ~np.isnan(y[:, k]), ~np.isnan(yv[:, k])
        alone = fit_row_bp(x[kt], y[kt, k].astype(int), xv[kv], yv[kv, k].astype(int), w0[k], float(b0[k]), cfg)
        assert fit.improved == alone.improved and fit.best_step == alone.best_step and fit.steps == alone.steps
        np.testing.assert_allclose(fit.w, alone.w, atol=1e-6, rtol=0)
        assert fit.b == pytest.approx(alone.b, abs=1e-6)
        assert fit.val_after == pytest.approx(alone.val_after, abs=1e-4)
        improved += fit.improved
    assert improved >= 2
    assert together[-1].stats.get("skipped") and np.array_equal(together[-1].w, w0[-1])  # no positives: kept


def test_bp_of_many_categories_falls_back_where_the_fused_path_does_not_apply():
    from cxrkit.cft.bp import fit_rows_bp

    x, y, xv, yv, w0, b0 = _multi_problem(n=600, k=3)
    cfg = bp_preset("bp-wmw", "chexpert").with_overrides(epochs=5, batch_size=None)
    fits = fit_rows_bp(x, y, xv, yv, w0, b0, cfg)
    kt, kv = ~np.isnan(y[:, 0]), ~np.isnan(yv[:, 0])
    alone = fit_row_bp(x[kt], y[kt, 0].astype(int), xv[kv], yv[kv, 0].astype(int), w0[0], float(b0[0]), cfg)
    np.testing.assert_array_equal(fits[0].w, alone.w)
    assert "batched" not in fits[0].stats


@pytest.mark.parametrize("preset", ["chexpert", "coco"])
def test_ga_of_many_categories_side_by_side_equals_one_at_a_time(preset):
    """GAs sharing one population product per round give each category bitwise the run it
    gets alone: same fitness curve, best generation and row."""
    from cxrkit.cft.ga import fit_rows_ga

    rng = np.random.default_rng(5)
    n, z, k = 1500, 24, 4
    x = rng.standard_normal((n, z)).astype(np.float32)
    wt = rng.standard_normal((k, z))
    y = (x @ wt.T + rng.standard_normal((n, k)) * 2 > 0.5).astype(int)
    xv = rng.standard_normal((400, z)).astype(np.float32)
    yv = (xv @ wt.T + rng.standard_normal((400, k)) * 2 > 0.5).astype(float)
    yv[rng.random((400, k)) < 0.1] = np.nan
    w0 = (wt * 0.1 + rng.standard_normal((k, z)) * 0.2).astype(np.float32)
    b0 = np.zeros(k, np.float32)
    cfgs = [GA_PRESETS[preset].with_overrides(generations=25, patience=None, metric="auc", seed=100 + c, threads=2)
            for c in range(k)]
    together = fit_rows_ga(x, y, xv, yv, w0, b0, cfgs)
    assert together[0].stats["shared_product"]["categories"] == k
    for c in range(k):
        kv = ~np.isnan(yv[:, c])
        alone = fit_row_ga(x, y[:, c], xv[kv], yv[kv, c].astype(int), w0[c], 0.0, cfgs[c])
        assert together[c].curves["train"] == alone.curves["train"] and together[c].best_step == alone.best_step
        np.testing.assert_array_equal(together[c].w, alone.w)
        assert together[c].improved == alone.improved
    assert any(r.improved for r in together)


def test_ga_side_by_side_reports_a_failure_instead_of_hanging(monkeypatch):
    import cxrkit.cft.ga as ga_mod

    real = ga_mod.fit_row_ga

    def broken(x, y, xv, yv, w0, b0, cfg, **kw):
        if cfg.seed == 1:
            raise RuntimeError("category 1 failed")
        return real(x, y, xv, yv, w0, b0, cfg, **kw)

    monkeypatch.setattr(ga_mod, "fit_row_ga", broken)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    y = (rng.random((300, 3)) < 0.5).astype(int)
    yv = (rng.random((100, 3)) < 0.5).astype(float)
    cfgs = [GA_PRESETS["chexpert"].with_overrides(generations=5, seed=s) for s in range(3)]
    with pytest.raises(RuntimeError, match="category 1 failed"):
        ga_mod.fit_rows_ga(x, y, x[:100], yv, np.zeros((3, 8), np.float32), np.zeros(3, np.float32), cfgs)
