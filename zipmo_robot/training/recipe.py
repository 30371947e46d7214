"""One documented training recipe (`configs/recipe/<name>.yaml`): collect -> VAE -> planner -> policy -> eval.

Each stage is the ordinary command (`zipmo-robot collect|train|eval`) run as a subprocess, so a recipe is
exactly what a user would type; a stage whose checkpoint already reached its steps is skipped and a partial
one resumes (`--resume`), so rerunning the recipe after a kill continues where it stopped. A training stage may
continue in named phases (`planner.then.<name>`), each from the previous phase's checkpoint, so a model trained
in rounds is one recipe. Wall time per stage goes to `<out>/recipe.jsonl` (appended as stages end) and the
resolved recipe to `<out>/recipe.yaml`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from zipmo_robot.errors import UserError

STAGES: tuple[str, ...] = ("collect", "vae", "planner", "policy", "eval")
TRAIN_STAGES: tuple[str, ...] = ("vae", "planner", "policy")


@dataclass
class RecipeDataSchema:
    """Where demos go (`collect --out raw --pre pre`) and how many per task; `tasks`: null = every task."""

    raw: str = "data"
    pre: str = "data/libero_spatial_pre"
    demos_per_task: int = 50
    tasks: list[int] | None = None
    collect: bool = True  # false: use the demos already in `pre`


@dataclass
class RecipePhaseSchema:
    """A continuation of a training stage: `steps` more optimiser steps from the previous phase's checkpoint
    (`--init`, a fresh optimiser and schedule), with these overrides after the stage's own."""

    steps: int = 1000
    overrides: list[str] = field(default_factory=list)


@dataclass
class RecipeStageSchema:
    """One training stage: its optimiser steps and hydra overrides of `configs/train/<stage>.yaml`; `then`:
    named continuation phases, run in order (how a model trained in rounds is reproduced by one recipe)."""

    steps: int = 1000
    overrides: list[str] = field(default_factory=list)
    then: dict[str, RecipePhaseSchema] | None = field(default_factory=dict)  # null: none (a variant's reset)


@dataclass
class RecipeEvalSchema:
    """`zipmo-robot eval` of the trained policy; `flags`: extra eval flags, e.g. [--max-steps, '60']."""

    protocol: str = "atm"
    tasks: list[int] | None = None
    episodes: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    num_envs: int = 2
    flags: list[str] = field(default_factory=list)


@dataclass
class RecipeSchema:
    """A whole recipe (see `configs/recipe/libero_spatial_cpu.yaml`)."""

    name: str = MISSING
    suite: str = "libero_spatial"
    data: RecipeDataSchema = field(default_factory=RecipeDataSchema)
    nproc: int = 1  # DDP processes per training stage (torchrun when > 1)
    threads: int | None = None
    common: list[str] = field(default_factory=list)  # overrides of every training stage
    extra: list[str] = field(default_factory=list)  # more of them, from the command line (after `common`)
    vae: RecipeStageSchema = field(default_factory=RecipeStageSchema)
    planner: RecipeStageSchema = field(default_factory=RecipeStageSchema)
    policy: RecipeStageSchema = field(default_factory=RecipeStageSchema)
    eval: RecipeEvalSchema = field(default_factory=RecipeEvalSchema)


def register_schemas(cs: Any) -> None:
    cs.store(name="recipe_schema", node=RecipeSchema)


def compose_recipe(name: str, overrides: list[str] | None = None) -> Any:
    """Compose `configs/recipe/<name>.yaml` with hydra overrides (e.g. `vae.steps=5 data.tasks=[0]`)."""
    from importlib import resources

    from zipmo_robot.configs import compose

    known = sorted(
        p.name[:-5]
        for p in resources.files("zipmo_robot.configs").joinpath("recipe").iterdir()
        if p.name.endswith(".yaml")
    )
    if name not in known:
        raise UserError(f"unknown recipe {name!r}; recipes: {', '.join(known)} (configs/recipe/)")
    cfg = compose(f"recipe/{name}", list(overrides or []))
    if cfg.nproc < 1:
        raise UserError(f"nproc={cfg.nproc} must be >= 1")
    return cfg


def _ids(ids: Any) -> str:
    return ",".join(str(int(i)) for i in ids)


def _checkpoint_meta(run_dir: Path) -> dict[str, Any] | None:
    """The meta.json of the checkpoint in a training run folder, or None when it has none yet."""
    meta = run_dir / "checkpoint" / "meta.json"
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
        int(data["step"])
        return data
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"{meta} is unreadable ({exc}); delete {run_dir} to retrain that stage") from exc


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the checkpoint in a training run folder, or None when it has none yet."""
    meta = _checkpoint_meta(run_dir)
    return None if meta is None else int(meta["step"])


@dataclass(frozen=True)
class Phase:
    """One phase of a training stage: its label in the log, its run folder, its steps and extra overrides."""

    label: str
    run: Path
    steps: int
    overrides: list[str]


def phases(cfg: Any, stage: str, out: Path) -> list[Phase]:
    """The phases of a training stage, in order. The last writes `<out>/<stage>` (what the next stage reads);
    earlier ones `<out>/<stage>-<phase>` (`-first` for the stage's own steps, whose overrides are the stage's)."""
    sc = cfg[stage]
    specs = [("first", sc.steps, []), *((k, v.steps, list(v.overrides)) for k, v in (sc.then or {}).items())]
    last = len(specs) - 1
    return [
        Phase(
            stage if i == 0 else f"{stage}:{name}",
            out / stage if i == last else out / f"{stage}-{name}",
            steps,
            overrides,
        )
        for i, (name, steps, overrides) in enumerate(specs)
    ]


def _check_parent(meta: dict[str, Any], run: Path, parent: Path, stage: str) -> None:
    """Refuse to resume or skip a phase whose checkpoint did not start from the previous phase, e.g. a
    `<out>/planner` trained before the recipe had phases: continuing it would mix two recipes."""
    src = meta.get("sources", {}).get(f"{stage}_init")
    got = None if src is None else Path(src["path"]).resolve()
    if got not in (parent.resolve(), (parent / "checkpoint").resolve()):
        raise UserError(
            f"{run} holds a {stage} that did not start from {parent} (it started from {got or 'scratch'}), so it "
            f"is not this recipe's phase. A run from before the recipe had phases: move that folder to "
            f"{run.parent / (stage + '-first')} to continue from it; otherwise delete {run} to retrain the phase"
        )


def _train_command(
    cfg: Any, stage: str, out: Path, chain: list[Phase], i: int, python: str
) -> list[str] | None:
    phase = chain[i]
    meta = _checkpoint_meta(phase.run)
    if meta is not None and i > 0:
        _check_parent(meta, phase.run, chain[i - 1].run, stage)
    if meta is not None and int(meta["step"]) >= phase.steps:
        return None
    launch = [python, "-m", "zipmo_robot"]
    if cfg.nproc > 1:
        launch = [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={cfg.nproc}",
            *launch[1:],
        ]
    cmd = [*launch, "train", stage, "--data", str(Path(cfg.data.pre)), "--out", str(phase.run)]
    cmd += ["--steps", str(phase.steps)]
    if meta is not None:
        cmd.append("--resume")
    elif i > 0:
        cmd += ["--init", str(chain[i - 1].run)]
    if cfg.threads is not None:
        cmd += ["--threads", str(cfg.threads)]
    if stage == "planner":
        cmd += ["--vae", str(out / "vae")]
    if stage == "policy":
        cmd += ["--planner", str(out / "planner")]
    suites = [f"data.suites=[{cfg.suite}]"]
    tasks = [] if cfg.data.tasks is None else [f"data.tasks=[{_ids(cfg.data.tasks)}]"]
    more = list(phase.overrides)
    if stage == "policy" and len(chain) > 1:  # every phase reads the plans the first one cached
        more.append(f"policy.plan_cache.dir={chain[0].run / 'plan_cache'}")
    return [*cmd, *cfg.common, *suites, *tasks, *cfg[stage].overrides, *more, *cfg.extra]


def stage_commands(
    cfg: Any, stage: str, out: Path, python: str = sys.executable
) -> list[tuple[str, list[str] | None]]:
    """(label, command line) of each step of one stage, the command None when there is nothing left to do (a
    finished training phase or collection switched off). Training stages have one entry per phase."""
    pre = str(Path(cfg.data.pre))
    zr = [python, "-m", "zipmo_robot"]
    if stage == "collect":
        if not cfg.data.collect:
            return [(stage, None)]
        cmd = [
            *zr,
            "collect",
            "--suite",
            cfg.suite,
            "--demos-per-task",
            str(cfg.data.demos_per_task),
            "--out",
            str(cfg.data.raw),
            "--pre",
            pre,
        ]
        if cfg.data.tasks is not None:
            cmd += ["--tasks", _ids(cfg.data.tasks)]
        return [(stage, cmd)]
    if stage in TRAIN_STAGES:
        chain = phases(cfg, stage, out)
        return [(p.label, _train_command(cfg, stage, out, chain, i, python)) for i, p in enumerate(chain)]
    if stage == "eval":
        ec = cfg.eval
        cmd = [
            *zr,
            "eval",
            "--protocol",
            ec.protocol,
            "--suites",
            cfg.suite,
            "--checkpoint",
            str(out / "policy"),
            "--seeds",
            _ids(ec.seeds),
            "--num-envs",
            str(ec.num_envs),
            "--out",
            str(out / "eval"),
            "--resume",
        ]
        tasks = ec.tasks if ec.tasks is not None else cfg.data.tasks
        if tasks is not None:
            cmd += ["--tasks", _ids(tasks)]
        if ec.episodes is not None:
            cmd += ["--episodes", str(ec.episodes)]
        return [(stage, [*cmd, *ec.flags])]
    raise UserError(f"unknown recipe stage {stage!r}; stages: {', '.join(STAGES)}")


def run_recipe(
    cfg: Any,
    out: str | Path,
    stages: list[str] | None = None,
    echo: Callable[[str], None] = print,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Run the recipe's stages in order (all by default); returns one record per stage run or skipped."""
    from zipmo_robot.configs import save_resolved

    out = Path(out)
    chosen = list(stages or STAGES)
    bad = [s for s in chosen if s not in STAGES]
    if bad:
        raise UserError(f"unknown recipe stage(s) {bad}; stages: {', '.join(STAGES)}")
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out, "recipe.yaml")
    records = []
    steps = [
        (stage, label, cmd)
        for stage in STAGES
        if stage in chosen
        for label, cmd in stage_commands(cfg, stage, out)
    ]
    for stage, label, cmd in steps:
        if cmd is None:
            off = stage == "collect" and not cfg.data.collect
            echo(f"[recipe] {label}: " + ("off (data.collect=false)" if off else "done already, skipped"))
            records.append({"stage": label, "skipped": True})
            continue
        echo(f"[recipe] {label}: {shlex.join(cmd)}")
        if dry_run:
            records.append({"stage": label, "cmd": cmd, "dry_run": True})
            continue
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        rec = {
            "stage": label,
            "cmd": cmd,
            "returncode": code,
            "seconds": round(time.perf_counter() - t0, 1),
            "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(out / "recipe.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        records.append(rec)
        if code != 0:
            raise UserError(
                f"recipe stage {label} failed (exit {code}); its output is above. Fix the cause and rerun the "
                "same command: finished stages are skipped and this one resumes"
            )
    return records
