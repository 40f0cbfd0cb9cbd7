"""Shared fixtures. Real data comes from ../shared/data next to the checkout; tests that need
it skip cleanly when it is absent (a user's fresh clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("CXRKIT_QUIET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic demo dataset shared by the whole session."""
    from cxrkit.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, n_studies=160, seed=123, size=64, show_progress=False)
    return out
