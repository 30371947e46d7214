"""Validation of a finished (or running) training run on held-out demos: the trainer's own validation
(`trainer.validate`, the same fixed batches, seed `trainer.VAL_SEED`) on the run's saved weights.

The stage is rebuilt from the run's resolved `config.yaml` (so every size and override matches what was
trained) and the checkpoint's weights are loaded strictly (EMA by default when saved). Only what decides the
*initial* weights is changed, since they are replaced anyway: `vae.init` points at the run itself (no
DINOv2 download), `planner.init` / `policy.init` are dropped. The planner stage still builds on the VAE of
`planner.vae` and the policy stage on the planner of `policy.planner` (then replaced by the copies inside
the checkpoint); a moved folder is given as an override (`planner.vae=DIR`).

Metrics (keys as the trainer logs them in `metrics.jsonl`): VAE: loss terms, `val/recon_px128`,
`val/epe_px128`, `val/epe_px128_heldout`, `val/pck@*px`, `val/pck_mean`; planner: `val/loss` (flow
matching), `val/x0_std`, `val/loss_text` vs `val/loss_other_text` (each row given another row's task
sentence: how much the planner uses the text); policy: `val/loss` (the head's 0.99-discounted BC loss),
`val/mse`, `val/mse_other_plan` (each row given another row's plan: how much the head uses the plan), on
plans sampled by the run's frozen planner with the agent's sampler (per-sample seeds of the fixed batches; no plan cache).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from zipmo_robot.errors import UserError

RESULT_NAME = "validation.json"


def run_folder(path: str | os.PathLike) -> Path:
    """The run folder of `path` (a run folder or its `checkpoint/`): where `validation.json` goes."""
    from zipmo_robot.checkpoints import trained

    p = Path(os.path.abspath(Path(path).expanduser()))
    if not p.exists():
        raise UserError(
            f"run folder {p} does not exist; pass a folder written by `zipmo-robot train --out DIR`"
        )
    ckpt = trained.resolve_dir(p)
    if ckpt != p and ckpt.parent == p:
        return p
    if (
        ckpt.name in (trained.CHECKPOINT_DIR, trained.CHECKPOINT_DIR + ".old")
        and (ckpt.parent / trained.CONFIG).is_file()
    ):
        return ckpt.parent
    return ckpt


def load_run_config(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[Any, dict]:
    """(training config, checkpoint meta) of a run folder: its `config.yaml` (else the checkpoint's copy)
    merged into the training schema (keys added since default), then `overrides` (`key=value`), checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training.config import STAGES, TrainSchema, check

    meta = trained.read_meta(run_folder(path))
    if meta.get("stage") not in STAGES:
        raise UserError(
            f"{meta['path']} is a {meta.get('stage')!r} checkpoint, not a training run of {STAGES}"
        )
    candidates = [run_folder(path) / trained.CONFIG, Path(meta["path"]) / trained.CONFIG]
    file = next((f for f in candidates if f.is_file()), None)
    if file is None:
        raise UserError(
            f"{path} holds no config.yaml (looked at {', '.join(map(str, candidates))}); validation rebuilds "
            "the model from the training config: pass the folder written by `zipmo-robot train --out DIR`"
        )
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainSchema), OmegaConf.load(file))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise UserError(f"cannot read the training config {file} with overrides {overrides}: {exc}") from exc
    if cfg.stage != meta["stage"]:
        raise UserError(f"{file} says stage={cfg.stage} but the checkpoint {meta['path']} is {meta['stage']}")
    check(cfg)
    return cfg, meta


def load_trained_planner_stage(
    path: str | os.PathLike, data: str | None = None, weights: bool = True
) -> tuple[Any, Any]:
    """(planner stage with the run's saved weights, EMA when saved, in eval mode; its config) of a planner
    run on CPU, for diagnostics (`benchmarks/planner_*.py`): the run's config, its text encoder, no init.
    `weights=False` keeps the freshly initialised planner (the run's seed)."""
    import torch

    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training import trainer

    cfg, meta = load_run_config(path)
    if cfg.stage != "planner":
        raise UserError(f"{path} is a {cfg.stage} run; give a planner run")
    if data:
        cfg.data.root = data
    cfg.planner.init = None
    cfg.text_encoder = (meta.get("text_encoder") or {}).get("kind", cfg.text_encoder)
    stage, _ = trainer.build_stage(cfg, torch.device("cpu"), lambda *a, **k: None)
    if weights:
        stage.load_trained(trained.read_weights(meta["path"], trained._pick(meta, "auto")), str(meta["path"]))
    stage.planner.eval()
    return stage, cfg


def _needs_folder(key: str, value: Any, what: str) -> None:
    from zipmo_robot.checkpoints import trained

    if value in (None, "official") or trained.is_checkpoint_dir(value):
        return
    raise UserError(
        f"the run was trained on the {what} {value} ({key} in its config.yaml), which is not a checkpoint "
        f"folder any more; any {what} checkpoint of the same model size builds the model (its weights are "
        f"replaced by the copy inside the run's checkpoint): add the override {key}=DIR"
    )


def validate_run(
    path: str | os.PathLike,
    data: str | os.PathLike | None = None,
    split: str = "val",
    batches: int | None = None,
    weights: str = "auto",
    overrides: list[str] | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Mean validation metrics of one training run over `batches` (default: the run's `val_batches`) fixed
    batches of `split` of the demos under `data` (default: the run's `data.root`); returns the record that
    `zipmo-robot validate` prints and writes (run, step, weights, data sizes, `metrics`)."""
    import torch

    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training import trainer
    from zipmo_robot.training.data import SPLITS, find_demos
    from zipmo_robot.training.stages import _load_into

    cfg, meta = load_run_config(path, overrides)
    ckpt = Path(meta["path"])
    stage_name = cfg.stage
    if split not in SPLITS:
        raise UserError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if data is not None:
        cfg.data.root = str(Path(data).expanduser())
    if cfg.data.root is None:
        raise UserError("no data: pass --data DIR (the `zipmo-robot preprocess --dst` folder)")
    if not Path(cfg.data.root).is_dir():
        raise UserError(
            f"data folder {cfg.data.root} does not exist; pass --data DIR (the `zipmo-robot preprocess --dst` "
            "folder holding the run's suites)"
        )
    cfg.data.split = split
    try:  # an empty split fails before any model is built
        find_demos(cfg.data.root, list(cfg.data.suites), split, cfg.data.tasks)
    except UserError as exc:
        raise UserError(f"{exc}\n  validate: choose another --split ({', '.join(SPLITS)}) or --data") from exc
    if batches is not None:
        if int(batches) < 1:
            raise UserError(f"--batches {batches} must be >= 1")
        cfg.val_batches = int(batches)
    weight_file = trained._pick(meta, weights)
    # only the initial weights change (they are replaced below): no hub download, no init checkpoint
    if stage_name == "vae":
        cfg.vae.init = str(ckpt)
    elif stage_name == "planner":
        cfg.planner.init = None
        _needs_folder("planner.vae", cfg.planner.vae, "VAE")
        text = meta.get("text_encoder") or {}
        if text.get("kind") in ("bert", "sentence_code"):  # the encoder `auto` resolved to when trained
            cfg.text_encoder = text["kind"]
            cfg.text_model = text.get("model", cfg.text_model)
    else:
        cfg.policy.init = None
        _needs_folder("policy.planner", cfg.policy.planner, "planner")

    dist = trainer.Dist()
    try:
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        device = trainer._device(cfg, dist)
        quiet = (lambda *a, **k: None) if not dist.main else log
        stage, sizes = trainer.build_stage(cfg, device, quiet)
        stage.load_trained(trained.read_weights(ckpt, weight_file), f"{ckpt / weight_file}")
        if stage_name == "policy":  # the frozen planner the head was trained with, as the checkpoint holds it
            full = trained.read_weights(ckpt, trained.MODEL)
            n = len(trained.PLANNER_PREFIX)
            psd = {k[n:]: v for k, v in full.items() if k.startswith(trained.PLANNER_PREFIX)}
            _load_into(stage.planner, psd, f"planner part ({trained.PLANNER_PREFIX}*) of {ckpt}")
            stage.cache = None  # plans sampled online from the fixed batches' seeds
        val = trainer.stage_data(cfg, stage, split)
        B, N = int(cfg.batch_size), int(cfg.val_batches)
        t0 = time.perf_counter()
        metrics = trainer.validate(
            cfg, stage, val, dist, device, trainer._autocast(cfg, device), progress and dist.main
        )
        seconds = time.perf_counter() - t0
        distinct = len({val.index_at(trainer.VAL_SEED, p) for p in range(N * B)})
        record: dict[str, Any] = {
            "run": str(run_folder(path)),
            "checkpoint": str(ckpt),
            "stage": stage_name,
            "kind": meta.get("kind"),
            "step": meta.get("step"),
            "model_size": sizes.name,
            "weights": "ema" if weight_file == trained.EMA else "model",
            "data": str(cfg.data.root),
            "split": split,
            "suites": list(cfg.data.suites),
            "tasks": None if cfg.data.tasks is None else list(cfg.data.tasks),
            "demos": len(val.refs),
            "windows": len(val),
            "batches": N,
            "batch_size": B,
            "samples": N * B,
            "distinct_windows": distinct,
            "seed": trainer.VAL_SEED,
            "device": str(device),
            "world_size": dist.world,
            "overrides": list(overrides or []),
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metrics": metrics,
        }
        if stage_name == "policy":
            record["plans"] = {
                "source": "online",
                "nfe": int(cfg.policy.nfe),
                "precision": str(cfg.policy.plan_precision),
            }
        return record
    finally:
        dist.close()


def format_record(r: dict[str, Any]) -> str:
    """A few human-readable lines of one validation record."""
    head = (
        f"{r['stage']} {r['run']} (step {r['step']}, {r['weights']} weights) on {r['split']} of {r['data']}: "
        f"{r['demos']} demos, {r['windows']} windows; {r['batches']} batches x {r['batch_size']} = "
        f"{r['samples']} samples ({r['distinct_windows']} distinct windows), {r['seconds']:.1f} s"
    )
    width = max((len(k) for k in r["metrics"]), default=0)
    return "\n".join([head, *(f"  {k:<{width}}  {v:.6g}" for k, v in sorted(r["metrics"].items()))])
