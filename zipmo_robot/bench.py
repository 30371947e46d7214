"""Benchmarks behind `zipmo-robot bench <name>`: one entry per sub-benchmark in `SUB_BENCHMARKS`.

A sub-benchmark is `SubBenchmark(help, add_arguments, run, format)`: `add_arguments(parser)` adds its flags,
`run(args) -> dict` returns a JSON-able report (`machine`, `settings`, `results` records, plus anything else)
and `format(report) -> str` prints it. The command adds the common flags `--threads`, `--device`, `--json`,
passes trailing hydra overrides as `args.overrides` and, with `--json PATH`, sets `args.on_result(report)`,
which a sub-benchmark calls after each record so partial results are on disk as they arrive.
Add one by writing its functions and one line in `SUB_BENCHMARKS`. No heavy import at module level (the CLI
imports this file to build `--help`).

`planner`: the LIBERO planner with random weights at a model size (release by default), per batch size and
precision: static conditioning (DINO on both views, text token, per-call caches), one Euler step (one
velocity evaluation), a replan (conditioning + NFE steps), peak resident memory, the analytic FLOPs of a step
and the fraction of the machine's measured matmul throughput that the step reaches.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SubBenchmark:
    """One `zipmo-robot bench <name>` entry: its help line, its flags and its runner."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    format: Callable[[dict[str, Any]], str] | None = None  # report -> text table (None: JSON is printed)


# ---------------------------------------------------------------------------------------------------------
# Machine facts and measurement helpers


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, vector extensions that matter for bf16, torch version and threads, load."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        text = open("/proc/cpuinfo").read()
        model = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), ""
        )
        flags = next(
            (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
        )
        info["cpu_model"] = model
        info["bf16_isa"] = sorted(
            f for f in set(flags) if f in {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"}
        )
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], repeats: int, device: str = "cpu", warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    return timed_calls(fn, repeats, device, warmup)[0]


def timed_calls(
    fn: Callable[[], Any],
    repeats: int,
    device: str = "cpu",
    warmup: int = 1,
    cpu_times: list[float] | None = None,
) -> tuple[list[float], Any]:
    """`(seconds of each of `repeats` timed calls, result of the last call)` after `warmup` untimed calls.

    With `cpu_times`, the process CPU seconds of each timed call are appended to it (on a shared machine wall
    time includes waiting for other processes; CPU time / threads is closer to the uncontended time, but
    also counts OpenMP spin-waiting).
    """
    result = None
    for _ in range(warmup):
        result = fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu_start)
    return times, result


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager sampling this process's resident memory every `interval` s; `.peak` in bytes.

    CPU tensors are not visible to tracemalloc, so the resident set is what we can measure; it includes the
    model weights and everything else the process holds.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def matmul_throughput(
    dtype_name: str,
    device: str = "cpu",
    shapes: tuple[tuple[int, int, int], ...] | None = None,
    repeats: int = 5,
) -> dict[str, Any]:
    """Best GFLOP/s of plain `a @ b` in `dtype_name` (fp32 | bf16) over a few shapes, with the current threads.

    Default shapes: the planner's FFN up-projection at batch 1 (1024 x 1024 @ 1024 x 6144) and a 4096 cube.
    """
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    shapes = shapes or ((1024, 1024, 6144), (4096, 4096, 4096))
    gen = torch.Generator().manual_seed(0)
    per_shape = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(k, n, generator=gen).to(device=device, dtype=dtype)
        best = min(time_call(lambda a=a, b=b: a @ b, repeats, device))
        per_shape[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 1)
    return {"dtype": dtype_name, "gflops_per_shape": per_shape, "gflops": max(per_shape.values())}


# ---------------------------------------------------------------------------------------------------------
# FLOP counts


def planner_step_flops(cfg: Any, batch: int, n_cross: int | None = None) -> dict[str, float]:
    """Analytic FLOPs (2 per multiply-add) of one velocity evaluation of a planner (`PlannerConfig`).

    Counts every matmul: per layer the self-attention projections (qkv, out), attention scores and
    weighted sums, cross-attention q/out projections and its attention over `n_cross` context tokens, the
    SwiGLU FFN, the three AdaRMSNorm scale projections; plus the latent in/out projections and the time
    MLP. Elementwise work (norms, RoPE, softmax, SiLU) is listed apart as `elementwise_elems` (elements
    touched per op, a memory-traffic proxy), not counted as FLOPs.
    """
    V = cfg.num_views if cfg.is_libero else 1
    n_lat = V * cfg.vae.n_latents
    n_img = V * cfg.dino.grid**2
    L = n_lat + n_img
    W, F, C, D = cfg.width, cfg.width * cfg.ff_expand, cfg.vae.latent_dim, cfg.d_cond_norm
    if n_cross is None:
        n_cross = (2 if cfg.use_step_token else 1) if cfg.is_libero else cfg.n_cond
    per_layer = {
        "self_proj": 2 * L * W * (3 * W) + 2 * L * W * W,
        "self_attn": 2 * 2 * L * L * W,
        "cross_proj": 2 * L * W * W + 2 * L * W * W,
        "cross_attn": 2 * 2 * L * n_cross * W,
        "ffn": 2 * L * W * (2 * F) + 2 * L * F * W,
        "adanorm": 3 * 2 * D * W,
    }
    out = {k: float(v * cfg.depth * batch) for k, v in per_layer.items()}
    out["in_out_proj"] = float(batch * (2 * n_lat * C * W + 2 * n_lat * W * C))
    out["time_mlp"] = float(batch * (2 * D * D + cfg.mapping_depth * 2 * D * 3 * cfg.mapping_d_ff))
    out["total"] = sum(out.values())
    out["elementwise_elems"] = float(batch * cfg.depth * L * W * 3)  # 3 norms per layer, one pass each
    return out


def dino_flops(dino_cfg: Any, n_images: int) -> float:
    """Analytic FLOPs of the DINO encoder on `n_images` 224x224 images (patch conv, blocks)."""
    E, n = dino_cfg.embed_dim, dino_cfg.grid**2 + 1 + dino_cfg.num_register_tokens
    patch = 2 * dino_cfg.grid**2 * (3 * dino_cfg.patch_size**2) * E
    block = 2 * n * E * 3 * E + 2 * n * E * E + 2 * 2 * n * n * E + 2 * 2 * n * E * E * dino_cfg.mlp_ratio
    return float(n_images * (patch + dino_cfg.depth * block))


# ---------------------------------------------------------------------------------------------------------
# `bench planner`

PRECISIONS = ("fp32", "bf16", "bf16w")


def cast_matmul_weights_(module: Any, dtype: Any) -> int:
    """Cast the weights and biases of every `nn.Linear` in `module` to `dtype`, in place.

    Under bf16 autocast these layers cast their fp32 weights to bf16 on every call (autocast caches casts
    only for parameters that require grad, and inference models do not), which costs a pass over all
    weights per forward. Casting once gives bit-identical outputs (autocast rounds the same way) without
    that cost, and halves the weights' memory (convolutions are left alone: one patch embedding, negligible). Only for models run exclusively under bf16 autocast: outside
    autocast these layers would then compute in bf16. Returns the number of tensors cast.
    """
    import torch

    n = 0
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            for name in ("weight", "bias"):
                p = getattr(layer, name, None)
                if p is not None and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    n += 1
    return n


def _planner_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--nfe", type=int, default=10, help="Euler steps of one replan (10 in the release agent)"
    )
    parser.add_argument(
        "--full-replan",
        action="store_true",
        help="also time one real NFE-step `sample` call (else it is derived)",
    )
    parser.add_argument("--no-matmul", action="store_true", help="skip the matmul-throughput measurement")


def _random_planner(size: str, variant: str, overrides: list[str], device: str, seed: int = 0) -> Any:
    """A planner with seeded random weights (N(0, 0.02) matrices, zero-init layers included) and no VAE
    (sampling without decoding never touches it; dropping it saves ~1 GB at release size)."""
    import torch

    from zipmo_robot.model_configs import load_sizes
    from zipmo_robot.planner import build_planner

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
    for batch, precision in tqdm(cases, desc="bench planner", unit="case"):
        if precision == "bf16w" and not cast:
            cast_matmul_weights_(planner, torch.bfloat16)
            cast = True
        record, v = _planner_case(planner, args, batch, precision)
        if "matmul" in report:
            peak = report["matmul"]["fp32" if precision == "fp32" else "bf16"]["gflops"]
            record["fraction_of_matmul_peak"] = round(record["step_gflops_achieved"] / peak, 3)
        fp32, bf16 = outputs.get((batch, "fp32")), outputs.get((batch, "bf16"))
        if precision != "fp32" and fp32 is not None:  # same inputs, relative L2 difference of the velocity
            record["velocity_rel_diff_vs_fp32"] = float((v - fp32).norm() / fp32.norm())
        if precision == "bf16w" and bf16 is not None:
            record["bitwise_equal_to_bf16"] = bool(torch.equal(v, bf16))
        outputs[(batch, precision)] = v
        report["results"].append(record)
        if getattr(args, "on_result", None) is not None:  # results written as they arrive
            args.on_result(report)
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
        f"{'GFLOP/s':>8} {'of peak':>7} {'peak RSS GB':>11}"
    )
    for r in report["results"]:
        replan = r["replan_ms_measured"] if r["replan_ms_measured"] is not None else r["replan_ms_derived"]
        frac = r.get("fraction_of_matmul_peak")
        lines.append(
            f"{r['batch']:>5} {r['precision']:>5} {r['cond_ms']:>9.1f} {r['step_ms']:>9.1f} {replan:>15.1f} "
            f"{r['step_gflop']:>10.1f} {r['step_gflops_achieved']:>8.1f} "
            f"{'' if frac is None else f'{frac:.0%}':>7} {r['peak_rss_gb']:>11.2f}"
        )
    return "\n".join(lines)


def _agent_bench(name: str) -> Callable[..., Any]:
    """Lazy forwarder to `zipmo_robot.policy.benchmark.<name>` (the agent benchmark lives with the agent)."""

    def call(*args: Any) -> Any:
        from zipmo_robot.policy import benchmark

        return getattr(benchmark, name)(*args)

    return call


# ---------------------------------------------------------------------------------------------------------
# Registry: name -> sub-benchmark (explicit; add an entry per sub-benchmark)

SUB_BENCHMARKS: dict[str, SubBenchmark] = {
    "planner": SubBenchmark(
        help="LIBERO planner with random weights: conditioning, Euler step, replan, memory, FLOPs",
        add_arguments=_planner_arguments,
        run=run_planner,
        format=format_planner,
    ),
    "agent": SubBenchmark(
        help="ZipMo agent (planner replan + head) with random weights: ms per control step by stage, sizes, "
        "batch 1/10, projected hours per suite",
        add_arguments=_agent_bench("agent_arguments"),
        run=_agent_bench("run_agent"),
        format=_agent_bench("format_agent"),
    ),
}
