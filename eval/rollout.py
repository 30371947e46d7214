"""`run_rollout(cfg, policy)`: `zipmo-robot rollout`, the one-suite, one-seed case of the evaluation engine
(eval/engine.py).

Files in the output folder: `config.yaml` (the fully resolved config), `results.jsonl` (one record per finished
episode, appended and fsynced), `cells.json`, `summary.json` (rewritten atomically after every episode;
`complete: true` at the end) and `videos/*.mp4`. A killed run resumes: rerunning with the same settings and
`--out` skips the episodes already recorded (episodes that ended in `error` are run again).
"""

from __future__ import annotations

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
    """Task ids from None ("all"), "all", "0,3", "2-5", an int or a list; malformed ids raise `UserError`
    (unknown ids are checked by `check_task_ids`)."""
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


def check_task_ids(suite: str, ids: list[int]) -> None:
    """Unknown task ids raise one compact `UserError`: the valid range, and how to list the instructions."""
    from zipmo_robot.envs.suites import list_tasks

    n = len(list_tasks(suite))
    bad = [t for t in ids if not 0 <= t < n]
    if bad:
        raise UserError(
            f"unknown task id{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} for suite {suite!r}; "
            f"valid ids are 0..{n - 1} (list them with: zipmo-robot rollout --suite {suite} --list-tasks)"
        )


def resolve_config(cfg: Any) -> Any:
    """Fill every null of the rollout config that has a derived value (seed, episodes, caps, out, tasks) and
    fold `image_size`/`max_steps` into the protocol, so the `config.yaml` written beside the results is exactly
    what ran. Unknown suite/task or a policy that cannot act on a task raise `UserError` (before any env)."""
    from omegaconf import OmegaConf, open_dict
    from zipmo_robot.envs.suites import check_suite, list_tasks
    from zipmo_robot.eval.policies import check_support
    from zipmo_robot.eval.protocols import protocol_from_dict

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if cfg.policy is None:
        raise UserError("no policy given: pass --policy (or policy=NAME)")
    check_suite(cfg.suite)
    n_tasks = len(list_tasks(cfg.suite))
    tasks = parse_tasks(cfg.tasks, n_tasks, cfg.suite)
    check_task_ids(cfg.suite, tasks)
    for name in ("episodes", "num_envs", "image_size", "max_steps"):
        value = cfg[name]
        if value is not None and int(value) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if cfg.retries is not None and int(cfg.retries) < 0:
        raise UserError(f"--retries must be >= 0, got {cfg.retries}")
    with open_dict(cfg):
        if cfg.image_size is not None:
            cfg.protocol.image_size = int(cfg.image_size)
        if cfg.max_steps is not None:
            for suite in cfg.protocol.max_steps:
                cfg.protocol.max_steps[suite] = int(cfg.max_steps)
    try:
        protocol = protocol_from_dict(cfg.protocol)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad protocol config: {exc}") from exc
    check_support(str(cfg.policy), {cfg.suite: tasks})
    with open_dict(cfg):
        cfg.tasks = tasks
        cfg.seed = int(protocol.seed if cfg.seed is None else cfg.seed)
        cfg.episodes = int(cfg.episodes or protocol.episodes_per_task)
        cfg.image_size = protocol.image_size
        cfg.max_steps = protocol.max_steps[cfg.suite]
        if cfg.out is None:
            cfg.out = str(DEFAULT_RUNS_DIR / f"{cfg.suite}-{cfg.policy}-{protocol.name}-seed{cfg.seed}")
    return cfg


def outcome_settings(cfg: Any) -> dict[str, Any]:
    """The settings that decide episode outcomes (their hash tags every record): protocol, seed, policy.

    Not included: worker count, retries, timeouts, videos, output folder, task and episode lists (episodes
    are keyed by suite, task and index), so a resumed run may add tasks or episodes. Options at their "off"
    value that came after a run format (`compile: false`, the exact path) are left out, so runs started
    before they existed still resume.
    """
    c = _to_container(cfg)
    from zipmo_robot.policy.config import hashed_options

    options = hashed_options(c.get("policy_options") or {})
    if options.get("compile") is False:
        del options["compile"]
    return {"protocol": c["protocol"], "seed": c["seed"], "policy": c["policy"], "policy_options": options}


def _cells(c: dict[str, Any]) -> list[Any]:
    from zipmo_robot.eval.engine import plan_cells

    return plan_cells([c["suite"]], {c["suite"]: list(c["tasks"])}, [int(c["seed"])], int(c["episodes"]))


def plan_episodes(cfg: Any) -> list[Any]:
    """Every episode of a resolved config, task-major: the runner's `Episode` work items."""
    from zipmo_robot.eval.engine import cell_episode
    from zipmo_robot.eval.protocols import protocol_from_dict

    c = _to_container(cfg)
    protocol = protocol_from_dict(c["protocol"])
    return [cell_episode(protocol, cell) for cell in _cells(c)]


def run_rollout(cfg: Any, policy: Any, episodes: list[Any] | None = None) -> dict[str, Any]:
    """Run the rollout described by `cfg` (a composed `configs/rollout.yaml`) with `policy`; returns the summary.

    `episodes` replaces the planned work items of the same (suite, task, episode) (tests inject faults).
    """
    from omegaconf import open_dict
    from zipmo_robot.configs import save_resolved
    from zipmo_robot.eval.engine import PolicyGroup, RunOptions, protocol_stamp, run_cells
    from zipmo_robot.eval.protocols import protocol_from_dict

    cfg = resolve_config(cfg)
    c = _to_container(cfg)
    out = Path(c["out"])
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; give a folder path for the results")
    protocol = protocol_from_dict(c["protocol"])
    settings = outcome_settings(cfg)
    cells = _cells(c)
    group = PolicyGroup(
        name="all", cells=cells, options=dict(c.get("policy_options") or {}), settings=settings
    )
    override = None
    if episodes is not None:
        by_key = {(ep.env.suite, ep.env.task_id, ep.episode_index): ep for ep in episodes}
        override = {cell: by_key.get((cell.suite, cell.task_id, cell.episode_index)) for cell in cells}
    stamp = protocol_stamp(protocol, str(c["policy"]), protocol.errors_as_failures)
    s_hash = group.settings_hash
    planned = {cell.key for cell in cells}
    records: dict[tuple, dict] = {}
    extra = {"output_dir": str(out), "settings_hash_inputs": settings}
    from zipmo_robot.eval import reports

    def write_summary(complete: bool) -> dict[str, Any]:
        current = [r for k, r in records.items() if k in planned]
        reports.write_summary(out, current, c, settings_hash=s_hash, complete=complete, extra=extra)
        return reports.summarize(current)

    out.mkdir(parents=True, exist_ok=True)
    used = policy.resolved_options()  # the values the policy runs with (defaults decided), for the reader
    with open_dict(cfg):
        for key in [k for k in used if k in cfg.policy_options]:
            cfg.policy_options[key] = used[key]
    c["policy_options"] = _to_container(cfg)["policy_options"]
    extra["policy_resolved"] = used
    save_resolved(cfg, out)
    results_path = out / reports.RESULTS_FILE
    if c["resume"]:
        records.update(reports.latest_records(reports.read_results(results_path), s_hash))

    def on_record(record: dict[str, Any]) -> None:
        records[reports.episode_key(record)] = record
        write_summary(complete=False)

    opts = RunOptions.from_config(c)
    final = run_cells(
        protocol, [group], lambda g: policy, opts, stamp, on_record=on_record, episodes_override=override,
        close_policies=False,
    )  # fmt: skip
    records.update({reports.episode_key(r): r for r in final})
    summary = write_summary(complete=True)
    summary["output_dir"] = str(out)
    return summary
