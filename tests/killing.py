"""Kill a CLI run part-way, as a crash would (shared by the resume tests of `eval` and `rollout`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_after_first_record(
    args: list[str], results: Path, env: dict[str, str], timeout: float = 300
) -> None:
    """Start `python -m zipmo_robot *args` in its own session, wait until `results` (JSONL) holds one record
    (or the run ends, or `timeout` s pass), then SIGKILL the CLI and its worker processes together."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zipmo_robot", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 1:
                break
            time.sleep(0.1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended on its own (the caller's assertions say how)
            pass
        proc.wait()
