"""`run_rollout(cfg, policy)`: evaluate a policy on LIBERO tasks with the vector runner, writing results as
episodes finish.

Files in the output folder: `config.yaml` (the fully resolved config), `results.jsonl` (one record per finished
episode, appended and fsynced), `summary.json` (rewritten atomically after every episode; `complete: true` at
the end) and `videos/*.mp4`. A killed run resumes: rerunning with the same settings and `--out` skips the
episodes already recorded (episodes that ended in `error` are run again).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from zipmo_robot.errors import UserError

DEFAULT_RUNS_DIR = Path("runs") / "rollout"


def _to_container(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def parse_tasks(tasks: Any, n_tasks: int, suite: str) -> list[int]:
    """Task ids from None ("all"), "all", "0,3", "2-5", an int or a list; unknown ids raise `UserError`."""
    if tasks is None or tasks == "all":
        return list(range(n_tasks))
    if isinstance(tasks, int):
        items: list[Any] = [tasks]
    elif isinstance(tasks, str):
        items = [t.strip() for t in tasks.split(",") if t.strip()]
    else:
        items = list(tasks)
    ids: list[int] = []
    for item in items:
        try:
            if isinstance(item, str) and "-" in item.strip("-"):
                lo, hi = item.split("-", 1)
                ids.extend(range(int(lo), int(hi) + 1))
            else:
                ids.append(int(item))
        except ValueError:
            raise UserError(
                f"bad task id {item!r} in --tasks {tasks!r}; give ids like 0,3 or 2-5 (suite {suite!r} has "
                f"tasks 0..{n_tasks - 1})"
            ) from None
    return list(dict.fromkeys(ids))


def resolve_config(cfg: Any) -> Any:
    """Fill every null of the rollout config that has a derived value (seed, episodes, sizes, out, tasks), so
    the `config.yaml` written beside the results is exactly what ran. Unknown suite/task raise `UserError`."""
    from omegaconf import OmegaConf, open_dict
    from zipmo_robot.envs.suites import check_suite, get_task, list_tasks
    from zipmo_robot.eval.protocols import protocol_from_dict

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    try:
        protocol = protocol_from_dict(OmegaConf.to_container(cfg.protocol))
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad protocol config: {exc}") from exc
    if cfg.policy is None:
        raise UserError("no policy given: pass --policy (or policy=NAME)")
    check_suite(cfg.suite)
    n_tasks = len(list_tasks(cfg.suite))
    tasks = parse_tasks(cfg.tasks, n_tasks, cfg.suite)
    for t in tasks:
        get_task(cfg.suite, t)  # raises UserError listing the valid ids
    for name in ("episodes", "num_envs", "image_size", "max_steps"):
        value = cfg[name]
        if value is not None and int(value) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if cfg.retries is not None and int(cfg.retries) < 0:
        raise UserError(f"--retries must be >= 0, got {cfg.retries}")
    with open_dict(cfg):
        cfg.tasks = tasks
        cfg.seed = int(protocol.seed if cfg.seed is None else cfg.seed)
        cfg.episodes = int(cfg.episodes or protocol.episodes_per_task)
        cfg.image_size = int(cfg.image_size or protocol.image_size)
        cfg.max_steps = int(cfg.max_steps or protocol.max_steps)
        cfg.protocol.image_size = cfg.image_size
        cfg.protocol.max_steps = cfg.max_steps
        if cfg.out is None:
            cfg.out = str(DEFAULT_RUNS_DIR / f"{cfg.suite}-{cfg.policy}-{protocol.name}-seed{cfg.seed}")
    return cfg


def outcome_settings(cfg: Any) -> dict[str, Any]:
    """The settings that decide episode outcomes (their hash tags every record): protocol, seed, policy.

    Not included: worker count, retries, timeouts, videos, output folder, task and episode lists (episodes
    are keyed by suite, task and index), so a resumed run may add tasks or episodes.
    """
    c = _to_container(cfg)
    return {
        "protocol": c["protocol"],
        "seed": c["seed"],
        "policy": c["policy"],
        "policy_options": {k: v for k, v in (c.get("policy_options") or {}).items() if v is not None},
    }


def plan_episodes(cfg: Any) -> list[Any]:
    """Every episode of the run, task-major: `Episode(EnvConfig, episode_index, init_state_id, seed)`."""
    from zipmo_robot.envs.runner import Episode
    from zipmo_robot.eval.protocols import env_seed, episode_seed, init_state_for, protocol_from_dict

    c = _to_container(cfg)
    protocol = protocol_from_dict(c["protocol"])
    episodes = []
    for task_id in c["tasks"]:
        env_cfg = protocol.env_config(c["suite"], int(task_id))
        for e in range(int(c["episodes"])):
            episodes.append(
                Episode(
                    env=env_cfg,
                    episode_index=e,
                    init_state_id=init_state_for(protocol, task_id, e, c["seed"]),
                    seed=episode_seed(protocol, task_id, e, c["seed"]),
                    env_seed=env_seed(protocol, task_id, e, c["seed"]),
                )
            )
    return episodes


def run_rollout(cfg: Any, policy: Any, episodes: list[Any] | None = None) -> dict[str, Any]:
    """Run the rollout described by `cfg` (a composed `configs/rollout.yaml`) with `policy`; returns the summary.

    `episodes` replaces the planned episode list (tests use it to inject faults).
    """
    from zipmo_robot.configs import save_resolved
    from zipmo_robot.envs.runner import VectorRunner
    from zipmo_robot.envs.setup import ensure_libero
    from zipmo_robot.envs.video import write_episode_video
    from zipmo_robot.eval import reports

    cfg = resolve_config(cfg)
    c = _to_container(cfg)
    out = Path(c["out"])
    out.mkdir(parents=True, exist_ok=True)
    ensure_libero(c["assets"])  # fail fast (missing assets) before any worker starts
    settings = outcome_settings(cfg)
    s_hash = reports.settings_hash(settings)
    results_path = out / reports.RESULTS_FILE

    if results_path.exists() and not c["resume"]:
        stale = out / f"results.{time.strftime('%Y%m%d-%H%M%S')}.jsonl.old"
        results_path.rename(stale)
    foreign = reports.foreign_settings(results_path, s_hash)
    if foreign:
        raise UserError(
            f"{results_path} holds episodes run with other settings (hash {', '.join(sorted(foreign))}; this run "
            f"is {s_hash}: protocol, seed, policy or its options differ). Use another --out, or add resume=false "
            f"to start over (the old file is kept beside it)."
        )
    save_resolved(cfg, out)

    planned = plan_episodes(cfg) if episodes is None else list(episodes)
    done = reports.completed_keys(results_path, s_hash)
    todo = [ep for ep in planned if ep.key not in done]
    planned_keys = {ep.key for ep in planned}
    if len(todo) < len(planned):
        print(f"resuming in {out}: {len(planned) - len(todo)} of {len(planned)} episodes already recorded")

    def current_records() -> list[dict[str, Any]]:
        latest = reports.latest_records(reports.read_results(results_path), s_hash)
        return [r for k, r in latest.items() if k in planned_keys]

    extra = {"output_dir": str(out), "settings_hash_inputs": settings}

    def write_summary(complete: bool) -> dict[str, Any]:
        reports.write_summary(out, current_records(), c, settings_hash=s_hash, complete=complete, extra=extra)
        return reports.summarize(current_records())

    writer = reports.ResultsWriter(results_path)

    def on_result(result: Any) -> None:
        record = {**result.record, "settings_hash": s_hash}
        if result.frames:
            path = write_episode_video(
                out / "videos",
                result.frames,
                suite=record["suite"],
                task_id=record["task_id"],
                episode_index=record["episode_index"],
                seed=record["seed"],
                outcome=record["status"],
            )
            record["video"] = str(path.relative_to(out))
        writer.append(record)
        write_summary(complete=False)

    r = c["runner"]
    try:
        if todo:
            with VectorRunner(
                policy,
                num_envs=min(int(c["num_envs"]), len(todo)),
                retries=int(c["retries"]),
                start_method=r["start_method"],
                reset_timeout=float(r["reset_timeout"]),
                step_timeout=float(r["step_timeout"]),
                recycle_episodes=r["recycle_episodes"],
                recycle_rss_gb=r["recycle_rss_gb"],
                lockstep=bool(r.get("lockstep", False)),
                capture_frames=bool(c["video"]),
                progress=bool(r["progress"]),
                assets=c["assets"],
            ) as runner:
                runner.run(todo, on_result=on_result)
    finally:
        writer.close()
    summary = write_summary(complete=True)
    summary["output_dir"] = str(out)
    return summary
