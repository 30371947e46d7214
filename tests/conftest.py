"""Shared test set-up. The parity-fixture location lives in `tests/parity.py`."""

from __future__ import annotations

import os
import socket

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


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the hub endpoint (`HF_ENDPOINT`) at a closed local port and clear the offline flags, so the
    no-network path runs for real (a refused connection) whatever this machine's network; returns the URL."""
    with socket.socket() as s:  # a port the OS just handed out and took back: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return endpoint


@pytest.fixture(scope="session")
def spatial_demo(tmp_path_factory: pytest.TempPathFactory):
    """One scripted demo of libero_spatial task 0 (CLI `collect`, state only), preprocessed with exact tracks
    (CLI `preprocess`); shared read-only by the training and validation tests. Its task.json puts the demo in
    `val` and `demos`, leaving `train` empty. Returns the preprocessed root."""
    import subprocess
    import sys

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
    root = tmp_path_factory.mktemp("spatial_demo")

    def run(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "zipmo_robot", *args], env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    run("collect", "--suite", "libero_spatial", "--tasks", "0", "--demos-per-task", "1", "--max-attempts", "2",
        "--render", "none", "--out", str(root / "raw"))  # fmt: skip
    run("preprocess", "--src", str(root / "raw"), "--dst", str(root / "pre"), "--no-text", "--query-every",
        "16", "--grid", "10", "--random-queries", "16")  # fmt: skip
    return root / "pre"
