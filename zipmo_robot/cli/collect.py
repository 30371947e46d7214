"""`zipmo-robot collect`: scripted-expert demonstrations with images and exact tracks, resumable."""

from __future__ import annotations

import argparse

HELP = (
    "Collect successful scripted-expert demonstrations (privileged state, OSC controller) from fresh LIBERO "
    "placements into official-layout HDF5 files, with both camera views rendered in the env that performed "
    "each demo and, in the same pass, preprocessed training files with exact tracks. Resumable: rerun the "
    "same command after a kill."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="libero_spatial", help="LIBERO suite (default libero_spatial)")
    parser.add_argument(
        "--tasks", default=None, help="comma-separated task ids (default: all tasks of the suite)"
    )
    parser.add_argument(
        "--demos-per-task", type=int, default=50, help="successful demos to keep per task (50)"
    )
    parser.add_argument(
        "--out", default="data/libero_scripted", help="raw demo folder; files go to OUT/<suite>/"
    )
    parser.add_argument(
        "--pre",
        default=None,
        help="preprocessed output root, as `preprocess --dst` (files go to PRE/<suite>/<task>/demo_<i>.hdf5; "
        "default: OUT_pre)",
    )
    parser.add_argument("--no-pre", action="store_true", help="raw demos with images only, no training files")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the expert and of fresh placements")
    parser.add_argument(
        "--max-steps", type=int, default=600, help="steps per attempt before it counts as failed"
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="attempts per task (default: max(6 x demos, demos + 20))",
    )
    parser.add_argument(
        "--render",
        choices=("same-pass", "none"),
        default="same-pass",
        help="'same-pass': render both views of each successful demo in the env that performed it; "
        "'none': state-only files (fast; add images later with --render-only)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only add images to existing state-only files by state replay (in each demo's stored layout)",
    )
    parser.add_argument(
        "--image-size", type=int, default=128, help="rendered image size (128, as the official files)"
    )
    parser.add_argument(
        "--orientation",
        default="flip_vertical",
        choices=("flip_vertical", "raw", "rotate_180"),
        help="image orientation of the training files (flip_vertical: ATM/ZipMo); raw files stay raw",
    )
    parser.add_argument("--query-every", type=int, default=16, help="track query frames every K frames")
    parser.add_argument("--grid", type=int, default=16, help="query grid side per query frame and view")
    parser.add_argument("--random-queries", type=int, default=64, help="extra random query pixels")
    parser.add_argument("--text-model", default="bert-base-cased", help="BERT model id or local folder")
    parser.add_argument("--no-text", action="store_true", help="do not store task embeddings")
    parser.add_argument("--embeddings-dir", default=None, help="task-embedding cache folder")
    parser.add_argument(
        "--assets", default=None, help="LIBERO asset folder (default: the installed asset packages)"
    )


def _task_ids(spec: str | None, suite: str) -> list[int]:
    from zipmo_robot.envs.suites import get_task, list_tasks
    from zipmo_robot.errors import UserError

    if spec is None:
        return [t.task_id for t in list_tasks(suite)]
    try:
        ids = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--tasks must be comma-separated integers, got {spec!r}") from exc
    for i in ids:
        get_task(suite, i)  # raises UserError listing the valid ids
    return ids


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import json
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from zipmo_robot.data.collect import collect_task, demo_file_name, render_file
    from zipmo_robot.data.hdf5 import IMAGE_KEYS, read_demo, read_info
    from zipmo_robot.data.preprocess import PreprocessSettings, task_embedding
    from zipmo_robot.envs.setup import ensure_libero
    from zipmo_robot.envs.suites import check_suite, get_task
    from zipmo_robot.errors import UserError

    if overrides:
        raise UserError(f"collect takes no key=value overrides, got {overrides}")
    if args.demos_per_task < 1:
        raise UserError(f"--demos-per-task must be >= 1, got {args.demos_per_task}")
    check_suite(args.suite)
    ensure_libero(args.assets)
    out_dir = Path(args.out) / args.suite
    pre_root = None if args.no_pre else Path(args.pre if args.pre else f"{Path(args.out)}_pre")
    ids = _task_ids(args.tasks, args.suite)
    interval = 2.0 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s, not every frame
    summary = {}
    if not args.render_only:
        render = args.render == "same-pass"
        settings = PreprocessSettings(
            image_size=args.image_size,
            orientation=args.orientation,
            query_every=args.query_every,
            grid=args.grid,
            n_random=args.random_queries,
        )
        bar = tqdm(
            total=len(ids) * args.demos_per_task,
            desc=f"collect {args.suite}",
            unit="demo",
            mininterval=interval,
        )
        frames = tqdm(desc="render + tracks", unit="frame", mininterval=interval) if render else None
        for task_id in ids:
            task = get_task(args.suite, task_id)
            emb = None
            if render and pre_root is not None and not args.no_text:
                emb, status = task_embedding(args.suite, task.language, args.text_model, args.embeddings_dir)
                if emb is None and task_id == ids[0]:
                    bar.write(f"note: task embeddings not stored ({status})")
            stats = collect_task(
                args.suite,
                task_id,
                args.demos_per_task,
                out_dir,
                pre_root,
                seed=args.seed,
                max_steps=args.max_steps,
                max_attempts=args.max_attempts,
                image_size=args.image_size,
                preprocess_settings=settings,
                task_emb=emb,
                progress=bar,
                frame_progress=frames,
                log=bar.write,
                assets=args.assets,
                render=render,
            )
            summary[task_id] = stats
            bar.write(
                f"task {task_id}: kept {stats['kept']} demos from {stats['attempts']} fresh placements "
                f"({stats['kept'] / max(1, stats['attempts']):.0%}), {stats['seconds']:.0f} s in all"
            )
        bar.close()
        if frames is not None:
            frames.close()
    if args.render_only:
        files = [out_dir / demo_file_name(get_task(args.suite, i).name) for i in ids]
        files = [f for f in files if f.exists()]
        todo = []
        for f in files:
            info = read_info(f)
            first = read_demo(f, info.demo_names[0], load_images=False)
            if not all(k in first.obs for k in IMAGE_KEYS) or _needs_images(f, info.demo_names[0]):
                todo.append((f, len(info.demo_names)))
        bar = tqdm(total=sum(n for _, n in todo), desc="render by state replay", unit="demo")
        for f, _ in todo:
            render_file(f, f, image_size=args.image_size, progress=bar)
        bar.close()
    if summary:
        keys = ("kept", "attempts", "seconds", "seconds_this_run")
        print(json.dumps({str(k): {kk: v.get(kk) for kk in keys} for k, v in summary.items()}, indent=1))
    return 0


def _needs_images(path, demo: str) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        obs = f["data"][demo].get("obs")
        return obs is None or "agentview_rgb" not in obs
