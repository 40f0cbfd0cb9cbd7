"""MONAI Bundle export (``cxrkit export MODEL --bundle DIR``), checked with MONAI's own tools:
``verify_metadata`` against MONAI's published schema, ``verify_net_in_out``, and
``python -m monai.bundle run`` on PNG and DICOM films compared with ``cxrkit predict``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ignite")
pytest.importorskip("jsonschema")

from conftest import REPO, SHARED_DATA, run_cli_inprocess  # noqa: E402
from dicom_helpers import make_dicom  # noqa: E402

SCHEMA = REPO / "tests" / "data" / "monai" / "meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"  # MONAI-extra-test-data 0.8.1's file, unchanged
TOL = 1e-4


def _films(root: Path, demo_data: Path) -> Path:
    """PNG films, DICOMs that need the VOI window / MONOCHROME1 / modality rescale, the
    shared real DICOMs when present, and two files that must fail without stopping the run."""
    d = root / "films"
    (d / "png").mkdir(parents=True)
    pngs = sorted((demo_data / "synthetic-cxr-demo").rglob("*.png"))[:5]
    for i, p in enumerate(pngs):
        shutil.copy(p, d / "png" / f"{i}_{p.name}")
    shutil.copy(pngs[0], d / "png" / 'odd, "name"\nwith a newline.png')  # one CSV field all the same
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:70]
    body = (1500 + 800 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + rng.normal(0, 60, (90, 70))).clip(0, 4095)
    make_dicom(d / "mono1.dcm", body.astype(np.uint16), photometric="MONOCHROME1", bits_stored=12)
    make_dicom(d / "window.dcm", body.astype(np.uint16), bits_stored=12, WindowCenter=1500, WindowWidth=900)
    # a window wider than the data: "auto" keeps it grey, "minmax" stretches it (the models differ)
    make_dicom(d / "wide_window.dcm", body.astype(np.uint16), bits_stored=12, WindowCenter=2048, WindowWidth=8000)
    make_dicom(d / "rescale.dcm", (body / 4).astype(np.uint16), modality="DX", RescaleSlope=4, RescaleIntercept=-100)
    make_dicom(d / "ct.dcm", body.astype(np.uint16), modality="CT")  # not a chest radiograph: filtered out
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # truncated
    for f in ("nih_dx_chest_uncompressed.dcm", "siim_cr_chest_pa_jpeg_baseline.dcm"):
        if (SHARED_DATA / "dicom" / f).is_file():
            shutil.copy(SHARED_DATA / "dicom" / f, d / f)
    return d


BAD = ("ct.dcm", "broken.png")


@pytest.fixture(scope="module")
def films(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _films(tmp_path_factory.mktemp("bundle_films"), demo_data)


@pytest.fixture(scope="module")
def bundle(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrkit.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    res = export_bundle(trained_model, out)
    assert res["max_abs_logit_diff"] <= 1e-5
    return out


def _predict(model: Path, films: Path, out: Path) -> dict[str, np.ndarray]:
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import run_predict
    from cxrkit.runtime import DicomFilter

    pred = load_predictor(model, engine="torch")
    run_predict(pred, [films], out, show_progress=False, dicom_filter=DicomFilter())
    with open(out) as f:
        return {os.path.abspath(r["path"]): np.array([float(r[c]) for c in pred.classes]) for r in csv.DictReader(f)}


def _compare(bundle_csv: Path, expected: dict[str, np.ndarray], labels: list[str], films: Path) -> float:
    from cxrkit.bundle import read_predictions

    names, got = read_predictions(bundle_csv)
    assert names == labels
    assert {os.path.abspath(k) for k in got} == set(expected) | {str(films / b) for b in BAD}
    for b in BAD:  # failed films: NaN rows, the run went on
        assert np.isnan(got[str(films / b)]).all()
    diff = max(float(np.abs(got[k] - v).max()) for k, v in expected.items())
    assert diff <= TOL, diff
    return diff


def test_bundle_layout_and_metadata_passes_monais_schema(bundle: Path, trained_model: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    for f in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE"):
        assert (bundle / f).is_file(), f
    model = json.loads((trained_model / "model.json").read_text())
    md = json.loads((bundle / "configs" / "metadata.json").read_text())
    fmt = md["network_data_format"]
    assert [fmt["outputs"]["pred"]["channel_def"][str(i)] for i in range(len(model["classes"]))] == model["classes"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [32, 32] and fmt["inputs"]["image"]["num_channels"] == 1
    assert fmt["inputs"]["image"]["value_range"] == [-2.0, 2.0]  # (0 - 0.5) / 0.25 .. (1 - 0.5) / 0.25
    assert md["cxrkit"]["thresholds"] == dict(zip(model["classes"], model["thresholds"]))
    assert md["cxrkit"]["weights_sha256"] == model["weights_sha256"]
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_MD5)
    broken = dict(md)
    broken.pop("authors")  # required by the schema: the check can fail
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="authors"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(SCHEMA), hash_val=SCHEMA_MD5)


def test_verify_net_in_out_and_infer_properties(bundle: Path, films: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    meta, cfg = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json")
    verify_net_in_out("network_def", meta_file=meta, config_file=cfg, device="cpu")
    md = json.loads(Path(meta).read_text())
    md["network_data_format"]["outputs"]["pred"]["num_channels"] = 3  # a wrong spec is caught
    (tmp_path / "m.json").write_text(json.dumps(md))
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out("network_def", meta_file=str(tmp_path / "m.json"), config_file=cfg, device="cpu")
    wf = ConfigWorkflow(config_file=cfg, meta_file=meta, workflow_type="infer", bundle_root=str(bundle),
                        dataset_dir=str(films))
    wf.initialize()
    assert wf.check_properties() == []  # every property MONAI requires of an inference bundle


def test_monai_bundle_run_equals_cxrkit_predict(bundle: Path, trained_model: Path, films: Path, tmp_path: Path) -> None:
    """The command as the issue states it, in a subprocess, from the bundle folder."""
    expected = _predict(trained_model, films, tmp_path / "pred.csv")
    assert len(expected) >= 8
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                        "--dataset_dir", str(films)], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "broken.png: not used" in r.stderr and "ct.dcm: not used (not_chest_radiograph" in r.stderr
    labels = json.loads((trained_model / "model.json").read_text())["classes"]
    _compare(bundle / "eval" / "predictions.csv", expected, labels, films)


def _model_3ch(tmp: Path, trained_model: Path) -> Path:
    """A 3-channel letterbox model at 40 px (the 64 px demo films shrink by 1.6: not a whole
    factor), ImageNet statistics, ``intensity: minmax``: exercises RepeatChanneld, the cxrkit
    resize, and the reader honouring the model's intensity mode on DICOM too."""
    import torch

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.models import build_model

    src = json.loads((trained_model / "model.json").read_text())
    cfg = {"backbone": "tiny-cnn", "in_chans": 3, "backbone_kwargs": {"widths": [8, 16]}}
    torch.manual_seed(3)
    net = build_model(cfg, len(src["classes"]))
    meta = ModelMeta(classes=src["classes"], preprocessing={"size": [40, 44], "channels": 3, "resize": "letterbox",
                                                           "intensity": "minmax"},
                     model=cfg, thresholds=[0.3] * len(src["classes"]), name="three")
    return save_model(tmp / "three", net, meta)


def _run_in_process(b: Path, films: Path) -> None:
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(b / "configs" / "inference.json"), meta_file=str(b / "configs" / "metadata.json"),
                        workflow_type="infer", bundle_root=str(b), dataset_dir=str(films))
    wf.initialize()
    wf.run()
    wf.finalize()


def test_ensemble_bundle_is_the_weighted_mean(trained_model: Path, films: Path, tmp_path: Path) -> None:
    """An ensemble of members with one input becomes one EnsembleNet; the bundle's
    probabilities are predict's weighted mean of the members (weights 1 : 3)."""
    import torch

    from cxrkit.artifact import ModelMeta, save_model
    from cxrkit.bundle import export_bundle
    from cxrkit.ensemble import build_ensemble
    from cxrkit.models import build_model

    src = json.loads((trained_model / "model.json").read_text())
    cfg = {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [4, 8]}}
    torch.manual_seed(7)
    classes = list(reversed(src["classes"]))  # another class order: the columns are mapped
    other = save_model(tmp_path / "other", build_model(cfg, len(classes)),
                       ModelMeta(classes=classes, preprocessing=src["preprocessing"], model=cfg,
                                 thresholds=[0.4] * len(classes), name="other"))
    ens = build_ensemble([trained_model, other], tmp_path / "ens", weights=[1, 3])
    res = export_bundle(ens, tmp_path / "b")
    assert res["members"] == 2 and res["max_abs_logit_diff"] <= 1e-5
    cfg_json = json.loads((tmp_path / "b" / "configs" / "inference.json").read_text())
    assert cfg_json["network_def"]["_target_"] == "cxrkit.bundle.EnsembleNet"
    expected = _predict(ens, films, tmp_path / "pred.csv")
    one = _predict(trained_model, films, tmp_path / "one.csv")
    assert max(float(np.abs(expected[k] - one[k]).max()) for k in one) > 1e-3  # the second member counts
    _run_in_process(tmp_path / "b", films)
    _compare(tmp_path / "b" / "eval" / "predictions.csv", expected, src["classes"], films)


def test_three_channel_letterbox_bundle_in_process(trained_model: Path, films: Path, tmp_path: Path) -> None:
    from cxrkit.bundle import export_bundle

    model = _model_3ch(tmp_path, trained_model)
    b = tmp_path / "b3"
    export_bundle(model, b)
    cfg = json.loads((b / "configs" / "inference.json").read_text())
    names = [t["_target_"] for t in cfg["preprocessing"]["transforms"]]
    assert names == ["cxrkit.bundle.LoadFilmd", "cxrkit.bundle.ResizeFilmd", "RepeatChanneld", "NormalizeIntensityd",
                     "EnsureTyped"]
    expected = _predict(model, films, tmp_path / "pred.csv")
    _run_in_process(b, films)
    _compare(b / "eval" / "predictions.csv", expected, json.loads((model / "model.json").read_text())["classes"],
             films)


def test_what_monais_own_readers_and_resize_do(films: Path, no_image_limits: None) -> None:
    """Why the bundle reads and resizes with cxrkit transforms: MONAI's PydicomReader returns
    MONOCHROME1 films inverted and ignores the VOI window, and Resized(mode='area') differs
    from OpenCV's INTER_AREA unless the factor is whole. If MONAI changes, docs/bundle.md must."""
    import cv2
    import torch
    from monai.data import PydicomReader
    from monai.transforms import LoadImage, Resize

    from cxrkit.data.images import read_image

    def monai01(path: Path) -> np.ndarray:
        a = np.asarray(LoadImage(reader=PydicomReader(swap_ij=False), image_only=True)(str(path)), np.float64)
        a = np.squeeze(a)
        return (a - a.min()) / (a.max() - a.min())

    mono1 = read_image(films / "mono1.dcm")
    corr = np.corrcoef(monai01(films / "mono1.dcm").ravel(), mono1.ravel())[0, 1]
    assert corr < -0.99  # MONAI's film is the negative of the one the model was trained on
    win = read_image(films / "window.dcm")
    assert np.abs(monai01(films / "window.dcm") - win).max() > 0.2  # MONAI ignores the window
    resc = read_image(films / "rescale.dcm")
    assert np.corrcoef(monai01(films / "rescale.dcm").ravel(), resc.ravel())[0, 1] > 0.999  # linear rescale agrees

    img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    for size, whole in ((32, True), (40, False)):
        ours = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        theirs = Resize((size, size), mode="area")(torch.from_numpy(img)[None]).numpy()[0]
        diff = float(np.abs(ours - theirs).max())
        assert (diff < 1e-6) if whole else (diff > 1e-2), (size, diff)


def test_cli_export_bundle(trained_model: Path, trained_model_48: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    from cxrkit.ensemble import build_ensemble

    out = tmp_path / "cli"
    r = run_cli_inprocess(capsys, "export", str(trained_model), "--bundle", str(out), "--no-filter",
                          "--dataset-dir", str(tmp_path))
    assert r.returncode == 0 and "wrote MONAI Bundle" in r.stdout, r.stderr
    cfg = json.loads((out / "configs" / "inference.json").read_text())
    assert cfg["preprocessing"]["transforms"][0]["dicom_filter"] is None
    assert cfg["dataset_dir"] == str(tmp_path.resolve())
    first = (out / "models" / "model.pt").read_bytes()
    r = run_cli_inprocess(capsys, "export", str(trained_model), "--bundle", str(out))  # its own output: replaced
    assert r.returncode == 0 and (out / "models" / "model.pt").read_bytes() == first
    assert json.loads((out / "configs" / "inference.json").read_text())["preprocessing"]["transforms"][0][
        "dicom_filter"]["modalities"] == ["CR", "DX"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    r = run_cli_inprocess(capsys, "export", str(trained_model), "--bundle", str(foreign))
    assert r.returncode == 2 and "not written by `cxrkit export --bundle`" in r.stderr
    assert (foreign / "keep.txt").read_text() == "mine"
    ens = build_ensemble([trained_model, trained_model_48], tmp_path / "ens")
    r = run_cli_inprocess(capsys, "export", str(ens), "--bundle", str(tmp_path / "e"))
    assert r.returncode == 2 and "need different inputs (32 x 32" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "e").exists()
    r = run_cli_inprocess(capsys, "export", str(trained_model), "--bundle", str(tmp_path / "d"), "--deploy",
                          str(tmp_path / "dep"))
    assert r.returncode == 2 and "need --onnx" in r.stderr and not (tmp_path / "d").exists()
    r = run_cli_inprocess(capsys, "export", str(trained_model), "--bundle", str(tmp_path / "l"), "--license",
                          str(tmp_path / "nope.txt"))
    assert r.returncode == 2 and "--license" in r.stderr and not (tmp_path / "l").exists()


def test_bundle_root_from_the_command_line(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--config_file /abs/DIR/configs/inference.json`` from any folder finds DIR; without
    one, MONAI's "." convention."""
    from cxrkit.bundle import bundle_root

    cfg = bundle / "configs" / "inference.json"
    monkeypatch.chdir(tmp_path)
    for argv in (["run", "--config_file", str(cfg)], ["run", f"--config_file={cfg}"],
                 ["run", "--config_file", f"['{cfg}']"]):
        monkeypatch.setattr(sys, "argv", ["monai.bundle", *argv])
        assert bundle_root() == str(bundle.resolve())
    monkeypatch.setattr(sys, "argv", ["monai.bundle", "run", "--config_file", "missing/configs/inference.json"])
    assert bundle_root() == "."
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert bundle_root() == "."


def test_monais_ckpt_export_makes_an_equal_torchscript(bundle: Path, tmp_path: Path) -> None:
    """A MONAI user's next step: ``monai.bundle ckpt_export`` (traced) from the bundle's
    config and checkpoint gives the same logits as the bundle's network."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    meta, cfg = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json")
    ts = tmp_path / "model.ts"
    ckpt_export("network_def", filepath=str(ts), ckpt_file=str(bundle / "models" / "model.pt"), meta_file=meta,
                config_file=cfg, use_trace=True, input_shape=[1, 1, 32, 32])
    parser = ConfigParser()
    parser.read_config(cfg)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(ts))(x), net.eval()(x), atol=1e-6)
