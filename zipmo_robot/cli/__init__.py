"""The `zipmo-robot` command line: subcommands with ordinary flags plus trailing hydra `key=value` overrides.

Each subcommand lives in `zipmo_robot.cli.<name>` and defines `HELP`, `add_arguments(parser)` and
`run(args, overrides) -> int`. Those modules import nothing heavy at module level, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from zipmo_robot.errors import UserError

# name -> module; one explicit list, read in one place.
COMMANDS: dict[str, str] = {
    "rollout": "zipmo_robot.cli.rollout",
    "doctor": "zipmo_robot.cli.doctor",
    "download": "zipmo_robot.cli.download",
    "bench": "zipmo_robot.cli.bench",
    "preprocess": "zipmo_robot.cli.preprocess",
    "collect": "zipmo_robot.cli.collect",
    "train": "zipmo_robot.cli.train",
    "eval": "zipmo_robot.cli.eval",
    "report": "zipmo_robot.cli.report",
    "eval-tracks": "zipmo_robot.cli.eval_tracks",
    "recipe": "zipmo_robot.cli.recipe",
    "validate": "zipmo_robot.cli.validate",
}


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate trailing hydra `key=value` words (no leading dash) from ordinary arguments."""
    flags: list[str] = []
    overrides: list[str] = []
    for word in argv:
        if not word.startswith("-") and "=" in word and not flags[-1:] == ["--"]:
            overrides.append(word)
        else:
            flags.append(word)
    return flags, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zipmo-robot",
        description="Run, train and benchmark ZipMo policies in LIBERO. "
        "Trailing key=value words are hydra overrides of the command's config.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is absent from this install is left out
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags, overrides = _split_overrides(argv)
    parser = build_parser()
    args = parser.parse_args(flags)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args, overrides) or 0)
    except UserError as exc:
        print(f"zipmo-robot {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zipmo-robot {args.command}: interrupted; results written so far are kept.", file=sys.stderr)
        return 130
