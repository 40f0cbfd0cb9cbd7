"""Saliency maps (issue 15): the map of a finding peaks where the finding is, for CNNs; ViTs
get maps through their token grid; predict --explain maps positive calls only; DICOM SC."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytorch_grad_cam")

from conftest import run_cli_inprocess  # noqa: E402
from cxrkit.artifact import ModelMeta, save_model  # noqa: E402
from cxrkit.data.preprocess import Preprocessing  # noqa: E402
from cxrkit.explain import Explainer, explain, find_target_layer  # noqa: E402
from cxrkit.models import ModelConfig, build_model  # noqa: E402

SIZE = 48


def _spot_image(rng, cy, cx, spot=True):
    img = rng.normal(0.35, 0.05, (SIZE, SIZE))
    if spot:
        img[cy - 3:cy + 3, cx - 3:cx + 3] = 0.95
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def spot_model(tmp_path_factory):
    """A tiny CNN trained (a few seconds) to call 'Spot' when a bright 6 x 6 square is
    anywhere in a noisy film; 'Other' is noise. A finding with a known place, like the demo's."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tiny-cnn", in_chans=1, backbone_kwargs={"widths": [8, 16, 16]})
    net = build_model(cfg, 2, load_weights=False)
    pre = Preprocessing(size=SIZE, channels=1, mean=[0.5], std=[0.25])
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(150):
        ys = rng.random(32) < 0.5
        xs = np.stack([_spot_image(rng, *rng.integers(4, SIZE - 4, 2), spot=s) for s in ys])
        x = torch.from_numpy(pre.normalize(xs))
        y = torch.from_numpy(np.stack([ys, rng.random(32) < 0.5], 1).astype(np.float32))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("spot") / "model"
    save_model(d, net.eval(), ModelMeta(classes=["Spot", "Other"], preprocessing=pre.to_dict(), model=cfg.to_dict(),
                                        thresholds=[0.5, 0.5], name="spot"))
    return d


def test_the_map_peaks_where_the_finding_is(spot_model, tmp_path):
    rng = np.random.default_rng(1)
    files, where = [], []
    for i, (cy, cx) in enumerate([(10, 12), (36, 30), (24, 40), (40, 8)]):
        f = tmp_path / f"film{i}.png"
        Image.fromarray((_spot_image(rng, cy, cx) * 255).astype(np.uint8)).save(f)
        files.append(f)
        where.append((cy, cx))
    res = explain(spot_model, files, tmp_path / "maps", labels=["Spot"], show_progress=False)
    assert res["maps"] == 4 and res["layer"]
    with open(tmp_path / "maps" / "explain.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ex = Explainer(spot_model)
    pre = ex.pre
    for r, f, (cy, cx) in zip(rows, files, where):
        assert float(r["probability"]) > 0.8, r
        py, px = float(r["peak_y"]) * SIZE, float(r["peak_x"]) * SIZE
        assert abs(py - cy) <= 14 and abs(px - cx) <= 14, (r, cy, cx)  # the peak is next to the square
        _, (cam,) = ex.maps(pre(f)[None], [0])
        near = np.zeros(cam.shape, bool)
        near[max(0, cy - 10):cy + 10, max(0, cx - 10):cx + 10] = True
        assert cam[near].mean() > 4 * cam[~near].mean(), (cam[near].mean(), cam[~near].mean())
    for i in range(4):
        assert (tmp_path / "maps" / f"film{i}" / "Spot.png").is_file()
        assert (tmp_path / "maps" / f"film{i}" / "sheet.png").is_file()


def test_vit_backbones_get_maps_through_their_token_grid(tmp_path):
    cfg = ModelConfig(backbone="vit_tiny_patch16_224", in_chans=1,
                      backbone_kwargs={"img_size": 32, "patch_size": 8})
    net = build_model(cfg, 2, load_weights=False).eval()
    x = torch.randn(1, 1, 32, 32)
    layer, reshape, name = find_target_layer(net, x)
    assert reshape is not None  # tokens -> 4 x 4 grid, the class token dropped
    grid = reshape(torch.randn(1, 17, 192))
    assert grid.shape == (1, 192, 4, 4)
    pre = Preprocessing(size=32, channels=1, mean=[0.5], std=[0.25])
    save_model(tmp_path / "vit", net, ModelMeta(classes=["a", "b"], preprocessing=pre.to_dict(), model=cfg.to_dict(),
                                                thresholds=[0.5, 0.5], name="vit"))
    ex = Explainer(tmp_path / "vit")
    probs, maps = ex.maps(x, [0, 1])
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and probs.shape == (2,)


def test_cli_explain_and_predict_explain_positive_calls_only(spot_model, tmp_path, capsys):
    rng = np.random.default_rng(2)
    pos, neg = tmp_path / "in" / "pos.png", tmp_path / "in" / "neg.png"
    pos.parent.mkdir()
    Image.fromarray((_spot_image(rng, 20, 20) * 255).astype(np.uint8)).save(pos)
    Image.fromarray((_spot_image(rng, 0, 0, spot=False) * 255).astype(np.uint8)).save(neg)
    r = run_cli_inprocess(capsys, "explain", str(spot_model), str(pos), "--out", str(tmp_path / "m1"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m1" / "pos" / "Spot.png").is_file() and (tmp_path / "m1" / "pos" / "Other.png").is_file()
    r = run_cli_inprocess(capsys, "explain", str(spot_model), str(pos), "--out", str(tmp_path / "m2"),
                          "--labels", "Nodule")
    assert r.returncode == 2 and "Nodule" in r.stderr and "Traceback" not in r.stderr
    r = run_cli_inprocess(capsys, "predict", str(spot_model), str(tmp_path / "in"), "--out", str(tmp_path / "p.csv"),
                          "--explain", str(tmp_path / "pm"), "--engine", "torch")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "p.csv", newline="") as fh:
        calls = {(row["path"], c) for row in csv.DictReader(fh) for c in ("Spot", "Other") if row[f"call:{c}"] == "1"}
    with open(tmp_path / "pm" / "explain.csv", newline="") as fh:
        mapped = {(row["image"], row["finding"]) for row in csv.DictReader(fh)}
    assert mapped == calls and any(f == "Spot" and p.endswith("pos.png") for p, f in mapped)


def test_dicom_secondary_capture_of_an_overlay(spot_model, tmp_path):
    pytest.importorskip("highdicom")
    import pydicom

    from dicom_helpers import make_dicom

    rng = np.random.default_rng(3)
    arr = (_spot_image(rng, 30, 16) * 4000).astype(np.uint16)
    f = make_dicom(tmp_path / "film.dcm", arr, bits_stored=12)
    res = explain(spot_model, [f], tmp_path / "maps", labels=["Spot"], dicom_sc=True, show_progress=False)
    assert res["maps"] == 1
    sc = pydicom.dcmread(tmp_path / "maps" / "film" / "Spot.sc.dcm")
    src = pydicom.dcmread(f, stop_before_pixels=True)
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SOPInstanceUID != src.SOPInstanceUID
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "not for diagnosis" in sc.ImageComments
    assert sc.pixel_array.shape[-1] == 3 and sc.Manufacturer == "cxrkit"
    assert json.dumps(str(sc.PatientName)) == json.dumps(str(src.PatientName))  # in the patient's study


def test_explain_with_nothing_readable_fails_in_one_line(spot_model, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = run_cli_inprocess(capsys, "explain", str(spot_model), str(bad), "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "nothing could be explained" in r.stderr and "Traceback" not in r.stderr
    r = run_cli_inprocess(capsys, "predict", str(spot_model), str(bad), "--out", str(tmp_path / "p.csv"),
                          "--precision", "int4")
    assert r.returncode == 2 and "int8" in r.stderr and "Traceback" not in r.stderr
