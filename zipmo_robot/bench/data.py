"""`zipmo-robot bench data`: throughput of the LIBERO data pipeline on this machine, one worker.

Stages, measured in one run so their ratios compare: the raw rendered step rate (a LiberoEnv stepping with
both cameras, the evaluation's env), state-only expert episodes (demos/min), the one-pass render of a demo's
states in the env that collected it (RGB + depth per view, segmentation at query frames), exact tracks from
those renders (numpy), and `preprocess` by replay (one worker). The projection for a suite multiplies the
per-demo costs by 50 demos x the number of tasks, with the measured attempts per kept demo.
`--table DIR` instead prints the per-task collection table of a `collect` output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task", type=int, default=0, help="task id measured")
    parser.add_argument("--demos", type=int, default=2, help="successful expert demos measured (state-only)")
    parser.add_argument("--raw-steps", type=int, default=30, help="steps of the rendering env (raw rate)")
    parser.add_argument("--out", default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument("--tasks-in-suite", type=int, default=10, help="tasks for the projection (10)")
    parser.add_argument("--demos-per-task", type=int, default=50, help="demos per task for the projection")
    parser.add_argument(
        "--table", default=None, help="only print the per-task table of this `collect --out` folder"
    )


def collection_table(folder: Path) -> list[dict[str, Any]]:
    """Per task: kept demos, attempts, success rate on fresh placements, seconds, from `collect`'s ledgers."""
    from zipmo_robot.data.collect import read_ledger

    rows = []
    for ledger in sorted(folder.rglob(".parts/*/attempts.jsonl")):
        entries = read_ledger(ledger)
        kept = [r for r in entries if r.get("success")]
        rows.append(
            {
                "suite": ledger.parents[2].name,
                "task": ledger.parent.name,
                "kept": len(kept),
                "attempts": len(entries),
                "placement_success_rate": round(len(kept) / len(entries), 3) if entries else None,
                "seconds": round(sum(float(r.get("seconds", 0)) for r in entries), 1),
                "mean_length": round(sum(r["steps"] for r in kept) / len(kept), 1) if kept else None,
            }
        )
    return rows


def run_data(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every stage (see the module docstring); returns the report."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from zipmo_robot.bench.common import machine_info

    report: dict[str, Any] = {"machine": machine_info(), "settings": vars_of(args), "results": []}
    if args.table:
        report["results"] = collection_table(Path(args.table))
        return report
    import numpy as np

    from zipmo_robot.data.collect import CollectEnv, file_metadata, run_expert_episode
    from zipmo_robot.data.hdf5 import DemoWriter
    from zipmo_robot.data.preprocess import PreprocessSettings, plan_jobs, process_job
    from zipmo_robot.data.tracks import capture_states, query_frame_list, tracks_of_capture
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.setup import ensure_libero
    from zipmo_robot.envs.spec import EnvConfig

    ensure_libero()
    scratch = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="zipmo_bench_data_"))
    settings = PreprocessSettings()
    cameras = tuple(settings.cameras)

    def record(row: dict[str, Any]) -> None:
        report["results"].append(row)
        if getattr(args, "on_result", None) is not None:
            args.on_result(report)

    # 1. raw rendered step rate: the evaluation's env stepping with both 128x128 cameras
    env = LiberoEnv(EnvConfig(suite=args.suite, task_id=args.task))
    try:
        env.reset(options={"init_state_id": 0})
        action = np.zeros(7)
        action[-1] = -1.0
        t0 = time.perf_counter()
        for _ in range(args.raw_steps):
            env.step(action)
        dt = time.perf_counter() - t0
    finally:
        env.close()
    raw_rate = args.raw_steps / dt
    record({"stage": "raw rendered env steps (2 views)", "steps": args.raw_steps, "seconds": round(dt, 2),
            "steps_per_second": round(raw_rate, 2)})  # fmt: skip

    # 2-4. in one collecting env: state-only expert, one-pass render, tracks
    demos, attempts, expert_s, steps = [], 0, 0.0, 0
    with CollectEnv(args.suite, args.task, settings.image_size, cameras) as cenv:
        meta = file_metadata(cenv, settings.image_size)
        task_name = cenv.task.name
        while len(demos) < args.demos and attempts < 4 * args.demos:
            t0 = time.perf_counter()
            outcome = run_expert_episode(cenv, "placement", attempts, 10_000 + attempts, 600)
            expert_s += time.perf_counter() - t0
            steps += outcome.steps
            attempts += 1
            if outcome.success:
                demos.append(outcome.demo)
        record({"stage": "expert, state-only", "demos": len(demos), "attempts": attempts,
                "seconds": round(expert_s, 2), "demos_per_minute": round(60 * len(demos) / expert_s, 2),
                "sim_steps_per_second": round(steps / expert_s, 1)})  # fmt: skip
        if not demos:
            return report
        render_s, track_s, frames, n_tracks = 0.0, 0.0, 0, 0
        for i, demo in enumerate(demos):
            t0 = time.perf_counter()
            cap = capture_states(
                cenv.sim, demo.states, cameras, settings.image_size, query_frame_list(demo.length, 16)
            )
            render_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            views = tracks_of_capture(cap, cameras, seed=i, keep_frames=True)
            track_s += time.perf_counter() - t0
            frames += demo.length
            n_tracks += sum(v.tracks.shape[1] for v in views.values())
    render_rate = frames / render_s
    record({"stage": "render in the collecting env (2 views, RGB+depth, seg at queries)", "frames": frames,
            "seconds": round(render_s, 2), "frames_per_second": round(render_rate, 2),
            "ratio_to_raw_step_rate": round(render_rate / raw_rate, 2),
            "seconds_per_demo": round(render_s / len(demos), 1)})  # fmt: skip
    record({"stage": "exact tracks from the renders (numpy)", "tracks": n_tracks, "frames": frames,
            "seconds": round(track_s, 3), "full_episode_tracks_per_second": round(n_tracks / track_s, 1),
            "track_points_per_second": round(n_tracks * frames / len(demos) / track_s, 1)})  # fmt: skip

    # 5. preprocess by replay (one worker) of a file written here
    src = scratch / args.suite / f"{task_name}_demo.hdf5"
    with DemoWriter(src, *meta) as writer:
        writer.add(demos[0])
    jobs, _, _ = plan_jobs([src], args.suite, scratch / "pre", settings, None, None, log=lambda *_: None)
    t0 = time.perf_counter()
    process_job(jobs[0])  # includes building the replay env once
    first = time.perf_counter() - t0
    record({"stage": "preprocess by replay (1 worker, env build included)", "frames": demos[0].length,
            "seconds": round(first, 2), "frames_per_second": round(demos[0].length / first, 2)})  # fmt: skip

    # projection for a suite: per kept demo, expert attempts + the one-pass render (tracks are negligible)
    per_demo = expert_s / len(demos) + (render_s + track_s) / len(demos)
    total = args.tasks_in_suite * args.demos_per_task * per_demo
    record({"stage": f"projection: {args.tasks_in_suite} tasks x {args.demos_per_task} demos, 1 process",
            "seconds_per_kept_demo": round(per_demo, 1), "hours": round(total / 3600, 2)})  # fmt: skip
    report["load_after"] = machine_info().get("loadavg_1_5_15")
    return report


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, str | int | float | bool | type(None))}


def format_data(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"cpu: {m.get('cpu_model', '?')} ({m.get('cpu_count')} logical), load {m.get('loadavg_1_5_15')}"]
    for row in report["results"]:
        lines.append(json.dumps(row))
    return "\n".join(lines)
