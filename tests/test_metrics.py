import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrkit import metrics as M
from cxrkit.labels import frequency_groups, head_medium_tail
from cxrkit.metrics import (
    MetricInputError, UndefinedMetricWarning, average_precision, best_thresholds, confusion_at, f1_at,
    group_means, mean_defined, multilabel_prf, roc_auc, summarize,
)

NAN = np.nan


def _random_case(rng, n, c, decimals=1, p_pos=0.3, p_nan=0.15, dtype=np.float64):
    t = (rng.random((n, c)) < p_pos).astype(np.float64)
    t[rng.random((n, c)) < p_nan] = NAN
    s = np.round(rng.normal(size=(n, c)), decimals).astype(dtype)
    return t, s


def _sk_per_class(fn, t, s):
    t = t.reshape(len(t), -1)
    s = s.reshape(len(s), -1)
    out = []
    for j in range(t.shape[1]):
        k = ~np.isnan(t[:, j])
        y = t[k, j]
        if fn is roc_auc_score and (y.min(initial=1) == 1 or y.max(initial=0) == 0):
            out.append(NAN)
        elif fn is average_precision_score and not (y == 1).any():
            out.append(NAN)
        else:
            out.append(fn(y, s[k, j]))
    return np.array(out)


def _assert_same(a, b):
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------
# ROC AUC and AP against scikit-learn
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_auc_ap_match_sklearn_with_ties_and_unknowns(seed, dtype):
    rng = np.random.default_rng(seed)
    t, s = _random_case(rng, 200, 7, dtype=dtype)
    t[:, 2] = NAN  # all unknown
    t[:, 4] = np.where(np.isnan(t[:, 4]), NAN, 1.0)  # only positives: AUC NaN, AP 1
    t[:, 5] = np.where(np.isnan(t[:, 5]), NAN, 0.0)  # only negatives: both NaN
    auc, ap = roc_auc(t, s), average_precision(t, s)
    _assert_same(auc, _sk_per_class(roc_auc_score, t, s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_same(ap, _sk_per_class(average_precision_score, t, s))
    assert np.isnan(auc[[2, 4, 5]]).all() and np.isnan(ap[[2, 5]]).all() and ap[4] == pytest.approx(1.0)
    assert np.isfinite(auc[[0, 1, 3, 6]]).all()


@pytest.mark.parametrize("decimals", [0, 1, 3, 8])
def test_auc_ap_match_sklearn_various_tie_densities(decimals):
    rng = np.random.default_rng(10 + decimals)
    t, s = _random_case(rng, 300, 5, decimals=decimals, p_pos=0.1)
    _assert_same(roc_auc(t, s), _sk_per_class(roc_auc_score, t, s))
    _assert_same(average_precision(t, s), _sk_per_class(average_precision_score, t, s))


def test_float64_scores_that_are_not_float32_values():
    rng = np.random.default_rng(3)
    t, _ = _random_case(rng, 150, 4)
    s = rng.random((150, 4))  # genuine float64 -> argsort path
    s[:20] = s[20:40]  # some exact ties
    _assert_same(roc_auc(t, s), _sk_per_class(roc_auc_score, t, s))
    _assert_same(average_precision(t, s), _sk_per_class(average_precision_score, t, s))


def test_one_dimensional_input_and_logits():
    rng = np.random.default_rng(4)
    t = (rng.random(120) < 0.4).astype(float)
    t[::9] = NAN
    s = np.round(rng.normal(scale=5, size=120), 0)  # logits, negative zero, many ties
    s[s == 0] = -0.0
    auc, ap = roc_auc(t, s), average_precision(t, s)
    assert auc.shape == (1,) and ap.shape == (1,)
    _assert_same(auc, _sk_per_class(roc_auc_score, t, s))
    _assert_same(ap, _sk_per_class(average_precision_score, t, s))


def test_integer_and_bool_inputs():
    t = np.array([1, 0, 1, 0, 1], dtype=np.int64)
    s = np.array([3, 1, 2, 2, 0], dtype=np.int64)
    assert roc_auc(t, s)[0] == pytest.approx(roc_auc_score(t, s), abs=1e-12)
    assert roc_auc(t.astype(bool), s.astype(np.float16))[0] == pytest.approx(roc_auc_score(t, s), abs=1e-12)


def test_float32_fast_path_equals_generic_path(monkeypatch):
    rng = np.random.default_rng(6)
    t, s = _random_case(rng, 250, 6, decimals=1, dtype=np.float32)
    s[s == 0] = -0.0
    fast = roc_auc(t, s), average_precision(t, s), best_thresholds(t, s), best_thresholds(t, s, "youden")
    monkeypatch.setattr(M, "_FAST_FLOAT32", False)
    _assert_same(roc_auc(t, s), fast[0])
    _assert_same(average_precision(t, s), fast[1])
    _assert_same(best_thresholds(t, s), fast[2])
    _assert_same(best_thresholds(t, s, "youden"), fast[3])
    _assert_same(fast[0], _sk_per_class(roc_auc_score, t, s))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("shape", [(40,), (40, 1), (40, 3)])
def test_inputs_are_not_modified(monkeypatch, fast, shape):
    monkeypatch.setattr(M, "_FAST_FLOAT32", fast)
    rng = np.random.default_rng(11)
    t = (rng.random(shape) < 0.5).astype(np.float32)
    t[rng.random(shape) < 0.2] = NAN
    s = rng.normal(size=shape).astype(np.float32)
    s.flat[0] = -0.0
    t0, s0 = t.copy(), s.copy()
    for fn in (roc_auc, average_precision, best_thresholds, lambda a, b: summarize(a, b, ["x"] * (a.size // 40))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            fn(t, s)
        np.testing.assert_array_equal(t, t0)
        assert np.array_equal(s.view(np.int32), s0.view(np.int32))  # bit-exact, -0.0 kept


def test_chunking_gives_same_result(monkeypatch):
    rng = np.random.default_rng(5)
    t, s = _random_case(rng, 97, 23, dtype=np.float32)
    ref_auc, ref_ap, ref_thr = roc_auc(t, s), average_precision(t, s), best_thresholds(t, s)
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 97 * 3)  # 3 classes per chunk, ragged last chunk
    monkeypatch.setattr(M, "_CHUNK_MAX_CLASSES", 3)
    _assert_same(roc_auc(t, s), ref_auc)
    _assert_same(average_precision(t, s), ref_ap)
    _assert_same(best_thresholds(t, s), ref_thr)
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 7)  # row chunks of confusion_at
    cm = confusion_at(t, s, 0.1)
    monkeypatch.undo()
    for k, v in confusion_at(t, s, 0.1).items():
        assert np.array_equal(cm[k], v)


def test_hand_computed_examples():
    t = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.4, 0.4])
    # pairs: (0.9 vs 0.1) 1, (0.9 vs 0.4) 1, (0.4 vs 0.1) 1, (0.4 vs 0.4) 1/2 -> 3.5 / 4
    assert roc_auc(t, s)[0] == pytest.approx(0.875)
    # thresholds 0.9: P=1, R=1/2; 0.4: P=2/3, R=1 -> AP = 0.5 * 1 + 0.5 * 2/3
    assert average_precision(t, s)[0] == pytest.approx(0.5 + 1 / 3)
    # perfect and reversed rankings, all tied
    assert roc_auc([1, 1, 0], [3, 2, 1])[0] == 1.0
    assert roc_auc([1, 1, 0], [1, 2, 3])[0] == 0.0
    assert roc_auc([1, 0, 0], [5, 5, 5])[0] == 0.5
    assert average_precision([1, 0, 0], [5, 5, 5])[0] == pytest.approx(1 / 3)
    # unknown entries are ignored for their class only
    t2 = np.array([[1, NAN], [0, 1], [NAN, 0], [1, 1]])
    s2 = np.array([[0.2, 0.9], [0.5, 0.1], [0.9, 0.3], [0.8, 0.8]])
    assert roc_auc(t2, s2).tolist() == [0.5, 0.5]


def test_empty_and_degenerate_shapes():
    assert roc_auc(np.zeros((0, 3)), np.zeros((0, 3))).shape == (3,)
    assert np.isnan(roc_auc(np.zeros((0, 3)), np.zeros((0, 3)))).all()
    assert roc_auc(np.zeros((4, 0)), np.zeros((4, 0))).shape == (0,)
    assert np.isnan(best_thresholds([1.0], [0.3])).all()


# ---------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1.0, 0.5, 2.0])
@pytest.mark.parametrize(
    "fn", [roc_auc, average_precision, best_thresholds, lambda t, s: confusion_at(t, s, 0.5),
           lambda t, s: multilabel_prf(t, s), lambda t, s: summarize(t, s, ["a", "b"])],
)
def test_invalid_targets_raise(fn, bad):
    t = np.array([[1, 0], [0, 1], [bad, 0]])
    with pytest.raises(ValueError, match="1 \\(positive\\), 0 \\(negative\\) or NaN"):
        fn(t, np.zeros((3, 2)))


def test_bad_shapes_and_scores_raise():
    with pytest.raises(MetricInputError, match="same shape"):
        roc_auc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(MetricInputError, match="finite"):
        roc_auc([1, 0], [0.5, np.nan])
    with pytest.raises(MetricInputError, match="finite"):
        confusion_at([1, 0], [0.5, np.inf], 0.5)
    with pytest.raises(MetricInputError, match="one value per class"):
        confusion_at(np.zeros((3, 2)), np.zeros((3, 2)), [0.5, 0.5, 0.5])
    with pytest.raises(MetricInputError, match="NaN"):
        f1_at(np.zeros((3, 2)), np.zeros((3, 2)), [0.5, NAN])
    with pytest.raises(MetricInputError, match="method"):
        best_thresholds([1, 0], [1, 0], method="accuracy")


# ---------------------------------------------------------------------------------------
# Thresholds and threshold metrics
# ---------------------------------------------------------------------------------------


def _brute(t, s, method):
    """Best value and the highest threshold reaching it, over the distinct known scores."""
    k = ~np.isnan(t)
    y, sc = t[k], s[k]
    P, N = (y == 1).sum(), (y == 0).sum()
    if P == 0 or N == 0:
        return NAN, NAN
    best, best_t = -np.inf, NAN
    for thr in np.unique(sc):  # ascending: ">=" keeps the highest among ties
        pred = sc >= thr
        tp, fp = (pred & (y == 1)).sum(), (pred & (y == 0)).sum()
        val = 2 * tp / (tp + fp + P) if method == "f1" else tp / P - fp / N
        if val >= best - 1e-12:
            best, best_t = max(val, best), thr
    return best, best_t


@pytest.mark.parametrize("method", ["f1", "youden"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_best_thresholds_match_brute_force(method, dtype):
    rng = np.random.default_rng(7)
    t, s = _random_case(rng, 60, 9, decimals=1, dtype=dtype)
    t[:, 3] = NAN
    s = s.astype(dtype)
    thr = best_thresholds(t, s, method=method)
    assert thr.shape == (9,) and np.isnan(thr[3])
    for j in range(9):
        best, best_t = _brute(t[:, j], s[:, j], method)
        if np.isnan(best):
            assert np.isnan(thr[j])
            continue
        assert thr[j] == best_t  # same tie-breaking: the highest threshold among the best
        cm = confusion_at(t[:, j], s[:, j], thr[j])
        tp, fp, fn, tn = (int(cm[k][0]) for k in ("tp", "fp", "fn", "tn"))
        val = 2 * tp / (2 * tp + fp + fn) if method == "f1" else tp / (tp + fn) - fp / (fp + tn)
        assert val == pytest.approx(best, abs=1e-12)
    if method == "f1":
        f1 = f1_at(t, s, np.where(np.isnan(thr), 0.5, thr))
        for j in range(9):
            if not np.isnan(thr[j]):
                assert f1[j] == pytest.approx(_brute(t[:, j], s[:, j], "f1")[0], abs=1e-12)


def test_best_threshold_tie_rule_prefers_higher_threshold():
    # thresholds 0.8 and 0.2 both give Youden 0.5 / F1 ties: the higher one is returned
    t = np.array([1, 0, 1, 0])
    s = np.array([0.8, 0.6, 0.2, 0.1])
    assert best_thresholds(t, s, "youden")[0] == pytest.approx(0.8)
    assert best_thresholds([1, 1, 0], [0.9, 0.9, 0.1])[0] == pytest.approx(0.9)


def test_confusion_and_f1():
    t = np.array([[1, 0], [0, NAN], [1, 1], [0, 0]])
    s = np.array([[0.7, 0.9], [0.5, 0.9], [0.2, 0.5], [0.1, 0.4]])
    cm = confusion_at(t, s, [0.5, 0.5])
    assert cm["tp"].tolist() == [1, 1] and cm["fp"].tolist() == [1, 1]
    assert cm["fn"].tolist() == [1, 0] and cm["tn"].tolist() == [1, 1]
    assert all(v.dtype == np.int64 for v in cm.values())
    np.testing.assert_allclose(f1_at(t, s, 0.5), [0.5, 2 / 3])
    assert np.isnan(f1_at([0, 0, NAN], [0.1, 0.2, 0.9], 0.5)[0])  # nothing to count


def _prf_loop(t, s, thr):
    tps, fps, fns, ps, rs = 0, 0, 0, [], []
    for j in range(t.shape[1]):
        tp = fp = fn = 0
        for i in range(t.shape[0]):
            if np.isnan(t[i, j]):
                continue
            pred = s[i, j] >= thr
            tp += int(pred and t[i, j] == 1)
            fp += int(pred and t[i, j] == 0)
            fn += int((not pred) and t[i, j] == 1)
        ps.append(tp / (tp + fp) if tp + fp else 0.0)
        rs.append(tp / (tp + fn) if tp + fn else 0.0)
        tps, fps, fns = tps + tp, fps + fp, fns + fn
    cp, cr = sum(ps) / len(ps), sum(rs) / len(rs)
    op, or_ = tps / (tps + fps), tps / (tps + fns)
    return {"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr), "OP": op, "OR": or_,
            "OF1": 2 * op * or_ / (op + or_)}


def test_multilabel_prf_matches_loop():
    rng = np.random.default_rng(8)
    t, s = _random_case(rng, 80, 6, decimals=2)
    s = 1 / (1 + np.exp(-s))
    s[:, 1] = 0.0  # a class with nothing predicted positive: precision counts as 0
    t[:, 2] = np.where(np.isnan(t[:, 2]), NAN, 0.0)  # no positive: recall counts as 0
    got, ref = multilabel_prf(t, s, 0.5), _prf_loop(t, s, 0.5)
    assert set(got) == {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k


# ---------------------------------------------------------------------------------------
# Means and the report
# ---------------------------------------------------------------------------------------


def test_mean_defined_warns_naming_skipped_classes():
    with pytest.warns(UndefinedMetricWarning, match=r"AUC undefined .* 2 class\(es\), left out of the mean: Hernia, Fibrosis"):
        m = mean_defined([0.8, NAN, 0.6, NAN], ["Edema", "Hernia", "Mass", "Fibrosis"], "AUC")
    assert m == pytest.approx(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mean_defined([0.5, 0.7], ["a", "b"]) == pytest.approx(0.6)  # no warning
    with pytest.warns(UndefinedMetricWarning, match="all 2 class"):
        assert math.isnan(mean_defined([NAN, NAN], ["a", "b"], "AP"))
    assert issubclass(UndefinedMetricWarning, UserWarning)


def test_mean_defined_warns_once():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mean_defined([NAN] * 50 + [1.0], None, "AP")
    assert len(rec) == 1 and "50 class(es)" in str(rec[0].message) and "and 20 more" in str(rec[0].message)


def test_group_means():
    vals = [0.9, 0.8, NAN, 0.4, 0.6]
    groups = ["tail", "head", "tail", "medium", "head"]
    with pytest.warns(UndefinedMetricWarning, match="c"):
        out = group_means(vals, groups, ["a", "b", "c", "d", "e"])
    assert list(out) == ["head", "medium", "tail"]
    assert out == pytest.approx({"head": 0.7, "medium": 0.4, "tail": 0.9})
    assert list(group_means([1, 2, 3], [2, 0, 2], warn=False)) == ["0", "2"]


def test_summarize_report():
    rng = np.random.default_rng(9)
    names = [f"c{i}" for i in range(8)]
    t, s = _random_case(rng, 150, 8, decimals=2)
    t[:, 7] = np.where(np.isnan(t[:, 7]), NAN, 0.0)  # AUC and AP undefined
    subsets = {"first3": ["c0", "c1", "c2"], "with_undefined": ["c6", "c7"]}
    thr = np.full(8, 0.1)
    thr[3] = NAN  # replaced by 0.5
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rep = summarize(t, s, names, thresholds=thr, subsets=subsets)
    msgs = [str(w.message) for w in rec if issubclass(w.category, UndefinedMetricWarning)]
    assert len(msgs) == len(rec) == 2 and msgs[0].startswith("AUC") and msgs[1].startswith("AP")
    assert all(m.endswith(": c7") for m in msgs)
    json.dumps(rep, allow_nan=False)  # NaN written as None
    assert rep["n_samples"] == 150
    assert {"mAUC", "mAP", "mF1", "CP", "CR", "CF1", "OP", "OR", "OF1", "subsets", "groups", "classes"} <= set(rep)
    assert [c["name"] for c in rep["classes"]] == names
    assert set(rep["classes"][0]) == {"name", "auc", "ap", "f1", "threshold", "n_pos", "n_neg", "n_unknown"}
    assert rep["classes"][7]["auc"] is None and rep["classes"][7]["ap"] is None
    assert rep["classes"][3]["threshold"] == 0.5
    auc, ap = roc_auc(t, s), average_precision(t, s)
    assert rep["mAUC"] == pytest.approx(np.nanmean(auc)) and rep["mAP"] == pytest.approx(np.nanmean(ap))
    assert rep["subsets"]["first3"]["mAUC"] == pytest.approx(auc[:3].mean())
    assert rep["subsets"]["first3"]["mAP"] == pytest.approx(ap[:3].mean())
    assert rep["subsets"]["with_undefined"]["mAUC"] == pytest.approx(auc[6])
    for i, c in enumerate(rep["classes"]):
        assert c["n_pos"] == int((t[:, i] == 1).sum()) and c["n_unknown"] == int(np.isnan(t[:, i]).sum())
    thr_used = np.where(np.isnan(thr), 0.5, thr)
    ref = multilabel_prf(t, s, thr_used)
    assert all(rep[k] == pytest.approx(ref[k]) for k in ref)
    assert rep["mF1"] == pytest.approx(np.nanmean(f1_at(t, s, thr_used)))
    # groups: head/medium/tail by positives, G1..G5 by known labels
    assert set(rep["groups"]) == {"head", "medium", "tail", "G1", "G2", "G3", "G4", "G5"}
    n_pos = (t == 1).sum(0)
    hmt = np.array(head_medium_tail(n_pos))
    assert rep["groups"]["head"]["mAUC"] == pytest.approx(np.nanmean(auc[hmt == "head"]))
    g5 = frequency_groups((~np.isnan(t)).sum(0), 5)
    assert rep["groups"]["G1"]["mAP"] == pytest.approx(np.nanmean(ap[g5 == 0]))
    # explicit group_counts are used for both groupings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        rep2 = summarize(t, s, names, group_counts=np.arange(8)[::-1])
    # 8 classes in 5 groups: sizes 2, 2, 2, 1, 1; G1 = fewest = classes 7, 6
    assert rep2["groups"]["G5"]["mAUC"] == pytest.approx(auc[0])
    assert rep2["groups"]["G1"]["mAUC"] == pytest.approx(auc[6])
    # class 7 has no positives: no head / medium / tail group; the others in terciles
    assert rep2["class_groups"][names[7]] == "undefined"
    assert rep2["groups"]["tail"]["mAP"] == pytest.approx(np.nanmean(ap[[4, 5, 6]]))
    with pytest.raises(MetricInputError, match="not evaluated"):
        summarize(t, s, names, subsets={"x": ["nope"]})


def test_summarize_few_classes_without_warnings():
    t = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    s = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6], [0.3, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = summarize(t, s, ["a", "b"])
    assert rep["mAUC"] == 1.0 and "G1" not in rep["groups"] and "fewer than 5" in rep["groups_note"]
    json.dumps(rep, allow_nan=False)
