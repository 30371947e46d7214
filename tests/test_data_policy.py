"""`--policy scripted` through the real runner: a policy without weights that solves a LIBERO task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.libero, pytest.mark.slow]


def test_scripted_policy_succeeds_through_the_rollout_command(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "rollout", "--suite", "libero_spatial", "--tasks", "0",
         "--episodes", "1", "--num-envs", "1", "--protocol", "zipmo_release", "--policy", "scripted",
         "--max-steps", "400", "--no-video", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert len(records) == 1
    record = records[0]
    assert record["init_state_id"] == 40  # zipmo_release, seed 42, task 0: not the state demos start from
    assert record["status"] == "success", record
    assert record["steps"] < 400


def test_replay_policy_needs_a_demo_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "rollout", "--suite", "libero_spatial", "--tasks", "0",
         "--episodes", "1", "--num-envs", "1", "--policy", "replay", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "--demo FILE" in proc.stderr
