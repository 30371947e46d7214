"""Shared test fixtures: where the official-parity fixtures live, and the LIBERO environment set-up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def parity_dir() -> Path:
    """The official-parity fixture folder: $ZIPMO_PARITY_FIXTURES or ../shared/fixtures/official_parity."""
    return Path(os.environ.get("ZIPMO_PARITY_FIXTURES", SHARED / "fixtures" / "official_parity"))


def parity_manifest() -> dict:
    path = parity_dir() / "manifest.json"
    if not path.exists():
        pytest.fail(f"parity fixtures not found at {path}; set ZIPMO_PARITY_FIXTURES to the fixture folder")
    return json.loads(path.read_text())


@pytest.fixture(autouse=True, scope="session")
def _headless_gl() -> None:
    """LIBERO renders offscreen: EGL unless the user chose another backend."""
    os.environ.setdefault("MUJOCO_GL", "egl")
