"""Ship a trained policy with the package: `bundled:NAME` (zipmo_robot/resources/checkpoints/NAME/).

    python benchmarks/bundle_checkpoint.py runs/spatial_cpu/policy --name libero_spatial \
        --eval runs/spatial_cpu/eval --recipe runs/spatial_cpu/recipe.yaml --agent nfe=5 replan_every=4

Copies the weights, config and meta (no optimiser state; `--half` stores the planner in fp16) with the
evaluation's summary and report beside them, and the agent settings the policy was evaluated with as the
checkpoint's `agent_defaults` (so `--checkpoint bundled:NAME` runs as evaluated without extra flags; an option
the user sets to a non-default value wins).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zipmo_robot.checkpoints import trained
from zipmo_robot.checkpoints.loader import bundled_root


def _value(text: str) -> object:
    """A KEY=VALUE value: JSON when it parses (5, 8.0, true), else the plain string (noise=episode)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policy", help="policy training run or checkpoint folder")
    p.add_argument("--name", required=True, help="bundled:NAME")
    p.add_argument("--eval", help="eval output folder: its report, config and results are shipped beside")
    p.add_argument("--recipe", help="the recipe.yaml the policy was trained with")
    p.add_argument("--provenance", help="a note of how it was trained (copied as provenance.md)")
    p.add_argument("--agent", nargs="*", default=[], help="agent defaults KEY=VALUE (nfe=5 replan_every=4)")
    p.add_argument("--half", action="store_true", help="fp16 model weights (halves the file)")
    args = p.parse_args()
    extra = {}
    if args.eval:
        for name, dst in (
            ("report.md", "eval_report.md"),
            ("report.csv", "eval_report.csv"),
            ("config.yaml", "eval_config.yaml"),
            ("results.jsonl", "eval_results.jsonl"),
        ):
            if (Path(args.eval) / name).is_file():
                extra[dst] = Path(args.eval) / name
    if args.recipe:
        extra["recipe.yaml"] = Path(args.recipe)
    if args.provenance:
        extra["provenance.md"] = Path(args.provenance)
    agent = {k: _value(v) for k, v in (a.split("=", 1) for a in args.agent)}
    out = trained.export(
        args.policy, bundled_root() / args.name, half=args.half, extra=extra, agent_defaults=agent
    )
    size = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"bundled:{args.name} -> {out} ({size / 2**20:.1f} MiB): {', '.join(sorted(f.name for f in out.iterdir()))}"
    )


if __name__ == "__main__":
    main()
