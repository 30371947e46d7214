"""`zipmo-robot collect`: scripted-expert demonstrations in the official LIBERO HDF5 layout."""

from __future__ import annotations

import argparse

HELP = (
    "Collect successful scripted-expert demonstrations (privileged state, OSC controller) into official-layout "
    "LIBERO HDF5 files: state-only collection, then images by state replay."
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
        "--out", default="data/libero_scripted", help="output folder; files go to OUT/<suite>/"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the expert and of fresh placements")
    parser.add_argument(
        "--max-steps", type=int, default=600, help="steps per attempt before it counts as failed"
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="attempts per task (default: max(4 x demos, 50)); fixed init states first",
    )
    parser.add_argument(
        "--render",
        choices=("after", "none"),
        default="after",
        help="'after': add both camera views by state replay once a task is collected; "
        "'none': keep state-only files (render later with --render-only)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="only add images to existing state-only files"
    )
    parser.add_argument(
        "--image-size", type=int, default=128, help="rendered image size (128, as the official files)"
    )
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
    from pathlib import Path

    from tqdm import tqdm

    from zipmo_robot.data.collect import collect_task, demo_file_name, render_file
    from zipmo_robot.data.hdf5 import IMAGE_KEYS, read_demo, read_info
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
    ids = _task_ids(args.tasks, args.suite)
    summary = {}
    if not args.render_only:
        bar = tqdm(total=len(ids) * args.demos_per_task, desc=f"collect {args.suite}", unit="demo")
        for task_id in ids:
            stats = collect_task(
                args.suite,
                task_id,
                args.demos_per_task,
                out_dir,
                seed=args.seed,
                max_steps=args.max_steps,
                max_attempts=args.max_attempts,
                progress=bar,
            )
            summary[task_id] = stats
            if "attempts" in stats:
                fixed = stats["attempts"]["init_state"]
                rate = stats["successes"]["init_state"] / fixed if fixed else float("nan")
                bar.write(
                    f"task {task_id}: kept {stats['kept']} demos; fixed init states "
                    f"{stats['successes']['init_state']}/{fixed} ({rate:.0%}), fresh placements "
                    f"{stats['successes']['placement']}/{stats['attempts']['placement']}, "
                    f"{stats['seconds']:.0f} s"
                )
        bar.close()
    if args.render == "after" or args.render_only:
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
        print(
            json.dumps(
                {
                    str(k): {kk: v.get(kk) for kk in ("kept", "attempts", "successes", "seconds")}
                    for k, v in summary.items()
                },
                indent=1,
            )
        )
    return 0


def _needs_images(path, demo: str) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        obs = f["data"][demo].get("obs")
        return obs is None or "agentview_rgb" not in obs
