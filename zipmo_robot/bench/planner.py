"""`bench planner`: the LIBERO planner with random weights at a model size, per batch size and precision.

Static conditioning (DINO on both views, text token, per-call caches), one Euler step (one velocity
evaluation), a replan (conditioning + NFE steps), peak resident memory, the analytic FLOPs of a step and the
fraction of the machine's measured matmul throughput that the step reaches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from zipmo_robot.bench.common import (
    PRECISIONS,
    FloorCache,
    PeakRSS,
    cast_matmul_weights_,
    dino_flops,
    machine_info,
    matmul_throughput,
    planner_step_flops,
    time_call,
    timed_calls,
)
from zipmo_robot.policy.config import PolicyConfig


def planner_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", default="release", help="model size: release | small | tiny (configs/model/)"
    )
    parser.add_argument("--variant", default="libero_atm", choices=("libero_atm", "libero_tramoe"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10], help="batch sizes (default: 1 10)")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "bf16"],
        choices=PRECISIONS,
        help="fp32; bf16 = bf16 autocast over fp32 weights (the official path); bf16w = the same with the "
        "matmul weights pre-cast to bf16 once (bit-identical outputs, no per-call weight casts)",
    )
    parser.add_argument("--steps", type=int, default=2, help="timed Euler steps per case (default 2)")
    parser.add_argument("--cond-repeats", type=int, default=2, help="timed conditioning calls per case")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed calls before the timed conditioning calls and steps (default 1)",
    )
    parser.add_argument(
        "--nfe", type=int, default=PolicyConfig.nfe, help="Euler steps of one replan (default: the agent's)"
    )
    parser.add_argument(
        "--full-replan",
        action="store_true",
        help="also time one real NFE-step `sample` call (else it is derived)",
    )
    parser.add_argument(
        "--no-matmul", action="store_true", help="skip the matmul-throughput and matmul-floor measurements"
    )


def _random_planner(size: str, variant: str, overrides: list[str], device: str, seed: int = 0) -> Any:
    """A planner with seeded random weights (N(0, 0.02) matrices, zero-init layers included) and no VAE
    (sampling without decoding never touches it; dropping it saves ~1 GB at release size)."""
    import torch

    from zipmo_robot.models.planner import build_planner
    from zipmo_robot.models.sizes import load_sizes

    cfg = load_sizes(size, overrides).planner_config(variant, share_vae_dino=True)
    planner = build_planner(cfg)
    planner.vae = torch.nn.Module()  # not used by conditioning / velocity / sampling without decoding
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in planner.named_parameters():
            if p.ndim >= 2 and "pos_embed" not in name:
                p.normal_(0.0, 0.02, generator=gen)
    return planner.to(device).eval().requires_grad_(False)


def _planner_inputs(cfg: Any, batch: int, device: str, seed: int = 1) -> dict[str, Any]:
    """Observation-shaped inputs: 2 views of 128x128 frames in [-1, 1], a task embedding, noise, steps."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {
        "frames": (torch.rand(batch, cfg.num_views, 128, 128, 3, generator=gen) * 2 - 1).to(device),
        "txt": torch.randn(batch, cfg.d_cross, generator=gen).to(device),
        "z": torch.randn(batch, cfg.num_views * cfg.vae.n_latents, cfg.vae.latent_dim, generator=gen).to(
            device
        ),
        "start_t": torch.arange(batch, dtype=torch.int64).to(device),
    }


def _planner_case(
    planner: Any, args: argparse.Namespace, batch: int, precision: str
) -> tuple[dict[str, Any], Any]:
    """Time one (batch, precision) case; returns its record and the fp32 copy of one velocity output."""
    import contextlib

    import torch

    device, cfg = args.device, planner.cfg
    inputs = _planner_inputs(cfg, batch, device)
    dev_type = torch.device(device).type
    autocast = (
        torch.autocast(dev_type, dtype=torch.bfloat16)
        if precision.startswith("bf16")
        else contextlib.nullcontext()
    )
    t_vec = torch.full((batch,), 1.0, device=device)
    if dev_type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def condition() -> Any:
        return planner.prepare(
            planner.conditioning(inputs["frames"], txt_emb=inputs["txt"], start_t=inputs["start_t"])
        )

    def replan() -> Any:
        return planner.sample(
            inputs["z"],
            inputs["frames"],
            txt_emb=inputs["txt"],
            start_t=inputs["start_t"],
            sample_steps=args.nfe,
        )

    with PeakRSS() as mem, torch.inference_mode(), autocast:
        cond_cpu: list[float] = []
        step_cpu: list[float] = []
        cond_times, cond = timed_calls(condition, args.cond_repeats, device, args.warmup, cond_cpu)
        step_times, v = timed_calls(
            lambda: planner.predict_velocity(inputs["z"], t_vec, cond),
            args.steps,
            device,
            args.warmup,
            step_cpu,
        )
        v = v.float()
        replan_s = time_call(replan, 1, device, warmup=0)[0] if args.full_replan else None
    cond_ms = 1e3 * statistics.median(cond_times)
    step_ms = 1e3 * statistics.median(step_times)
    flops = planner_step_flops(cfg, batch)
    record: dict[str, Any] = {
        "batch": batch,
        "precision": precision,
        "cond_ms": round(cond_ms, 1),
        "cond_ms_all": [round(1e3 * t, 1) for t in cond_times],
        "step_ms": round(step_ms, 1),
        "step_ms_all": [round(1e3 * t, 1) for t in step_times],
        "cond_cpu_s_all": [round(t, 2) for t in cond_cpu],
        "step_cpu_s_all": [round(t, 2) for t in step_cpu],
        "replan_ms_derived": round(cond_ms + args.nfe * step_ms, 1),
        "replan_ms_measured": None if replan_s is None else round(1e3 * replan_s, 1),
        "step_gflop": round(flops["total"] / 1e9, 1),
        "step_gflops_achieved": round(flops["total"] / (step_ms / 1e3) / 1e9, 1),
        "cond_gflop": round(dino_flops(cfg.dino, batch * cfg.num_views) / 1e9, 1),
        "peak_rss_gb": round(mem.peak / 2**30, 2),
        "rss_before_gb": round(mem.start / 2**30, 2),
    }
    if dev_type == "cuda":
        record["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return record, v


def run_planner(args: argparse.Namespace) -> dict[str, Any]:
    """Time conditioning / Euler step / replan of the LIBERO planner for every (batch, precision)."""
    import torch
    from tqdm import tqdm

    device = args.device
    overrides = list(getattr(args, "overrides", []) or [])
    build_start = time.perf_counter()
    planner = _random_planner(args.size, args.variant, overrides, device)
    cfg = planner.cfg
    build_s = time.perf_counter() - build_start
    n_params = sum(p.numel() for p in planner.parameters())
    report: dict[str, Any] = {
        "benchmark": "planner",
        "machine": machine_info(),
        "settings": {
            "size": args.size,
            "variant": args.variant,
            "overrides": overrides,
            "device": device,
            "threads": torch.get_num_threads(),
            "steps_timed": args.steps,
            "warmup": args.warmup,
            "nfe": args.nfe,
            "model": {
                "width": cfg.width,
                "depth": cfg.depth,
                "dino_dim": cfg.dino.embed_dim,
                "params": n_params,
            },
            "build_s": round(build_s, 1),
        },
        "results": [],
    }
    if not args.no_matmul:
        dtypes = sorted({"fp32" if p == "fp32" else "bf16" for p in args.precision})
        report["matmul"] = {d: matmul_throughput(d, device) for d in dtypes}

    # bf16w casts the model's weights in place, so its cases run last
    order = sorted(set(args.precision), key=PRECISIONS.index)
    cases = [(b, p) for p in order for b in args.batch]
    outputs: dict[tuple[int, str], Any] = {}
    cast = False
    floors = FloorCache(cfg, device)
    for batch, precision in tqdm(cases, desc="bench planner", unit="case"):
        if precision == "bf16w" and not cast:
            cast_matmul_weights_(planner, torch.bfloat16)
            cast = True
        record, v = _planner_case(planner, args, batch, precision)
        if "matmul" in report:
            peak = report["matmul"]["fp32" if precision == "fp32" else "bf16"]["gflops"]
            record["fraction_of_matmul_peak"] = round(record["step_gflops_achieved"] / peak, 3)
            # the floor: this step's FLOPs at the sustained rate of the model's own GEMM shapes (this run)
            record.update(floors.against(record["step_gflop"], record["step_ms"], batch, precision))
        fp32, bf16 = outputs.get((batch, "fp32")), outputs.get((batch, "bf16"))
        if precision != "fp32" and fp32 is not None:  # same inputs, relative L2 difference of the velocity
            record["velocity_rel_diff_vs_fp32"] = float((v - fp32).norm() / fp32.norm())
        if precision == "bf16w" and bf16 is not None:
            record["bitwise_equal_to_bf16"] = bool(torch.equal(v, bf16))
        outputs[(batch, precision)] = v
        report["results"].append(record)
        if getattr(args, "on_result", None) is not None:  # results written as they arrive
            args.on_result(report)
    report["matmul_floor"] = floors.floors
    report["load_after"] = machine_info().get("loadavg_1_5_15")
    return report


def format_planner(report: dict[str, Any]) -> str:
    """A plain-text table of a planner report."""
    s = report["settings"]
    lines = [
        f"planner {s['variant']} size={s['size']} (width {s['model']['width']}, depth {s['model']['depth']}, "
        f"{s['model']['params'] / 1e6:.1f} M params) on {s['device']}, {s['threads']} threads; "
        f"cpu: {report['machine'].get('cpu_model', '?')}, load {report['machine'].get('loadavg_1_5_15')}",
    ]
    if "matmul" in report:
        lines.append(
            "matmul peak: " + ", ".join(f"{k} {v['gflops']:.0f} GFLOP/s" for k, v in report["matmul"].items())
        )
    replan_title = f"replan({s['nfe']}) ms"
    lines.append(
        f"{'batch':>5} {'prec':>5} {'cond ms':>9} {'step ms':>9} {replan_title:>15} {'GFLOP/step':>10} "
        f"{'GFLOP/s':>8} {'of peak':>7} {'of floor':>8} {'peak RSS GB':>11}"
    )
    for r in report["results"]:
        replan = r["replan_ms_measured"] if r["replan_ms_measured"] is not None else r["replan_ms_derived"]
        frac, floor = r.get("fraction_of_matmul_peak"), r.get("fraction_of_floor")
        lines.append(
            f"{r['batch']:>5} {r['precision']:>5} {r['cond_ms']:>9.1f} {r['step_ms']:>9.1f} {replan:>15.1f} "
            f"{r['step_gflop']:>10.1f} {r['step_gflops_achieved']:>8.1f} "
            f"{'' if frac is None else f'{frac:.0%}':>7} {'' if floor is None else f'{floor:.0%}':>8} "
            f"{r['peak_rss_gb']:>11.2f}"
        )
    return "\n".join(lines)
