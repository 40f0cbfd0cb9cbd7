"""cxrkit ready to publish (issue 20, fault 3): the wheel builds from the sources alone, carries
the metadata, entry points, extras and every module, installs in a fresh virtual environment
and runs the demo there, without the checkout."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "cxrkit", src / "cxrkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = dist.glob("cxrkit-*.whl")
    return whl


def test_the_wheel_carries_metadata_entry_points_extras_and_every_module(wheel):
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = z.read(info).decode()
        eps = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert f"Version: {meta['version']}" in text and "Requires-Python: >=3.11" in text
    assert "Classifier: License :: OSI Approved :: Apache Software License" in text
    for extra in meta["optional-dependencies"]:
        assert f"Provides-Extra: {extra}" in text
    assert "cxrkit = cxrkit.cli:main" in eps and "cxrkit-submit = cxrkit.submit:main" in eps
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "cxrkit").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set()
    assert "cxrkit/py.typed" in names and any(n.endswith("LICENSE") for n in names)
    assert "cxrkit/hospital/resources/finding_codes.csv" in names  # the SR / FHIR code table ships


def test_every_install_hint_names_packages_of_its_extra():
    from cxrkit.extras import EXTRAS

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, pairs in EXTRAS.items():
        declared = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in extras[extra]}
        assert {p.lower() for _, p in pairs} <= declared, extra


def test_the_wheel_installs_in_a_fresh_venv_and_runs_the_demo(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (torch & co., 6 GB) from this environment, not the index; cxrkit itself
    # from the wheel only (this environment's editable cxrkit is not on that path)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(py), "-c", "import cxrkit; print(cxrkit.__file__)"], capture_output=True, text=True,
                           cwd=run, env=env, check=True).stdout.strip()
    assert where.startswith(site), where
    r = subprocess.run([str(venv / "bin" / "cxrkit"), "-q", "demo", "--out", "demo", "--n-studies", "40"], cwd=run,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "demo finished" in r.stdout and (run / "demo" / "summary.json").is_file()
    assert (run / "demo" / "predictions.csv").stat().st_size > 0
