"""Benchmarks behind `zipmo-robot bench <name>`: one entry per sub-benchmark in `SUB_BENCHMARKS`.

A sub-benchmark is `SubBenchmark(help, add_arguments, run, format)`: `add_arguments(parser)` adds its flags,
`run(args) -> dict` returns a JSON-able report (`machine`, `settings`, `results` records, plus anything else)
and `format(report) -> str` prints it. The command adds the common flags `--threads`, `--device`, `--json`,
passes trailing hydra overrides as `args.overrides` and, with `--json PATH`, sets `args.on_result(report)`,
which a sub-benchmark calls after each record so partial results are on disk as they arrive.
Each sub-benchmark is a module of this package, imported only when it runs (the CLI imports this file to
build `--help`, so nothing heavy at module level anywhere here).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SubBenchmark:
    """One `zipmo-robot bench <name>` entry: its help line, its flags and its runner."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    format: Callable[[dict[str, Any]], str] | None = None  # report -> text table (None: JSON is printed)


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """`zipmo_robot.bench.<module>.<name>` (or `zipmo_robot.<module>.<name>` for a dotted `module`, e.g.
    training.bench), imported on first call."""
    package = "zipmo_robot" if "." in module else "zipmo_robot.bench"

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"{package}.{module}"), name)(*args)

    return call


def _sub(help: str, module: str, stem: str) -> SubBenchmark:
    """The entry of a module that defines `<stem>_arguments`, `run_<stem>` and `format_<stem>`."""
    return SubBenchmark(
        help=help,
        add_arguments=_lazy(module, f"{stem}_arguments"),
        run=_lazy(module, f"run_{stem}"),
        format=_lazy(module, f"format_{stem}"),
    )


# Registry: name -> sub-benchmark (explicit; add an entry per sub-benchmark)
SUB_BENCHMARKS: dict[str, SubBenchmark] = {
    "planner": _sub(
        "LIBERO planner with random weights: conditioning, Euler step, replan, memory, FLOPs",
        "planner",
        "planner",
    ),
    "agent": _sub(
        "ZipMo agent (planner replan + head) with random weights: ms per control step by stage, sizes, "
        "batch 1/10, projected hours per suite",
        "agent",
        "agent",
    ),
    "data": _sub(
        "LIBERO data pipeline, one worker: raw rendered step rate, state-only expert demos/min, one-pass "
        "render + exact tracks, preprocess by replay, projected hours per suite; --table DIR: collect table",
        "data",
        "data",
    ),
    "env": _sub(
        "LIBERO env: construction, soft/hard reset, memory per env process, steps/s per image size, "
        "numba JIT cost (one fresh process per measurement)",
        "env",
        "env",
    ),
    "runner": _sub(
        "vector runner vs raw LiberoEnv loop: env steps/s with 1 and 2 processes, runner overhead",
        "runner",
        "runner",
    ),
    "load": _sub(
        "peak RSS while loading a synthetic released-layout checkpoint (fresh subprocess) vs the model's "
        "own bytes + one tensor; --baseline-tree DIR compares another source tree in the same run",
        "load",
        "load",
    ),
    "train": _sub(
        "training: samples/s per stage (1 and 2 DDP processes) with --data, plan-cache build and BC "
        "speed-up; --flops: release-size training FLOPs per sample and a GPU-hours projection",
        "training.bench",
        "train",
    ),
}
