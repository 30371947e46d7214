"""`zipmo-robot doctor [--assets DIR] [--skip-golden] [--json]`: check this machine can run LIBERO as pinned."""

from __future__ import annotations

import argparse
import sys

HELP = (
    "check versions, rendering (EGL/OSMesa), LIBERO config and assets, init states, the golden frame and "
    "torch devices; exit code 1 on any failure"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--assets",
        metavar="DIR",
        default=None,
        help="LIBERO asset folder to use (default: $ZIPMO_LIBERO_ASSETS, else the installed asset packages)",
    )
    parser.add_argument(
        "--skip-golden", action="store_true", help="skip rendering the golden frame through LiberoEnv (~20 s)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from zipmo_robot.envs.doctor import format_table, run_checks, to_json
    from zipmo_robot.errors import UserError

    if overrides:
        raise UserError(f"doctor takes no key=value overrides, got {overrides}")

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = run_checks(assets=args.assets, skip_golden=args.skip_golden, progress=progress)
    print(to_json(results) if args.json else format_table(results))
    return 1 if any(r.status == "fail" for r in results) else 0
