"""`zipmo-robot preprocess`: LIBERO demo files -> per-demo training files with images, tracks and language."""

from __future__ import annotations

import argparse

HELP = (
    "Preprocess LIBERO demonstration HDF5 files: both views at 128x128 in the protocol's orientation, actions, "
    "proprio, task language + BERT embedding, and exact simulator tracks per view (idempotent, resumable, parallel)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default=None, help="only files of this suite (default: every file found)")
    parser.add_argument("--src", required=True, help="a demo file or a folder searched for *.hdf5")
    parser.add_argument(
        "--dst", required=True, help="output folder; files go to DST/<suite>/<task>/demo_<i>.hdf5"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel worker processes (each holds a rendering env: 2-3 GB)",
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument(
        "--orientation",
        default="flip_vertical",
        choices=("flip_vertical", "raw", "rotate_180"),
        help="image orientation of the protocol (flip_vertical: ATM/ZipMo)",
    )
    parser.add_argument(
        "--query-every", type=int, default=16, help="a new set of query points every K frames"
    )
    parser.add_argument("--grid", type=int, default=16, help="query grid side per query frame and view")
    parser.add_argument(
        "--random-queries", type=int, default=64, help="extra random query pixels per query frame"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-model", default="bert-base-cased", help="BERT model id or local folder")
    parser.add_argument("--no-text", action="store_true", help="do not compute task embeddings")
    parser.add_argument(
        "--embeddings-dir", default=None, help="task-embedding cache folder (default: shared cache)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="process at most N demos per task (first ones)"
    )
    parser.add_argument(
        "--assets", default=None, help="LIBERO asset folder (default: the installed asset packages)"
    )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import json
    from pathlib import Path

    from tqdm import tqdm

    from zipmo_robot.data.preprocess import (
        PreprocessSettings,
        find_demo_files,
        plan_jobs,
        run_jobs,
        write_task_index,
    )
    from zipmo_robot.envs.setup import ensure_libero
    from zipmo_robot.errors import UserError

    if overrides:
        raise UserError(f"preprocess takes no key=value overrides, got {overrides}")
    src = Path(args.src)
    if not src.exists():
        raise UserError(f"--src {src} does not exist; pass a demo file or a folder of *.hdf5 files")
    if args.suite is not None:
        from zipmo_robot.envs.suites import check_suite

        check_suite(args.suite)
    ensure_libero(args.assets)
    files = find_demo_files(src)
    if not files:
        raise UserError(f"no *.hdf5 files under {src}")
    settings = PreprocessSettings(
        image_size=args.image_size,
        orientation=args.orientation,
        query_every=args.query_every,
        grid=args.grid,
        n_random=args.random_queries,
        seed=args.seed,
    )
    jobs, bad, tasks = plan_jobs(
        files,
        args.suite,
        Path(args.dst),
        settings,
        None if args.no_text else args.text_model,
        args.embeddings_dir,
    )
    for _path, reason in bad:
        print(f"skipped bad file: {reason}")
    if args.limit is not None:
        per_task: dict[str, int] = {}
        kept = []
        for job in jobs:
            folder = str(Path(job.dst).parent)
            if per_task.get(folder, 0) < args.limit:
                kept.append(job)
                per_task[folder] = per_task.get(folder, 0) + 1
        jobs = kept
    write_task_index(tasks)
    if jobs:
        bar = tqdm(total=len(jobs), desc="preprocess", unit="demo")
        results = run_jobs(jobs, args.workers, progress=bar)
        bar.close()
    else:  # no bar at all: an empty bar is drawn once at creation and again at close
        print(f"nothing to preprocess in {args.src}: no demos found")
        results = []
    counts = {"ok": 0, "skipped": 0, "error": 0}
    for dst, demo, status, _ in results:
        kind = status.split(":")[0]
        counts[kind if kind in counts else "error"] += 1
        if kind == "error":
            print(f"failed {dst} ({demo}): {status}")
    print(json.dumps({"files": len(files), "bad_files": len(bad), "demos": len(jobs), **counts}))
    return 0 if counts["error"] == 0 and not bad else 1
