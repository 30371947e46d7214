"""`zipmo-robot validate RUN [RUN ...]`: the trainer's validation metrics of saved training runs on
held-out demos (VAE reconstruction error / PCK, planner flow-matching loss, policy head BC loss), to explain
a failure after the fact. See `zipmo_robot.training.validation`.
"""

from __future__ import annotations

import argparse

HELP = (
    "Validation metrics of training runs (VAE reconstruction error and PCK, planner loss, policy BC loss) "
    "on held-out demos, with the trainer's own fixed batches."
)

SPLITS = ("val", "train", "bc_train_10", "demos")  # = training.data.SPLITS (kept light: no import here)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="training run folders (`zipmo-robot train --out`)"
    )
    parser.add_argument(
        "--data",
        help="preprocessed demos folder (`zipmo-robot preprocess --dst`; default: the run's data.root)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="val",
        help="demos of each task.json split (default val: the held-out demos)",
    )
    parser.add_argument(
        "--batches", type=int, help="fixed batches of the run's batch_size (default: the run's val_batches)"
    )
    parser.add_argument(
        "--weights",
        choices=("auto", "model", "ema"),
        default="auto",
        help="which saved weights (default auto: EMA when saved; training-time validation used model)",
    )
    parser.add_argument(
        "--json",
        help="write all records as one JSON list here (default: {RUN}/validation.json, one record per run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import json
    import os
    from pathlib import Path

    from zipmo_robot.errors import UserError
    from zipmo_robot.files import atomic_write_text
    from zipmo_robot.training.validation import RESULT_NAME, format_record, validate_run

    def write(path: Path, value: object) -> None:
        try:
            atomic_write_text(path, json.dumps(value, indent=1) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {path} ({exc}); pass --json PATH elsewhere") from exc

    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    records = []
    for run_path in args.runs:
        record = validate_run(
            run_path,
            data=args.data,
            split=args.split,
            batches=args.batches,
            weights=args.weights,
            overrides=overrides,
            progress=not args.no_progress,
        )
        if not main:
            continue
        records.append(record)
        print(format_record(record), flush=True)
        if args.json:  # rewritten after each run: a later failure keeps the finished ones
            write(Path(args.json).expanduser(), records)
        else:
            target = Path(record["run"]) / RESULT_NAME
            write(target, record)
            print(f"  -> {target}", flush=True)
    if args.json and main:
        print(f"-> {args.json}")
    return 0
