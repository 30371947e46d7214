"""Shared test set-up. The parity-fixture location lives in `tests/parity.py`."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _headless_gl() -> None:
    """LIBERO renders offscreen: EGL unless the user chose another backend."""
    os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def one_thread():
    """One intra-op torch thread: the parity fixtures were made with one, and tiny models are dominated by
    thread start-up on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
