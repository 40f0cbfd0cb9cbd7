import json

import numpy as np
import pytest
import torch

from cxrkit.artifact import ModelMeta, load_meta, load_model, load_preprocessing, save_model
from cxrkit.data.preprocess import Preprocessing
from cxrkit.errors import ArtifactError
from cxrkit.models import ModelConfig, build_model


def _meta(classes=("a", "b", "c")):
    cfg = ModelConfig(backbone="tiny-cnn", in_chans=1, backbone_kwargs={"widths": [8, 16]})
    return cfg, ModelMeta(classes=list(classes), preprocessing=Preprocessing(size=32, channels=1).to_dict(),
                          model=cfg.to_dict(), thresholds=[0.3, 0.5, 0.7], name="m", metrics={"valid": {"mAUC": 0.9}})


def test_roundtrip_same_outputs_and_metadata(tmp_path):
    cfg, meta = _meta()
    model = build_model(cfg, 3).eval()
    save_model(tmp_path / "model", model, meta)
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["model.json", "model.safetensors"]
    loaded = load_model(tmp_path / "model")
    x = torch.randn(4, 1, 32, 32)
    np.testing.assert_allclose(loaded.predict(x), torch.sigmoid(model(x)).detach().numpy(), atol=1e-6)
    assert loaded.classes == ["a", "b", "c"] and loaded.thresholds.tolist() == [0.3, 0.5, 0.7]
    assert loaded.preprocessing == Preprocessing(size=32, channels=1)
    m = load_meta(tmp_path / "model" / "model.json")
    assert m.cxrkit_version and m.created and len(m.weights_sha256) == 64 and m.metrics["valid"]["mAUC"] == 0.9
    assert load_preprocessing(tmp_path / "model").size == 32
    # the weights file is safetensors (JSON header), not a pickle
    raw = (tmp_path / "model" / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + n])["__metadata__"]["format"] == "cxrkit-model"


def test_save_replaces_atomically(tmp_path):
    cfg, meta = _meta()
    save_model(tmp_path / "model", build_model(cfg, 3), meta)
    meta.name = "second"
    save_model(tmp_path / "model", build_model(cfg, 3), meta)
    assert load_meta(tmp_path / "model").name == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp / old folders left


def test_bad_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_model(tmp_path / "none")
    cfg, meta = _meta()
    save_model(tmp_path / "model", build_model(cfg, 3), meta)
    d = tmp_path / "model"
    j = json.loads((d / "model.json").read_text())
    j["model"]["backbone_kwargs"]["widths"] = [8, 32]
    (d / "model.json").write_text(json.dumps(j))
    with pytest.raises(ArtifactError, match="do not match"):
        load_model(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_model(d)
    (d / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a cxrkit model"):
        load_model(d)
    save_model(d, build_model(cfg, 3), _meta()[1])
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_model(d)
    with pytest.raises(ArtifactError, match="thresholds"):
        ModelMeta.from_dict(dict(_meta()[1].to_dict(), thresholds=[0.5]))


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        cfg, meta = _meta()
        save_model(tmp_path / "model", build_model(cfg, 3), meta)
        for p in [tmp_path / "model", *(tmp_path / "model").iterdir()]:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o044 == 0o044, (p, oct(mode))  # readable by group and others (containers, PACS users)
    finally:
        os.umask(old)


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs /proc")
def test_unwritable_destination_names_the_destination():
    from cxrkit.utils import atomic_write, staged_dir

    with pytest.raises(OSError) as e, atomic_write("/proc/self/cxrkit-out.csv"):
        pass
    assert e.value.filename == "/proc/self/cxrkit-out.csv" and "cannot write here" in e.value.strerror
    with pytest.raises(OSError) as e, staged_dir("/proc/self/cxrkit-model"):
        pass
    assert e.value.filename == "/proc/self/cxrkit-model"
