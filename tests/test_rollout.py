"""`zipmo-robot rollout` end to end: the real CLI in a subprocess with real LIBERO workers (few steps), its files,
resume after a kill, errors recorded apart, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from killing import kill_after_first_record  # tests/killing.py
from zipmo_robot.eval import reports


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "rollout", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def two_task_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("rollout") / "run"
    proc = _cli(
        "--suite", "libero_spatial", "--tasks", "0,3", "--episodes", "1", "--num-envs", "2",
        "--max-steps", "5", "--protocol", "zipmo_release", "--policy", "random", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.libero
def test_cli_writes_results_summary_config_and_videos(two_task_run) -> None:
    out, proc = two_task_run
    records = reports.read_results(out / "results.jsonl")
    assert sorted((r["task_id"], r["episode_index"]) for r in records) == [(0, 0), (3, 0)]
    by_task = {r["task_id"]: r for r in records}
    # zipmo_release at seed 42: init states 40 (task 0) and 30 (task 3), episode seeds seed + 100000*task
    assert by_task[0]["init_state_id"] == 40 and by_task[3]["init_state_id"] == 30
    assert by_task[0]["seed"] == 42 and by_task[3]["seed"] == 300042
    for r in records:
        assert r["status"] in ("success", "failure") and r["steps"] <= 5
        assert r["timing"]["env_step_s"] > 0 and r["timing"]["policy_s"] >= 0
        assert (out / r["video"]).stat().st_size > 0
        assert (
            r["video"]
            == f"videos/libero_spatial_task{r['task_id']:02d}_ep000_seed{r['seed']}_{r['status']}.mp4"
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["overall"]["episodes"] == 2 and summary["overall"]["error"] == 0
    assert [t["task_id"] for t in summary["tasks"]] == [0, 3]
    assert summary["settings"]["num_envs"] == 2 and summary["settings"]["protocol"]["name"] == "zipmo_release"
    assert (
        summary["settings"]["max_steps"] == 5
        and summary["settings"]["protocol"]["max_steps"]["libero_spatial"] == 5
    )
    for pkg in ("torch", "robosuite", "mujoco", "libero", "numpy"):
        assert summary["versions"][pkg], pkg
    config = (out / "config.yaml").read_text()
    assert "seed: 42" in config and "policy: random" in config and "init_rule: zipmo_random" in config
    assert "mean over tasks" in proc.stdout and "pick up the black bowl" in proc.stdout


@pytest.mark.libero
def test_rerun_skips_recorded_episodes_and_other_settings_are_refused(two_task_run) -> None:
    out, _ = two_task_run
    before = (out / "results.jsonl").read_text()
    proc = _cli(
        "--suite", "libero_spatial", "--tasks", "0,3", "--episodes", "1", "--max-steps", "5",
        "--protocol", "zipmo_release", "--policy", "random", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 of 2 episodes already recorded" in proc.stdout
    assert (out / "results.jsonl").read_text() == before
    other_seed = ["--tasks", "0", "--episodes", "1", "--max-steps", "5", "--seed", "7", "--policy", "random"]
    proc = _cli(*other_seed, "--out", str(out))
    assert proc.returncode == 2
    assert "other settings" in proc.stderr and "--out" in proc.stderr


@pytest.mark.libero
def test_killed_run_resumes_without_redoing_finished_episodes(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ["--tasks", "1", "--episodes", "3", "--num-envs", "1", "--max-steps", "6", "--no-video"]
    args += ["--policy", "zero", "--out", str(out)]
    results = out / "results.jsonl"
    kill_after_first_record(["rollout", *args], results, _env())
    first = reports.read_results(results)
    assert 1 <= len(first) < 3, "the run should have been killed part-way"
    with open(results, "a") as f:
        f.write('{"suite": "libero_spatial", "task_id": 1, "epis')  # a record torn by the kill
    done = len(first)
    proc2 = _cli(*args)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert f"{done} of 3 episodes already recorded" in proc2.stdout
    records = reports.read_results(results)
    assert sorted(r["episode_index"] for r in records) == [0, 1, 2]  # each episode exactly once
    assert records[:done] == first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["overall"]["episodes"] == 3


@pytest.mark.libero
def test_a_worker_that_dies_is_reported_apart(tmp_path: Path) -> None:
    from zipmo_robot.configs import compose
    from zipmo_robot.envs.runner import Episode, Fault
    from zipmo_robot.eval.rollout import plan_episodes, resolve_config, run_rollout
    from zipmo_robot.policy.base import ZeroPolicy

    os.environ.setdefault("MUJOCO_GL", "egl")
    cfg = compose(
        "rollout",
        ["policy=zero", "tasks=[2]", "episodes=2", "max_steps=3", "num_envs=1", "retries=0", "video=false"]
        + [f"out={tmp_path / 'faulty'}", "runner.progress=false"],
    )
    episodes = plan_episodes(resolve_config(cfg))
    episodes[0] = Episode(episodes[0].env, 0, episodes[0].init_state_id, episodes[0].seed, Fault("exit", 1))
    summary = run_rollout(cfg, ZeroPolicy(), episodes=episodes)
    assert summary["overall"]["error"] == 1 and summary["overall"]["failure"] == 1
    assert summary["overall"]["success_rate"] == 0.0  # the error is not counted as a failure or success
    records = reports.read_results(tmp_path / "faulty" / "results.jsonl")
    assert [r["status"] for r in sorted(records, key=lambda r: r["episode_index"])] == ["error", "failure"]
    assert records[0]["errors"][0]["type"] == "WorkerDied"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tasks", "12"], "valid ids are 0..9"),
        (["--tasks", "two"], "bad task id"),
        (["suite=libero_100"], "valid suites: libero_spatial"),
        (["--protocol", "openvla"], "known protocols: atm, default, lerobot, literature"),
        (["--episodes", "0"], "--episodes must be positive"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], expected: str, tmp_path: Path) -> None:
    proc = _cli(*args, "--out", str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert not (tmp_path / "x" / "results.jsonl").exists()


def test_the_exact_path_keeps_the_settings_hash_of_runs_made_before_compile_existed():
    """`compile: false` (the default, exact path) is left out of the hash so old runs still resume;
    `compile: true` changes actions slightly, so it gets its own hash."""
    from zipmo_robot.eval.rollout import outcome_settings

    base = {"protocol": {"name": "atm"}, "seed": 0, "policy": "zipmo", "policy_options": {"nfe": 5}}
    old = outcome_settings(base)
    exact = outcome_settings({**base, "policy_options": {"nfe": 5, "compile": False}})
    fast = outcome_settings({**base, "policy_options": {"nfe": 5, "compile": True}})
    assert exact == old and fast != old and fast["policy_options"]["compile"] is True
    fresh = outcome_settings({**base, "policy_options": {"nfe": 5, "noise": "fresh"}})
    episode = outcome_settings({**base, "policy_options": {"nfe": 5, "noise": "episode"}})
    assert fresh == old and episode["policy_options"]["noise"] == "episode"


def test_eval_groups_keep_their_hash_when_a_late_knob_is_at_its_old_value():
    """An eval config composed today (every PolicyConfig knob present, `noise: fresh` included) tags its
    records as one composed before `noise` existed did; `noise=episode` gets its own hash."""
    from zipmo_robot.configs import compose
    from zipmo_robot.eval.harness import resolve

    args = ["protocol=atm", "suites=[libero_goal]", "tasks=[2]", "episodes=1", "policy=zero", "video=false"]

    def group_hash(*extra: str) -> tuple[str, dict]:
        (group,) = resolve(compose("eval", args + list(extra)))["groups"]
        return group.settings_hash, group.settings["policy_options"]

    today, options = group_hash()
    assert "noise" not in options and "nfe" in options  # the schema's knobs are there, the late one is not
    assert group_hash("policy_options.noise=fresh")[0] == today
    assert group_hash("policy_options.noise=episode")[0] != today
