"""`zipmo-robot recipe NAME --out DIR`: run a training recipe (configs/recipe/) end to end, resumably."""

from __future__ import annotations

import argparse

HELP = "Run a recipe (configs/recipe/): collect demos, train VAE, planner and policy, evaluate; resumes."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="recipe: libero_spatial_cpu (2 CPU cores) or libero_spatial_gpu")
    parser.add_argument(
        "--out", required=True, help="run folder: vae/, planner/, policy/, eval/, recipe.jsonl"
    )
    parser.add_argument(
        "--stages", help="comma-separated subset of collect,vae,planner,policy,eval (default: all, in order)"
    )
    parser.add_argument("--data", help="preprocessed demos folder (overrides data.pre)")
    parser.add_argument("--dry-run", action="store_true", help="print the stage commands, run nothing")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from zipmo_robot.training.recipe import compose_recipe, run_recipe

    extra = [f"data.pre={args.data}"] if args.data else []
    cfg = compose_recipe(args.name, [*overrides, *extra])
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    run_recipe(cfg, args.out, stages=stages, dry_run=args.dry_run)
    return 0
