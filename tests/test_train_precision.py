"""precision: auto on a CPU picks the setting that is fastest for this network on this CPU:
bf16 units alone are no guarantee (EfficientNet-Lite0 trains faster in fp32 on AMX), so a
few steps are timed at start-up; the timing leaves the model as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_config


def test_timing_leaves_the_model_unchanged() -> None:
    from cxrkit.inference.engines import fastest_cpu_precision, time_train_steps
    from cxrkit.models import build_model

    model = build_model({"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [4, 8]}}, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 32, 32)
    t = time_train_steps(model, x, "fp32", True)
    assert t > 0
    prec, cl, why = fastest_cpu_precision(model, x)
    assert prec in ("fp32", "bf16") and cl is True and "measured at start-up" in why
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_trains_in_the_faster_precision(faster: str, demo_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrkit import runtime
    from cxrkit.inference import engines
    from cxrkit.train.trainer import fit

    monkeypatch.setenv("CXRKIT_CACHE_DIR", str(tmp_path / "cache" / "images"))  # a fresh cache
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    calls = []

    def timed(model, x, precision, cl, steps=2):
        calls.append(precision)
        return 0.01 if precision == faster else 0.03

    monkeypatch.setattr(engines, "time_train_steps", timed)
    cfg = tiny_config(demo_data, **{"train.epochs": 2})
    fit(cfg, tmp_path / "run", show_progress=False, stop_after_epochs=1)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"precision {faster} on cpu (measured at start-up" in log and "channels_last=True" in log
    assert sorted(calls) == ["bf16", "fp32"]
    # a resumed run keeps the choice (not measured again); another run on this machine reuses it
    monkeypatch.setattr(engines, "time_train_steps",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured again")))
    fit(cfg, tmp_path / "run", resume=True, show_progress=False)
    assert "kept from the run being resumed" in (tmp_path / "run" / "train.log").read_text()
    fit(tiny_config(demo_data, **{"train.epochs": 1}), tmp_path / "run2", show_progress=False)
    assert f"precision {faster} on cpu" in (tmp_path / "run2" / "train.log").read_text()
    assert "measured earlier on this machine" in (tmp_path / "run2" / "train.log").read_text()


def test_without_bf16_units_nothing_is_timed(demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrkit import runtime
    from cxrkit.inference import engines
    from cxrkit.train.trainer import fit

    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})

    def boom(*a, **k):
        raise AssertionError("timed without bf16 units")

    monkeypatch.setattr(engines, "time_train_steps", boom)
    fit(tiny_config(demo_data, **{"train.epochs": 1}), tmp_path / "run", show_progress=False)
    assert "precision fp32 on cpu" in (tmp_path / "run" / "train.log").read_text()
