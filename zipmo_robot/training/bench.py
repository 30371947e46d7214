"""Training benchmark: samples/s per stage (1 and 2 DDP processes), plan-cache build rate and BC speed-up,
and training FLOPs per sample at release size with a GPU-hours projection.

    zipmo-robot bench train --data DIR --out runs/bench_train [--sizes tiny small] [--flops]
    (or python -m zipmo_robot.training.bench with the same flags)

Throughput runs are real `zipmo-robot train` subprocesses (torchrun for 2 processes, gloo on CPU); the rate is
the mean `train/samples_per_s` of the logged windows after the first (warm-up). FLOPs are counted with
`torch.utils.flop_counter.FlopCounterMode` on meta tensors (no compute) for one training sample: forward and
backward of the trained parts, forward of the frozen ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (processes, torch threads per process). One thread per process: on a shared, loaded 2-core machine a
# 2-thread process spends its time waiting at OpenMP barriers (measured: tiny VAE 1.4 samples/s with
# 1 process x 2 threads against 7.8 with 2 processes x 1 thread, load average 12).
CONFIGS = ((1, 1), (2, 1))
COMMON = ["data.split=demos", "data.n_tracks=16", "progress=false", "tensorboard=false", "save_every=100000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(stage: str, args: list[str], out: Path, procs: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    base = ["-m", "zipmo_robot", "train", stage, "--out", str(out), "--threads", str(threads), *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *base]  # fmt: skip
    else:
        cmd = [sys.executable, *base]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    from zipmo_robot.training.trainer import read_metrics

    rates = [r["train/samples_per_s"] for r in read_metrics(out) if "train/samples_per_s" in r]
    steady = rates[1:] or rates
    return {
        "samples_per_s": sum(steady) / len(steady),
        "windows": len(rates),
        "wall_s": wall,
        "stdout": proc.stdout,
    }


def throughput(data: Path, out: Path, sizes: list[str], steps: int, batch: int) -> dict[str, Any]:
    """samples/s of every stage per size for each (processes, threads) of `CONFIGS`."""
    import shutil

    res: dict[str, Any] = {}
    for size in sizes:
        root = out / size
        if root.exists():
            shutil.rmtree(root)
        common = ["--data", str(data), "--size", size, "--steps", str(steps), "--batch-size", str(batch),
                  "--log-every", str(max(1, steps // 4)), *COMMON]  # fmt: skip
        # prerequisite checkpoints (2 steps each; quality does not matter for speed)
        pre = ["--data", str(data), "--size", size, "--steps", "2", "--batch-size", "2", *COMMON]
        _train("vae", pre, root / "vae_ckpt", 1, 1)
        _train("planner", [*pre, "--vae", str(root / "vae_ckpt")], root / "planner_ckpt", 1, 1)
        cache = root / "plan_cache"
        t0 = time.perf_counter()
        built = _train(
            "policy",
            [
                *pre,
                "--planner",
                str(root / "planner_ckpt"),
                "policy.plan_cache.plans_per_frame=1",
                f"policy.plan_cache.dir={cache}",
            ],  # fmt: skip
            root / "cache_build",
            1,
            1,
        )
        plans_line = [x for x in built["stdout"].splitlines() if x.startswith("plan cache:")]
        res[f"{size}/plan_cache_build"] = {"wall_s": time.perf_counter() - t0, "log": plans_line}
        stages = {
            "vae": [],
            "planner": ["--vae", str(root / "vae_ckpt")],
            "policy_cached": [
                "--planner",
                str(root / "planner_ckpt"),
                "policy.plan_cache.plans_per_frame=1",
                f"policy.plan_cache.dir={cache}",
            ],  # fmt: skip
            "policy_online": ["--planner", str(root / "planner_ckpt"), "policy.plan_cache.enabled=false"],
        }
        for name, extra in stages.items():
            stage = name.split("_")[0]
            for procs, threads in CONFIGS:
                r = _train(stage, [*common, *extra], root / f"{name}_{procs}p", procs, threads)
                r.pop("stdout")
                res[f"{size}/{name}/{procs}proc"] = r
                print(size, name, procs, "proc:", f"{r['samples_per_s']:.2f} samples/s", flush=True)
        for procs in (1, 2):
            a = res[f"{size}/policy_cached/{procs}proc"]["samples_per_s"]
            b = res[f"{size}/policy_online/{procs}proc"]["samples_per_s"]
            res[f"{size}/bc_cache_speedup/{procs}proc"] = a / b
    return res


# ----------------------------------------------------------------------------------------------------------
# FLOPs at release size (meta tensors)


@contextlib.contextmanager
def _meta_image_encoder():
    """On meta tensors the image encoder's [-1, 1] range check cannot read values; count its computation only."""
    from zipmo_robot.models.dino import ImageEncoder

    orig = ImageEncoder.forward
    ImageEncoder.forward = lambda self, imgs: self._encode(imgs)  # type: ignore[method-assign]
    try:
        yield
    finally:
        ImageEncoder.forward = orig  # type: ignore[method-assign]


def release_flops(image_encoder: str = "pretrained") -> dict[str, float]:
    """Training FLOPs of one sample (both views) per stage at release size, counted on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zipmo_robot.models.planner import build_planner
    from zipmo_robot.models.sizes import load_sizes
    from zipmo_robot.models.vae import TrajectoryVAE
    from zipmo_robot.policy.head import InverseDynamicsHead
    from zipmo_robot.training.stages import HeadLoss, PlannerLoss, VAELoss, dino_config

    sizes = load_sizes("release")
    dino = dino_config(sizes, image_encoder)
    B, V, n, T = 1, 2, 80, 64
    out: dict[str, float] = {}
    dev = torch.device("meta")

    def count(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return float(fc.get_total_flops())

    frames = torch.zeros((B, V, 128, 128, 3), dtype=torch.uint8, device=dev)
    tracks = torch.zeros((B, V, n, T, 2), device=dev)
    with torch.device("meta"), _meta_image_encoder():
        from dataclasses import replace

        vae = TrajectoryVAE(replace(sizes.vae, dino=dino))
        L, C = vae.cfg.n_latents, vae.cfg.latent_dim
        batch = {"tracks": tracks, "start_frames": frames, "eps": torch.zeros((B, V, L, C))}

        def vae_step():
            loss, _ = VAELoss(vae)(batch)
            loss.backward()

        out["vae"] = count(vae_step)
        pcfg = sizes.planner_config("libero_atm")
        pcfg = replace(pcfg, dino=dino, vae=replace(pcfg.vae, dino=dino), share_vae_dino=True)
        planner = build_planner(pcfg).to(dev)  # its token positions are CPU buffers (nonpersistent_buffers)
        planner.vae.requires_grad_(False)
        E = pcfg.d_cross
        pb = {
            "tracks": tracks,
            "start_frames": frames,
            "txt_emb": torch.zeros((B, E)),
            "t": torch.full((B,), 0.5),
            "noise": torch.zeros((B, V * L, C)),
            "drop_text": torch.zeros(B, dtype=torch.bool),
            "drop_frame": torch.zeros(B, dtype=torch.bool),
        }

        def planner_step():
            loss, _ = PlannerLoss(planner, 0.1, 0.0, 0.0)(pb)
            loss.backward()

        out["planner"] = count(planner_step)
        planner.requires_grad_(False)
        head = InverseDynamicsHead(sizes.head_config())
        hb = {
            "latents": torch.zeros((B, V * L, C)),
            "proprio": torch.zeros((B, 9)),
            "actions": torch.zeros((B, 16, 7)),
        }

        def head_step():
            loss, _ = HeadLoss(head)(hb)
            loss.backward()

        out["policy_head"] = count(head_step)

        # 10-step plan: conditioning once + 10 velocity evaluations (the sampler's prepare step caches the
        # cross-attention k/v and image projection; recomputing them here adds < 1 % on 1 text token)
        frames_f = torch.zeros((B, V, 128, 128, 3))

        def plan_step():
            with torch.no_grad():
                cond = planner.conditioning(frames_f, txt_emb=torch.zeros((B, 1, E)))
                x = torch.zeros((B, V * L, C))
                for k in range(10, 0, -1):
                    x = x - 0.1 * planner.predict_velocity(x, torch.full((B,), k / 10), cond)

        out["policy_plan_10nfe"] = count(plan_step)
    out["policy_online"] = out["policy_head"] + out["policy_plan_10nfe"]
    return out


def gpu_projection(flops: dict[str, float], peak_tflops: float, mfu: float) -> dict[str, Any]:
    """GPU-hours per 1M training samples (a sample = both views), and for the paper's schedules (Tab. G:
    VAE 800k steps at batch 256 of single-view clips, so half a sample each; planner 700k steps at batch 2048,
    counted at the two-view LIBERO planner's cost, about twice the open-domain one's), at `mfu` of a
    `peak_tflops` bf16 GPU."""
    rate = peak_tflops * 1e12 * mfu
    per_m = {k: v * 1e6 / rate / 3600 for k, v in flops.items()}
    paper = {
        "vae": 800_000 * 256 * flops["vae"] / 2 / rate / 3600,
        "planner": 700_000 * 2048 * flops["planner"] / rate / 3600,
    }
    return {
        "gpu_hours_per_1M_samples": per_m,
        "gpu_hours_paper_schedule": paper,
        "peak_tflops": peak_tflops,
        "mfu": mfu,
    }


def train_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `zipmo-robot bench train` (and of `python -m zipmo_robot.training.bench`)."""
    p.add_argument("--data", help="preprocessed demos (throughput runs)")
    p.add_argument("--out", default="runs/bench_train")
    p.add_argument("--sizes", nargs="*", default=["tiny", "small"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--flops", action="store_true", help="count release-size FLOPs and project GPU hours")
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100/H200 SXM: 989)"
    )
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation")


def run_train(a: argparse.Namespace) -> dict[str, Any]:
    """The report (throughput with --data, release FLOPs and GPU projection with --flops), also written to
    <out>/bench_train.json."""
    from zipmo_robot.bench.common import machine_info

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine_info(), "load_avg_start": os.getloadavg()}
    if a.data:
        result["throughput"] = throughput(Path(a.data), out, a.sizes, a.steps, a.batch_size)
    if a.flops:
        flops = release_flops()
        result["release_flops_per_sample"] = flops
        result["gpu_projection"] = gpu_projection(flops, a.peak_tflops, a.mfu)
    result["load_avg_end"] = os.getloadavg()
    (out / "bench_train.json").write_text(json.dumps(result, indent=1))
    return result


def format_train(result: dict[str, Any]) -> str:
    """The report without the machine block, as JSON."""
    return json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    train_arguments(p)
    print(format_train(run_train(p.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
