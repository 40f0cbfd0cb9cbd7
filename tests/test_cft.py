import json
import subprocess
import sys

import numpy as np
import torch
import pytest
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from cxrkit.artifact import load_model
from cxrkit.cft.bp import bp_preset, fit_layer_bp, fit_row_bp
from cxrkit.cft.features import extract_features, head_rows
from cxrkit.cft.fitness import BinaryScorer, PopulationScorer
from cxrkit.cft.ga import GA_PRESETS, fit_row_ga
from cxrkit.cft.pipeline import holdout_split
from cxrkit.cft.runner import CFTConfig, fit_category
from cxrkit.cli import app
from cxrkit.errors import ConfigError

runner = CliRunner()


def _problem(n=3000, z=32, seed=0, noise=2.5):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(z)
    x = rng.standard_normal((n, z)).astype(np.float32)
    y = (x @ w + rng.standard_normal(n) * noise > 0.8).astype(int)
    xv = rng.standard_normal((800, z)).astype(np.float32)
    yv = (xv @ w + rng.standard_normal(800) * noise > 0.8).astype(int)
    w0 = (0.1 * (w + 1.5 * rng.standard_normal(z))).astype(np.float32)
    return x, y, xv, yv, w0


@pytest.mark.parametrize("metric", ["auc", "ap"])
def test_binary_scorer_equals_sklearn_with_ties(metric):
    rng = np.random.default_rng(1)
    for n, p in ((500, 0.1), (300, 0.6), (50, 0.5)):
        y = (rng.random(n) < p).astype(int)
        s = np.round(rng.standard_normal((4, n)), 1).astype(np.float32)
        ref = [roc_auc_score(y, r) if metric == "auc" else average_precision_score(y, r) for r in s]
        for threads in (1, 2):
            np.testing.assert_allclose(BinaryScorer(y, metric, threads=threads)(s), ref, atol=1e-12)
    assert np.isnan(BinaryScorer(np.ones(5, int), "auc")(np.arange(5.0))).all()
    with pytest.raises(ValueError):
        BinaryScorer(np.array([0, 2, 1]))


def test_population_scorer_incremental_equals_exact():
    x, y, *_ = _problem(n=1000, z=40)
    ps = PopulationScorer(x.T, y, "auc", refresh=1000)
    rng = np.random.default_rng(0)
    pop = np.tile(rng.standard_normal(41).astype(np.float32), (8, 1))
    ps(pop, alive=pop)
    for _ in range(5):
        child = pop.copy()
        mask = rng.random(child.shape) < 0.05
        child[mask] += rng.uniform(-0.1, 0.1, mask.sum()).astype(np.float32)
        child[0] = pop[0]  # an unchanged (kept) solution
        child[1] += 0.01  # dense change -> full product
        got = ps(child, alive=child)
        exact = BinaryScorer(y)(ps.exact_scores(child))
        # float32 sums in another order can swap a near-tied pair: a few pairs out of ~250k
        np.testing.assert_allclose(got, exact, atol=1e-5)
        pop = child
    assert ps.stats["sparse"] > 0 and ps.stats["reused"] > 0 and ps.stats["dense"] > 0


def test_ga_improves_validation_and_is_reproducible():
    x, y, xv, yv, w0 = _problem()
    cfg = GA_PRESETS["chexpert"].with_overrides(generations=150, patience=None, seed=3)
    a = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
    b = fit_row_ga(x, y, xv, yv, w0, 0.0, cfg)
    assert a.improved and a.val_after > a.val_before + 0.02
    np.testing.assert_array_equal(a.w, b.w)
    assert a.curves["train"][-1] > a.curves["train"][0]  # training fitness goes up (Fig. 3 right)
    assert len(a.curves["train"]) == len(a.curves["val"]) == 150
    # the returned row really has the reported validation score
    assert abs(roc_auc_score(yv, xv @ a.w + a.b) - a.val_after) < 1e-9
    coco = fit_row_ga(x, y, xv, yv, w0, 0.0, GA_PRESETS["coco"].with_overrides(generations=30, metric="auc"))
    assert coco.steps == 30 and coco.val_after >= coco.val_before
    with pytest.raises(ConfigError, match="unknown GA option"):
        GA_PRESETS["chexpert"].with_overrides(populaton=3)


def test_ga_keeps_the_original_row_when_nothing_beats_it():
    x, y, xv, yv, w0 = _problem()
    w_perfect = np.linalg.lstsq(xv, 2.0 * yv - 1, rcond=None)[0].astype(np.float32)
    yv_sep = (xv @ w_perfect > 0).astype(int)  # validation labels the original row separates perfectly
    r = fit_row_ga(x, y, xv, yv_sep, w_perfect, 0.0, GA_PRESETS["chexpert"].with_overrides(generations=20))
    assert r.val_before == 1.0 and not r.improved
    np.testing.assert_array_equal(r.w, w_perfect)


@pytest.mark.parametrize("method", ["bp-asl", "bp-wmw", "bp-aucm"])
def test_bp_methods_improve_validation(method):
    x, y, xv, yv, w0 = _problem(n=2000)
    cfg = bp_preset(method, "chexpert").with_overrides(epochs=60, lr=0.01 if method == "bp-asl" else None or
                                                       bp_preset(method, "chexpert").lr)
    r = fit_row_bp(x, y, xv, yv, w0, 0.0, cfg)
    assert r.improved and r.val_after > r.val_before and r.best_step >= 1
    assert abs(roc_auc_score(yv, xv @ r.w + r.b) - r.val_after) < 1e-9


def test_ft_layer_ablation_single_early_stop():
    x, y, xv, yv, w0 = _problem(n=1500)
    y2 = np.stack([y, 1 - y], axis=1).astype(np.float32)
    y2[::3, 1] = np.nan  # unknown labels are masked
    yv2 = np.stack([yv, 1 - yv], axis=1).astype(np.float32)
    w, b, info = fit_layer_bp(x, y2, xv, yv2, np.stack([w0, -w0]), np.zeros(2, np.float32),
                              bp_preset("bp-asl", "chexpert").with_overrides(epochs=40, lr=0.01))
    assert w.shape == (2, 32) and info["val_after"] >= info["val_before"] and len(info["curve"]) == 40


def _demo_features(trained_model, demo_data):
    """The trained demo model, its cached train / valid features and its head rows."""
    model = load_model(trained_model)
    train = extract_features(model, demo_data / "train.csv", show_progress=False)
    valid = extract_features(model, demo_data / "valid.csv", show_progress=False)
    w, b = head_rows(model.model)
    return model, train, valid, w, b


def test_greedy_choice_per_category(trained_model, demo_data):
    model, train, valid, w, b = _demo_features(trained_model, demo_data)
    c = list(model.classes).index("Pleural Effusion")
    cfg = CFTConfig(method="greedy", policies=["ignore", "ones", "zeros"], candidates=["bp-asl", "ga-auc"],
                    ga={"generations": 15}, bp={"epochs": 15, "lr": 0.01}, min_val_positives=0).validate()
    r = fit_category(c, "Pleural Effusion", train, valid, None, w[c], float(b[c]), cfg)
    assert {cand["candidate"] for cand in r.candidates} == {f"{m}/{p}" for m in ("bp-asl", "ga-auc")
                                                            for p in ("ignore", "ones", "zeros")}
    best = max([cand["val"] for cand in r.candidates if cand["improved"]], default=None)
    if best is None:
        assert r.chosen == "original" and r.val_after == r.val_before
    else:
        assert r.val_after == best and r.chosen != "original"
    # U-Ones turns uncertain labels into positives: more known labels than U-Ignore
    assert r.n_train["ones"] >= r.n_train["ignore"]


def test_feature_cache_hit_and_invalidation(trained_model, demo_data, tmp_path):
    model = load_model(trained_model)
    a = extract_features(model, demo_data / "valid.csv", cache_dir=tmp_path, show_progress=False)
    b = extract_features(model, demo_data / "valid.csv", cache_dir=tmp_path, show_progress=False)
    assert a.path == b.path and len(list(tmp_path.iterdir())) == 1
    np.testing.assert_array_equal(np.asarray(a.z), np.asarray(b.z))
    assert a.z.shape == (len(a.ids), model.model.feature_dim) and a.labels.shape == (len(a.ids), 14)
    h = extract_features(model, demo_data / "valid.csv", cache_dir=tmp_path, dtype="float16", show_progress=False)
    assert h.z.dtype == np.float16 and h.path != a.path
    np.testing.assert_allclose(np.asarray(h.z, np.float32), np.asarray(a.z), rtol=2e-3, atol=2e-3)
    # the features reproduce the model's own logits
    w, bias = head_rows(model.model)
    from cxrkit.data.tables import load_table, resolve_image_paths
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import predict_paths

    paths, _ = resolve_image_paths(load_table(demo_data / "valid.csv"))
    probs, idx, _ = predict_paths(load_predictor(trained_model), paths[:5], show_progress=False)
    np.testing.assert_allclose(1 / (1 + np.exp(-a.logits(w, bias)[:5])), probs, atol=1e-5)
    # other head rows (probe, CFT, calibration change only those): the same features, reused
    model.model.head.bias.data += 1
    model.meta.weights_sha256 = "changed"
    same = extract_features(model, demo_data / "valid.csv", cache_dir=tmp_path, show_progress=False)
    assert same.path == a.path
    # another backbone -> another cache entry
    with torch.no_grad():
        next(model.model.backbone.parameters()).add_(0.01)
    c = extract_features(model, demo_data / "valid.csv", cache_dir=tmp_path, show_progress=False)
    assert c.path != a.path and np.abs(np.asarray(c.z) - np.asarray(a.z)).max() > 0
    # other classes (the cached labels follow the model's class order) -> another entry
    model.meta.classes = list(reversed(model.meta.classes))
    d = extract_features(model, demo_data / "valid.csv", cache_dir=tmp_path, show_progress=False)
    assert d.path not in (a.path, c.path)
    np.testing.assert_array_equal(np.asarray(d.labels)[:, ::-1], np.asarray(c.labels))


def test_holdout_never_splits_a_patient(trained_model, demo_data):
    model = load_model(trained_model)
    valid = extract_features(model, demo_data / "train.csv", show_progress=False)
    keep, held = holdout_split(valid, 0.3, seed=1)
    assert len(keep) + len(held) == len(valid) and not set(keep.groups) & set(held.groups)
    assert 0.2 < len(set(held.groups)) / len(set(valid.groups)) < 0.4


def test_cft_command_writes_model_reports_and_same_architecture(trained_model, demo_data, tmp_path):
    out = tmp_path / "cft"
    r = runner.invoke(app, ["cft", str(trained_model), str(demo_data / "train.csv"), str(demo_data / "valid.csv"),
                            "--out", str(out), "--method", "ga-auc", "--set", "ga.generations=25", "--holdout", "0.4"])
    assert r.exit_code == 0, r.output
    for f in ("model.json", "model.safetensors", "cft/report.csv", "cft/report.json", "cft/gains.png",
              "cft/curves.png", "cft/summary.json"):
        assert (out / f).is_file(), f
    meta = json.loads((out / "model.json").read_text())
    assert meta["cft"]["config"]["method"] == "ga-auc" and len(meta["cft"]["categories"]) == 14
    assert meta["metrics"]["cft"]["valid_after"]["mAUC"] >= meta["metrics"]["cft"]["valid_before"]["mAUC"]
    before, after = load_file(str(trained_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {c["name"] for c in meta["cft"]["categories"] if not c["chosen"].startswith("original")}
    rows_changed = {meta["classes"][i] for i in range(14)
                    if not np.array_equal(before["head.weight"][i].numpy(), after["head.weight"][i].numpy())}
    assert rows_changed == changed
    for k in before:
        if not k.startswith("head."):
            assert np.array_equal(before[k].numpy(), after[k].numpy()), k  # backbone untouched
    rep = json.loads((out / "cft" / "report.json").read_text())
    for c in rep["categories"]:
        assert c["val_after"] >= c["val_before"] or np.isnan(c["val_before"])


def test_shards_and_workers_give_the_same_model(trained_model, demo_data, tmp_path):
    common = [str(trained_model), str(demo_data / "train.csv"), str(demo_data / "valid.csv"), "--method", "bp-asl",
              "--set", "bp.epochs=15", "--set", "bp.lr=0.01"]
    assert runner.invoke(app, ["cft", *common, "--out", str(tmp_path / "one")]).exit_code == 0
    r = runner.invoke(app, ["cft", *common, "--out", str(tmp_path / "two"), "--workers", "2"])
    assert r.exit_code == 0, r.output
    for i in range(2):
        r = runner.invoke(app, ["cft", *common, "--out", str(tmp_path / f"part{i}"), "--shard", f"{i}/2"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cft-merge", str(trained_model), str(tmp_path / "part0"), str(tmp_path / "part1"),
                            "--valid", str(demo_data / "valid.csv"), "--out", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    for other in ("two", "merged"):
        o = load_file(str(tmp_path / other / "model.safetensors"))
        for k in ("head.weight", "head.bias"):
            np.testing.assert_array_equal(one[k].numpy(), o[k].numpy())


def test_categories_with_too_few_validation_labels_keep_their_row(trained_model, demo_data):
    model, train, valid, w, b = _demo_features(trained_model, demo_data)
    c = list(model.classes).index("Cardiomegaly")
    n_pos = int((valid.labels[:, c] == 1).sum())
    cfg = CFTConfig(method="ga-auc", ga={"generations": 10}, min_val_positives=n_pos + 1).validate()
    r = fit_category(c, "Cardiomegaly", train, valid, None, w[c], float(b[c]), cfg)
    assert r.chosen.startswith("original") and not r.candidates and np.array_equal(r.w, w[c])


def test_cft_bad_options(trained_model, demo_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown CFT method"):
        CFTConfig(method="magic").validate()
    with pytest.raises(ConfigError, match="ignore, ones or zeros"):
        CFTConfig(policies=["ones-lsr"]).validate()
    r = subprocess.run([sys.executable, "-m", "cxrkit.cli", "cft", str(trained_model), str(demo_data / "train.csv"),
                        str(demo_data / "valid.csv"), "--out", str(tmp_path / "x"), "--shard", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--shard" in r.stderr and "Traceback" not in r.stderr


def test_coco_preset_draws_both_parents_of_every_child_by_roulette():
    import types

    from cxrkit.cft.ga import GA_PRESETS, _biased_uniform, roulette_pairs

    assert GA_PRESETS["coco"].pairing == "roulette"
    rng = np.random.default_rng(0)
    fit = np.array([0.0, 1.0, 3.0, 6.0])
    idx = roulette_pairs(fit, 20000, rng)
    freq = np.bincount(idx.ravel(), minlength=4) / idx.size
    np.testing.assert_allclose(freq, fit / fit.sum(), atol=0.01)
    # the two parents are independent draws: pairs (k, k + 1) of the selected parents no longer
    assert np.mean(idx[:, 0] == idx[:, 1]) == pytest.approx((fit / fit.sum()) @ (fit / fit.sum()), abs=0.01)
    pop = np.arange(4, dtype=float)[:, None] * np.ones((4, 6))
    ga = types.SimpleNamespace(population=pop, last_generation_fitness=np.array([0.0, 0.0, 0.0, 1.0]))
    kids = _biased_uniform(np.random.default_rng(1), 0.2, "roulette")(pop[:2], (10, 6), ga)
    assert (kids == 3.0).all()  # only individual 3 has fitness: it is both parents of every child
    kids = _biased_uniform(np.random.default_rng(1), 0.2, "fixed")(pop[:2], (10, 6), ga)
    assert set(np.unique(kids)) <= {0.0, 1.0}  # the old pairing mates the selected parents only


def test_pesg_follows_libauc_update_rule():
    """Two steps of cxrkit's PESG (variant libauc) against the rule written out by hand:
    clipped gradient + epoch_decay (v - v_ref) + weight_decay v, LibAUC's momentum buffer,
    closed-form dual step on alpha."""
    import torch

    from cxrkit.cft.bp import PESG
    from cxrkit.losses import build_loss

    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (torch.rand(64) < 0.3).float()
    w = torch.randn(5, requires_grad=True)
    loss = build_loss("aucm", num_classes=1, margin=1.0)
    opt = PESG([w], loss, lr=0.1, epoch_decay=2e-3, weight_decay=1e-5, variant="libauc", momentum=0.9,
               clip_value=0.05, seed=3)
    gen = torch.Generator().manual_seed(3)
    refs = [torch.randn(p.shape, generator=gen) * 0.01 for p in (w, loss.a, loss.b)]
    v = [w.detach().clone(), loss.a.detach().clone(), loss.b.detach().clone()]
    alpha = loss.alpha.detach().clone()
    bufs = [None, None, None]
    for _ in range(2):
        opt.zero_grad()
        out = loss((x @ w)[:, None], y[:, None])
        out.backward()
        grads = [w.grad.clone(), loss.a.grad.clone(), loss.b.grad.clone()]
        opt.step()
        for i in range(3):
            d = grads[i].clamp(-0.05, 0.05) + 2e-3 * (v[i] - refs[i]) + 1e-5 * v[i]
            bufs[i] = d if bufs[i] is None else bufs[i] * 0.1 + d * 0.9
            v[i] = v[i] - 0.1 * bufs[i]
        alpha = (alpha + 0.1 * (2 * (1.0 + v[2] - v[1]) - 2 * alpha)).clamp(0, 999)
        for got, want in zip((w, loss.a, loss.b), v):
            torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(loss.alpha.detach(), alpha, rtol=1e-6, atol=1e-7)


def test_cft_bp_batched_over_categories_equals_one_at_a_time(trained_model, demo_data, monkeypatch):
    """run_categories fits bp-asl for the categories that know most rows in one pass; the
    rows equal those fitted one category at a time to 1e-6, and shards would get the same
    since each category's result depends only on its own labels."""
    from cxrkit.cft import runner as cft_runner

    model, train, valid, w, b = _demo_features(trained_model, demo_data)
    cfg = CFTConfig(method="bp-asl", bp={"epochs": 40, "lr": 0.01}, min_val_positives=1).validate()
    batched = cft_runner.run_categories(train, valid, None, w, b, cfg, show_progress=False)
    pre = cft_runner.batched_bp(train, valid, list(range(len(model.classes))), w, b, cfg)
    assert len(pre) >= 2
    one = cft_runner.batched_bp(train, valid, [next(iter(pre))], w, b, cfg)  # alone in the pass: same row
    c0 = next(iter(pre))
    np.testing.assert_array_equal(one[c0][("bp-asl", "ignore")].w, pre[c0][("bp-asl", "ignore")].w)
    monkeypatch.setattr(cft_runner, "BATCH_MIN_SHARE", 1.01)  # nobody batched
    assert cft_runner.batched_bp(train, valid, list(range(len(model.classes))), w, b, cfg) == {}
    single = cft_runner.run_categories(train, valid, None, w, b, cfg, show_progress=False)
    assert [r.chosen for r in batched] == [r.chosen for r in single]
    changed = 0
    for rb, rs in zip(batched, single):
        np.testing.assert_allclose(rb.w, rs.w, atol=1e-6, rtol=0)
        assert rb.b == pytest.approx(rs.b, abs=1e-6)
        assert [c["best_step"] for c in rb.candidates] == [c["best_step"] for c in rs.candidates]
        changed += rb.chosen != "original"
    assert changed >= 1


def test_cft_ga_side_by_side_in_run_categories_equals_one_at_a_time(monkeypatch):
    """A fully labelled table (every category knows the same rows): run_categories runs the
    categories' GAs side by side with one product, and each row is bitwise the one-at-a-time row."""
    from cxrkit.cft import runner as cft_runner
    from cxrkit.cft.features import FeatureSet

    rng = np.random.default_rng(2)
    n, z, k = 900, 16, 3
    wt = rng.standard_normal((k, z))

    def split(m):
        x = rng.standard_normal((m, z)).astype(np.float32)
        return FeatureSet(x, (x @ wt.T + rng.standard_normal((m, k)) * 2 > 0.3).astype(float),
                          [str(i) for i in range(m)], [f"c{i}" for i in range(k)], {})

    train, valid = split(n), split(300)
    w = (wt * 0.1 + rng.standard_normal((k, z)) * 0.3).astype(np.float32)
    b = np.zeros(k, np.float32)
    cfg = CFTConfig(method="ga-auc", ga={"generations": 20}, min_val_positives=1).validate()
    pre = cft_runner.batched_ga(train, valid, list(range(k)), w, b, cfg)
    assert sorted(pre) == list(range(k))
    together = cft_runner.run_categories(train, valid, None, w, b, cfg, show_progress=False)
    monkeypatch.setattr(cft_runner, "batched_ga", lambda *a, **kw: {})
    alone = cft_runner.run_categories(train, valid, None, w, b, cfg, show_progress=False)
    for rt, ra in zip(together, alone):
        np.testing.assert_array_equal(rt.w, ra.w)
        assert rt.chosen == ra.chosen and rt.val_after == ra.val_after
    assert any(r.chosen != "original" for r in together)
