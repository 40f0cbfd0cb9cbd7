"""PadChest as published and CXR-LT 2026: the table loads unchanged (its Labels column is a
Python list as text, with quotes, commas and nested lists), 16-bit PNGs are read at full
depth, Projection becomes a view, and cxrkit-submit writes the 2026 task-1 header and refuses
task 2's unseen classes in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

#: the published CSV's columns (PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv)
PADCHEST_COLUMNS = [
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS"]

ROWS = [  # (Projection, Labels as the CSV holds them, LabelsLocalizationsBySentence)
    ("PA", "['pleural effusion', 'cardiomegaly']", "[['pleural effusion', 'loc left'], ['cardiomegaly']]"),
    ("L", "['pleural effusion', 'cardiomegaly']", "[['pleural effusion'], ['cardiomegaly']]"),
    ("PA", "['normal']", "[['normal']]"),
    ("AP_horizontal", "['suboptimal study', 'alveolar pattern', 'central venous catheter']", "[['alveolar pattern']]"),
    ("PA", "['exclude']", "[['exclude']]"),
    ("AP", "[' aortic elongation', 'nodule', \"hilar enlargement, bilateral\"]", "[['aortic elongation']]"),
    ("PA", "[['nodule'], 'Kyphosis']", "[]"),  # nested, mixed case: read as the findings they list
    ("COSTAL", "['fracture']", "[['fracture', 'loc rib']]"),
    ("PA", "[]", "[]"),
]


def _padchest(root: Path) -> Path:
    """A PadChest-format table written from the published layout, with 16-bit PNG films in
    ImageDir folders (12 bits used, as the release's films)."""
    rng = np.random.default_rng(0)
    with open(root / "padchest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PADCHEST_COLUMNS)
        for i, (proj, labels, by_sentence) in enumerate(ROWS):
            image_dir = str(i % 2)
            image_id = f"2168401113669640138295431665120133381357{i:05d}_02-094-102.png"
            (root / image_dir).mkdir(exist_ok=True)
            yy, xx = np.mgrid[0:96, 0:80]
            film = (2000 + 1500 * np.sin(yy / 11.0) * np.cos(xx / 9.0) + rng.normal(0, 80, (96, 80))).clip(0, 4095)
            assert cv2.imwrite(str(root / image_dir / image_id), film.astype(np.uint16))
            row = {c: "" for c in PADCHEST_COLUMNS}
            row.update(ImageID=image_id, ImageDir=image_dir, StudyID=f"study{i // 2}", PatientID=f"p{i // 2}",
                       Projection=proj, MethodLabel="Physician" if i % 3 else "RNN_model", Labels=labels,
                       Localizations="['loc left']" if i == 0 else "[]", LabelsLocalizationsBySentence=by_sentence,
                       Report="derrame pleural, cardiomegalia", BitsStored_DICOM="12")
            w.writerow([row[c] for c in PADCHEST_COLUMNS])
    return root / "padchest.csv"


def test_padchest_loads_as_published(tmp_path: Path) -> None:
    from cxrkit.data.tables import detect_format, load_table, resolve_image_paths

    table = load_table(_padchest(tmp_path))
    assert table.format == "padchest"
    assert detect_format(tmp_path / "padchest.csv", PADCHEST_COLUMNS) == "padchest"
    assert len(table) == len(ROWS) - 1 and table.extra == {"excluded": 1, "suboptimal": 1}  # 'exclude' left out
    cls = list(table.classes)
    assert cls[:3] == ["cardiomegaly", "nodule", "pleural effusion"]  # most frequent first, then by name
    assert "exclude" not in cls and "suboptimal study" not in cls
    assert {"normal", "aortic elongation", "hilar enlargement, bilateral", "kyphosis", "fracture"} <= set(cls)
    lab = {str(i)[-20:-15]: dict(zip(cls, row)) for i, row in zip(table.ids, table.labels)}
    assert lab["00000"]["pleural effusion"] == 1 and lab["00000"]["cardiomegaly"] == 1 and lab["00000"]["normal"] == 0
    assert lab["00002"]["normal"] == 1 and sum(lab["00002"].values()) == 1
    assert lab["00005"]["aortic elongation"] == 1 and lab["00005"]["hilar enlargement, bilateral"] == 1
    assert lab["00006"]["nodule"] == 1 and lab["00006"]["kyphosis"] == 1
    assert sum(lab["00008"].values()) == 0  # [] : nothing found, every class known negative
    assert not np.isnan(table.labels).any()
    views = dict(zip([str(i)[-20:-15] for i in table.ids], table.meta["view"]))
    assert views == {"00000": "PA", "00001": "LATERAL", "00002": "PA", "00003": "AP", "00005": "AP",
                     "00006": "PA", "00007": "COSTAL", "00008": "PA"}
    assert table.meta["study"].tolist()[:2] == ["study0", "study0"]  # two views of one study
    assert table.meta["suboptimal"].sum() == 1
    paths, found = resolve_image_paths(table)
    assert found.all() and paths[0].parent.name == "0" and paths[1].parent.name == "1"


def test_padchest_class_list_and_16_bit_films(tmp_path: Path) -> None:
    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.data.tables import load_table, resolve_image_paths
    from cxrkit.labels import CXR_LT_2026_TASK1

    table = load_table(_padchest(tmp_path), classes=list(CXR_LT_2026_TASK1))
    assert table.classes == CXR_LT_2026_TASK1
    j = {c: i for i, c in enumerate(table.classes)}
    first = table.labels[0]
    assert first[j["cardiomegaly"]] == 1 and first[j["pleural effusion"]] == 1 and first.sum() == 2
    assert table.labels[2][j["Normal"]] == 1  # 'normal' is the class 'Normal'
    assert table.labels[[str(i).endswith("00006_02-094-102.png") for i in table.ids]][0][j["Nodule"]] == 1
    paths, _ = resolve_image_paths(table)
    img = Preprocessing(size=64).read(paths[0])
    raw = cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() > 255
    # full depth: more distinct grey levels than an 8-bit reading could hold
    assert len(np.unique(img)) > 256 and 0.0 <= img.min() and img.max() <= 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,ImageDir,Projection,Labels\nx.png,0,PA,\"['pleural effusion'\"\n")
    from cxrkit.data.tables import TableFormatError

    with pytest.raises(TableFormatError, match="line 2"):
        load_table(bad)


@pytest.fixture(scope="module")
def model_2026(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model over the 2026 task-1 classes, exported to ONNX (what the container runs)."""
    import torch

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.export import deployment_copy
    from cxrkit.labels import CXR_LT_2026_TASK1
    from cxrkit.models import build_model

    d = tmp_path_factory.mktemp("m2026")
    cfg = {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [4, 8]}}
    torch.manual_seed(0)
    save_model(d / "model", build_model(cfg, len(CXR_LT_2026_TASK1)),
               ModelMeta(classes=list(CXR_LT_2026_TASK1), model=cfg, thresholds=[0.5] * 30, name="cxrlt2026",
                         preprocessing={"size": 32, "channels": 1, "mean": [0.5], "std": [0.25]},
                         label_space="cxr-lt-2026"))
    deployment_copy(d / "model", d / "deploy")
    return d / "deploy"


def test_cxr_lt_2026_task1_submission(model_2026: Path, tmp_path: Path) -> None:
    from cxrkit.labels import CXR_LT_2026_TASK1
    from cxrkit.submit import main

    _padchest(tmp_path)
    ids = sorted(p.name for p in tmp_path.rglob("*.png"))
    (tmp_path / "test.csv").write_text("ImageID\n" + "\n".join(ids) + "\n")
    order = list(reversed(ids))  # the sample's row order wins
    (tmp_path / "sample_task1.csv").write_text(",".join(["ImageID", *CXR_LT_2026_TASK1]) + "\n"
                                               + "\n".join(f"{i}," + ",".join(["0"] * 30) for i in order) + "\n")
    flat = tmp_path / "images"
    flat.mkdir()
    for p in tmp_path.rglob("*.png"):
        if p.parent != flat:
            (flat / p.name).symlink_to(p)
    assert main(["--model", str(model_2026), "cxr-lt", str(tmp_path / "test.csv"), str(tmp_path / "out"),
                 "--sample-submission", str(tmp_path / "sample_task1.csv"), "--images-root", str(flat)]) == 0
    rows = list(csv.reader(open(tmp_path / "out" / "submission.csv")))
    assert rows[0] == ["ImageID", *CXR_LT_2026_TASK1]
    assert [r[0] for r in rows[1:]] == order
    assert all(0.0 <= float(v) <= 1.0 for r in rows[1:] for v in r[1:])
    assert not (tmp_path / "out" / "missing.csv").exists()


def test_cxr_lt_2026_task2_unseen_classes_are_refused_in_one_line(model_2026: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from cxrkit.labels import CXR_LT_2026_TASK2
    from cxrkit.submit import main

    (tmp_path / "test.csv").write_text("ImageID\na.png\n")
    (tmp_path / "sample_task2.csv").write_text(",".join(["ImageID", *CXR_LT_2026_TASK2]) + "\na.png" + ",0" * 6 + "\n")
    assert main(["--model", str(model_2026), "cxr-lt", str(tmp_path / "test.csv"), str(tmp_path / "out"),
                 "--sample-submission", str(tmp_path / "sample_task2.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(c in err for c in CXR_LT_2026_TASK2) and "zero-shot" in err


def test_the_2026_recipe_loads() -> None:
    from conftest import REPO

    from cxrkit.train.config import load_config

    cfg = load_config(REPO / "configs" / "cxrlt2026_task1.yaml")
    assert cfg.label_space == "cxr-lt-2026" and "convnextv2" in cfg.model_config.backbone
    assert cfg.loss.name == "asl" and cfg.preprocessing_obj.size == 512
    assert json.loads(json.dumps(cfg.to_dict()))["data"]["train"]["table"].endswith(".csv")
