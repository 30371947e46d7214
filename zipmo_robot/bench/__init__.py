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


# Registry: name -> sub-benchmark (explicit; add an entry per sub-benchmark)
SUB_BENCHMARKS: dict[str, SubBenchmark] = {
    "planner": SubBenchmark(
        help="LIBERO planner with random weights: conditioning, Euler step, replan, memory, FLOPs",
        add_arguments=_lazy("planner", "planner_arguments"),
        run=_lazy("planner", "run_planner"),
        format=_lazy("planner", "format_planner"),
    ),
    "agent": SubBenchmark(
        help="ZipMo agent (planner replan + head) with random weights: ms per control step by stage, sizes, "
        "batch 1/10, projected hours per suite",
        add_arguments=_lazy("agent", "agent_arguments"),
        run=_lazy("agent", "run_agent"),
        format=_lazy("agent", "format_agent"),
    ),
    "data": SubBenchmark(
        help="LIBERO data pipeline, one worker: raw rendered step rate, state-only expert demos/min, one-pass "
        "render + exact tracks, preprocess by replay, projected hours per suite; --table DIR: collect table",
        add_arguments=_lazy("data", "data_arguments"),
        run=_lazy("data", "run_data"),
        format=_lazy("data", "format_data"),
    ),
    "env": SubBenchmark(
        help="LIBERO env: construction, soft/hard reset, memory per env process, steps/s per image size, "
        "numba JIT cost (one fresh process per measurement)",
        add_arguments=_lazy("env", "env_arguments"),
        run=_lazy("env", "run_env"),
        format=_lazy("env", "format_env"),
    ),
    "runner": SubBenchmark(
        help="vector runner vs raw LiberoEnv loop: env steps/s with 1 and 2 processes, runner overhead",
        add_arguments=_lazy("runner", "runner_arguments"),
        run=_lazy("runner", "run_runner"),
        format=_lazy("runner", "format_runner"),
    ),
    "load": SubBenchmark(
        help="peak RSS while loading a synthetic released-layout checkpoint (fresh subprocess) vs the model's "
        "own bytes + one tensor; --baseline-tree DIR compares another source tree in the same run",
        add_arguments=_lazy("load", "load_arguments"),
        run=_lazy("load", "run_load"),
        format=_lazy("load", "format_load"),
    ),
    "train": SubBenchmark(
        help="training: samples/s per stage (1 and 2 DDP processes) with --data, plan-cache build and BC "
        "speed-up; --flops: release-size training FLOPs per sample and a GPU-hours projection",
        add_arguments=_lazy("training.bench", "train_arguments"),
        run=_lazy("training.bench", "run_train"),
        format=_lazy("training.bench", "format_train"),
    ),
}
