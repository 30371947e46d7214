"""LIBERO env costs: construction, hard/soft reset, memory per env process, rendered steps/s, first-run JIT.

Every measurement runs in its own fresh subprocess, one at a time (a LIBERO env process takes 2-3 GB):
  construct  import time, first and second `LiberoEnv` construction in a process, soft and hard reset
             (LIBERO reset + set_init_state + settle steps) and the raw reset + set_init_state alone, RSS
  steps      rendered steps/s of a raw LIBERO `OffScreenRenderEnv` (both cameras) at each size, and without
             rendering (state-only env)
  jit        time to the first env step in a fresh process with an empty numba cache (robosuite's numba
             functions compile) and again with that cache filled
Usage:

    MUJOCO_GL=egl python benchmarks/bench_env.py [--steps 50] [--sizes 128 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

SUITE, TASK = "libero_spatial", 0
DUMMY = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def _rss_mb() -> dict[str, float]:
    """Current and peak resident memory of this process (MB), from /proc."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def worker_construct(n_resets: int) -> dict[str, Any]:
    """Construction and reset timings of `LiberoEnv` (128², both cameras, 5 settle steps) in this process."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    from zipmo_robot.envs.libero import LiberoEnv, import_libero_envs
    from zipmo_robot.envs.spec import EnvConfig

    import_libero_envs()
    import torch  # noqa: F401  (LIBERO's benchmark module imports it; count it as the ZipMo stack does)

    out["import_s"] = time.perf_counter() - t0
    cfg = EnvConfig(suite=SUITE, task_id=TASK)
    for label, hard in (("soft", False), ("hard", True)):
        t = time.perf_counter()
        env = LiberoEnv(cfg, hard_reset=hard)
        out[f"construct_{'first' if label == 'soft' else 'second'}_s"] = time.perf_counter() - t
        resets, raw_resets = [], []
        for i in range(n_resets):
            t = time.perf_counter()
            env.reset(seed=0, options={"init_state_id": i})
            resets.append(time.perf_counter() - t)
        for i in range(n_resets):  # LIBERO reset + set_init_state only (no settle steps)
            t = time.perf_counter()
            env.raw.reset()
            env.raw.set_init_state(env.init_states[i])
            raw_resets.append(time.perf_counter() - t)
        out[f"reset_{label}_s"] = _median(resets)
        out[f"raw_reset_{label}_s"] = _median(raw_resets)
        if label == "soft":
            out.update({f"after_one_env_{k}": v for k, v in _rss_mb().items()})
        env.close()
    out.update({f"after_two_envs_{k}": v for k, v in _rss_mb().items()})
    return out


def worker_steps(size: int, steps: int, warmup: int) -> dict[str, Any]:
    """Steps/s of a raw LIBERO env stepping the dummy action; size 0 = no rendering."""
    from zipmo_robot.envs.libero import import_libero_envs
    from zipmo_robot.envs.suites import get_task, load_init_states

    libero_envs = import_libero_envs()
    task = get_task(SUITE, TASK)
    if size > 0:
        env = libero_envs.OffScreenRenderEnv(
            bddl_file_name=str(task.bddl_path), camera_heights=size, camera_widths=size, ignore_done=True
        )
    else:
        env = libero_envs.env_wrapper.ControlEnv(
            bddl_file_name=str(task.bddl_path),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            ignore_done=True,
        )
    try:
        env.seed(0)
        env.reset()
        env.set_init_state(load_init_states(SUITE, TASK)[0])
        for _ in range(warmup):
            env.step(DUMMY)
        per_step = []
        for _ in range(steps):
            t = time.perf_counter()
            env.step(DUMMY)
            per_step.append(time.perf_counter() - t)
    finally:
        env.close()
    return {
        "size": size,
        "steps_per_s_mean": len(per_step) / sum(per_step),
        "steps_per_s_median": 1.0 / _median(per_step),
        **_rss_mb(),
    }


def worker_first_step() -> dict[str, Any]:
    """Seconds from process start (this function) to the first rendered `LiberoEnv` step."""
    t0 = time.perf_counter()
    import numpy as np
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig

    env = LiberoEnv(EnvConfig(suite=SUITE, task_id=TASK, settle_steps=0))
    env.reset(options={"init_state_id": 0})
    env.step(np.asarray(DUMMY))
    env.close()
    return {"first_step_s": time.perf_counter() - t0}


def _run_worker(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run this file as a worker in a fresh process and parse its JSON line."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            result = json.loads(line[len("BENCH ") :])
            result["process_wall_s"] = time.perf_counter() - start
            return result
    raise RuntimeError(f"worker {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50, help="timed steps per size (default 50)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--resets", type=int, default=3, help="timed resets per mode (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--skip-jit", action="store_true", help="skip the cold/warm numba cache runs")
    parser.add_argument("--json", metavar="PATH", default=None)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")

    if args.worker:
        kind, *rest = args.worker
        if kind == "construct":
            result = worker_construct(int(rest[0]))
        elif kind == "steps":
            result = worker_steps(int(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "first_step":
            result = worker_first_step()
        else:
            raise SystemExit(f"unknown worker {kind!r}; valid: construct, steps, first_step")
        print("BENCH " + json.dumps(result), flush=True)
        return

    report: dict[str, Any] = {
        "machine": {
            "cpu": _cpu_name(),
            "n_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "MUJOCO_GL": os.environ["MUJOCO_GL"],
            "load_avg_start": os.getloadavg(),
        },
        "task": f"{SUITE} task {TASK}",
    }
    print(f"[bench_env] construct/reset ({args.resets} resets per mode) ...", file=sys.stderr, flush=True)
    report["construct"] = _run_worker(["construct", str(args.resets)])
    report["steps"] = []
    for size in [*args.sizes, 0]:
        print(f"[bench_env] steps/s at {size or 'no render'} ...", file=sys.stderr, flush=True)
        report["steps"].append(_run_worker(["steps", str(size), str(args.steps), str(args.warmup)]))
    if not args.skip_jit:
        with tempfile.TemporaryDirectory(prefix="zipmo-numba-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            print("[bench_env] first step, empty numba cache ...", file=sys.stderr, flush=True)
            cold = _run_worker(["first_step"], env)
            print("[bench_env] first step, filled numba cache ...", file=sys.stderr, flush=True)
            warm = _run_worker(["first_step"], env)
        report["jit"] = {
            "cold_first_step_s": cold["first_step_s"],
            "warm_first_step_s": warm["first_step_s"],
            "jit_cost_s": cold["first_step_s"] - warm["first_step_s"],
        }
    report["machine"]["load_avg_end"] = os.getloadavg()
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def format_report(report: dict[str, Any]) -> str:
    m, c = report["machine"], report["construct"]
    lines = [
        f"machine: {m['cpu']}, {m['n_cpus']} CPUs, Python {m['python']}, MUJOCO_GL={m['MUJOCO_GL']}, "
        f"load avg {m['load_avg_start'][0]:.1f} -> {m['load_avg_end'][0]:.1f}",
        f"task: {report['task']}, 128x128, agentview + robot0_eye_in_hand",
        f"import libero + torch            {c['import_s']:6.2f} s",
        f"construct env (first / second)   {c['construct_first_s']:6.2f} s / {c['construct_second_s']:.2f} s",
        f"reset+init+5 settle, soft / hard {c['reset_soft_s']:6.2f} s / {c['reset_hard_s']:.2f} s",
        f"reset+init only, soft / hard     {c['raw_reset_soft_s']:6.2f} s / {c['raw_reset_hard_s']:.2f} s",
        f"RSS with one env (peak)          {c['after_one_env_rss_mb']:6.0f} MB ({c['after_one_env_peak_rss_mb']:.0f})",
        f"RSS after two envs (peak)        {c['after_two_envs_rss_mb']:6.0f} MB ({c['after_two_envs_peak_rss_mb']:.0f})",
    ]
    for s in report["steps"]:
        label = f"{s['size']}x{s['size']} both cameras" if s["size"] else "no rendering"
        lines.append(
            f"raw steps/s, {label:<22}{s['steps_per_s_median']:6.2f} median, {s['steps_per_s_mean']:.2f} mean "
            f"(process peak RSS {s['peak_rss_mb']:.0f} MB)"
        )
    if "jit" in report:
        j = report["jit"]
        lines.append(
            f"first step in a fresh process: empty numba cache {j['cold_first_step_s']:.1f} s, filled "
            f"{j['warm_first_step_s']:.1f} s -> JIT cost {j['jit_cost_s']:.1f} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
