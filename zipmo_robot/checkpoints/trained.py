"""Checkpoints written by `zipmo-robot train`: one folder per checkpoint, read by one strict loader.

Folder layout (`FORMAT` = "zipmo-robot-checkpoint/1"):
  meta.json          format, stage, kind, step, model configs (dataclass fields, every quirk switch), the
                     image/text-encoder choice, the sha256 of every weight file, the sources (content hashes
                     of the VAE/planner a stage started from)
  model.safetensors  the weights; a policy (BC) checkpoint holds the official policy-head layout: the frozen
                     planner (with its VAE and DINO) under `track_predictor.*` and the head's own keys
  ema.safetensors    EMA of the trained weights (policy: the head's keys only), optional
  config.yaml        the resolved training config
  trainer_state.pt   optimiser, scheduler, step, sampler and RNG state (only needed by `--resume`)

A checkpoint is written into a temporary sibling folder and swapped in by two renames (the previous one is
kept as `<name>.old` until the swap is done), so a killed run leaves a complete checkpoint behind; loading
falls back to `<name>.old` when the swap was interrupted. Every problem (missing file, damaged file, a hash
or key set that does not fit the config) is one `UserError` saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zipmo_robot.errors import UserError
from zipmo_robot.files import atomic_write_text

if TYPE_CHECKING:
    from zipmo_robot.checkpoints.loader import PolicyBundle

FORMAT = "zipmo-robot-checkpoint/1"
META = "meta.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
CONFIG = "config.yaml"
STATE = "trainer_state.pt"
CHECKPOINT_DIR = "checkpoint"  # inside a training run folder
HEAD_PREFIX = ""  # head keys as in the official policy-head files
PLANNER_PREFIX = "track_predictor."


# ----------------------------------------------------------------------------------------------------------
# Paths and hashes


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a checkpoint folder or a training run folder holding one."""
    try:
        resolve_dir(path)
    except UserError:
        return False
    return True


def resolve_dir(path: str | os.PathLike) -> Path:
    """The checkpoint folder for `path`: the folder itself, or `<run>/checkpoint` for a training run
    folder; an interrupted swap falls back to `<name>.old`."""
    p = Path(path).expanduser()
    for cand in (p, p / CHECKPOINT_DIR):
        if (cand / META).is_file():
            return cand
        old = cand.with_name(cand.name + ".old")
        if not cand.exists() and (old / META).is_file():
            return old
    if p.is_dir():
        raise UserError(
            f"{p} is not a zipmo-robot checkpoint: no {META} in it or in {p / CHECKPOINT_DIR}; pass the folder "
            "written by `zipmo-robot train ... --out DIR` (DIR or DIR/checkpoint)"
        )
    raise UserError(f"checkpoint folder {p} does not exist")


def _jsonable(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return {k: _jsonable(v) for k, v in asdict(x).items()}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


# ----------------------------------------------------------------------------------------------------------
# Writing


def save(
    path: str | os.PathLike,
    *,
    stage: str,
    kind: str,
    model: Mapping[str, Any],
    meta: Mapping[str, Any],
    ema: Mapping[str, Any] | None = None,
    config_yaml: str | None = None,
    trainer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (temporary sibling + rename); returns its path.

    `model` / `ema`: state dicts (tensors are made contiguous CPU copies); `meta`: extra JSON fields (model
    configs, encoder choices, sources); `trainer_state`: anything `torch.save` takes.
    """
    import torch
    from safetensors.torch import save_file

    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: dict[str, str] = {}
    for name, sd in ((MODEL, model), (EMA, ema)):
        if sd is None:
            continue
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
        save_file(tensors, str(tmp / name))
        files[name] = sha256_file(tmp / name)
    if trainer_state is not None:
        torch.save(dict(trainer_state), tmp / STATE)
        files[STATE] = sha256_file(tmp / STATE)
    if config_yaml is not None:
        (tmp / CONFIG).write_text(config_yaml)
    record = {
        "format": FORMAT,
        "stage": stage,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        **_jsonable(dict(meta)),
        "files": files,
    }
    atomic_write_text(tmp / META, json.dumps(record, indent=1))
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    _fsync_dir(tmp)
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    if old.exists():
        shutil.rmtree(old)
    return dst


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Reading


def export(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    half: bool = False,
    extra: Mapping[str, str | os.PathLike] | None = None,
    agent_defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Copy a checkpoint without its trainer state (weights, config, meta: what inference needs), e.g. to ship
    it as package data; `half` stores the model weights in float16 (the EMA head stays fp32); `extra` maps
    file names to files copied beside it (an eval summary); `agent_defaults`: PolicyConfig knobs the agent
    should run with unless the user sets them (policy/factory.py). Weights are re-hashed in the new meta.json."""
    meta = read_meta(src)
    folder = Path(meta["path"])
    model = read_weights(folder, MODEL)
    if half:
        model = {k: v.half() if v.is_floating_point() else v for k, v in model.items()}
    ema = read_weights(folder, EMA) if (folder / EMA).is_file() else None
    config = (folder / CONFIG).read_text() if (folder / CONFIG).is_file() else None
    keep = {
        k: v
        for k, v in meta.items()
        if k not in ("format", "stage", "kind", "created", "torch", "files", "path")
    }
    keep["exported_from"] = {
        "path": str(folder),
        "files": meta.get("files", {}),
        "weights_dtype": "float16" if half else "as trained",
    }
    if agent_defaults:
        keep["agent_defaults"] = {**dict(meta.get("agent_defaults") or {}), **dict(agent_defaults)}
    out = save(
        dst, stage=meta["stage"], kind=meta["kind"], model=model, meta=keep, ema=ema, config_yaml=config
    )
    for name, file in (extra or {}).items():
        shutil.copyfile(file, out / name)
    return out


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """`meta.json` of a checkpoint (folder or run folder), with `path` added; checks the format."""
    folder = resolve_dir(path)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / META} is damaged ({exc}); use an earlier checkpoint or retrain") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(
            f"{folder / META} is not a {FORMAT} checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    meta["path"] = str(folder)
    return meta


def read_weights(
    path: str | os.PathLike, which: str = MODEL, verify: bool = True, device: str = "cpu", lazy: bool = False
) -> Any:
    """One weight file of a checkpoint as a state dict; `verify` checks its sha256 against meta.json.

    `lazy`: a `convert.SafetensorsFile` instead (names and shapes from the header, tensors read one at a
    time by `convert.load_strict`, so loading holds the model plus one tensor, not the file beside it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from zipmo_robot.checkpoints.convert import SafetensorsFile

    meta = read_meta(path)
    folder = Path(meta["path"])
    file = folder / which
    if not file.is_file():
        raise UserError(f"{file} is missing: the checkpoint is incomplete; use an earlier one or retrain")
    expected = meta.get("files", {}).get(which)
    if verify and expected is not None and sha256_file(file) != expected:
        raise UserError(
            f"{file} does not match the sha256 in {folder / META} (damaged or replaced); use an earlier "
            "checkpoint or retrain"
        )
    if lazy:
        return SafetensorsFile(file, fix="the checkpoint is damaged; use an earlier one or retrain")
    try:
        return load_file(str(file), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}; the checkpoint is damaged") from exc


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    meta = read_meta(path)
    file = Path(meta["path"]) / STATE
    if not file.is_file():
        raise UserError(f"{file} is missing: this checkpoint cannot be resumed (it was saved without state)")
    expected = meta.get("files", {}).get(STATE)
    if expected is not None and sha256_file(file) != expected:
        raise UserError(f"{file} does not match its sha256 in meta.json; cannot resume from it")
    return torch.load(file, map_location="cpu", weights_only=False)


def _load(model: Any, sd: Mapping[str, Any], what: str) -> None:
    from zipmo_robot.checkpoints.convert import CheckpointError, load_strict

    try:
        load_strict(model, dict(sd), what)
    except CheckpointError as exc:
        raise UserError(
            f"{exc}\n  The checkpoint's meta.json config does not fit its weights; retrain or re-save it."
        ) from exc


def _expect_stage(meta: Mapping[str, Any], stages: tuple[str, ...], what: str) -> None:
    if meta.get("stage") not in stages:
        raise UserError(
            f"{meta['path']} is a {meta.get('stage')!r} checkpoint; {what} needs a {' or '.join(stages)} checkpoint"
        )


def vae_config(meta: Mapping[str, Any]) -> Any:
    from zipmo_robot.models.vae import VAEConfig

    try:
        return VAEConfig(**meta["vae_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{meta['path']}: meta.json has no valid vae_config ({exc})") from exc


def planner_config(meta: Mapping[str, Any]) -> Any:
    from zipmo_robot.models.planner import PlannerConfig

    try:
        return PlannerConfig(**meta["planner_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{meta['path']}: meta.json has no valid planner_config ({exc})") from exc


def head_config(meta: Mapping[str, Any]) -> Any:
    from zipmo_robot.policy.head import InverseDynamicsHeadConfig

    try:
        return InverseDynamicsHeadConfig(**meta["head_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{meta['path']}: meta.json has no valid head_config ({exc})") from exc


def load_vae(path: str | os.PathLike, device: str = "cpu", weights: str = "auto") -> tuple[Any, dict]:
    """(TrajectoryVAE, meta) from a VAE checkpoint; `weights` auto (EMA when present) | model | ema."""
    from zipmo_robot.models.vae import TrajectoryVAE

    meta = read_meta(path)
    _expect_stage(meta, ("vae",), "loading a VAE")
    vae = TrajectoryVAE(vae_config(meta))
    _load(vae, read_weights(path, _pick(meta, weights)), f"VAE checkpoint {meta['path']}")
    return vae.to(device).eval(), meta


def load_planner(path: str | os.PathLike, device: str = "cpu", weights: str = "auto") -> tuple[Any, dict]:
    """(LIBERO planner, meta) from a planner checkpoint (or the planner inside a policy checkpoint)."""
    from zipmo_robot.models.planner import build_planner

    meta = read_meta(path)
    _expect_stage(meta, ("planner", "policy"), "loading a planner")
    planner = build_planner(planner_config(meta))
    if meta["stage"] == "planner":
        sd = read_weights(path, _pick(meta, weights))
    else:
        full = read_weights(path, MODEL)
        sd = {k[len(PLANNER_PREFIX) :]: v for k, v in full.items() if k.startswith(PLANNER_PREFIX)}
    _load(planner, sd, f"planner weights of {meta['path']}")
    return planner.to(device).eval(), meta


def _pick(meta: Mapping[str, Any], weights: str) -> str:
    files = meta.get("files", {})
    if weights == "auto":
        return EMA if EMA in files else MODEL
    if weights not in ("model", "ema"):
        raise UserError(f"weights={weights!r}: use auto, model or ema")
    name = MODEL if weights == "model" else EMA
    if name not in files:
        raise UserError(f"{meta['path']} has no {name} (saved without EMA); use weights=model")
    return name


# ----------------------------------------------------------------------------------------------------------
# Text encoder choice (stored in every planner/policy checkpoint; rollout uses the same)


def task_embedder(text: Mapping[str, Any], dim: int) -> Any:
    """The task embedder a checkpoint was trained with: `{"kind": "bert", "model": ...}` or
    `{"kind": "sentence_code", "dim": E}`. Returns `(suites, languages) -> (B, E)`."""
    kind = text.get("kind")
    if kind == "sentence_code":
        from zipmo_robot.models.text import SentenceCodeEmbedder

        return SentenceCodeEmbedder(int(text.get("dim", dim)))
    if kind == "bert":
        from zipmo_robot.models.text import TaskEmbeddingCache
        from zipmo_robot.policy.agent import BertTaskEmbedder

        return BertTaskEmbedder(TaskEmbeddingCache(model=text.get("model", "bert-base-cased")))
    raise UserError(f"unknown text encoder {kind!r} in the checkpoint; expected bert or sentence_code")


def load_policy_bundle(
    path: str | os.PathLike, device: Any = "cpu", weights: str = "auto", source: str | None = None
) -> PolicyBundle:
    """Planner + head + task embedder of a policy (BC) checkpoint folder, loaded strictly, as the one
    `checkpoints.loader.PolicyBundle` (`source`: the spec as given, default the folder).

    `weights`: auto (the head's EMA when saved) | model | ema. Raises one `UserError` for a folder that is
    not a policy checkpoint, a damaged file or keys that do not fit meta.json's configs.
    """
    from zipmo_robot.checkpoints.convert import head_kind
    from zipmo_robot.checkpoints.loader import PolicyBundle
    from zipmo_robot.models.planner import build_planner
    from zipmo_robot.policy.config import PolicyConfig
    from zipmo_robot.policy.head import InverseDynamicsHead

    meta = read_meta(path)
    _expect_stage(meta, ("policy",), "a rollout")
    pcfg, hcfg = planner_config(meta), head_config(meta)
    full = read_weights(path, MODEL)
    planner_sd = {k[len(PLANNER_PREFIX) :]: v for k, v in full.items() if k.startswith(PLANNER_PREFIX)}
    head_sd = {k: v for k, v in full.items() if not k.startswith(PLANNER_PREFIX)}
    del full
    if _pick(meta, weights) == EMA:
        head_sd = read_weights(path, EMA)
    planner = build_planner(pcfg)
    _load(planner, planner_sd, f"planner part (track_predictor.*) of {meta['path']}")
    head = InverseDynamicsHead(hcfg)
    _load(head, head_sd, f"head part of {meta['path']}")
    planner.requires_grad_(False)
    head.requires_grad_(False)
    text = dict(meta.get("text_encoder") or {})
    embedder = task_embedder(text, pcfg.d_cross)
    return PolicyBundle(
        planner=planner.to(device).eval(),
        head=head.to(device).eval(),
        kind=head_kind(pcfg.variant),
        source=os.fspath(path) if source is None else source,
        path=os.fspath(path),
        task_embedder=embedder,
        text_encoder=text,
        nfe=int(meta.get("nfe", PolicyConfig.nfe)),
        meta=meta,
    )
