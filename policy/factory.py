"""Build the rollout policy named on the command line. One function per policy family, so each family's
owner edits only its own function.

`make_policy(name, options)` where `options` is a plain dict of the rollout command's settings
(checkpoint, nfe, cfg_scale, precision, device, overlay, demo, suite, tasks, seed, ...).
"""

from __future__ import annotations

from typing import Any

from zipmo_robot.policy.base import SIMPLE_POLICIES, Policy

POLICY_NAMES: tuple[str, ...] = ("zipmo", "random", "zero", "scripted", "replay")


def _make_zipmo(options: dict[str, Any]) -> Policy:
    """ZipMo agent from a released (or released-layout) policy-head file.

    Options: `checkpoint` (official:atm (default) | official:tramoe (the suite's head) | PATH), `nfe` (10),
    `cfg_scale` (1.0), `precision` (bf16 = the official planner autocast, default; fp32), `device`
    (default cuda when available, else cpu), `overlay` (plan tracks on videos; default on with a GPU, off
    on CPU where the extra VAE decode per step is costly), `ensemble` (official | textbook), and for files
    of non-release sizes `dino_heads` or `model` (a size name of configs/model, e.g. tiny), `text_embedding`
    (auto | bert | hash: `hash` is a test-only stand-in for BERT, chosen automatically when the file's
    text width is not BERT's 768).
    """
    import torch
    from zipmo_robot.policy.agent import (
        PRECISIONS,
        BertTaskEmbedder,
        HashTaskEmbedder,
        RollingReplanner,
        build_policy_models,
    )
    from zipmo_robot.policy.ensembling import ENSEMBLE_MODES

    from zipmo_robot.checkpoints import hub
    from zipmo_robot.errors import UserError

    def opt(key: str, default: Any) -> Any:
        value = options.get(key)
        return default if value is None else value

    suite = options.get("suite")
    device = torch.device(opt("device", "cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but torch sees no CUDA GPU; use --device cpu")
    precision = opt("precision", "bf16")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)} (bf16 = official)")
    ensemble = opt("ensemble", "official")
    if ensemble not in ENSEMBLE_MODES:
        raise UserError(f"ensemble={ensemble!r} is not one of {', '.join(ENSEMBLE_MODES)}")
    nfe = int(opt("nfe", 10))
    if nfe < 1:
        raise UserError(f"--nfe must be >= 1 (Euler steps per replan), got {nfe}")
    dino_heads = options.get("dino_heads")
    if dino_heads is None and options.get("model") is not None:
        from zipmo_robot.models.sizes import load_sizes

        dino_heads = load_sizes(str(options["model"])).dino.num_heads

    path = hub.resolve_checkpoint(str(opt("checkpoint", "official:atm")), suite=suite)
    sd = hub.read_safetensors(path)
    kind = hub.detect_kind(sd)
    if not kind.startswith("policy_head"):
        raise UserError(
            f"{path} is a {kind} file, not a policy head; --policy zipmo needs a head file such as "
            "official:atm, official:tramoe or policy_heads/atm_libero.safetensors"
        )
    planner, head = build_policy_models(sd, device=device, dino_heads=dino_heads)

    text_dim = planner.cfg.d_cross
    mode = opt("text_embedding", "auto")
    if mode == "auto":
        mode = "bert" if text_dim == 768 else "hash"
    if mode == "hash":
        import warnings

        warnings.warn(
            f"task embeddings: deterministic hash stand-in of width {text_dim} (test checkpoints only; "
            "a real checkpoint uses BERT)",
            stacklevel=2,
        )
        embedder: Any = HashTaskEmbedder(text_dim)
    elif mode == "bert":
        embedder = BertTaskEmbedder()
        if suite is not None:  # fail before the envs start if BERT or the cache is unavailable
            from zipmo_robot.envs.suites import list_tasks

            tasks = list_tasks(suite)
            wanted = options.get("tasks") or [t.task_id for t in tasks]
            embedder.cache.get(suite, [tasks[i].language for i in wanted])
    else:
        raise UserError(f"text_embedding={mode!r} is not one of auto, bert, hash")

    return RollingReplanner(
        planner,
        head,
        task_embedder=embedder,
        nfe=nfe,
        cfg_scale=float(opt("cfg_scale", 1.0)),
        precision=precision,
        ensemble_mode=ensemble,
        overlay=bool(opt("overlay", device.type == "cuda")),
    )


def _make_scripted(options: dict[str, Any]) -> Policy:
    """The privileged-state pick-and-place expert acting through per-slot shadow envs (policy/scripted.py)."""
    from zipmo_robot.policy.scripted import ScriptedPolicy

    settle = options.get("settle_steps")
    return ScriptedPolicy(
        settle_steps=5 if settle is None else int(settle), seed_offset=int(options.get("seed") or 0)
    )


def _make_replay(options: dict[str, Any]) -> Policy:
    """Replay the actions of `--demo FILE` (an official-layout LIBERO HDF5 file)."""
    from pathlib import Path

    from zipmo_robot.policy.scripted import ReplayPolicy

    from zipmo_robot.data.hdf5 import DemoFileError
    from zipmo_robot.errors import UserError

    demo = options.get("demo")
    if not demo:
        raise UserError("--policy replay needs --demo FILE (a LIBERO demonstration HDF5 file)")
    if not Path(demo).is_file():
        raise UserError(f"--demo {demo} does not exist; pass a LIBERO demonstration HDF5 file")
    try:
        return ReplayPolicy(demo)
    except DemoFileError as exc:
        raise UserError(f"--demo: {exc}") from exc


def make_policy(name: str, options: dict[str, Any]) -> Policy:
    """Return a fresh policy; an unknown name raises `UserError` listing the known ones."""
    from zipmo_robot.errors import UserError

    if name in SIMPLE_POLICIES:
        return SIMPLE_POLICIES[name]()
    builders = {"zipmo": _make_zipmo, "scripted": _make_scripted, "replay": _make_replay}
    if name not in builders:
        raise UserError(f"unknown policy {name!r}; available policies: {', '.join(POLICY_NAMES)}")
    return builders[name](options)
