"""`zipmo-robot eval-tracks`: trajectory-prediction MSE (WHN protocol, ZipMo Table E) on preprocessed demos."""

from __future__ import annotations

import argparse

HELP = "Trajectory-prediction MSE (Single/Min/Mean/MeanT, k samples, both views) on preprocessed demos."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", nargs="+", help="preprocessed demo files or folders (zipmo-robot preprocess output)"
    )
    parser.add_argument(
        "--checkpoint",
        help="trained checkpoint folder or released planner file (default: --size random model)",
    )
    parser.add_argument("--size", default="tiny", help="size of the seeded random model without --checkpoint")
    parser.add_argument("--split", choices=("val", "train", "all"), default="val",
                        help="demos of each task.json split (default val: the ATM held-out 10 %%)")  # fmt: skip
    parser.add_argument("--k", type=int, default=8, help="samples per window (default 8)")
    parser.add_argument("--n-tracks", type=int, default=32, help="non-static tracks per window (default 32)")
    parser.add_argument("--var-threshold", type=float, default=10.0, help="px² at 128 (default 10, ATM's)")
    parser.add_argument("--stride", type=int, default=16, help="frames between window starts (default 16)")
    from zipmo_robot.policy.config import PolicyConfig

    nfe = PolicyConfig.nfe
    parser.add_argument("--nfe", type=int, default=nfe, help=f"planner Euler steps (default {nfe})")
    parser.add_argument("--max-demos", type=int, help="evaluate at most this many demo files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/eval_tracks", help="output folder (default runs/eval_tracks)")


def _files(paths: list[str], split: str) -> list:
    import json
    from pathlib import Path

    from zipmo_robot.errors import UserError

    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
            continue
        if not p.is_dir():
            raise UserError(f"{p} does not exist; give preprocessed demo files or their folder")
        for f in sorted(p.rglob("demo_*.hdf5")):
            index = f.parent / "task.json"
            if split != "all" and index.is_file():
                meta = json.loads(index.read_text())
                names = meta.get(split)
                if names is not None and f.stem not in names and f.name not in names:
                    continue
            out.append(f)
    if not out:
        raise UserError(f"no preprocessed demo files (demo_*.hdf5, split {split}) under {', '.join(paths)}")
    return out


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from zipmo_robot.errors import UserError
    from zipmo_robot.eval import tracks

    if overrides:
        raise UserError(f"eval-tracks takes no key=value settings, got {' '.join(overrides)}")
    if args.k < 1 or args.n_tracks < 1 or args.stride < 1 or args.nfe < 1:
        raise UserError("--k, --n-tracks, --stride and --nfe must be positive")
    files = _files(args.data, args.split)[: args.max_demos]
    if args.checkpoint:
        planner, embedder = tracks.load_planner(args.checkpoint)
        model = args.checkpoint
    else:
        planner, embedder = tracks.random_planner(args.size, args.seed)
        model = f"random {args.size} (seed {args.seed})"
    s = tracks.TrackEvalSettings(n_tracks=args.n_tracks, var_threshold=args.var_threshold, k=args.k,
                                 nfe=args.nfe, seed=args.seed, stride=args.stride)  # fmt: skip
    result = tracks.evaluate(files, planner, embedder, s)
    print(tracks.write(result, Path(args.out), model))
    print(f"metrics in {args.out} ({len(files)} demos)")
    return 0
