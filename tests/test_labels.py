import numpy as np
import pytest

from cxrkit.errors import ConfigError
from cxrkit.labels import (
    COCO_80, CXR_LT_26, NIH_14, LabelPolicy, UncertaintyPolicy, UnknownPolicy,
    apply_uncertainty, check_encoding, frequency_groups, get_label_space, head_medium_tail,
)

NAN = np.nan
LABELS = np.array([[1, 0, -1, NAN], [-1, -1, 0, 1], [NAN, 1, -1, -1]], dtype=np.float32)


def test_label_spaces_have_the_published_sizes():
    assert len(get_label_space("chexpert")) == 14
    assert get_label_space("chexpert").subset("competition") == (
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    assert len(get_label_space("nih")) == 14 and "Pleural_Thickening" in NIH_14
    assert len(get_label_space("cxr-lt")) == 26 and CXR_LT_26[0] == "Atelectasis"
    assert len(get_label_space("coco")) == 80 and COCO_80[0] == "person" and COCO_80[-1] == "toothbrush"
    assert get_label_space("a, b ,c").classes == ("a", "b", "c")
    assert get_label_space(["x", "y"]).classes == ("x", "y")


def test_label_space_from_file_and_errors(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("cat\ndog\n\n")
    assert get_label_space(str(f)).classes == ("cat", "dog")
    with pytest.raises(ConfigError, match="unknown label space"):
        get_label_space("nonsense")
    with pytest.raises(ConfigError, match="repeats"):
        get_label_space(["a", "a"])
    with pytest.raises(ConfigError, match="not in label space"):
        get_label_space("nih").index(["Effusion", "Pleural Effusion"])


@pytest.mark.parametrize("name,expected", [("ignore", NAN), ("ones", 1.0), ("zeros", 0.0)])
def test_simple_uncertainty_policies(name, expected):
    out = apply_uncertainty(LABELS, name)
    unc = LABELS == -1
    if np.isnan(expected):
        assert np.isnan(out[unc]).all()
    else:
        assert (out[unc] == expected).all()
    # everything else untouched, input not modified
    np.testing.assert_array_equal(out[~unc], LABELS[~unc])
    assert (LABELS == -1).sum() == 5


@pytest.mark.parametrize("name,lo,hi", [("ones-lsr", 0.55, 0.85), ("zeros-lsr", 0.0, 0.30)])
def test_lsr_policies_draw_in_range_and_redraw(name, lo, hi):
    big = np.full((2000, 3), -1.0, dtype=np.float32)
    rng = np.random.default_rng(0)
    a = apply_uncertainty(big, name, rng)
    b = apply_uncertainty(big, name, rng)
    assert a.min() >= lo and a.max() <= hi
    assert abs(a.mean() - (lo + hi) / 2) < 0.01  # uniform
    assert not np.array_equal(a, b)  # redrawn on every call (per epoch)


def test_policy_aliases():
    assert UncertaintyPolicy.parse("U-Ones+LSR") is UncertaintyPolicy.ONES_LSR
    assert UncertaintyPolicy.parse("U-Ignore") is UncertaintyPolicy.IGNORE
    assert UncertaintyPolicy.parse("zeros_lsr") is UncertaintyPolicy.ZEROS_LSR
    assert UnknownPolicy.parse("AN") is UnknownPolicy.NEGATIVE
    with pytest.raises(ConfigError):
        UncertaintyPolicy.parse("maybe")


def test_per_class_policy_and_assume_negative():
    classes = ["Atelectasis", "Edema", "Cardiomegaly", "Pneumonia"]
    pol = LabelPolicy(uncertain="zeros", per_class={"Edema": "ones", "Atelectasis": "ones"}, unknown="negative")
    t = pol.targets(LABELS, classes)
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 1], [0, 1, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(t, expected)
    t2 = LabelPolicy(uncertain="ignore", unknown="ignore").targets(LABELS, classes)
    assert np.isnan(t2).sum() == np.isnan(LABELS).sum() + (LABELS == -1).sum()
    with pytest.raises(ConfigError, match="not in the label space"):
        LabelPolicy(per_class={"Nope": "ones"}).targets(LABELS, classes)
    assert LabelPolicy.from_dict(pol.to_dict()) == pol


def test_check_encoding():
    check_encoding(LABELS)
    with pytest.raises(ValueError, match="2.0"):
        check_encoding(np.array([[1, 2.0]]))


def test_groups():
    counts = [100, 5, 50, 1, 1000, 20]
    g = frequency_groups(counts, 3)
    assert g.tolist() == [2, 0, 1, 0, 2, 1]
    assert head_medium_tail(counts) == ["head", "tail", "medium", "tail", "head", "medium"]
    assert head_medium_tail(counts, head_min=100, tail_max=5) == ["head", "tail", "medium", "tail", "head", "medium"]
    g5 = frequency_groups(np.arange(10), 5)
    assert g5.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
