"""The OpenVINO engine against the plain one: the same rows and probabilities as PyTorch fp32
(fp32 within 1e-4, bf16 within a stated tolerance), for models and ensembles, in predict and
evaluate; and the choice logic (engine and precision by the CPU) on every CPU kind, faked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openvino")

from conftest import run_cli_inprocess  # noqa: E402

BF16_TOL = 0.03  # bf16 keeps 8 bits of mantissa: measured up to ~0.01 on these tiny models


def _films(demo_data: Path) -> list[Path]:
    return sorted((demo_data / "synthetic-cxr-demo" / "test").rglob("*.png"))[:24]


def _probs(model: Path, films: list[Path], engine: str, precision: str = "fp32", tta: str | None = None) -> np.ndarray:
    from cxrkit.ensemble import load_predictor
    from cxrkit.predict import predict_paths

    pred = load_predictor(model, engine=engine, precision=precision)
    probs, idx, fails = predict_paths(pred, films, show_progress=False, tta=tta)
    assert not fails and list(idx) == list(range(len(films)))
    return np.asarray(probs, dtype=np.float64)


def test_openvino_equals_pytorch(trained_model: Path, demo_data: Path) -> None:
    films = _films(demo_data)
    ref = _probs(trained_model, films, "torch")
    assert np.abs(_probs(trained_model, films, "openvino", "fp32") - ref).max() <= 1e-4
    assert np.abs(_probs(trained_model, films, "openvino", "bf16") - ref).max() <= BF16_TOL
    ref_tta = _probs(trained_model, films, "torch", tta="flip")
    assert np.abs(_probs(trained_model, films, "openvino", "fp32", tta="flip") - ref_tta).max() <= 1e-4


def test_openvino_ensemble_and_evaluate(trained_model: Path, trained_model_48: Path, demo_data: Path,
                                        tmp_path: Path) -> None:
    from cxrkit.ensemble import build_ensemble, load_predictor
    from cxrkit.evaluate import evaluate_table

    ens = build_ensemble([trained_model, trained_model_48], tmp_path / "ens", weights=[1, 2], show_progress=False)
    films = _films(demo_data)
    assert np.abs(_probs(ens, films, "openvino", "fp32") - _probs(ens, films, "torch")).max() <= 1e-4
    a = evaluate_table(load_predictor(trained_model, engine="torch"), demo_data / "test.csv", show_progress=False)
    b = evaluate_table(load_predictor(trained_model, engine="openvino", precision="fp32"), demo_data / "test.csv",
                       show_progress=False)
    assert abs(a["mAUC"] - b["mAUC"]) <= 1e-3


def test_cli_predict_with_openvino(trained_model: Path, demo_data: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    import csv

    films = demo_data / "synthetic-cxr-demo" / "test"
    for engine in ("torch", "openvino"):
        r = run_cli_inprocess(capsys, "predict", str(trained_model), str(films), "--out", str(tmp_path / f"{engine}.csv"),
                              "--engine", engine, "--precision", "fp32")
        assert r.returncode == 0, r.stderr
    rows = {e: {r["path"]: r for r in csv.DictReader(open(tmp_path / f"{e}.csv"))} for e in ("torch", "openvino")}
    assert rows["torch"].keys() == rows["openvino"].keys()
    for k, r in rows["torch"].items():
        assert abs(float(r["Cardiomegaly"]) - float(rows["openvino"][k]["Cardiomegaly"])) <= 1e-4


def test_engine_and_precision_chosen_by_the_cpu(trained_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    import shutil

    from cxrkit import runtime
    from cxrkit.ensemble import choose_engine
    from cxrkit.export import ensure_onnx
    from cxrkit.runtime import choose_openvino_precision, read_spec

    model = tmp_path / "m"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.json"))
    spec = read_spec(model)
    monkeypatch.delenv("CXRKIT_ENGINE", raising=False)
    monkeypatch.delenv("CXRKIT_PRECISION", raising=False)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "GenuineIntel")
    assert choose_engine(spec) == "torch"  # nothing exported: never exports on its own
    ensure_onnx(spec)
    assert choose_engine(spec) == "openvino"  # Intel + OpenVINO + an up-to-date export
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "AuthenticAMD")
    assert choose_engine(spec) == "onnx"
    monkeypatch.setenv("CXRKIT_ENGINE", "openvino")
    assert choose_engine(spec) == "openvino"
    monkeypatch.delenv("CXRKIT_ENGINE")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"})
    assert choose_openvino_precision("auto") == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "fma"})
    assert choose_openvino_precision("auto") == "fp32"
    assert choose_openvino_precision("bf16") == "bf16"
    monkeypatch.setenv("CXRKIT_PRECISION", "bf16")
    assert choose_openvino_precision("auto") == "bf16"
    from cxrkit.errors import CxrkitError

    with pytest.raises(CxrkitError, match="no int8 export"):  # int8 needs the calibrated export
        choose_openvino_precision("int8", spec)


def test_without_openvino_one_line(trained_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cxrkit.errors import CxrkitError
    from cxrkit.runtime import OpenVinoPredictor, read_spec

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(CxrkitError, match=r'needs openvino: pip install openvino .*\[openvino\]'):
        OpenVinoPredictor(read_spec(trained_model))


def _run_with_empty_home(trained_model: Path, tmp_path: Path, code: str) -> tuple[Any, Path]:
    """``code`` in a fresh Python with a copy of the model as ``MODEL``, an empty HOME and no
    CXRKIT_ENGINE: (the completed process, that HOME)."""
    import os
    import shutil
    import subprocess
    import sys

    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CXRKIT_ENGINE"}
    r = subprocess.run([sys.executable, "-c", f"MODEL = {str(model)!r}\n" + code], capture_output=True, text=True,
                       timeout=300, env=dict(env, HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "cache")))
    return r, home


def test_openvino_writes_and_sends_nothing_of_its_own(trained_model: Path, tmp_path: Path) -> None:
    """`import openvino` sends a usage event and writes a client id under $HOME/intel (on a
    read-only HOME, as in CodaLab's runs, it printed warnings on stderr). The engine runs
    with that telemetry kept from loading: HOME stays empty, stderr stays clean."""
    code = ("from cxrkit.inference.runtime import read_spec, OpenVinoPredictor\n"
            "from cxrkit.export import ensure_onnx\n"
            "spec = read_spec(MODEL); ensure_onnx(spec)\n"
            "p = OpenVinoPredictor(read_spec(spec.path), precision='fp32'); print(p.precision)\n")
    r, home = _run_with_empty_home(trained_model, tmp_path, code)
    assert r.returncode == 0 and r.stdout.strip() == "fp32", r.stderr
    assert list(home.iterdir()) == [], list(home.rglob("*"))
    assert "telemetry" not in r.stderr.lower()


def test_choosing_the_engine_does_not_load_openvino(trained_model: Path, tmp_path: Path) -> None:
    """`--engine auto` on an Intel CPU asks whether OpenVINO is installed; that question
    imported it, and `import openvino` sends its usage event and writes under HOME before
    any predictor could switch that off. Choosing now only looks the package up."""
    code = ("import sys\n"
            "from cxrkit.inference import runtime\n"
            "runtime.cpu_vendor = lambda: 'GenuineIntel'\n"
            "from cxrkit.export import ensure_onnx\n"
            "from cxrkit.ensemble import choose_engine\n"
            "spec = runtime.read_spec(MODEL); ensure_onnx(spec)\n"
            "print(choose_engine(runtime.read_spec(spec.path)), 'openvino' in sys.modules)\n")
    r, home = _run_with_empty_home(trained_model, tmp_path, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["openvino", "False"]
    assert list(home.iterdir()) == [], list(home.rglob("*"))
