"""`zipmo-robot bench <name> [flags]`: run one sub-benchmark of `zipmo_robot.bench.SUB_BENCHMARKS`."""

from __future__ import annotations

import argparse

HELP = "benchmarks: planner (conditioning / Euler step / replan timing, memory, FLOPs) and others"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="write the full report as JSON to PATH ('-' = stdout)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zipmo_robot.bench import SUB_BENCHMARKS

    sub = parser.add_subparsers(dest="bench_name", metavar="NAME")
    for name, bench in SUB_BENCHMARKS.items():
        p = sub.add_parser(name, help=bench.help, description=bench.help)
        bench.add_arguments(p)
        _common(p)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from zipmo_robot.bench import SUB_BENCHMARKS
    from zipmo_robot.errors import UserError
    from zipmo_robot.files import atomic_write_text

    if not getattr(args, "bench_name", None):
        raise UserError(f"name a benchmark: zipmo-robot bench {{{','.join(SUB_BENCHMARKS)}}} [flags]")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device is visible to torch {torch.__version__}")
    torch.set_num_threads(args.threads)
    args.overrides = overrides
    bench = SUB_BENCHMARKS[args.bench_name]
    if args.json and args.json != "-":  # a sub-benchmark may call this after each result (partial report)
        args.on_result = lambda partial: atomic_write_text(args.json, json.dumps(partial, indent=2) + "\n")
    report = bench.run(args)
    text = json.dumps(report, indent=2)
    if args.json == "-":
        print(text)
    else:
        print(bench.format(report) if bench.format else text)
        if args.json:
            atomic_write_text(args.json, text + "\n")
            print(f"report written to {args.json}")
    return 0
