import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import shared, tiny_config
from cxrkit.cli import app
from cxrkit.data.partial import partial_mask, simulate_partial
from cxrkit.data.tables import load_table
from cxrkit.errors import ConfigError
from cxrkit.losses import build_loss
from cxrkit.train.partial import build_strategy


def test_simulated_partial_labels_keep_the_proportion_per_image():
    labels = (np.random.default_rng(0).random((50, 80)) < 0.1).astype(np.float32)
    for known in (0.1, 0.5, 0.9):
        p = simulate_partial(labels, known, seed=3)
        kept = (~np.isnan(p)).sum(1)
        assert (kept == round(known * 80)).all()
        np.testing.assert_array_equal(p[~np.isnan(p)], labels[~np.isnan(p)])
    a, b, c = partial_mask(10, 80, 0.1, 1), partial_mask(10, 80, 0.1, 1), partial_mask(10, 80, 0.1, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert partial_mask(3, 5, 0.01, 0).sum(1).tolist() == [1, 1, 1]  # at least one label per image
    with pytest.raises(ConfigError):
        partial_mask(3, 5, 0.0)


def test_data_partial_command_writes_a_portable_copy(tmp_path):
    src = shared("coco_tiny", "annotations", "instances_train2017.json")
    r = CliRunner().invoke(app, ["data", "partial", str(src), "--known", "0.5", "--seed", "4", "--out",
                                 str(tmp_path / "sub" / "p.csv")])
    assert r.exit_code == 0, r.output
    t = load_table(tmp_path / "sub" / "p.csv")
    full = load_table(src)
    assert t.classes == full.classes and list(t.ids) == list(full.ids)
    assert ((~np.isnan(t.labels)).sum(1) == 40).all()
    from cxrkit.data.tables import resolve_image_paths

    assert resolve_image_paths(t)[1].all()  # image paths resolve from the copy's folder


def _elem():
    return build_loss("bce", reduction="none")


def test_ignore_is_partial_bce():
    s = build_strategy({"strategy": "ignore"})
    logits = torch.zeros(2, 10)
    y = torch.full((2, 10), float("nan"))
    y[0, :1] = 1.0  # 10 % known -> g = 5
    y[1, :] = 0.0  # 100 % known -> g = 1
    loss = s.loss(_elem(), logits, y, torch.isnan(y), 0)
    expected = ((5.0 * math.log(2) * 1 / 10) + (1.0 * math.log(2) * 10 / 10)) / 2
    assert abs(loss.item() - expected) < 1e-6
    plain = build_strategy({"strategy": "ignore", "params": {"normalize": False}})
    assert abs(plain.loss(_elem(), logits, y, torch.isnan(y), 0).item() - math.log(2)) < 1e-6


def test_assume_negative_targets():
    s = build_strategy({"strategy": "an"})
    base = np.array([[1, np.nan, 0]], dtype=np.float32)
    assert s.targets(base, 0).tolist() == [[1, 0, 0]]


def test_llr_rejects_the_largest_loss_negatives_at_the_stated_rate():
    s = build_strategy({"strategy": "ll-r", "params": {"delta_rel": 10}})  # 10 % more each epoch
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=g) * 3
    raw = torch.full((8, 10), float("nan"))
    raw[:, :3] = 1.0  # known positives
    unknown = torch.isnan(raw)
    y = torch.from_numpy(s.targets(raw.numpy(), 0))
    per = _elem()(logits, y)
    assert abs(s.loss(_elem(), logits, y, unknown, 0).item() - per.mean().item()) < 1e-6  # epoch 0: nothing
    assert s.last_rejected == 0
    loss = s.loss(_elem(), logits, y, unknown, 2)  # 20 % of 80 labels = 16 rejected
    assert s.last_rejected == 16
    cand = per[unknown]
    kept = torch.sort(cand).values[:-16]
    expected = (per[~unknown].sum() + kept.sum()) / (80 - 16)
    assert abs(loss.item() - expected.item()) < 1e-5
    s.loss(_elem(), logits, y, unknown, 50)  # never more than the unknown labels
    assert s.last_rejected == int(unknown.sum())


def test_selective_ignores_frequent_classes_and_likely_positives():
    s = build_strategy({"strategy": "selective", "params": {"k": 1, "eta": 0.3, "gamma_unann": 4}})
    train = np.array([[1, 0, 0], [1, 0, 1], [1, np.nan, 0], [np.nan, 0, 0]], dtype=np.float32)
    s.prepare(train)
    assert s.ignored.tolist() == [True, False, False]  # class 0 has the highest prior
    logits = torch.tensor([[0.0, -3.0, 2.0]])
    y = torch.full((1, 3), float("nan"))
    loss = s.loss(_elem(), logits, y, torch.isnan(y), 0)
    p1 = torch.sigmoid(torch.tensor(-3.0))  # only class 1: not frequent, p < eta -> negative with p^4 focusing
    assert abs(loss.item() - (-(p1 ** 4) * torch.log(1 - p1)).item()) < 1e-6


def test_curriculum_labeling_adds_pseudo_labels():
    for name, neg in (("cl-score", True), ("cl-score+", False)):
        s = build_strategy({"strategy": name, "params": {"theta": 2.0}})
        raw = np.array([[1, np.nan, np.nan, np.nan]], dtype=np.float32)
        s.prepare(raw)
        info = s.update(np.array([[5.0, 3.0, -3.0, 0.5]]), 0)
        t = s.targets(raw, 1)
        assert t[0, 0] == 1 and t[0, 1] == 1 and np.isnan(t[0, 3])
        assert (t[0, 2] == 0) if neg else np.isnan(t[0, 2])
        assert info["pseudo_positive"] == 2  # the known label is not overwritten... but counted as free
        s2 = build_strategy({"strategy": name})
        s2.prepare(raw)
        s2.load_state(s.state())
        np.testing.assert_array_equal(np.nan_to_num(s2.targets(raw, 2), nan=9), np.nan_to_num(t, nan=9))


def test_strategy_errors():
    with pytest.raises(ConfigError, match="unknown partial-label strategy"):
        build_strategy({"strategy": "magic"})
    with pytest.raises(ConfigError, match="ll-r"):
        build_strategy({"strategy": "ll-r", "params": {"delta": 1}})


COCO_TRAIN = ("coco_tiny", "annotations", "instances_train2017.json")
COCO_VAL = ("coco_tiny", "annotations", "instances_val2017.json")


@pytest.mark.parametrize("strategy", ["ignore", "an", "ll-r", "selective", "cl-score", "cl-score+"])
def test_each_strategy_trains_on_coco_tiny_and_the_demo_data(strategy, demo_data, tmp_path):
    from cxrkit.train.trainer import fit

    coco = {"data.train.table": str(shared(*COCO_TRAIN)), "data.valid.table": str(shared(*COCO_VAL)),
            "label_space": "coco", "data.partial_known": 0.5, "preprocessing.colour": "rgb",
            "preprocessing.channels": 3, "model.in_chans": 3, "partial": {"strategy": strategy},
            "train.epochs": 1, "train.batch_size": 16}
    res = fit(tiny_config(demo_data, **coco), tmp_path / "coco", show_progress=False)
    assert res.completed and (tmp_path / "coco" / "partial_train.csv").is_file()
    t = load_table(tmp_path / "coco" / "partial_train.csv")
    assert ((~np.isnan(t.labels)).sum(1) == 40).all()
    demo = {"partial": {"strategy": strategy}, "train.epochs": 1, "data.label_policy.unknown": "ignore"}
    res = fit(tiny_config(demo_data, **demo), tmp_path / "demo", show_progress=False)
    assert res.completed and all(np.isfinite(h["train_loss"]) for h in res.history)
    if strategy.startswith("cl-"):
        assert "pseudo_total" in res.history[-1]


def test_evaluate_reports_coco_and_open_images_metrics(demo_data, tmp_path):
    """cxrkit evaluate prints CP/CR/CF1/OP/OR/OF1 and the groups G1..G5, and saves them."""
    import json

    from cxrkit.train.trainer import fit

    coco = {"data.train.table": str(shared(*COCO_TRAIN)), "data.valid.table": str(shared(*COCO_VAL)),
            "label_space": "coco", "data.partial_known": 0.1, "preprocessing.colour": "rgb",
            "preprocessing.channels": 3, "model.in_chans": 3, "partial": {"strategy": "ll-r"},
            "train.epochs": 1, "train.batch_size": 16}
    fit(tiny_config(demo_data, **coco), tmp_path / "run", show_progress=False)
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "model"), str(shared(*COCO_VAL)),
                                 "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    for key in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert key in r.output
    e = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= e["OF1"] <= 1 and 0 <= e["CP"] <= 1 and f"OF1 {e['OF1']:.4f}" in r.output
    # COCO's annotations are exhaustive: G1..G5 by known labels mean nothing there, and say so
    assert not any(k.startswith("G") for k in e["groups"]) and "fully labelled" in r.output
    # on the partially labelled training table they are defined and printed
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "model"), str(tmp_path / "run" / "partial_train.csv"),
                                 "--json", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    p = json.loads((tmp_path / "p.json").read_text())
    assert set(p["groups"]) >= {"G1", "G2", "G3", "G4", "G5"} and p["groups"]["G1"] is not None
    out = " ".join(r.output.split())
    assert f"G1: mAP {p['groups']['G1']['mAP']:.4f}" in out and "groups by known labels, G1 fewest" in out
