"""Build the rollout policy named on the command line. One function per policy family, so each family's
owner edits only its own function.

`make_policy(name, options)`: `options` is a mapping of the `policy_options` knobs (`PolicyConfig`,
policy/config.py: their one definition and default) plus the run's settings (suite, tasks, seed, ...,
`RUN_CONTEXT_KEYS`). The policy's `resolved_options()` reports the values it actually runs with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zipmo_robot.policy.base import SIMPLE_POLICIES, Policy
from zipmo_robot.policy.config import PolicyConfig

POLICY_NAMES: tuple[str, ...] = ("zipmo", "random", "zero", "scripted", "replay")
# name -> "module:Class" of the policy it builds (imported only when asked, `policy_class`)
POLICY_CLASSES: dict[str, str] = {
    "zipmo": "zipmo_robot.policy.agent:RollingReplanner",
    "random": "zipmo_robot.policy.base:RandomPolicy",
    "zero": "zipmo_robot.policy.base:ZeroPolicy",
    "scripted": "zipmo_robot.policy.scripted:ScriptedPolicy",
    "replay": "zipmo_robot.policy.scripted:ReplayPolicy",
}


def policy_class(name: str) -> type:
    """The class a built-in policy name builds, for its class-level hooks (`Policy.supports`)."""
    import importlib

    module, _, attr = POLICY_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


# PolicyConfig knobs a checkpoint's meta.json may recommend (`agent_defaults`)
AGENT_DEFAULT_KEYS: tuple[str, ...] = ("nfe", "replan_every", "cfg_scale", "ensemble", "noise")
_DEFAULTS: dict[str, Any] = {k: getattr(PolicyConfig, k) for k in AGENT_DEFAULT_KEYS}


def _make_zipmo(options: Mapping[str, Any]) -> Policy:
    """ZipMo agent from any policy checkpoint `checkpoints.loader.load_policy` reads (released head file,
    trained folder, bundled:NAME), with the knobs of `PolicyConfig`."""
    import torch
    from zipmo_robot.policy.agent import BertTaskEmbedder, RollingReplanner

    from zipmo_robot.checkpoints.loader import load_policy, nfe_mismatch_warning
    from zipmo_robot.errors import UserError

    cfg = PolicyConfig.from_options(options)
    suite = options.get("suite")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but torch sees no CUDA GPU; use --device cpu")
    dino_heads = cfg.dino_heads
    if dino_heads is None and cfg.model is not None:
        from zipmo_robot.models.sizes import load_sizes

        dino_heads = load_sizes(cfg.model).dino.num_heads

    bundle = load_policy(cfg.checkpoint, device, suite=suite, dino_heads=dino_heads)
    # a trained checkpoint may say how its agent should run (meta.json "agent_defaults", e.g. the bundled CPU
    # policy: nfe 5, replan_every 4); options the user gave explicitly win
    # (an option counts as given when it is present and differs from PolicyConfig's default: the CLIs pass
    # every knob, defaults included)
    recommended = {k: v for k, v in dict((bundle.meta or {}).get("agent_defaults") or {}).items()
                   if k in AGENT_DEFAULT_KEYS and options.get(k, _DEFAULTS[k]) == _DEFAULTS[k]}  # fmt: skip
    if recommended:
        cfg = PolicyConfig.from_options({**options, **recommended})
    nfe_mismatch_warning(bundle, cfg.nfe)
    text_dim = bundle.planner.cfg.d_cross
    mode = "sentence_code" if cfg.text_embedding == "hash" else cfg.text_embedding
    embedder: Any = None
    if mode == "auto" and bundle.task_embedder is not None:
        embedder, mode = bundle.task_embedder, str(bundle.text_encoder.get("kind", "checkpoint"))
    elif mode == "auto":
        mode = "bert" if text_dim == 768 else "sentence_code"
    if embedder is None and mode == "sentence_code":
        from zipmo_robot.models.text import SentenceCodeEmbedder

        if text_dim == 768:
            import warnings

            warnings.warn(
                "task embeddings: per-sentence codes instead of BERT for a 768-wide text token; a checkpoint "
                "trained with BERT will not follow its instructions",
                stacklevel=2,
            )
        embedder = SentenceCodeEmbedder(text_dim)
    elif embedder is None:
        embedder = BertTaskEmbedder()
        if suite is not None:  # fail before the envs start if BERT or the cache is unavailable
            from zipmo_robot.envs.suites import list_tasks

            tasks = list_tasks(suite)
            wanted = options.get("tasks") or [t.task_id for t in tasks]
            embedder.cache.get(suite, [tasks[i].language for i in wanted])

    decided = {
        "checkpoint": cfg.checkpoint,
        "device": str(device),
        "overlay": bool(device.type == "cuda" if cfg.overlay is None else cfg.overlay),
        "text_embedding": mode,
        "dino_heads": bundle.planner.cfg.dino.num_heads,
    }
    resolved = cfg.resolved(**decided)
    return RollingReplanner(
        bundle.planner,
        bundle.head,
        task_embedder=embedder,
        nfe=cfg.nfe,
        cfg_scale=cfg.cfg_scale,
        precision=cfg.precision,
        ensemble_mode=cfg.ensemble,
        replan_every=cfg.replan_every,
        noise=cfg.noise,
        compile=cfg.compile,
        overlay=resolved["overlay"],
        options={**resolved, "checkpoint_path": bundle.path, "kind": bundle.kind},
    )


def _make_scripted(options: Mapping[str, Any]) -> Policy:
    """The privileged-state pick-and-place expert acting through per-slot shadow envs (policy/scripted.py)."""
    from zipmo_robot.policy.scripted import ScriptedPolicy

    settle = options.get("settle_steps")
    return ScriptedPolicy(
        settle_steps=5 if settle is None else int(settle), seed_offset=int(options.get("seed") or 0)
    )


def _make_replay(options: Mapping[str, Any]) -> Policy:
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


def make_policy(name: str, options: Mapping[str, Any]) -> Policy:
    """Return a fresh policy; an unknown name raises `UserError` listing the known ones."""
    from zipmo_robot.errors import UserError

    if name in SIMPLE_POLICIES:
        return SIMPLE_POLICIES[name]()
    builders = {"zipmo": _make_zipmo, "scripted": _make_scripted, "replay": _make_replay}
    if name not in builders:
        raise UserError(f"unknown policy {name!r}; available policies: {', '.join(POLICY_NAMES)}")
    return builders[name](options)
