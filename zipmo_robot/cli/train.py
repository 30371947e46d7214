"""`zipmo-robot train vae|planner|policy`: train one ZipMo stage on preprocessed LIBERO demos.

Same command on one CPU process and under torchrun (DDP): `torchrun --nproc_per_node N -m zipmo_robot train ...`.
"""

from __future__ import annotations

import argparse
import json

HELP = "Train a ZipMo stage (vae, planner, policy) on preprocessed LIBERO demos; checkpoints resume exactly."

# --preset: the ZipMo paper's two LIBERO setups (PROTOCOLS.md). The planner of either is trained on every
# suite's train split jointly; the policy head on the first 10 training demos of each task (`bc_train_10`).
PRESETS: dict[str, dict[str, list[str]]] = {
    "atm": {
        "planner": ["planner.variant=libero_atm"],
        "policy": ["data.split=bc_train_10", "eval.protocol=atm"],
    },
    "tramoe": {
        "planner": ["planner.variant=libero_tramoe"],
        "policy": ["data.split=bc_train_10", "eval.protocol=tramoe"],
    },
}

# flag dest -> config key
_FLAG_KEYS: dict[str, str] = {
    "data": "data.root",
    "steps": "steps",
    "batch_size": "batch_size",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "image_encoder": "image_encoder",
    "text_encoder": "text_encoder",
    "vae": "planner.vae",
    "planner": "policy.planner",
    "init": None,  # per stage
    "save_every": "save_every",
    "log_every": "log_every",
    "threads": "threads",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=("vae", "planner", "policy"), help="which stage to train")
    parser.add_argument("--data", help="preprocessed demos folder (`zipmo-robot preprocess --dst`)")
    parser.add_argument("--out", required=True, help="run folder: checkpoint/, metrics.jsonl, tb/")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    parser.add_argument("--size", help="model size: tiny, small (default), release")
    parser.add_argument("--optim", choices=("paper", "released"), help="optimiser preset (default paper)")
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="data setup: atm (10 BC demos per task, ATM planner) or tramoe (10 BC demos, step-token planner, "
        "one head per suite); sets the overrides listed in PRESETS",
    )
    parser.add_argument("--steps", type=int, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, help="global batch (split over DDP processes)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="autocast (auto: bf16 on CUDA)")
    parser.add_argument(
        "--image-encoder", choices=("pretrained", "scratch"), help="DINO: frozen pretrained or trained"
    )
    parser.add_argument(
        "--text-encoder", choices=("auto", "bert", "sentence_code"), help="task text encoding"
    )
    parser.add_argument("--vae", help="planner stage: VAE checkpoint folder (or official)")
    parser.add_argument("--planner", help="policy stage: planner checkpoint folder")
    parser.add_argument("--init", help="start from this checkpoint of the same stage (vae: also `official`)")
    parser.add_argument("--save-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--threads", type=int, help="torch threads per process")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss module")


def _quote(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def build_overrides(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """Hydra overrides: the size and optimiser presets first, the trailing overrides, then the flags."""
    out = []
    if args.size:
        out.append(f"model={args.size}")
    if args.optim:
        out.append(f"train/optim@optim={args.optim}")
    if args.preset:
        out.extend(PRESETS[args.preset].get(args.stage, []))
    out.extend(overrides)
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "init":
            key = {"vae": "vae.init", "planner": "planner.init", "policy": "policy.init"}[args.stage]
        out.append(f"{key}={_quote(value)}")
    if args.compile:
        out.append("compile=true")
    return out


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from zipmo_robot.training.config import compose_train
    from zipmo_robot.training.trainer import train

    cfg = compose_train(args.stage, build_overrides(args, overrides))
    summary = train(cfg, args.out, resume=args.resume)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    return 0
