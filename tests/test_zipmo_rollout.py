"""The ZipMo agent (tiny official-layout head from the parity fixtures) through the real vectorised runner:
2 real LIBERO envs of two different tasks share every batched `act`, for a few steps; results, per-stage
timing and videos (with the plan drawn on) are written."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import parity  # tests/parity.py: the fixture loader
import pytest
import torch
import yaml
from zipmo_robot.policy.base import Policy

pytestmark = pytest.mark.libero

MAX_STEPS = 3


class RecordingPolicy(Policy):
    """Forwards everything to the agent and keeps each batch's rows and actions (a real pass-through)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[list, np.ndarray]] = []

    def reset(self, seed: int | None = None) -> None:
        self.inner.reset(seed)

    def act(self, obs: dict[str, Any], rows: list) -> np.ndarray:
        actions = self.inner.act(obs, rows)
        self.calls.append((list(rows), np.array(actions)))
        return actions

    def episode_info(self, slot: int) -> dict[str, Any]:
        return self.inner.episode_info(slot)

    def overlay_views(self, obs: dict[str, Any], rows: list) -> list:
        return self.inner.overlay_views(obs, rows)

    def resolved_options(self) -> dict[str, Any]:
        return self.inner.resolved_options()


def _head_kind() -> str | None:
    heads = [k for k in parity.kinds() if "PolicyHead" in parity.kind_info(k).get("official_class", "")]
    return next(
        (k for k in heads if "TraMoE" in parity.kind_info(k)["official_class"]), heads[0] if heads else None
    )


def test_tiny_zipmo_agent_in_two_real_envs(tmp_path) -> None:
    from zipmo_robot.configs import compose
    from zipmo_robot.eval.rollout import run_rollout
    from zipmo_robot.policy.factory import make_policy

    kind = _head_kind()
    assert kind is not None, "the parity manifest lists no policy-head kind"
    ckpt = parity.fixture_dir() / parity.kind_info(kind)["weights"]
    out = tmp_path / "run"
    cfg = compose(
        "rollout",
        [
            "suite=libero_goal", "tasks=[0,5]", "episodes=1", "num_envs=2", f"max_steps={MAX_STEPS}",
            "policy=zipmo", f"out={out}", "video=true", "runner.progress=false",
        ],
    )  # fmt: skip
    options = {  # the schema's own defaults for everything else (precision bf16, cfg_scale 1.0, ...)
        "checkpoint": str(ckpt),
        "dino_heads": parity.manifest()["config"]["dino"]["num_heads"],
        "nfe": 2,
        "overlay": True,
        "suite": "libero_goal",
    }
    policy = RecordingPolicy(make_policy("zipmo", options))
    summary = run_rollout(cfg, policy)

    # each env got MAX_STEPS actions; the runner batches the envs that are ready, so at least one call
    # mixed the two tasks
    assert any(sorted(r.task_id for r in rows) == [0, 5] for rows, _ in policy.calls)
    steps_per_task: dict[int, list[int]] = {0: [], 5: []}
    for rows, actions in policy.calls:
        assert actions.shape == (len(rows), 7) and actions.dtype == np.float32
        assert np.isfinite(actions).all()
        for r in rows:
            steps_per_task[r.task_id].append(r.step)
    assert steps_per_task == {0: list(range(MAX_STEPS)), 5: list(range(MAX_STEPS))}

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["task_id"] for r in records) == [0, 5]
    for r in records:
        assert r["status"] == "failure" and r["steps"] == MAX_STEPS  # 3 steps cannot solve a task
        stages = r["policy_info"]["timing"]
        assert set(stages) == {"preprocess_s", "encode_s", "plan_s", "head_s", "overlay_s"}
        assert stages["plan_s"] > 0 and stages["encode_s"] > 0 and stages["overlay_s"] > 0
        assert r["timing"]["env_step_s"] > 0
        video = out / r["video"]
        assert video.stat().st_size > 0

        import imageio.v2 as iio

        frames = iio.mimread(video)
        assert len(frames) == MAX_STEPS + 1  # the reset observation + one per step
    assert summary["overall"]["episodes"] == 2
    written = json.loads((out / "summary.json").read_text())
    assert written["complete"] is True
    # the values the agent ran with, defaults decided, are written beside the results
    expected = {"nfe": 2, "precision": "bf16", "cfg_scale": 1.0, "overlay": True}
    expected["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    saved = yaml.safe_load((out / "config.yaml").read_text())["policy_options"]
    for where in (saved, written["settings"]["policy_options"], written["policy_resolved"]):
        assert {k: where[k] for k in expected} == expected, where
    assert written["policy_resolved"]["kind"] == kind and written["policy_resolved"][
        "checkpoint_path"
    ] == str(ckpt)
