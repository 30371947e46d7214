"""`zipmo-robot bench runner`: rendered env steps/s of a raw `LiberoEnv` loop vs the vector runner, with 1 and 2
processes, at each image size.

Every env lives in its own spawned process (never more than 2 at once), stepping the dummy action after a
warm-up; the runner uses `ZeroPolicy` (the policy costs ~nothing, so the difference is the runner's overhead:
pipes, pickling, batching, bookkeeping). Separate runs see different machine load, so each size also has a
paired run: a raw env process and a 1-worker runner stepping at the same time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from dataclasses import replace
from typing import Any


def runner_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=100, help="timed steps per process (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[128, 256], help="render sizes (default 128 256)"
    )
    parser.add_argument("--suite", default="libero_spatial", help="LIBERO suite (default libero_spatial)")
    parser.add_argument("--task", type=int, default=0, help="task id (default 0)")


def _raw_loop(cfg: Any, warmup: int, steps: int, barrier: Any, out: Any) -> None:
    """One process: build, reset, warm up, wait for the others, then time `steps` env steps."""
    import numpy as np

    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import DUMMY_ACTION

    env = LiberoEnv(cfg)
    try:
        env.reset(seed=0, options={"init_state_id": 0})
        action = np.asarray(DUMMY_ACTION, dtype=np.float32)
        for _ in range(warmup):
            env.step(action)
        barrier.wait()
        start = time.time()
        for _ in range(steps):
            env.step(action)
        out.put((start, time.time()))
    finally:
        env.close()


def _episodes(cfg: Any, n_workers: int, steps: int) -> list[Any]:
    """One episode of `steps` steps per worker (init state 0, seed = worker index)."""
    from zipmo_robot.envs.runner import Episode

    return [Episode(replace(cfg, max_steps=steps), i, 0, i) for i in range(n_workers)]


def raw_steps_per_s(cfg: Any, n_proc: int, warmup: int, steps: int) -> float:
    """Total env steps/s of `n_proc` raw env processes stepping at the same time."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n_proc), ctx.Queue()
    procs = [
        ctx.Process(target=_raw_loop, args=(cfg, warmup, steps + warmup, barrier, out)) for _ in range(n_proc)
    ]
    for p in procs:
        p.start()
    spans = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    return n_proc * (steps + warmup) / (max(e for _, e in spans) - min(s for s, _ in spans))


def runner_steps_per_s(cfg: Any, n_workers: int, warmup: int, steps: int) -> tuple[float, float]:
    """Total env steps/s through `VectorRunner` with `n_workers`, one episode per worker, after a warm-up
    episode per worker (env construction and first reset are not timed); and the in-run overhead: the
    stepping wall time over the time the workers spent inside `env.step` (same run, so robust to load)."""
    from zipmo_robot.envs.runner import VectorRunner
    from zipmo_robot.policy.base import ZeroPolicy

    n = steps + warmup
    with VectorRunner(ZeroPolicy(), n_workers, progress=False) as runner:
        runner.run(_episodes(cfg, n_workers, warmup))
        results = runner.run(_episodes(cfg, n_workers, n))
    t = [r.record["timing"] for r in results]
    if not all(r.record["steps"] == n for r in results):
        raise RuntimeError(f"runner episodes ended early: {[r.record['status'] for r in results]}")
    rate = n_workers * n / (max(x["end_at"] for x in t) - min(x["first_step_at"] for x in t))
    internal = max(x["stepping_wall_s"] / x["env_step_s"] for x in t) - 1.0
    return rate, internal


def paired_steps_per_s(cfg: Any, warmup: int, steps: int) -> tuple[float, float]:
    """A raw env process and a 1-worker runner stepping at the same time (so both see the same machine load):
    (raw steps/s, runner steps/s). Both warm up first, then start their timed steps together."""
    from zipmo_robot.envs.runner import VectorRunner
    from zipmo_robot.policy.base import ZeroPolicy

    n = steps + warmup
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    raw = ctx.Process(target=_raw_loop, args=(cfg, warmup, n, barrier, out))
    raw.start()
    with VectorRunner(ZeroPolicy(), 1, progress=False) as runner:
        runner.run(_episodes(cfg, 1, warmup))
        barrier.wait(timeout=900)
        (result,) = runner.run(_episodes(cfg, 1, n))
    start, end = out.get(timeout=900)
    raw.join()
    t = result.record["timing"]
    return n / (end - start), n / (t["end_at"] - t["first_step_at"])


def run_runner(args: argparse.Namespace) -> dict[str, Any]:
    """Raw vs runner steps/s for each size; `args.on_result(report)` after each size (partial report)."""
    from zipmo_robot.bench.common import machine_info
    from zipmo_robot.envs.spec import EnvConfig

    os.environ.setdefault("MUJOCO_GL", "egl")
    report: dict[str, Any] = {
        "machine": {**machine_info(), "MUJOCO_GL": os.environ["MUJOCO_GL"]},
        "settings": {
            "suite": args.suite,
            "task": args.task,
            "steps": args.steps,
            "warmup": args.warmup,
            "sizes": list(args.sizes),
        },
        "results": [],
    }
    for size in args.sizes:
        cfg = EnvConfig(suite=args.suite, task_id=args.task, image_size=size, max_steps=10_000)
        row: dict[str, Any] = {"image_size": size}
        for name, n in (("raw_1", 1), ("runner_1", 1), ("raw_2", 2), ("runner_2", 2)):
            if name.startswith("raw"):
                row[name] = raw_steps_per_s(cfg, n, args.warmup, args.steps)
            else:
                row[name], overhead = runner_steps_per_s(cfg, n, args.warmup, args.steps)
                row[f"{name}_in_run_overhead_pct"] = 100 * overhead
            row[f"{name}_load_avg"] = os.getloadavg()[0]
            print(
                f"{size}²  {name:<9} {row[name]:6.2f} steps/s  (load avg {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        row["paired_raw"], row["paired_runner"] = paired_steps_per_s(cfg, args.warmup, args.steps)
        row["paired_overhead_pct"] = 100 * (row["paired_raw"] / row["paired_runner"] - 1)
        row["runner_overhead_pct"] = 100 * (row["raw_1"] / row["runner_1"] - 1)
        row["runner_2_vs_1"] = row["runner_2"] / row["runner_1"]
        row["raw_2_vs_1"] = row["raw_2"] / row["raw_1"]
        report["results"].append(row)
        if getattr(args, "on_result", None) is not None:
            args.on_result(report)
    return report


def format_runner(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"{s['suite']} task {s['task']}, both cameras, {s['steps']}+{s['warmup']} steps per process, "
        f"MUJOCO_GL={m['MUJOCO_GL']}, {m.get('cpu_model', '?')}, {m['cpu_count']} CPUs",
        f"{'size':>5} {'raw 1':>7} {'runner 1':>9} {'overhead':>9} {'in-run':>7} {'paired':>7} "
        f"{'raw 2':>7} {'runner 2':>9} {'r2/r1':>6} {'raw2/1':>7}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['image_size']:>5} {r['raw_1']:7.2f} {r['runner_1']:9.2f} {r['runner_overhead_pct']:8.1f}% "
            f"{r['runner_1_in_run_overhead_pct']:6.1f}% {r['paired_overhead_pct']:6.1f}% {r['raw_2']:7.2f} "
            f"{r['runner_2']:9.2f} {r['runner_2_vs_1']:6.2f} {r['raw_2_vs_1']:7.2f}"
        )
    lines += [
        "overhead: raw 1 / runner 1 - 1 (separate runs); in-run: runner stepping time / time in env.step - 1;",
        "paired: raw / runner - 1, a raw env process and a 1-worker runner stepping at the same time",
    ]
    return "\n".join(lines)
