"""Shared test set-up. The parity-fixture location lives in `tests/parity.py`."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _headless_gl() -> None:
    """LIBERO renders offscreen: EGL unless the user chose another backend."""
    os.environ.setdefault("MUJOCO_GL", "egl")
