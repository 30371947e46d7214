"""Benchmark the LIBERO data pipeline on this machine: collect, render and preprocess throughput, tracks per
second, and the scripted expert's success table.

    python benchmarks/bench_data.py --suite libero_spatial --tasks 0,1 --demos 3 --out /tmp/bench_data
    python benchmarks/bench_data.py --table DIR   # success table from a `zipmo-robot collect` output folder

Prints one JSON object (figures) and a per-task table; machine details are included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def success_table(folder: Path) -> list[dict]:
    """Per-task scripted success on the fixed init states, from the `*.stats.json` files `collect` writes."""
    rows = []
    for path in sorted(folder.rglob("*.stats.json")):
        s = json.loads(path.read_text())
        if "attempts" not in s:
            continue
        fixed = s["attempts"]["init_state"]
        rows.append(
            {
                "suite": s["suite"],
                "task_id": s["task_id"],
                "fixed_init_successes": s["successes"]["init_state"],
                "fixed_init_attempts": fixed,
                "rate": s["successes"]["init_state"] / fixed if fixed else None,
                "placement_successes": s["successes"]["placement"],
                "placement_attempts": s["attempts"]["placement"],
                "failed_init_state_ids": s["failed_init_state_ids"],
                "seconds": round(s["seconds"], 1),
                "mean_length": sum(s["kept_lengths"]) / max(1, len(s["kept_lengths"])),
            }
        )
    return sorted(rows, key=lambda r: (r["suite"], r["task_id"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--tasks", default="0")
    parser.add_argument("--demos", type=int, default=3)
    parser.add_argument("--out", default="/tmp/bench_data")
    parser.add_argument("--table", default=None, help="only print the success table of this collect folder")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }
    if args.table:
        table = success_table(Path(args.table))
        print(json.dumps({"machine": machine, "success_table": table}, indent=1))
        return

    from zipmo_robot.envs.setup import ensure_libero

    from zipmo_robot.data.collect import collect_task, render_file
    from zipmo_robot.data.hdf5 import iter_demos
    from zipmo_robot.data.replay import replay_env
    from zipmo_robot.data.tracks import track_demo

    ensure_libero()
    out = Path(args.out) / args.suite
    figures: dict = {"machine": machine}
    ids = [int(x) for x in args.tasks.split(",")]
    t0 = time.perf_counter()
    stats = [collect_task(args.suite, i, args.demos, out, max_attempts=args.demos * 2) for i in ids]
    dt = time.perf_counter() - t0
    kept = sum(s.get("kept", 0) for s in stats)
    steps = sum(s.get("steps", 0) for s in stats)
    figures["collect_state_only"] = {
        "demos": kept,
        "seconds": round(dt, 1),
        "demos_per_minute": round(60 * kept / dt, 2),
        "sim_steps_per_second": round(steps / dt, 1),
    }
    files = sorted(out.glob("*_demo.hdf5"))
    t0 = time.perf_counter()
    frames = 0
    for f in files:
        render_file(f, f)
        frames += sum(d.length for d in iter_demos(f, load_images=False))
    dt = time.perf_counter() - t0
    figures["render_by_state_replay"] = {
        "demos": kept,
        "frames": frames,
        "seconds": round(dt, 1),
        "demos_per_minute": round(60 * kept / dt, 2),
        "frames_per_second_two_views": round(frames / dt, 2),
    }
    demo = next(iter_demos(files[0], load_images=False))
    with replay_env(args.suite, ids[0]) as env:
        t0 = time.perf_counter()
        views = track_demo(env, demo.states, keep_frames=True)
        dt = time.perf_counter() - t0
    n = sum(v.tracks.shape[1] for v in views.values())
    figures["tracks"] = {
        "frames": demo.length,
        "tracks_two_views": n,
        "seconds": round(dt, 1),
        "full_episode_tracks_per_second": round(n / dt, 1),
        "track_points_per_second": round(n * demo.length / dt, 1),
        "preprocess_demos_per_minute_one_worker": round(60 / dt, 2),
    }
    figures["success_table"] = success_table(out)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
