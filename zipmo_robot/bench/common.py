"""Measurement helpers shared by the sub-benchmarks: machine facts, timing, peak memory, matmul peak, FLOPs."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

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


def _reset_hwm() -> bool:
    """Reset this process's peak-RSS counter (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


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
        self._hwm_reset = False

    def __enter__(self) -> PeakRSS:
        self._hwm_reset = _reset_hwm()
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
        # the kernel's high-water mark (reset on entry) catches peaks between two samples on a busy machine
        self.peak = max(self.peak, _rss_bytes(), _hwm_bytes() if self._hwm_reset else 0)


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
        per_shape[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 3)
    return {"dtype": dtype_name, "gflops_per_shape": per_shape, "gflops": max(per_shape.values())}


def planner_linear_shapes(cfg: Any, batch: int) -> list[tuple[int, int, int, int]]:
    """The GEMMs of one velocity evaluation of a planner (`PlannerConfig`) as `(M, K, N, count)`: per layer
    qkv, self-attention out, cross-attention q and out, SwiGLU up and down (M = batch x tokens)."""
    V = cfg.num_views if cfg.is_libero else 1
    M = batch * (V * cfg.vae.n_latents + V * cfg.dino.grid**2)
    W, F = cfg.width, cfg.width * cfg.ff_expand
    shapes = {(M, W, 3 * W): 1, (M, W, W): 3, (M, W, 2 * F): 1, (M, F, W): 1}
    return [(m, k, n, c * cfg.depth) for (m, k, n), c in shapes.items()]


def matmul_floor(
    shapes: list[tuple[int, int, int, int]],
    dtype_name: str,
    device: str = "cpu",
    seconds_per_shape: float = 0.5,
) -> dict[str, Any]:
    """Sustained GEMM rate on a model's own shapes: each `(M, K, N, count)` run back to back as
    `F.linear(x (M, K), w (N, K))` in `dtype_name` for about `seconds_per_shape`; the rate is the FLOP-weighted
    one (total FLOPs of the shapes x counts / total time), so `flops / gflops` is the time a step would take
    if every FLOP ran at this machine's matmul rate (the floor figures are compared with)."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    per_shape, flops, seconds = {}, 0.0, 0.0
    for m, k, n, count in shapes:
        x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
        w = torch.randn(n, k, generator=gen).to(device=device, dtype=dtype)
        with torch.inference_mode():
            F.linear(x, w)
            _sync(device)
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < seconds_per_shape:
                F.linear(x, w)
                calls += 1
            _sync(device)
            per_call = (time.perf_counter() - start) / calls
        f = 2.0 * m * k * n
        per_shape[f"{m}x{k}x{n}"] = round(f / per_call / 1e9, 1)
        flops += f * count
        seconds += per_call * count
    return {
        "dtype": dtype_name,
        "gflops": round(flops / seconds / 1e9, 1),
        "gflops_per_shape": per_shape,
        "shapes": "model",
    }


class FloorCache:
    """`matmul_floor` on a planner's shapes per (batch, dtype), measured once per run and reused, plus the
    figures that put a measured time against it (same machine, same run, same load)."""

    def __init__(self, cfg: Any, device: str = "cpu", seconds_per_shape: float = 0.5) -> None:
        self.cfg, self.device, self.seconds = cfg, device, seconds_per_shape
        self.floors: dict[str, dict[str, Any]] = {}

    def rate(self, batch: int, precision: str) -> float:
        """GFLOP/s of the model's GEMM shapes at `batch` in the dtype the precision computes in."""
        dtype = "fp32" if precision == "fp32" else "bf16"
        key = f"batch{batch}_{dtype}"
        if key not in self.floors:
            shapes = planner_linear_shapes(self.cfg, batch)
            self.floors[key] = matmul_floor(shapes, dtype, self.device, self.seconds)
        return self.floors[key]["gflops"]

    def against(self, gflop: float, measured_ms: float, batch: int, precision: str) -> dict[str, Any]:
        """`gflop` of work that took `measured_ms`: the floor time at this machine's rate and the fraction."""
        rate = self.rate(batch, precision)
        floor_ms = 1e3 * gflop / rate
        return {
            "floor_gflops": rate,
            "floor_ms": round(floor_ms, 1),
            "fraction_of_floor": round(floor_ms / measured_ms, 3) if measured_ms > 0 else None,
        }


def control_step_gflop(cfg: Any, batch: int, nfe: int) -> float:
    """Analytic GFLOP of one agent control step: `nfe` velocity evaluations + DINO on every view."""
    views = cfg.num_views if cfg.is_libero else 1
    return (nfe * planner_step_flops(cfg, batch)["total"] + dino_flops(cfg.dino, batch * views)) / 1e9


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

    from zipmo_robot.models.blocks import keep_weights_in_autocast_dtype_

    return keep_weights_in_autocast_dtype_(module, dtype, layers=(torch.nn.Linear,))
