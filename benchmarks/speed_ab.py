"""A/B speed of the agent's control step: an old checkout against the working tree, in one run, alternated.

Two worker processes build the same agent (seeded random weights of `tests/exact_record.py`, so both trees
get identical weights and inputs) and take control steps in turn (ABBA order), never at the same time; the
report gives per-step wall and process-CPU seconds, their before/now ratios, the load average at each step and
whether the first action is identical. `--profile` also groups torch.profiler operator time by kind
(matmul, attention, dtype conversion, elementwise, other). One worker holds one model: at release size that
is ~4-5 GB each, so check free memory first.

    git worktree add /tmp/zipmo_before 8321ee5
    python benchmarks/speed_ab.py --before /tmp/zipmo_before --size release --batch 1 --precision bf16 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution"),
    "attention kernel": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "dtype conversion": ("aten::copy_", "aten::_to_copy"),
    "norm/rope/elementwise": tuple(
        f"aten::{op}"
        for op in "mul add sub div pow sum mean rsqrt sqrt cos sin silu gelu cat neg native_layer_norm clamp min "
        "max upsample_bilinear2d stack repeat repeat_interleave index fill_ randn normal_".split()
    ),
}


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(TESTS))
    import exact_record as R

    if args.tree:
        R._use_tree(args.tree)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    api = R._imports()
    sizes = api["load_sizes"](args.size)
    cfg = sizes.planner_config(args.variant, share_vae_dino=True)
    planner = api["build_planner"](cfg)
    planner.vae.decoder = torch.nn.Module()  # sampling never decodes
    planner.vae.encoder = torch.nn.Module()
    head = api["InverseDynamicsHead"](
        sizes.head_config(
            grid_size=cfg.vae.latent_grid, num_views=cfg.num_views, latent_dim=cfg.vae.latent_dim
        )
    )
    for i, module in enumerate((planner, head)):
        shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        module.load_state_dict(R.random_weights(shapes, seed=i), strict=True)
        module.requires_grad_(False)
    agent = api["RollingReplanner"](planner.eval(), head.eval(), nfe=args.nfe, precision=args.precision)
    rng = np.random.default_rng(7)
    for i in range(args.batch):
        agent.reset_row(i, 1000 + i, torch.from_numpy(rng.normal(size=cfg.d_cross).astype(np.float32)))
    images = rng.integers(0, 256, (args.batch, cfg.num_views, 128, 128, 3), dtype=np.uint8)
    proprio = rng.normal(size=(args.batch, 9)).astype(np.float32)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        prof = None
        if line.strip() == "profile":
            from torch.profiler import ProfilerActivity, profile

            prof = profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
        wall, cpu = time.perf_counter(), time.process_time()
        out = agent.step(images, proprio, list(range(args.batch)))
        res = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        res["action0"] = float(out.actions[0, 0])
        if prof is not None:
            prof.__exit__(None, None, None)
            ops = {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()}
            total = sum(t for t, _ in ops.values())
            kinds = {k: sum(ops.get(op, (0.0, 0))[0] for op in v) for k, v in CATEGORIES.items()}
            kinds["other ops"] = total - sum(kinds.values())
            res["op_seconds_by_kind"] = {k: round(v, 4) for k, v in kinds.items()}
            res["op_calls"] = sum(c for _, c in ops.values())
        print(json.dumps(res), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", required=False, default="", help="old checkout (e.g. a worktree of 8321ee5)"
    )
    parser.add_argument("--size", default="tiny", help="release | small | tiny")
    parser.add_argument("--variant", default="libero_atm")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side (after one untimed)")
    parser.add_argument("--profile", action="store_true", help="profile every timed step")
    parser.add_argument("--json", help="write the per-step records here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return 0
    if not args.before:
        parser.error("--before PATH (an old checkout) is required")
    base = [sys.executable, __file__, "--worker", "--size", args.size, "--variant", args.variant]
    base += ["--batch", str(args.batch), "--precision", args.precision, "--nfe", str(args.nfe)]
    base += ["--threads", str(args.threads)]
    procs = {
        "before": subprocess.Popen(
            [*base, "--tree", args.before], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ),
        "now": subprocess.Popen(base, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
    }
    for name, proc in procs.items():
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {name} worker failed to start")
    records: dict[str, list[dict]] = {k: [] for k in procs}
    command = "profile" if args.profile else "step"
    for step in range(args.steps + 1):
        order = list(procs) if step % 2 == 0 else list(procs)[::-1]
        for name in order:
            procs[name].stdin.write(("step" if step == 0 else command) + "\n")
            procs[name].stdin.flush()
            rec = json.loads(procs[name].stdout.readline())
            rec["load1"] = round(os.getloadavg()[0], 2)
            if step > 0:
                records[name].append(rec)
    for proc in procs.values():
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait()
    pairs = list(zip(records["before"], records["now"], strict=True))
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "tree")},
        "cpu": next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
        ),
        "wall_s": {k: [round(r["wall"], 3) for r in v] for k, v in records.items()},
        "cpu_s": {k: [round(r["cpu"], 3) for r in v] for k, v in records.items()},
        "wall_ratio_before_over_now_median": round(
            statistics.median(b["wall"] / n["wall"] for b, n in pairs), 3
        ),
        "cpu_ratio_before_over_now_median": round(
            statistics.median(b["cpu"] / n["cpu"] for b, n in pairs), 3
        ),
        "load1": [r["load1"] for r in records["now"]],
        "same_first_action": all(b["action0"] == n["action0"] for b, n in pairs),
    }
    if args.profile:
        summary["profile"] = {
            k: {"op_calls": v[-1]["op_calls"], **v[-1]["op_seconds_by_kind"]} for k, v in records.items()
        }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
