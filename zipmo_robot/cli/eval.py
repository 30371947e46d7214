"""`zipmo-robot eval`: success rates under a named protocol over (suite, task, seed, episode) cells, with
resume, sharding by RANK/WORLD_SIZE, and the report (Table 2 layout, intervals, charts) at the end."""

from __future__ import annotations

import argparse
from typing import Any

HELP = (
    "Evaluate a policy under a protocol (atm, tramoe, zipmo_release, literature, lerobot); resumable; report."
)


def _flag_keys() -> dict[str, str]:
    """flag dest -> config key: rollout's run and policy-option flags, and eval's own."""
    from zipmo_robot.cli.rollout import POLICY_FLAG_KEYS, RUN_FLAG_KEYS

    return {
        **RUN_FLAG_KEYS,
        "resume": "resume",
        "errors_as_failures": "errors_as_failures",
        **POLICY_FLAG_KEYS,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zipmo_robot.cli.rollout import add_policy_option_arguments

    g = parser.add_argument_group("what to run (selections: the run keeps its protocol's name)")
    g.add_argument("--protocol", help="preset of configs/protocol (default zipmo_release)")
    g.add_argument("--suites", help="comma-separated suites (default: the protocol's)")
    g.add_argument("--tasks", help="task ids for every suite, e.g. 0,3 or 2-5 (default: all)")
    g.add_argument("--episodes", type=int, help="episodes per task and seed (default: the protocol's)")
    g.add_argument("--seeds", help="comma-separated seeds (default: the protocol's seed)")
    g = parser.add_argument_group("protocol knobs (changing one labels the run <preset>+overrides)")
    g.add_argument("--max-steps", type=int, help="episode cap for every suite")
    g = parser.add_argument_group("policy")
    g.add_argument("--policy", help="zipmo (default), random, zero, scripted, replay, or module:Class")
    g.add_argument(
        "--checkpoint",
        action="append",
        nargs="?",  # `--checkpoint SUITE=PATH`: the command line splits key=value words off; run() rejoins them
        help="PATH, SUITE=PATH (per-suite heads, repeat per suite) or several PATHs (one per seed: the "
        "seed axis over training seeds)",
    )
    add_policy_option_arguments(g)
    g = parser.add_argument_group("how to run it")
    g.add_argument("--num-envs", type=int, help="worker processes, 2-3 GB each (default 2)")
    g.add_argument("--out", help="output folder (default runs/eval/<protocol>-<policy>)")
    g.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip finished cells (default); --no-resume starts over, keeping old results beside",
    )
    g.add_argument("--retries", type=int, help="retries of an episode whose worker failed (default 2)")
    g.add_argument(
        "--errors-as-failures",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count episodes still in error as failures (OpenVLA-family convention; default: the protocol's)",
    )
    g.add_argument("--video", action=argparse.BooleanOptionalAction, default=None, help="write mp4s")
    g.add_argument("--assets", help="LIBERO assets folder")


def _override(key: str, value: Any) -> str:
    from zipmo_robot.cli.rollout import _override as one

    return one(key, value)


def build_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if args.protocol is not None:
        out.append(f"protocol={args.protocol}")
    for dest, key in _flag_keys().items():
        value = getattr(args, dest)
        if value is not None:
            out.append(_override(key, value))
    if args.suites is not None:
        out.append(f"suites=[{','.join(s.strip() for s in args.suites.split(',') if s.strip())}]")
    if args.tasks is not None:
        out.append(_override("tasks", args.tasks))
    if args.seeds is not None:
        out.append(_override("seeds", args.seeds))
    if args.checkpoint:
        out.append(
            "checkpoint=[" + ",".join(_override("x", c).split("=", 1)[1] for c in args.checkpoint) + "]"
        )
    return out


def _rejoin_checkpoints(values: list[str | None], overrides: list[str]) -> tuple[list[str], list[str]]:
    """`--checkpoint libero_goal=PATH` reaches us as an empty --checkpoint and a `libero_goal=PATH` word
    among the hydra overrides: give each empty flag the next SUITE=PATH word, in order."""
    from zipmo_robot.envs.spec import SUITES
    from zipmo_robot.errors import UserError

    suite_words = [w for w in overrides if w.split("=", 1)[0] in SUITES]
    rest = [w for w in overrides if w not in suite_words]
    out: list[str] = []
    for v in values:
        if v is None:
            if not suite_words:
                raise UserError("--checkpoint needs a value: PATH or SUITE=PATH")
            v = suite_words.pop(0)
        out.append(v)
    if suite_words:
        raise UserError(f"{suite_words[0]!r}: give per-suite heads as --checkpoint {suite_words[0]}")
    return out, rest


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from zipmo_robot.errors import UserError
    from zipmo_robot.eval.harness import run_eval
    from zipmo_robot.eval.protocols import preset_names
    from zipmo_robot.eval.settings import compose_command

    if args.protocol is not None and args.protocol not in preset_names():
        raise UserError(f"unknown protocol {args.protocol!r}; known protocols: {', '.join(preset_names())}")
    if args.checkpoint and None in args.checkpoint:
        args.checkpoint, overrides = _rejoin_checkpoints(args.checkpoint, overrides)
    cfg = compose_command("eval", overrides, build_overrides(args))
    report = run_eval(cfg)
    print(report["markdown"])
    print(f"results and report in {report['out']}")
    return 0
