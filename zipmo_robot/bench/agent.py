"""`zipmo-robot bench agent`: milliseconds per control step of the ZipMo agent (planner replan + head +
ensembling) for model sizes and batch sizes, split into preprocessing, image encoding, planner sampling, head
and (optionally) the overlay decode; plus the projected hours for one suite under the released evaluation.

Weights are random (seeded), so no checkpoint is needed; the cost does not depend on the values. Timing uses
the agent's own per-stage clocks (`RollingReplanner.episode_info`). At release size on CPU a replan is slow,
so `--timed-nfe` runs fewer Euler steps and scales the planner time to `--nfe` (every Euler step costs the
same); reported as `plan_extrapolated`.

`--compile` times the opt-in fast path (`PolicyConfig.compile`: the planner's velocity network through
`torch.compile`) instead of the exact path; `--compile both` times the two agents (same weights) with their
control steps alternated, so their ratio (`speedup` of the compiled record) comes from one run. The compile
itself happens in the warm-up step of each batch size (`compile_s`), so keep `--warmup` >= 1 there.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from zipmo_robot.policy.config import PolicyConfig

SUITE_TASKS, SUITE_EPISODES, SUITE_MAX_STEPS = 10, 10, 600  # the released evaluation (§7)


def agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", nargs="+", default=["tiny", "small", "release"], help="model sizes (configs/model/)"
    )
    parser.add_argument("--variant", default="libero_atm", choices=("libero_atm", "libero_tramoe"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10], help="batch sizes (default: 1 10)")
    nfe, precision = PolicyConfig.nfe, PolicyConfig.precision  # the class defaults (no validation import)
    parser.add_argument(
        "--precision", default=precision, help=f"planner numerics: bf16 | fp32 (default {precision})"
    )
    parser.add_argument(
        "--nfe", type=int, default=nfe, help=f"Euler steps per replan (default {nfe}, as released)"
    )
    parser.add_argument(
        "--timed-nfe",
        type=int,
        default=None,
        help="Euler steps actually run (planner time scaled to --nfe); default: --nfe, 2 at release size",
    )
    parser.add_argument("--steps", type=int, default=2, help="timed control steps per case (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed control steps first (0 at release)")
    parser.add_argument("--overlay", action="store_true", help="also time the plan-overlay VAE decode")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="time the torch.compile fast path (--compile), or it and the exact path alternated (--compile "
        "both); default off (the exact path)",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the matmul floor (model GEMM shapes) of each case"
    )


def _random_agent(size: str, variant: str, args: argparse.Namespace, nfe: int) -> tuple[dict[str, Any], int]:
    """Agents (`{"exact": ..., "compiled": ...}` as `--compile` asks) sharing a seeded random planner (VAE kept
    only for the overlay) and a random head, and their parameter count."""
    import torch

    from zipmo_robot.models.planner import build_planner
    from zipmo_robot.models.sizes import load_sizes
    from zipmo_robot.models.text import SentenceCodeEmbedder
    from zipmo_robot.policy.agent import RollingReplanner
    from zipmo_robot.policy.head import InverseDynamicsHead

    sizes = load_sizes(size, list(getattr(args, "overrides", []) or []))
    cfg = sizes.planner_config(variant, share_vae_dino=True)
    planner = build_planner(cfg)
    if not args.overlay:
        planner.vae.decoder = torch.nn.Module()  # sampling never decodes; saves memory at release size
        planner.vae.encoder = torch.nn.Module()
    head = InverseDynamicsHead(
        sizes.head_config(
            grid_size=cfg.vae.latent_grid, num_views=cfg.num_views, latent_dim=cfg.vae.latent_dim
        )
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (planner, head):
            for name, p in module.named_parameters():
                if p.ndim >= 2 and "pos_embed" not in name:
                    p.normal_(0.0, 0.02, generator=gen)
    dev = torch.device(args.device)
    planner = planner.to(dev).eval().requires_grad_(False)
    head = head.to(dev).eval().requires_grad_(False)
    paths = {"off": ("exact",), "on": ("compiled",), "both": ("exact", "compiled")}[args.compile]
    agents = {
        path: RollingReplanner(
            planner,
            head,
            task_embedder=SentenceCodeEmbedder(cfg.d_cross),
            nfe=nfe,
            precision=args.precision,
            compile=path == "compiled",
            overlay=args.overlay,
        )
        for path in paths
    }
    params = sum(p.numel() for p in planner.parameters()) + sum(p.numel() for p in head.parameters())
    return agents, params


def _observation(batch: int, step: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(step)
    return {
        "agentview_image": rng.integers(0, 256, (batch, 128, 128, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 256, (batch, 128, 128, 3), dtype=np.uint8),
        "joint_states": rng.normal(size=(batch, 7)),
        "gripper_states": rng.normal(size=(batch, 2)),
    }


def _cases(agents: dict[str, Any], batch: int, steps: int, warmup: int, plan_scale: float) -> list[dict]:
    """Per-control-step milliseconds of one batch size for each agent (stage times summed over the batch's
    rows); the agents' control steps alternate, so they see the same machine load."""
    from zipmo_robot.policy.agent import STAGES
    from zipmo_robot.policy.base import RowInfo

    totals = {path: dict.fromkeys(STAGES, 0.0) for path in agents}
    wall = dict.fromkeys(agents, 0.0)
    for agent in agents.values():
        agent.reset()
    for step in range(warmup + steps):
        rows = [
            RowInfo(i, "libero_goal", i % 10, f"task {i % 10}", 0, 0, 1000 + i, step, env_seed=0)
            for i in range(batch)
        ]
        obs = _observation(batch, step)
        for path, agent in agents.items():
            before = {
                k: sum(agent.episode_info(i).get("timing", {}).get(k, 0.0) for i in range(batch))
                for k in STAGES
            }
            start = time.perf_counter()
            actions = agent.act(obs, rows)
            elapsed = time.perf_counter() - start
            assert actions.shape == (batch, 7)
            if step < warmup:
                continue
            wall[path] += elapsed
            for k in STAGES:
                totals[path][k] += sum(agent.episode_info(i)["timing"][k] for i in range(batch)) - before[k]
    out = []
    for path, agent in agents.items():
        ms = {k.removesuffix("_s"): 1000 * v / steps for k, v in totals[path].items()}
        ms["plan"] *= plan_scale
        ms["total"] = sum(ms.values())
        rec = {
            "batch": batch,
            "path": path,
            "ms_per_control_step": {k: round(v, 2) for k, v in ms.items()},
            "ms_per_env_step": round(ms["total"] / batch, 2),
            "measured_wall_ms_per_call": round(1000 * wall[path] / steps, 2),
            "plan_extrapolated": plan_scale != 1.0,
        }
        if agent.velocity is not None:  # seconds the first call of this batch size spent compiling
            rec["compile_s"] = round(
                sum(v for k, v in agent.velocity.compile_seconds.items() if k[0] == batch), 1
            )
        out.append(rec)
    if len(out) == 2:
        exact, compiled = (r["ms_per_control_step"]["total"] for r in out)
        out[1]["speedup"] = round(exact / compiled, 3) if compiled > 0 else None
    return out


def run_agent(args: argparse.Namespace) -> dict[str, Any]:
    """Time the agent for every (size, batch); project one suite's evaluation hours at batch 10."""
    import torch
    from tqdm import tqdm

    from zipmo_robot.bench.common import FloorCache, control_step_gflop, machine_info

    report: dict[str, Any] = {
        "benchmark": "agent",
        "machine": machine_info(),
        "settings": {
            "device": args.device,
            "threads": torch.get_num_threads(),
            "precision": args.precision,
            "nfe": args.nfe,
            "variant": args.variant,
            "steps_timed": args.steps,
            "overlay": args.overlay,
            "compile": args.compile,
        },
        "results": [],
    }
    for size in tqdm(args.size, desc="bench agent", unit="size"):
        release_cpu = size == "release" and not args.device.startswith("cuda")
        timed_nfe = args.timed_nfe or (2 if release_cpu else args.nfe)
        warmup = 0 if release_cpu and args.warmup == 1 else args.warmup
        build = time.perf_counter()
        agents, params = _random_agent(size, args.variant, args, timed_nfe)
        build_s = time.perf_counter() - build
        planner_cfg = next(iter(agents.values())).planner.cfg
        floors = FloorCache(planner_cfg, args.device)
        for batch in args.batch:
            for rec in _cases(agents, batch, args.steps, warmup, args.nfe / timed_nfe):
                rec.update(
                    size=size, params=params, build_s=round(build_s, 1), timed_nfe=timed_nfe, warmup=warmup
                )
                gflop = control_step_gflop(planner_cfg, batch, args.nfe)
                rec["control_step_gflop"] = round(gflop, 1)
                if not getattr(args, "no_floor", False):  # this machine's matmul rate on the model's shapes
                    total = rec["ms_per_control_step"]["total"]
                    rec.update(floors.against(gflop, total, batch, args.precision))
                if batch == 10 or batch == max(args.batch):
                    calls = SUITE_TASKS * SUITE_MAX_STEPS * (SUITE_EPISODES // batch if batch <= 10 else 1)
                    rec["suite_hours_policy_only"] = round(
                        calls * rec["ms_per_control_step"]["total"] / 3.6e6, 2
                    )
                report["results"].append(rec)
            if getattr(args, "on_result", None) is not None:  # results written as they arrive
                args.on_result(report)
        del agents
    report["projection_note"] = (
        f"one suite = {SUITE_TASKS} tasks x {SUITE_EPISODES} episodes x <= {SUITE_MAX_STEPS} steps; at batch 10 "
        f"that is {SUITE_TASKS * SUITE_MAX_STEPS} agent calls (upper bound: every episode runs to the cap), "
        "policy time only (env stepping runs in parallel worker processes and is not included)"
    )
    report["load_after"] = machine_info().get("loadavg_1_5_15")
    return report


def format_agent(report: dict[str, Any]) -> str:
    """Plain-text table of an agent report."""
    s = report["settings"]
    lines = [
        f"agent benchmark: device {s['device']}, {s['threads']} threads, planner {s['precision']}, "
        f"nfe {s['nfe']}, load {report['machine'].get('loadavg_1_5_15')} -> {report.get('load_after')}; "
        f"cpu: {report['machine'].get('cpu_model', '?')} {report['machine'].get('cpu_capability', '')} "
        f"{' '.join(report['machine'].get('bf16_isa', []))}",
        f"{'size':8} {'batch':>5} {'path':>8} {'total ms':>10} {'per env':>9} {'encode':>9} {'plan':>10} {'head':>7} "
        f"{'overlay':>8} {'suite h':>8} {'floor ms':>9} {'of floor':>8} {'speedup':>7} {'compile s':>9}",
    ]
    for r in report["results"]:
        ms = r["ms_per_control_step"]
        extrap = "*" if r["plan_extrapolated"] else " "
        hours, floor = r.get("suite_hours_policy_only"), r.get("fraction_of_floor")
        lines.append(
            f"{r['size']:8} {r['batch']:>5} {r.get('path', 'exact'):>8} {ms['total']:>10.1f} {r['ms_per_env_step']:>9.1f} "
            f"{ms['encode']:>9.1f} {ms['plan']:>9.1f}{extrap} {ms['head']:>7.1f} {ms['overlay']:>8.1f} "
            f"{'' if hours is None else f'{hours:.2f}':>8} {r.get('floor_ms', ''):>9} "
            f"{'' if floor is None else f'{floor:.0%}':>8} {r.get('speedup') or '':>7} {r.get('compile_s', ''):>9}"
        )
    lines.append(
        "* planner time measured with fewer Euler steps and scaled to nfe. speedup: exact / compiled total, "
        "steps alternated. " + report["projection_note"]
    )
    return "\n".join(lines)
