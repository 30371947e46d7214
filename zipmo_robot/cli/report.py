"""`zipmo-robot report RUN_DIR [RUN_DIR ...]`: rebuild the report of eval/rollout runs from their JSONL alone."""

from __future__ import annotations

import argparse

HELP = "Rebuild a run's report (Table 2 layout, intervals, chart, failures page); compare runs (McNemar)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="eval or rollout output folders")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="treat the folders as shards of one run (else: one run each, the first compared with the others)",
    )
    parser.add_argument(
        "--errors-as-failures",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count episodes still in error as failures (default: what the run recorded)",
    )
    parser.add_argument(
        "--out", help="where to write report.md/csv/png and failures.html (default: first RUN_DIR)"
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from zipmo_robot.errors import UserError
    from zipmo_robot.eval.tables import write_report

    if overrides:
        raise UserError(f"report takes no key=value settings, got {' '.join(overrides)}")
    for d in args.run_dirs:
        if not Path(d).is_dir():
            raise UserError(f"{d} is not a folder; give the --out folder of an eval or rollout run")
    single = len(args.run_dirs) == 1
    report = write_report(
        [Path(d) for d in args.run_dirs],
        errors_as_failures=args.errors_as_failures,
        out=Path(args.out) if args.out else None,
        merge=args.merge or single,
    )
    print(report["markdown"])
    print(f"report written to {report['out']} (report.md, report.csv, report.png, failures.html)")
    return 0
