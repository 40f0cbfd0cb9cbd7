import csv
import gzip
import json
import time

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from cxrkit.data.tables import (
    detect_format, load_table, normalise_view, read_openimages, resolve_image_paths, summarize,
)
from cxrkit.errors import TableFormatError
from cxrkit.labels import CHEXPERT_14, CXR_LT_26, NIH_14

# Per-class (positive, negative, uncertain, blank) counts of the real CheXpert-v1.0-small train.csv.
CHEXPERT_TRAIN_COUNTS = {
    "No Finding": (22381, 0, 0, 201033),
    "Enlarged Cardiomediastinum": (10798, 21638, 12403, 178575),
    "Cardiomegaly": (27000, 11116, 8087, 177211),
    "Lung Opacity": (105581, 6599, 5598, 105636),
    "Lung Lesion": (9186, 1270, 1488, 211470),
    "Edema": (52246, 20726, 12984, 137458),
    "Consolidation": (14783, 28097, 27742, 152792),
    "Pneumonia": (6039, 2799, 18770, 195806),
    "Atelectasis": (33376, 1328, 33739, 154971),
    "Pneumothorax": (19448, 56341, 3145, 144480),
    "Pleural Effusion": (86187, 35396, 11628, 90203),
    "Pleural Other": (3523, 316, 2653, 216922),
    "Fracture": (9040, 2512, 642, 211220),
    "Support Devices": (116001, 6137, 1079, 100197),
}

# Published NIH ChestX-ray14 image counts per finding (Data_Entry_2017, 112,120 images).
NIH_PUBLISHED = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Effusion": 13317, "Infiltration": 19894, "Mass": 5782,
    "Nodule": 6331, "Pneumonia": 1431, "Pneumothorax": 5302, "Consolidation": 4667, "Edema": 2303,
    "Emphysema": 2516, "Fibrosis": 1686, "Pleural_Thickening": 3385, "Hernia": 227,
}


def test_chexpert_train_loads_fast_with_exact_counts():
    path = shared("chexpert", "train.csv.gz")
    t0 = time.perf_counter()
    t = load_table(path)
    elapsed = time.perf_counter() - t0
    assert t.format == "chexpert" and len(t) == 223_414 and t.classes == CHEXPERT_14
    assert elapsed < 10, f"loading took {elapsed:.1f}s"
    c = t.counts()
    for j, name in enumerate(t.classes):
        assert (c["positive"][j], c["negative"][j], c["uncertain"][j], c["unknown"][j]) == CHEXPERT_TRAIN_COUNTS[name]
    # independent check with the csv module on a few columns
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    for name in ("Edema", "Pleural Other"):
        vals = [r[name] for r in rows]
        assert (vals.count("1.0"), vals.count("0.0"), vals.count("-1.0"), vals.count("")) == CHEXPERT_TRAIN_COUNTS[name]
    # study and view from the path and columns
    assert t.meta["study"].iloc[0] == "CheXpert-v1.0-small/train/patient00001/study1"
    views = t.meta["view"].value_counts().to_dict()
    assert views["LATERAL"] == sum(r["Frontal/Lateral"] == "Lateral" for r in rows)
    assert views["PA"] == sum(r["Frontal/Lateral"] == "Frontal" and r["AP/PA"] == "PA" for r in rows)


def test_chexpert_valid():
    t = load_table(shared("chexpert", "valid.csv"))
    assert len(t) == 234 and t.meta["study"].nunique() == 200
    assert not np.isnan(t.labels).any() and not (t.labels == -1).any()
    assert t.counts()["positive"][t.classes.index("Cardiomegaly")] == 68


def test_nih_table_matches_published_counts():
    t = load_table(shared("nih", "Data_Entry_2017_v2020.csv.gz"))
    assert t.format == "nih" and len(t) == 112_120 and t.classes == NIH_14
    pos = dict(zip(t.classes, t.counts()["positive"].tolist()))
    assert pos == NIH_PUBLISHED
    assert t.extra["no_finding"] == 60_361
    assert not np.isnan(t.labels).any()


def test_nih1000_splits_and_images():
    t = load_table(shared("nih1000", "labels.csv"))
    assert t.format == "nih" and len(t) == 800
    assert len(t.split("train")) == 600 and len(t.split("valid")) == 200
    paths, ok = resolve_image_paths(t)
    assert ok.all() and paths[0].name == t.ids[0]
    with pytest.raises(TableFormatError, match="no rows with split 'test'"):
        t.split("test")


def test_coco_tiny_has_80_classes():
    t = load_table(shared("coco_tiny", "annotations", "instances_train2017.json"))
    assert t.format == "coco" and len(t.classes) == 80 and t.classes[0] == "person"
    assert t.extra.get("label_space") == "coco"
    raw = json.loads(shared("coco_tiny", "annotations", "instances_train2017.json").read_text())
    assert len(t) == len(raw["images"])
    # an image is positive iff it has an instance
    im = raw["images"][0]
    cats = {a["category_id"] for a in raw["annotations"] if a["image_id"] == im["id"]}
    id_to_name = {c["id"]: c["name"] for c in raw["categories"]}
    row = t.labels[list(t.ids).index(im["file_name"])]
    assert {t.classes[j] for j in np.flatnonzero(row == 1)} == {id_to_name[c] for c in cats}
    assert set(np.unique(t.labels)) <= {0.0, 1.0}
    paths, ok = resolve_image_paths(t)
    assert ok.all()


def _write(path, text):
    path.write_text(text)
    return path


def chexpert_csv(rows):
    head = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_14)
    return head + "\n" + "\n".join(rows) + "\n"


def test_chexpert_errors(tmp_path):
    ok_vals = ",".join(["1.0"] + [""] * 13)
    bad_vals = ",".join(["1.0", "2.0"] + [""] * 12)
    f = _write(tmp_path / "bad.csv", chexpert_csv([f"p/patient1/study1/view1_frontal.jpg,F,50,Frontal,AP,{ok_vals}",
                                                   f"p/patient1/study1/view2_lateral.jpg,F,50,Lateral,,{bad_vals}"]))
    with pytest.raises(TableFormatError, match=r"Enlarged Cardiomediastinum.*line 3.*2\.0"):
        load_table(f)
    f = _write(tmp_path / "dup.csv", chexpert_csv([f"p/patient1/study1/view1_frontal.jpg,F,50,Frontal,AP,{ok_vals}"] * 2))
    with pytest.raises(TableFormatError, match="duplicate Path"):
        load_table(f)
    f = _write(tmp_path / "word.csv", chexpert_csv(["p/patient1/study1/view1_frontal.jpg,F,50,Frontal,AP,yes," + ",".join([""] * 13)]))
    with pytest.raises(TableFormatError, match="'yes' is not a number"):
        load_table(f)
    missing = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_14[:-1]) + "\nx,F,1,Frontal,AP," + ",".join([""] * 13)
    with pytest.raises(TableFormatError, match="missing column.*Support Devices"):
        load_table(_write(tmp_path / "miss.csv", missing))
    with pytest.raises(TableFormatError, match="file is empty"):
        load_table(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(TableFormatError, match="file not found"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(TableFormatError, match="unknown table format"):
        load_table(f, format="xml")


def test_nih_unknown_finding(tmp_path):
    f = _write(tmp_path / "n.csv", "Image Index,Finding Labels\na.png,Cardiomegaly|Flu\n")
    with pytest.raises(TableFormatError, match="Flu"):
        load_table(f)


def test_cxrlt_csv(tmp_path):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 2, size=(5, 26))
    df = pd.DataFrame(lab, columns=list(CXR_LT_26))
    df.insert(0, "dicom_id", [f"d{i}" for i in range(5)])
    df["subject_id"] = [1, 1, 2, 3, 4]
    df["study_id"] = [10, 10, 20, 30, 40]
    df["path"] = [f"files/p{i}.jpg" for i in range(5)]
    df.to_csv(tmp_path / "cxrlt.csv", index=False)
    t = load_table(tmp_path / "cxrlt.csv")
    assert t.format == "cxr-lt" and t.classes == CXR_LT_26
    np.testing.assert_array_equal(t.labels, lab)
    assert t.paths[2] == "files/p2.jpg" and t.meta["study"].nunique() == 4
    df.drop(columns=["Tortuous Aorta"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(TableFormatError, match="Tortuous Aorta"):
        load_table(tmp_path / "bad.csv")


def test_openimages_v3(tmp_path):
    _write(tmp_path / "classes-trainable.txt", "/m/01\n/m/02\n/m/03\n")
    _write(tmp_path / "class-descriptions.csv", "/m/01,Cat\n/m/02,Dog\n/m/03,Tree\n/m/99,Other\n")
    _write(tmp_path / "labels.csv", "ImageID,Source,LabelName,Confidence\n"
           "img1,verification,/m/01,1\nimg1,verification,/m/02,0\nimg2,verification,/m/03,1\n"
           "img2,verification,/m/99,1\nimg3,machine,/m/02,0.6\n")
    t = load_table(tmp_path / "labels.csv")
    assert t.format == "openimages" and t.classes == ("Cat", "Dog", "Tree")
    assert list(t.ids) == ["img1", "img2", "img3"]
    exp = np.array([[1, 0, np.nan], [np.nan, np.nan, 1], [np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(np.isnan(t.labels), np.isnan(exp))
    np.testing.assert_array_equal(np.nan_to_num(t.labels.astype(float), nan=7), np.nan_to_num(exp, nan=7))
    assert t.extra["dropped_labels"] == 1
    t2 = read_openimages(tmp_path / "labels.csv", classes=["/m/03"])
    assert t2.classes == ("/m/03",) and t2.counts()["positive"].tolist() == [1]


def test_generic_roundtrip_and_detection(tmp_path):
    t = load_table(shared("chexpert", "valid.csv"))
    sub = t.select(np.arange(10))
    sub.labels[0, 0] = np.nan
    sub.labels[1, 1] = -1
    out = sub.to_csv(tmp_path / "g.csv")
    back = load_table(out)
    assert back.format == "generic" and back.classes == t.classes
    np.testing.assert_array_equal(np.isnan(back.labels), np.isnan(sub.labels))
    np.testing.assert_array_equal(np.nan_to_num(back.labels), np.nan_to_num(sub.labels))
    assert list(back.meta["study"]) == list(sub.meta["study"])
    assert list(back.meta["view"]) == list(sub.meta["view"])
    assert detect_format("x.json") == "coco"
    assert detect_format("x.csv", ["Image Index", "Finding Labels"]) == "nih"
    assert detect_format("x.csv", ["ImageID", "Source", "LabelName", "Confidence"]) == "openimages"
    assert detect_format("x.csv", ["image", "cat", "dog"]) == "generic"


def test_generic_errors(tmp_path):
    with pytest.raises(TableFormatError, match="no id column"):
        load_table(_write(tmp_path / "a.csv", "foo,bar\n1,0\n"))
    with pytest.raises(TableFormatError, match="'dog' line 2.*5.0"):
        load_table(_write(tmp_path / "b.csv", "image,cat,dog\na.png,1,5\n"))


def test_missing_images_are_reported_not_fatal(tmp_path):
    _write(tmp_path / "t.csv", "image,cat\na.png,1\nb.png,0\n")
    (tmp_path / "a.png").write_bytes(b"x")
    t = load_table(tmp_path / "t.csv")
    paths, ok = resolve_image_paths(t)
    assert ok.tolist() == [True, False]


def test_summary_schema():
    s = summarize(load_table(shared("chexpert", "valid.csv")))
    assert s["format"] == "chexpert" and s["n_images"] == 234
    c = s["classes"][2]
    assert set(c) >= {"name", "positive", "negative", "uncertain", "unknown"} and c["name"] == "Cardiomegaly"
    assert {g for g in s["groups"]} == {"head", "medium", "tail"}


def test_normalise_view():
    assert normalise_view("PA") == "PA"
    assert normalise_view("postero_anterior") == "PA"
    assert normalise_view("AP SUPINE") == "AP"
    assert normalise_view("LAT") == "LATERAL"
    assert normalise_view("LL") == "LL"
    assert normalise_view(None) == "" and normalise_view(float("nan")) == ""
