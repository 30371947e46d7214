"""`run_eval(cfg)`: resolve a composed `configs/eval.yaml` into cells and policy groups, run them with the engine
(eval/engine.py), then write the report (eval/tables.py).

Seeds and checkpoints: a seed is the protocol's seed (init-state draw, env seeds, policy noise). Several
`--checkpoint PATH` values form the seed axis instead (ATM's +- is over training seeds): checkpoint i is seed i
(`--seeds` to name them, default protocol.seed + i). `SUITE=PATH` values give one head per suite (Tra-MoE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zipmo_robot.envs.spec import SUITES

from zipmo_robot.errors import UserError

DEFAULT_RUNS_DIR = Path("runs") / "eval"


def _int_list(value: Any, what: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise UserError(f"bad {what} {value!r}; give integers like 0,1,2") from None


def parse_checkpoints(values: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split `--checkpoint` values into a per-suite mapping (SUITE=PATH) and a list of plain paths."""
    per_suite: dict[str, str] = {}
    paths: list[str] = []
    for v in values:
        head, sep, tail = str(v).partition("=")
        if sep and head in SUITES:
            per_suite[head] = tail
        elif sep and "/" not in head and not head.startswith("official"):
            raise UserError(f"--checkpoint {v!r}: {head!r} is not a suite; valid suites: {', '.join(SUITES)}")
        else:
            paths.append(str(v))
    if per_suite and paths:
        raise UserError(
            "--checkpoint: give either SUITE=PATH values (one head per suite) or plain paths, not both"
        )
    return per_suite, paths


def resolve(cfg: Any) -> dict[str, Any]:
    """Everything a run needs, validated before any env or policy is built."""
    from omegaconf import OmegaConf
    from zipmo_robot.envs.suites import check_suite, list_tasks
    from zipmo_robot.eval.engine import PolicyGroup, plan_cells
    from zipmo_robot.eval.policies import check_name, check_support
    from zipmo_robot.eval.protocols import protocol_from_dict
    from zipmo_robot.eval.rollout import check_task_ids, parse_tasks

    c = OmegaConf.to_container(cfg, resolve=True)
    for name in ("episodes", "num_envs", "max_steps"):
        if c[name] is not None and int(c[name]) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {c[name]}")
    if int(c["retries"]) < 0:
        raise UserError(f"--retries must be >= 0, got {c['retries']}")
    if c["max_steps"] is not None:
        c["protocol"]["max_steps"] = {s: int(c["max_steps"]) for s in SUITES}
    try:
        protocol = protocol_from_dict(c["protocol"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad protocol config: {exc}") from exc
    suites = [check_suite(str(s)) for s in (c["suites"] or protocol.suites)]
    tasks = {}
    for s in suites:
        tasks[s] = parse_tasks(c["tasks"], len(list_tasks(s)), s)
        check_task_ids(s, tasks[s])
    episodes = int(c["episodes"] or protocol.episodes_per_task)
    per_suite, paths = parse_checkpoints(list(c["checkpoint"] or []))
    seeds = _int_list(c["seeds"], "--seeds")
    if len(paths) > 1:
        seeds = seeds or [protocol.seed + i for i in range(len(paths))]
        if len(seeds) != len(paths):
            raise UserError(f"{len(paths)} checkpoints but {len(seeds)} seeds: give one seed per checkpoint")
    seeds = seeds or [protocol.seed]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds has repeats: {seeds}")
    missing = [s for s in suites if per_suite and s not in per_suite]
    if missing:
        raise UserError(f"--checkpoint SUITE=PATH given, but not for {', '.join(missing)}")
    policy = str(c["policy"])
    check_name(policy)
    check_support(policy, tasks)
    errors_as_failures = (
        protocol.errors_as_failures if c["errors_as_failures"] is None else bool(c["errors_as_failures"])
    )

    options = {k: v for k, v in (c.get("policy_options") or {}).items() if v is not None}
    from zipmo_robot.policy.config import PolicyConfig, hashed_options

    if options.get("checkpoint", PolicyConfig.checkpoint) != PolicyConfig.checkpoint:
        raise UserError(
            f"policy_options.checkpoint={options['checkpoint']}: eval takes its checkpoints from --checkpoint "
            "(checkpoint=[PATH, ...]); give it there"
        )
    options.pop("checkpoint", None)  # the group's checkpoint (below) or the policy's default
    if policy == "zipmo" and not per_suite and not paths and protocol.heads == "per_suite":
        paths = ["official:tramoe"]  # the released Tra-MoE-mode head of each suite (resolved per group)
    cells = plan_cells(suites, tasks, seeds, episodes)
    by_suite = bool(per_suite) or protocol.heads == "per_suite"
    by_seed = len(paths) > 1
    groups: list[PolicyGroup] = []
    for gi_suite in suites if by_suite else [None]:
        for gi_seed in seeds if by_seed else [None]:
            ckpt = (
                per_suite.get(gi_suite) if per_suite else (paths[seeds.index(gi_seed)] if by_seed else None)
            )
            if ckpt is None and paths:
                ckpt = paths[0]
            g_cells = [
                cell
                for cell in cells
                if (gi_suite is None or cell.suite == gi_suite) and (gi_seed is None or cell.seed == gi_seed)
            ]
            name = "-".join(str(x) for x in (gi_suite, gi_seed) if x is not None) or "all"
            g_opts = {**options, **({"checkpoint": ckpt} if ckpt is not None else {})}
            settings = {
                "protocol": protocol.knobs(),
                "policy": policy,
                "policy_options": hashed_options(g_opts),
            }
            if gi_suite is not None:
                settings["head_suite"] = gi_suite
            groups.append(
                PolicyGroup(
                    name=name, cells=g_cells, options={**g_opts, "suite": gi_suite}, settings=settings
                )
            )
    label = protocol.label()
    out = Path(c["out"] or DEFAULT_RUNS_DIR / f"{label}-{policy.replace(':', '.')}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; give a folder path for the results")
    c.update(suites=suites, tasks=tasks, episodes=episodes, seeds=seeds, out=str(out))
    c["errors_as_failures"] = errors_as_failures
    return {
        "config": c,
        "protocol": protocol,
        "groups": groups,
        "out": out,
        "policy": policy,
        "errors_as_failures": errors_as_failures,
    }


def run_eval(cfg: Any, *, episodes_override: dict | None = None) -> dict[str, Any]:
    """Run (or resume) an evaluation and write its report; returns the report (see `tables.write_report`)."""
    from omegaconf import OmegaConf
    from zipmo_robot.configs import save_resolved
    from zipmo_robot.eval import policies, tables
    from zipmo_robot.eval.engine import RunOptions, Shard, protocol_stamp, run_cells

    plan = resolve(cfg)
    c, protocol, out = plan["config"], plan["protocol"], plan["out"]
    shard = Shard.from_env()
    out.mkdir(parents=True, exist_ok=True)
    name = "config.yaml" if shard.world_size == 1 else f"config.rank{shard.rank}.yaml"
    save_resolved(OmegaConf.create(c), out, name=name)
    stamp = protocol_stamp(protocol, plan["policy"], plan["errors_as_failures"])

    def build(group: Any) -> Any:
        opts = dict(group.options)
        seeds = sorted({cell.seed for cell in group.cells})
        suite = opts.pop("suite", None)
        opts.update(
            suite=suite,
            tasks=sorted({cell.task_id for cell in group.cells}) if suite else None,
            seed=seeds[0] if seeds else protocol.seed,
            settle_steps=protocol.settle_steps,
            orientation=protocol.orientation,
            image_size=protocol.image_size,
        )
        policy = policies.make(plan["policy"], opts)
        resolved[group.name] = getattr(policy, "resolved_options", dict)()  # a user policy may lack it
        save_resolved(OmegaConf.create(_with_resolved(c, resolved)), out, name=name)
        return policy

    resolved: dict[str, dict[str, Any]] = {}
    opts = RunOptions.from_config(c, shard)
    run_cells(protocol, plan["groups"], build, opts, stamp, episodes_override=episodes_override)
    return tables.write_report([out], errors_as_failures=None)


def _with_resolved(c: dict[str, Any], resolved: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's config with the options its policies run with (`Policy.resolved_options()`, defaults decided),
    as rollout writes them: `policy_resolved` per policy group, and `policy_options` filled in with the values
    every group shares."""
    out = {**c, "policy_options": dict(c.get("policy_options") or {}), "policy_resolved": dict(resolved)}
    for key in out["policy_options"]:
        values = {repr(r.get(key, "<unset>")) for r in resolved.values()}
        if len(values) == 1 and key in next(iter(resolved.values())):
            out["policy_options"][key] = next(iter(resolved.values()))[key]
    return out
