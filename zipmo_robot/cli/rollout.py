"""`zipmo-robot rollout`: run a policy on LIBERO tasks in parallel worker processes; results, summary, videos."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "Roll out a policy on LIBERO tasks (parallel envs); write results.jsonl, summary.json and videos."

DEFAULT_POLICY = "zipmo"  # the ZipMo agent (policy.factory._make_zipmo)

# flag dest -> config key (flags given on the command line become hydra overrides); the run flags and the
# policy-option flags are shared with `zipmo-robot eval` (cli/eval.py)
RUN_FLAG_KEYS: dict[str, str] = {
    k: k for k in ("episodes", "num_envs", "policy", "out", "video", "max_steps", "retries", "assets")
}
POLICY_OPTION_FLAGS = ("nfe", "cfg_scale", "precision", "compile", "device", "overlay", "demo")
POLICY_FLAG_KEYS: dict[str, str] = {k: f"policy_options.{k}" for k in POLICY_OPTION_FLAGS}
_FLAG_KEYS: dict[str, str] = {
    "suite": "suite",
    "seed": "seed",
    "image_size": "image_size",
    **RUN_FLAG_KEYS,
    "checkpoint": "policy_options.checkpoint",
    **POLICY_FLAG_KEYS,
}


def add_policy_option_arguments(g: Any) -> None:
    """The `policy_options` flags (`POLICY_OPTION_FLAGS`) on an argument group; defaults: PolicyConfig's."""
    g.add_argument("--nfe", type=int, help="planner sampling steps")
    g.add_argument("--cfg-scale", type=float, help="planner guidance scale")
    g.add_argument("--precision", help="policy numerics, e.g. fp32 (default: the policy's)")
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ZipMo fast path: torch.compile the planner (needs a C++ compiler; compiles per batch size on "
        "first use; actions within the parity tolerance of the exact path, not bit-identical)",
    )
    g.add_argument("--device", help="torch device for the policy, e.g. cpu or cuda")
    g.add_argument(
        "--overlay", action=argparse.BooleanOptionalAction, default=None, help="draw plans on videos"
    )
    g.add_argument("--demo", help="demonstration file (--policy replay)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zipmo_robot.envs.spec import SUITES
    from zipmo_robot.policy.factory import POLICY_NAMES

    g = parser.add_argument_group("what to run")
    g.add_argument("--suite", choices=SUITES, help="LIBERO suite (default libero_spatial)")
    g.add_argument("--tasks", help="task ids, e.g. 0,3 or 2-5 (default: every task of the suite)")
    g.add_argument("--episodes", type=int, help="episodes per task (default: the protocol's)")
    g.add_argument(
        "--protocol", help="evaluation protocol: default, zipmo_release, atm, tramoe, literature, lerobot"
    )
    g.add_argument("--list-tasks", action="store_true", help="print the suite's task ids and instructions")
    g.add_argument("--seed", type=int, help="base seed (default: the protocol's)")
    g.add_argument(
        "--image-size", type=int, help="render size of both cameras (default: the protocol's, 128)"
    )
    g.add_argument("--max-steps", type=int, help="policy steps per episode (default: the protocol's cap)")
    g = parser.add_argument_group("how to run it")
    g.add_argument("--num-envs", type=int, help="worker processes, 2-3 GB each (default 2)")
    g.add_argument("--retries", type=int, help="retries of an episode whose worker failed (default 2)")
    g.add_argument(
        "--out", help="output folder (default runs/rollout/<suite>-<policy>-<protocol>-seed<seed>)"
    )
    g.add_argument(
        "--video", action=argparse.BooleanOptionalAction, default=None, help="write mp4s (default on)"
    )
    g.add_argument(
        "--assets", help="LIBERO assets folder (else $ZIPMO_LIBERO_ASSETS, else installed packages)"
    )
    g = parser.add_argument_group("policy")
    g.add_argument("--policy", choices=POLICY_NAMES, help=f"policy (default {DEFAULT_POLICY})")
    g.add_argument("--checkpoint", help="policy checkpoint: official:atm, official:tramoe or a file")
    add_policy_option_arguments(g)


def _override(key: str, value: Any) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"{key}='{escaped}'"
    return f"{key}={value}"


def build_overrides(args: argparse.Namespace) -> list[str]:
    """One hydra override per flag given (the user's trailing key=value words are applied after these)."""
    out = []
    if args.protocol is not None:
        out.append(f"protocol={args.protocol}")
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            out.append(_override(key, value))
    if args.tasks is not None:
        out.append(_override("tasks", args.tasks))
    return out


def print_tasks(suite: str) -> None:
    from zipmo_robot.envs.suites import list_tasks

    for t in list_tasks(suite):
        print(f"{t.task_id:>3}  {t.language}")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from omegaconf import open_dict

    from zipmo_robot.errors import UserError
    from zipmo_robot.eval.protocols import preset_names
    from zipmo_robot.eval.reports import print_table
    from zipmo_robot.eval.rollout import resolve_config, run_rollout
    from zipmo_robot.eval.settings import compose_command
    from zipmo_robot.policy.factory import make_policy

    if args.list_tasks:
        print_tasks(args.suite or "libero_spatial")
        return 0
    if args.protocol is not None and args.protocol not in preset_names():
        raise UserError(f"unknown protocol {args.protocol!r}; known protocols: {', '.join(preset_names())}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(
            f"--out {args.out} is an existing file, not a folder; give a folder path for the results"
        )
    cfg = compose_command("rollout", overrides, build_overrides(args))
    if cfg.policy is None:
        with open_dict(cfg):
            cfg.policy = DEFAULT_POLICY
    cfg = resolve_config(cfg)
    options = {k: v for k, v in cfg.policy_options.items()}
    options.update(
        suite=cfg.suite,
        tasks=list(cfg.tasks),
        seed=cfg.seed,
        image_size=cfg.image_size,
        max_steps=cfg.max_steps,
        settle_steps=cfg.protocol.settle_steps,
        orientation=cfg.protocol.orientation,
    )
    policy = make_policy(cfg.policy, options)
    try:
        summary = run_rollout(cfg, policy)
    finally:
        close = getattr(policy, "close", None)
        if callable(close):
            close()
    print_table(summary)
    print(f"results in {summary['output_dir']}")
    return 0
