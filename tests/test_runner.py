"""The vector runner with real LIBERO worker processes (fault injection makes real workers raise, die and hang),
plus the protocol rules, observation batching, videos and the results files it feeds."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from zipmo_robot.envs.runner import Episode, Fault, VectorRunner, stack_observations
from zipmo_robot.envs.spec import EnvConfig
from zipmo_robot.envs.video import OUTCOME_COLOURS, compose_frame, video_name, write_episode_video
from zipmo_robot.eval import reports
from zipmo_robot.eval.protocols import (
    env_seed,
    episode_seed,
    get_protocol,
    init_state_for,
    protocol_from_dict,
)
from zipmo_robot.policy.base import RandomPolicy, RowInfo

# ---------------------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------------------


def test_zipmo_release_init_states_match_the_published_table() -> None:
    """PROTOCOLS.md §3.2: seed 42, tasks 0, 3 and 9, worker order."""
    p = get_protocol("zipmo_release")
    assert [init_state_for(p, 0, e, 42) for e in range(10)] == [40, 7, 1, 17, 15, 14, 8, 6, 34, 5]
    assert [init_state_for(p, 3, e, 42) for e in range(10)] == [30, 14, 29, 22, 40, 32, 47, 35, 33, 31]
    assert [init_state_for(p, 9, e, 42) for e in range(10)] == [16, 18, 20, 36, 29, 1, 43, 37, 34, 2]
    # a second reset of worker 0 moves on to the next state (LiberoResetWrapper), wrapping at 50
    assert init_state_for(p, 0, 10, 42) == 41
    assert init_state_for(p, 2, 10, 42) == 0  # task 2 worker 0 starts at 49


def test_atm_and_tramoe_use_the_fixed_blocks() -> None:
    expected = [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 1, 6, 11, 16, 21, 26, 31, 36, 41, 46]
    for name in ("atm", "tramoe"):
        p = get_protocol(name)
        for task in (0, 7):
            assert [init_state_for(p, task, e, 123) for e in range(20)] == expected


def test_init_state_is_a_pure_function_of_its_arguments() -> None:
    p = get_protocol("zipmo_release")
    forward = [init_state_for(p, 4, e, 7) for e in range(30)]
    backward = [init_state_for(p, 4, e, 7) for e in reversed(range(30))][::-1]
    assert forward == backward
    assert [init_state_for(get_protocol("default"), 1, e, 0) for e in range(3)] == [0, 1, 2]
    assert episode_seed(p, 3, 2, 42) == 42 + 300000 + 2


def test_env_seeds_follow_each_protocols_workers() -> None:
    """ZipMo seeds worker i of task t with seed + 1000 t + i; ATM/Tra-MoE build every worker with seed 0."""
    p = get_protocol("zipmo_release")
    assert [env_seed(p, 3, e, 42) for e in range(10)] == [3042 + i for i in range(10)]
    assert env_seed(p, 3, 12, 42) == 3042 + 2  # the worker's second episode
    assert {
        env_seed(get_protocol(n), t, e, 5) for n in ("atm", "tramoe") for t in (0, 4) for e in range(20)
    } == {0}
    assert env_seed(get_protocol("default"), 1, 2, 42) == 1044


def test_unknown_protocol_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="zipmo_release"):
        get_protocol("nope")
    with pytest.raises(ValueError, match="init_rule"):
        protocol_from_dict({"name": "x", "init_rule": "shuffled"})
    with pytest.raises(ValueError, match="unknown protocol field"):
        protocol_from_dict({"name": "x", "horizon": 3})


def test_protocol_env_config_carries_the_knobs() -> None:
    env = get_protocol("atm").env_config("libero_goal", 3, image_size=64)
    assert (env.suite, env.task_id, env.image_size, env.max_steps, env.settle_steps) == (
        "libero_goal",
        3,
        64,
        600,
        5,
    )
    assert env.orientation == "flip_vertical"


# ---------------------------------------------------------------------------------------------------------
# Batching, videos, reports
# ---------------------------------------------------------------------------------------------------------


def test_stack_observations_stacks_arrays_and_lists_the_rest() -> None:
    rows = [
        {"a": np.zeros((4, 4, 3), np.uint8), "j": np.arange(7.0), "task_language": "x", "m": np.zeros(3)},
        {"a": np.ones((4, 4, 3), np.uint8), "j": np.arange(7.0), "task_language": "y", "m": np.zeros(5)},
    ]
    batch = stack_observations(rows)
    assert batch["a"].shape == (2, 4, 4, 3) and batch["a"].dtype == np.uint8
    assert batch["j"].shape == (2, 7)
    assert batch["task_language"] == ["x", "y"]
    assert isinstance(batch["m"], list) and len(batch["m"]) == 2  # unequal shapes: one entry per row


def test_compose_frame_layout_and_border_colour() -> None:
    a = np.full((16, 16, 3), 10, np.uint8)
    b = np.full((16, 16, 3), 200, np.uint8)
    frame = compose_frame([a, b], "success")
    assert frame.shape == (16 + 8, 16 + 2 + 16 + 8, 3)
    assert tuple(frame[0, 0]) == OUTCOME_COLOURS["success"]
    assert tuple(frame[4, 4]) == (10, 10, 10) and tuple(frame[4, 4 + 16]) == (255, 255, 255)
    assert tuple(frame[4, 4 + 18]) == (200, 200, 200)
    assert tuple(compose_frame([a, b], "failure")[-1, -1]) == OUTCOME_COLOURS["failure"]
    with pytest.raises(ValueError, match="outcome"):
        compose_frame([a], "maybe")


def test_write_episode_video_is_a_readable_mp4(tmp_path: Path) -> None:
    import imageio_ffmpeg

    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 255, (32, 32, 3), np.uint8), rng.integers(0, 255, (32, 32, 3), np.uint8))] * 7
    path = write_episode_video(
        tmp_path, frames, suite="libero_goal", task_id=3, episode_index=2, seed=9, outcome="failure"
    )
    assert (
        path.name
        == video_name("libero_goal", 3, 2, 9, "failure")
        == "libero_goal_task03_ep002_seed9_failure.mp4"
    )
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["size"] == (32 + 2 + 32 + 8, 32 + 8)
    decoded = [np.frombuffer(f, np.uint8).reshape(40, 74, 3) for f in reader]
    assert len(decoded) == 7
    corner = decoded[0][:3, :3].reshape(-1, 3).mean(0)
    assert corner[0] > 200 and corner[1] < 60  # red border survives the encoder
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def _record(task: int, ep: int, status: str, h: str = "h1") -> dict:
    return {
        "suite": "libero_spatial",
        "task_id": task,
        "episode_index": ep,
        "status": status,
        "success": status == "success",
        "steps": 3,
        "settings_hash": h,
        "timing": {"env_step_s": 1.0, "policy_s": 0.1},
        "policy_info": {"timing": {"planner": 0.25, "head": 0.5}},
    }


def test_results_jsonl_ignores_and_repairs_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with reports.ResultsWriter(path) as w:
        w.append(_record(0, 0, "success"))
        w.append(_record(0, 1, "failure"))
    with open(path, "a") as f:
        f.write('{"suite": "libero_spatial", "task_id": 0, "episo')  # a run killed mid-write
    with pytest.warns(UserWarning, match="torn"):
        assert len(reports.read_results(path)) == 2
    with reports.ResultsWriter(path) as w:  # reopening cuts the torn tail
        w.append(_record(1, 0, "error"))
    records = reports.read_results(path)
    assert [r["task_id"] for r in records] == [0, 0, 1]
    assert reports.completed_keys(path, "h1") == {
        ("libero_spatial", 0, None, 0),
        ("libero_spatial", 0, None, 1),
    }
    assert reports.foreign_settings(path, "h1") == set()
    assert reports.foreign_settings(path, "h2") == {"h1"}
    with open(path, "a") as f:
        f.write(json.dumps(_record(1, 1, "success")))  # complete record, newline lost
    with reports.ResultsWriter(path) as w:
        w.append(_record(1, 2, "failure"))
    assert [(r["task_id"], r["episode_index"]) for r in reports.read_results(path)][-2:] == [(1, 1), (1, 2)]
    path.write_text(path.read_text().replace('"task_id": 0, "episode_index": 1', "garbage", 1))
    with pytest.raises(ValueError, match=r"results.jsonl:2"):
        reports.read_results(path)


def test_summary_counts_errors_apart(tmp_path: Path) -> None:
    records = [
        _record(0, 0, "success"),
        _record(0, 1, "failure"),
        _record(0, 2, "error"),
        _record(1, 0, "success"),
    ]
    s = reports.summarize(records)
    t0, t1 = s["tasks"]
    assert (t0["success"], t0["failure"], t0["error"], t0["success_rate"]) == (1, 1, 1, 0.5)
    assert t1["success_rate"] == 1.0
    assert s["overall"]["success_rate"] == 0.75  # mean over tasks
    assert s["overall"]["pooled_success_rate"] == pytest.approx(2 / 3)
    assert s["overall"]["error"] == 1
    assert s["overall"]["policy_stage_s"] == {"planner": 1.0, "head": 2.0}
    assert t0["policy_stage_s"] == {"planner": 0.75, "head": 1.5}
    path = reports.write_summary(
        tmp_path, records, {"suite": "libero_spatial"}, settings_hash="h1", complete=True
    )
    data = json.loads(path.read_text())
    assert data["versions"]["torch"] and data["versions"]["mujoco"] and data["versions"]["libero"]
    assert data["complete"] is True and data["overall"]["episodes"] == 4
    table = reports.format_table(s)
    assert "50.0%" in table and "mean over tasks" in table


# ---------------------------------------------------------------------------------------------------------
# Real LIBERO workers
# ---------------------------------------------------------------------------------------------------------


class RecordingPolicy(RandomPolicy):
    """The random policy, remembering every batch's rows (to check batching and per-row episode steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[RowInfo]] = []
        self.shapes: list[tuple[int, ...]] = []

    def act(self, obs, rows):  # noqa: ANN001, ANN201
        self.batches.append(list(rows))
        self.shapes.append(obs["agentview_image"].shape)
        return super().act(obs, rows)


@pytest.mark.libero
def test_real_worker_faults_do_not_end_the_run() -> None:
    """Raise (retried, then fine), os._exit (always: reported as `error`), hang (timeout, retried, then fine)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    t0 = EnvConfig(suite="libero_spatial", task_id=0, max_steps=4)
    t1 = EnvConfig(suite="libero_spatial", task_id=1, max_steps=4)
    episodes = [
        Episode(t0, 0, 0, 100, Fault("raise", at_step=2, attempts=1)),
        Episode(t1, 0, 0, 200, Fault("exit", at_step=1)),
        Episode(t0, 1, 1, 101, Fault("hang", at_step=1, attempts=1)),
        Episode(t1, 1, 1, 201),
    ]
    policy = RecordingPolicy()
    seen: list[dict] = []
    runner = VectorRunner(policy, num_envs=2, retries=1, step_timeout=30.0, lockstep=True, progress=False)
    with runner:
        results = runner.run(episodes, on_result=lambda r: seen.append(r.record))
    assert len(results) == len(seen) == 4
    by_key = {(r.record["task_id"], r.record["episode_index"]): r.record for r in results}
    raised, died, hung, normal = by_key[(0, 0)], by_key[(1, 0)], by_key[(0, 1)], by_key[(1, 1)]

    assert raised["status"] == "failure" and raised["attempts"] == 2 and raised["steps"] == 4, raised
    assert raised["errors"][0]["type"] == "RuntimeError"
    assert "injected fault at step 2" in raised["errors"][0]["traceback"]
    assert raised["errors"][0]["init_state_id"] == 0 and raised["errors"][0]["task_id"] == 0

    assert died["status"] == "error" and not died["success"] and died["attempts"] == 2, died
    assert [e["type"] for e in died["errors"]] == ["WorkerDied", "WorkerDied"]
    assert "exit code 17" in died["errors"][0]["message"]

    assert hung["status"] == "failure" and hung["attempts"] == 2, hung
    assert hung["errors"][0]["type"] == "Timeout"

    assert normal["status"] == "failure" and normal["attempts"] == 1 and normal["errors"] == [], normal
    assert normal["task_language"] and normal["timing"]["env_step_s"] > 0
    # each failure restarted a worker: 2 initial + raise + 2 exits + hang
    assert runner.n_worker_starts >= 5
    # lockstep: the first batch holds both slots, i.e. rows of two tasks
    assert {r.task_id for r in policy.batches[0]} == {0, 1}, policy.batches[0]
    # per-row steps count from 0
    assert all(shape[1:] == (128, 128, 3) for shape in policy.shapes)
    steps_of_normal = [r.step for b in policy.batches for r in b if (r.task_id, r.episode_index) == (1, 1)]
    assert steps_of_normal == [0, 1, 2, 3]


@pytest.mark.libero
def test_env_is_reused_across_episodes_and_workers_are_recycled() -> None:
    """Same EnvConfig: the worker keeps its env (soft reset); a new step cap alone keeps it too; after
    `recycle_episodes` episodes a fresh worker builds a fresh env."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    cfg = EnvConfig(suite="libero_object", task_id=0, max_steps=2)
    episodes = [Episode(cfg, 0, 0, 0), Episode(replace(cfg, max_steps=3), 1, 1, 1), Episode(cfg, 2, 2, 2)]
    with VectorRunner(RandomPolicy(), num_envs=1, recycle_episodes=2, progress=False) as runner:
        results = runner.run(episodes)
    assert [r.record["timing"]["env_rebuilt"] for r in results] == [True, False, True]
    assert [r.record["steps"] for r in results] == [2, 3, 2]
    assert runner.n_worker_starts == 2
