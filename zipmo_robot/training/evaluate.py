"""Evaluation during policy training: a short rollout of the current planner + head on fixed init states
through the same path as `zipmo-robot rollout` (`eval.rollout.run_rollout`, `envs.runner.VectorRunner`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def rollout_success(cfg: Any, planner: Any, head: Any, text: Any, out: Path) -> dict[str, Any]:
    """Roll out `cfg.eval` (suite, tasks, episodes, max_steps, protocol) with the agent built from `planner`
    and `head`; returns success rate, episode count and video paths (relative to `out`)."""
    from zipmo_robot.checkpoints.trained import task_embedder
    from zipmo_robot.configs import compose
    from zipmo_robot.eval.rollout import run_rollout
    from zipmo_robot.policy.agent import RollingReplanner

    e = cfg.eval
    tasks = ",".join(str(int(t)) for t in e.tasks)
    overrides = [
        f"protocol={e.protocol}",
        f"suite={e.suite}",
        f"tasks='{tasks}'",
        f"episodes={int(e.episodes)}",
        f"max_steps={int(e.max_steps)}",
        f"num_envs={int(e.num_envs)}",
        f"video={str(bool(e.video)).lower()}",
        f"out='{out}'",
        "policy=zipmo",
        "runner.progress=false",
    ]
    rcfg = compose("rollout", overrides)
    was = head.training
    head.eval()
    policy = RollingReplanner(
        planner,
        head,
        task_embedder=task_embedder(text.choice, planner.cfg.d_cross),
        nfe=int(cfg.policy.nfe),
        precision=cfg.policy.plan_precision,
    )
    try:
        summary = run_rollout(rcfg, policy)
    finally:
        head.train(was)
    overall = summary.get("overall", {})
    rate = overall.get("success_rate")
    videos = sorted(str(p.relative_to(out)) for p in (out / "videos").glob("*.mp4")) if e.video else []
    return {
        "success_rate": float(rate) if rate is not None else 0.0,
        "episodes": int(sum(t.get("success", 0) + t.get("failure", 0) for t in summary.get("tasks", []))),
        "videos": videos,
    }
