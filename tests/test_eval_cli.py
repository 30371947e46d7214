"""What a new user hits before any env is built: clear one-line errors from `rollout` and `eval`, and nothing
written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["rollout", "--suite", "libero_goal", "--policy", "scripted", "--tasks", "0", "--episodes", "1"],
            "--policy scripted cannot run libero_goal task 0 ('open the middle drawer of the cabinet')",
        ),
        (["rollout", "--tasks", "99", "--policy", "zero"], "unknown task id 99 for suite 'libero_spatial'; valid ids are 0..9"),
        (["rollout", "--policy", "zero", "foo=1"], "unknown setting 'foo' in 'foo=1'"),
        (["rollout", "--policy", "zero", "+foo=1"], "unknown setting 'foo' in '+foo=1'"),
        (["rollout", "--policy", "zero", "+policy_options.foo=1"], "unknown setting 'policy_options.foo'"),
        (["eval", "--policy", "zero", "+policy_options.foo=1"], "unknown setting 'policy_options.foo'"),
        (["eval", "--policy", "zero", "policy_options.foo=1"], "unknown setting 'policy_options.foo'"),
        (["eval", "--policy", "zero", "policy_options.nfe=many"], "policy_options.nfe"),
        (["eval", "--policy", "zero", "--suites", "libero_goal", "--checkpoint", "libero_goal=a", "--checkpoint", "b"],
         "either SUITE=PATH values"),
        (["eval", "--policy", "zero", "--checkpoint", "a", "--checkpoint", "b", "--seeds", "1"],
         "2 checkpoints but 1 seeds"),
        (["eval", "--policy", "nomodule_xyz:Policy", "--suites", "libero_goal"], "cannot import module 'nomodule_xyz'"),
        (["eval", "--protocol", "openvla"], "known protocols: atm, default, lerobot, literature"),
    ],
)  # fmt: skip
def test_bad_input_fails_in_one_line_before_any_env(args: list[str], expected: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _cli(*args, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "suite=" not in lines[0].split(":", 2)[-1].split("'")[0]
    assert not (out / "results.jsonl").exists() and not (out / "config.yaml").exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    for command in ("rollout", "eval"):
        proc = _cli(command, "--policy", "zero", "--out", str(f))
        assert proc.returncode == 2 and "is an existing file, not a folder" in proc.stderr, proc.stderr
    assert f.read_text() == "keep me"


def test_list_tasks_prints_ids_and_instructions() -> None:
    proc = _cli("rollout", "--suite", "libero_goal", "--list-tasks")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 10 and lines[0].split(None, 1) == ["0", "open the middle drawer of the cabinet"]


POLICY_MODULE = """
import numpy as np
from zipmo_robot.policy.base import Policy


class Still(Policy):
    def reset(self, seed=None):
        pass

    def act(self, obs, rows):
        return np.zeros((len(rows), 7), dtype=np.float32)

    def resolved_options(self):
        return {"nfe": 3, "device": "cpu"}
"""


def test_eval_writes_the_options_its_policy_ran_with(tmp_path: Path) -> None:
    """eval's policy_options has rollout's schema, and config.yaml records what the policy resolved."""
    import os

    import yaml

    (tmp_path / "stillpolicy.py").write_text(POLICY_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("MUJOCO_GL", "egl")
    out = tmp_path / "run"
    args = ["eval", "--policy", "stillpolicy:Still", "--protocol", "atm", "--suites", "libero_object"]
    args += ["--tasks", "0", "--episodes", "1", "--max-steps", "2", "--no-video", "--num-envs", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args, "--out", str(out), "policy_options.cfg_scale=2.0"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["policy_resolved"] == {"all": {"nfe": 3, "device": "cpu"}}
    opts = config["policy_options"]
    assert opts["nfe"] == 3 and opts["device"] == "cpu"  # what the policy ran with
    assert opts["cfg_scale"] == 2.0 and opts["precision"] == "bf16"  # the override; the schema's default
