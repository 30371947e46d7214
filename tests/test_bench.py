"""The bench command and its pieces (not timed: figures are not asserted, only structure and exactness)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zipmo_robot.bench.common import (
    PeakRSS,
    cast_matmul_weights_,
    dino_flops,
    matmul_throughput,
    planner_step_flops,
)
from zipmo_robot.models.sizes import load_sizes


def test_release_flops_per_euler_step_match_a_hand_count() -> None:
    """LIBERO release planner, batch 1: L = 2x256 latents + 2x256 image tokens, width 1024, 24 layers."""
    cfg = load_sizes("release").planner_config("libero_atm")
    L, W, F = 1024, 1024, 3072
    per_layer = (
        2 * L * W * 4 * W  # self-attention qkv + out projections
        + 4 * L * L * W  # scores and weighted sum
        + 2 * L * W * 2 * W  # cross-attention q + out projections
        + 4 * L * 1 * W  # attention over the one text token
        + 2 * L * W * 2 * F
        + 2 * L * F * W  # SwiGLU up (value and gate) and down
        + 3 * 2 * 256 * W  # AdaRMSNorm scale projections
    )
    flops = planner_step_flops(cfg, batch=1)
    expected_backbone = 24 * per_layer
    backbone = sum(flops[k] for k in ("self_proj", "self_attn", "cross_proj", "cross_attn", "ffn", "adanorm"))
    assert backbone == expected_backbone
    assert 870e9 < flops["total"] < 880e9  # ~0.88 TFLOP per velocity evaluation
    assert planner_step_flops(cfg, batch=10)["total"] == pytest.approx(10 * flops["total"])
    tramoe = load_sizes("release").planner_config("libero_tramoe")
    assert planner_step_flops(tramoe, 1)["cross_attn"] == 2 * flops["cross_attn"]  # text + step token
    # DINO ViT-B/14 at 224 px: 2 x ~85 M block params x 261 tokens + attention + patch conv ~ 47 GFLOP/image
    assert 45e9 < dino_flops(cfg.dino, 1) < 49e9


def test_weight_precast_is_bit_identical_under_autocast() -> None:
    from zipmo_robot.models.planner import build_planner

    cfg = load_sizes("tiny").planner_config("libero_tramoe")
    torch.manual_seed(0)
    planner = build_planner(cfg).eval()
    with torch.no_grad():
        for p in planner.parameters():
            if p.ndim >= 2:  # matrices random (zero-init layers too); norm scales, temperatures, freqs kept
                p.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 2, 128, 128, 3, generator=gen) * 2 - 1
    txt, z = torch.randn(2, cfg.d_cross, generator=gen), torch.randn(2, 512, 16, generator=gen)
    steps = torch.tensor([0, 9])

    def plan() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return planner.sample(z, frames, txt_emb=txt, start_t=steps, sample_steps=2)

    before = plan()
    assert before.isfinite().all()
    n = cast_matmul_weights_(planner, torch.bfloat16)
    assert n == sum(
        1
        for m in planner.modules()
        if isinstance(m, torch.nn.Linear)
        for p in (m.weight, m.bias)
        if p is not None
    )
    assert torch.equal(plan(), before)


def test_matmul_throughput_report() -> None:
    out = matmul_throughput("bf16", shapes=((64, 64, 128), (32, 32, 32)), repeats=2)
    assert out["dtype"] == "bf16" and set(out["gflops_per_shape"]) == {"64x64x128", "32x32x32"}
    assert out["gflops"] == max(out["gflops_per_shape"].values()) > 0


def test_peak_rss_sees_an_allocation() -> None:
    with PeakRSS(interval=0.001) as mem:
        block = torch.ones(64 * 2**20)  # 256 MB, touched
        del block
    assert mem.peak - mem.start > 200 * 2**20


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args], capture_output=True, text=True, env=env
    )


def test_bench_planner_cli_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "planner", "--size", "tiny", "--batch", "1", "--precision", "fp32", "bf16", "bf16w"]
    args += ["--steps", "1", "--cond-repeats", "1", "--threads", "1", "--no-matmul", "--json", str(out)]
    args += ["model.planner.depth=2"]
    result = _cli(args)
    assert result.returncode == 0, result.stderr
    assert "replan(10) ms" in result.stdout and f"report written to {out}" in result.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["model"]["depth"] == 2 and report["settings"]["threads"] == 1
    assert "matmul" not in report
    by_precision = {r["precision"]: r for r in report["results"]}
    assert set(by_precision) == {"fp32", "bf16", "bf16w"}
    for r in by_precision.values():
        assert r["step_ms"] > 0 and r["cond_ms"] > 0 and r["peak_rss_gb"] > 0
        assert r["replan_ms_derived"] == pytest.approx(r["cond_ms"] + 10 * r["step_ms"], abs=1.0)
    assert by_precision["bf16w"]["bitwise_equal_to_bf16"] is True
    assert 0 < by_precision["bf16"]["velocity_rel_diff_vs_fp32"] < 0.1


def test_bench_without_a_name_or_with_bad_threads_is_a_user_error() -> None:
    result = _cli(["bench"])
    assert result.returncode == 2 and "name a benchmark" in result.stderr and "planner" in result.stderr
    result = _cli(["bench", "planner", "--threads", "0"])
    assert result.returncode == 2 and "--threads must be >= 1" in result.stderr


def test_bench_agent_cli_writes_a_report(tmp_path: Path) -> None:
    """`bench agent` at the tiny size through the real CLI: every (size, batch) case, the agent's own stage
    clocks, the nfe default of the one policy schema, the planner time scaled from the Euler steps run."""
    from zipmo_robot.policy.config import PolicyConfig

    out = tmp_path / "agent.json"
    args = ["bench", "agent", "--size", "tiny", "--batch", "1", "2", "--steps", "1", "--warmup", "0"]
    args += ["--timed-nfe", "1", "--overlay", "--threads", "1", "--json", str(out)]
    result = _cli(args)
    assert result.returncode == 0, result.stderr
    assert "agent benchmark" in result.stdout and f"report written to {out}" in result.stdout
    report = json.loads(out.read_text())
    s = report["settings"]
    assert s["nfe"] == PolicyConfig.nfe and s["precision"] == PolicyConfig.precision and s["overlay"] is True
    assert [(r["size"], r["batch"]) for r in report["results"]] == [("tiny", 1), ("tiny", 2)]
    for r in report["results"]:
        ms = r["ms_per_control_step"]
        assert set(ms) == {"preprocess", "encode", "plan", "head", "overlay", "total"}
        assert ms["plan"] > 0 and ms["encode"] > 0 and ms["head"] > 0 and ms["overlay"] > 0
        assert ms["total"] == pytest.approx(sum(v for k, v in ms.items() if k != "total"), abs=0.05)
        assert r["ms_per_env_step"] == pytest.approx(ms["total"] / r["batch"], abs=0.05)
        assert r["timed_nfe"] == 1 and r["plan_extrapolated"] is True and r["params"] > 0
    assert "suite_hours_policy_only" in report["results"][1]  # the largest batch projects a suite
    bad = _cli(["bench", "agent", "--size", "tiny", "--precision", "fp16", "--batch", "1"])
    assert bad.returncode == 2 and "fp16" in bad.stderr and "bf16" in bad.stderr


def test_bench_train_is_registered(tmp_path: Path) -> None:
    """`bench train` (zipmo_robot/training/bench.py) runs through the bench CLI: its flags in --help, and a
    --flops run (release-size models on meta tensors, ~10 s) writes the same report to --out and --json."""
    result = _cli(["bench", "train", "--help"])
    assert result.returncode == 0, result.stderr
    assert "--flops" in result.stdout and "--peak-tflops" in result.stdout and "--threads" in result.stdout
    out, report_path = tmp_path / "bt", tmp_path / "bt.json"
    result = _cli(["bench", "train", "--flops", "--out", str(out), "--json", str(report_path)])
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report == json.loads((out / "bench_train.json").read_text()) and "throughput" not in report
    flops = report["release_flops_per_sample"]
    assert flops["vae"] > 0 and flops["planner"] > 0 and 0 < flops["policy_head"] < flops["planner"]
    assert flops["policy_online"] == pytest.approx(flops["policy_head"] + flops["policy_plan_10nfe"])
    assert report["gpu_projection"]["peak_tflops"] == 989.0
