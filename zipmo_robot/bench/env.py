"""`zipmo-robot bench env`: LIBERO env costs: construction, soft/hard reset, memory per env process, rendered
steps/s at each image size, and the first-step cost of robosuite's numba JIT.

Every measurement runs in its own fresh subprocess (`python -m zipmo_robot.bench.env KIND ARGS`), one at a
time, since a LIBERO env process takes 2-3 GB:
  construct   import time, first and second `LiberoEnv` construction in a process, soft and hard reset
              (LIBERO reset + set_init_state + settle steps) and the raw reset + set_init_state alone, RSS
  steps       rendered steps/s of a raw LIBERO `OffScreenRenderEnv` (both cameras) at each size, and without
              rendering (state-only env, size 0)
  first_step  time to the first env step in a fresh process with an empty numba cache (robosuite's numba
              functions compile), then again with that cache filled
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SUITE, TASK = "libero_spatial", 0
RESULT_PREFIX = "BENCH "  # the worker's result line on stdout


def env_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=50, help="timed steps per size (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--resets", type=int, default=3, help="timed resets per mode, median reported")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[128, 256], help="render sizes (default 128 256)"
    )
    parser.add_argument("--skip-jit", action="store_true", help="skip the cold/warm numba cache runs")


def _memory_mb() -> dict[str, float]:
    """Current and peak resident memory of this process (MB), from /proc."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": fields.get("VmRSS", 0.0), "peak_rss_mb": fields.get("VmHWM", 0.0)}


# ---------------------------------------------------------------------------------------------------------
# Workers (each runs in a fresh process)


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
        out[f"reset_{label}_s"] = statistics.median(resets)
        out[f"raw_reset_{label}_s"] = statistics.median(raw_resets)
        if label == "soft":
            out.update({f"after_one_env_{k}": v for k, v in _memory_mb().items()})
        env.close()
    out.update({f"after_two_envs_{k}": v for k, v in _memory_mb().items()})
    return out


def worker_steps(size: int, steps: int, warmup: int) -> dict[str, Any]:
    """Steps/s of a raw LIBERO env stepping the dummy action; size 0 = no rendering."""
    from zipmo_robot.envs.libero import import_libero_envs
    from zipmo_robot.envs.spec import DUMMY_ACTION
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
    action = list(DUMMY_ACTION)
    try:
        env.seed(0)
        env.reset()
        env.set_init_state(load_init_states(SUITE, TASK)[0])
        for _ in range(warmup):
            env.step(action)
        per_step = []
        for _ in range(steps):
            t = time.perf_counter()
            env.step(action)
            per_step.append(time.perf_counter() - t)
    finally:
        env.close()
    return {
        "size": size,
        "steps_per_s_mean": len(per_step) / sum(per_step),
        "steps_per_s_median": 1.0 / statistics.median(per_step),
        **_memory_mb(),
    }


def worker_first_step() -> dict[str, Any]:
    """Seconds from process start (this function) to the first rendered `LiberoEnv` step."""
    t0 = time.perf_counter()
    import numpy as np

    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import DUMMY_ACTION, EnvConfig

    env = LiberoEnv(EnvConfig(suite=SUITE, task_id=TASK, settle_steps=0))
    env.reset(options={"init_state_id": 0})
    env.step(np.asarray(DUMMY_ACTION))
    env.close()
    return {"first_step_s": time.perf_counter() - t0}


WORKERS = {"construct": worker_construct, "steps": worker_steps, "first_step": worker_first_step}


def _run_worker(kind: str, *args: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one worker in a fresh process (`python -m zipmo_robot.bench.env KIND ARGS`); its JSON result."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", __name__, kind, *map(str, args)],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["process_wall_s"] = time.perf_counter() - start
            return result
    raise RuntimeError(
        f"bench env worker {kind} {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


# ---------------------------------------------------------------------------------------------------------
# The sub-benchmark


def run_env(args: argparse.Namespace) -> dict[str, Any]:
    """All measurements, one fresh process each; `args.on_result(report)` after each (partial report)."""
    from zipmo_robot.bench.common import machine_info

    os.environ.setdefault("MUJOCO_GL", "egl")
    report: dict[str, Any] = {
        "machine": {**machine_info(), "MUJOCO_GL": os.environ["MUJOCO_GL"]},
        "settings": {
            "task": f"{SUITE} task {TASK}",
            "steps": args.steps,
            "warmup": args.warmup,
            "resets": args.resets,
            "sizes": list(args.sizes),
            "jit": not args.skip_jit,
        },
        "results": [],
    }
    on_result = getattr(args, "on_result", None)

    def record(measure: str, result: dict[str, Any]) -> None:
        report["results"].append({"measure": measure, **result})
        if on_result is not None:
            on_result(report)

    print(f"[bench env] construct/reset ({args.resets} resets per mode) ...", file=sys.stderr, flush=True)
    record("construct", _run_worker("construct", args.resets))
    for size in [*args.sizes, 0]:
        print(f"[bench env] steps/s at {size or 'no render'} ...", file=sys.stderr, flush=True)
        record("steps", _run_worker("steps", size, args.steps, args.warmup))
    if not args.skip_jit:
        with tempfile.TemporaryDirectory(prefix="zipmo-numba-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            for cache_state in ("empty", "filled"):
                print(f"[bench env] first step, {cache_state} numba cache ...", file=sys.stderr, flush=True)
                record("first_step", {"numba_cache": cache_state, **_run_worker("first_step", env=env)})
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def format_env(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    by_measure: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        by_measure.setdefault(r["measure"], []).append(r)
    lines = [
        f"machine: {m.get('cpu_model', '?')}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"MUJOCO_GL={m['MUJOCO_GL']}, load avg {m['loadavg_1_5_15'][0]:.1f} -> {m['loadavg_end'][0]:.1f}",
        f"task: {s['task']}, agentview + robot0_eye_in_hand",
    ]
    for c in by_measure.get("construct", []):
        lines += [
            f"import libero + torch            {c['import_s']:6.2f} s",
            f"construct env (first / second)   {c['construct_first_s']:6.2f} s / {c['construct_second_s']:.2f} s",
            f"reset+init+5 settle, soft / hard {c['reset_soft_s']:6.2f} s / {c['reset_hard_s']:.2f} s",
            f"reset+init only, soft / hard     {c['raw_reset_soft_s']:6.2f} s / {c['raw_reset_hard_s']:.2f} s",
            f"RSS with one env (peak)          {c['after_one_env_rss_mb']:6.0f} MB "
            f"({c['after_one_env_peak_rss_mb']:.0f})",
            f"RSS after two envs (peak)        {c['after_two_envs_rss_mb']:6.0f} MB "
            f"({c['after_two_envs_peak_rss_mb']:.0f})",
        ]
    for r in by_measure.get("steps", []):
        label = f"{r['size']}x{r['size']} both cameras" if r["size"] else "no rendering"
        lines.append(
            f"raw steps/s, {label:<22}{r['steps_per_s_median']:6.2f} median, {r['steps_per_s_mean']:.2f} mean "
            f"(process peak RSS {r['peak_rss_mb']:.0f} MB)"
        )
    first = {r["numba_cache"]: r["first_step_s"] for r in by_measure.get("first_step", [])}
    if len(first) == 2:
        lines.append(
            f"first step in a fresh process: empty numba cache {first['empty']:.1f} s, filled "
            f"{first['filled']:.1f} s -> JIT cost {first['empty'] - first['filled']:.1f} s"
        )
    return "\n".join(lines)


def _worker_main(argv: list[str]) -> None:
    """Entry of a measurement process: `KIND ARGS...` -> one `BENCH {json}` line on stdout."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    kind, *rest = argv
    if kind not in WORKERS:
        raise SystemExit(f"unknown worker {kind!r}; valid: {', '.join(WORKERS)}")
    print(RESULT_PREFIX + json.dumps(WORKERS[kind](*map(int, rest))), flush=True)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
