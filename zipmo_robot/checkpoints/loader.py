"""The one way to load weights: `load_policy(spec)` for a policy (planner + inverse-dynamics head) and
`load_model(spec)` for a stand-alone VAE or planner file.

A policy `spec` is one of
  official:atm | official:tramoe | official:<released name>   a released file (downloaded or cached, `hub`)
  bundled:NAME                                                a trained checkpoint shipped with the package
                                                              (`zipmo_robot/resources/checkpoints/NAME/`)
  PATH (folder)                                               a trained checkpoint folder (`meta.json` with
                                                              "format": "zipmo-robot-checkpoint/1"), read by
                                                              `checkpoints.trained.load_policy_bundle`
  PATH (file)                                                 a `.safetensors` file in the released layout
A released-layout file holds the planner under `track_predictor.*` and the head's own keys; its kind
(ATM or Tra-MoE) comes from `convert.detect_kind`, its sizes from the tensor shapes (`convert.infer_config`;
the DINO head count is not visible in shapes: `dino_heads`, default embed_dim // 64 as at release).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zipmo_robot.errors import UserError

BUNDLED_PREFIX = "bundled:"
TRAINED_FORMAT = "zipmo-robot-checkpoint/1"
TRAINED_META = "meta.json"
PLANNER_PREFIX = "track_predictor."


@dataclass
class PolicyBundle:
    """A loaded policy: what `policy.factory` builds the agent from.

    planner: the LIBERO planner (eval mode, no grad) on the device; head: the inverse-dynamics head (same);
    kind: "policy_head_atm" | "policy_head_tramoe"; source: the spec as given, path: the file or folder read;
    task_embedder: `(suites, languages) -> (B, E)` the checkpoint was trained with (None: the caller picks,
    BERT for the released files); text_encoder: that choice as stored (`{"kind": "bert"|"sentence_code"}`,
    empty when unknown); nfe: Euler steps the checkpoint was trained with (None: not recorded); meta: the
    trained checkpoint's meta.json (empty for released files).
    """

    planner: Any
    head: Any
    kind: str
    source: str
    path: str
    task_embedder: Any = None
    text_encoder: dict[str, Any] = field(default_factory=dict)
    nfe: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Bundled checkpoints (package data)


def bundled_root() -> Path:
    """`zipmo_robot/resources/checkpoints/`: one trained checkpoint folder per name."""
    return Path(__file__).resolve().parents[1] / "resources" / "checkpoints"


def bundled_names() -> list[str]:
    """Names usable as `bundled:NAME` (folders of `bundled_root()` holding a meta.json), sorted."""
    root = bundled_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / TRAINED_META).is_file())


def bundled_path(name: str) -> Path:
    """The folder of `bundled:NAME`; an unknown name raises `UserError` listing what ships."""
    names = bundled_names()
    if name not in names:
        shipped = ", ".join(f"bundled:{n}" for n in names) if names else "none ship with this version"
        raise UserError(
            f"no bundled checkpoint {name!r} (bundled checkpoints: {shipped}); give official:atm, "
            "official:tramoe, a trained checkpoint folder or a .safetensors file instead"
        )
    return bundled_root() / name


def bundled_scope(name: str) -> str:
    """What `bundled:NAME` was trained on, from its training config: 'libero_spatial' or 'libero_spatial
    task 0 only' (a single-task head is evaluated on its task; it is not a suite policy)."""
    from omegaconf import OmegaConf

    data = OmegaConf.load(bundled_root() / name / "config.yaml").data
    suites = " + ".join(data.suites)
    tasks = data.get("tasks")
    if tasks is None:
        return suites
    return f"{suites} task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, tasks))} only"


def bundled_result(name: str) -> str:
    """The shipped evaluation in one phrase, e.g. '4/10 episodes succeeded (atm)'; '' when none ships."""
    path = bundled_root() / name / "eval_results.jsonl"
    if not path.is_file():
        return ""
    from zipmo_robot.eval.reports import latest_records, read_results

    records = list(latest_records(read_results(path)).values())
    wins = sum(r.get("status") == "success" for r in records)
    protocols = ", ".join(sorted({str(r.get("protocol")) for r in records}))
    return f"{wins}/{len(records)} episodes succeeded ({protocols})"


def weight_free_hint() -> str:
    """How to try the stack without downloading weights (for the offline error messages)."""
    ways = [
        f"--checkpoint bundled:{n} (a small ZipMo policy trained with this stack's CPU recipe on "
        f"{bundled_scope(n)}, shipped with the package; its evaluation, {bundled_result(n)}, is "
        f"{bundled_root() / n / 'eval_report.md'})"
        for n in bundled_names()
    ]
    ways += ["--policy scripted (the privileged pick-and-place expert, no weights)"]
    return "  to try the stack without the released weights: " + "; ".join(ways)


# ----------------------------------------------------------------------------------------------------------
# Policies


def load_policy(
    spec: str | os.PathLike,
    device: Any = "cpu",
    *,
    suite: str | None = None,
    dino_heads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PolicyBundle:
    """Load the policy named by `spec` (module docstring) onto `device`, strictly; every problem is one
    `UserError` saying what to do. `suite` picks the Tra-MoE head of `official:tramoe`."""
    from zipmo_robot.checkpoints import hub

    text = os.fspath(spec)
    if text.startswith(BUNDLED_PREFIX):
        return _load_trained(bundled_path(text[len(BUNDLED_PREFIX) :]), text, device)
    if not text.startswith(hub.OFFICIAL_PREFIX) and Path(text).expanduser().is_dir():
        return _load_trained(Path(text).expanduser(), text, device)
    path = hub.resolve_checkpoint(text, suite=suite, cache_dir=cache_dir)
    source = open_safetensors(path)
    planner, head, kind = policy_from_state_dict(source, dino_heads=dino_heads, what=str(path))
    return PolicyBundle(planner.to(device), head.to(device), kind, text, str(path))


def policy_from_state_dict(
    sd: Any, *, dino_heads: int | None = None, what: str = "policy file"
) -> tuple[Any, Any, str]:
    """(planner, head, kind) from a released-layout policy state dict or `convert.TensorSource` (an
    `open_safetensors` file), loaded strictly on CPU one tensor at a time.

    The planner part (`track_predictor.*`) goes through the converter (an identical VAE DINO copy is folded
    into the planner's, quirk Q20); kind and sizes come from key names and shapes only. A dict `sd` is
    emptied afterwards (its tensors now live in the models), so it is held once.
    """
    from zipmo_robot.checkpoints import convert
    from zipmo_robot.policy.head import InverseDynamicsHead, InverseDynamicsHeadConfig

    source = convert.as_source(sd, what)
    kind = convert.detect_kind(source.keys())
    if kind not in convert.POLICY_KINDS:
        raise UserError(
            f"{what} is a {kind} file, not a policy head (no track_predictor.* keys); a policy needs a head "
            "file such as official:atm, official:tramoe or policy_heads/atm_libero.safetensors"
        )
    planner = model_from_state_dict(
        convert.planner_kind(kind),
        source,
        dino_heads=dino_heads,
        what=f"planner part of {what}",
        prefix=PLANNER_PREFIX,
    )
    head_keys = [k for k in source.keys() if not k.startswith(PLANNER_PREFIX)]
    try:
        hcfg = InverseDynamicsHeadConfig.from_state_dict(convert.stand_ins(source, head_keys))
    except (KeyError, IndexError, ValueError) as exc:
        raise convert.CheckpointError(
            f"policy-head part of {what} does not fit InverseDynamicsHead: its sizes cannot be read from the "
            f"head keys ({type(exc).__name__}: {exc}); a released policy-head file has learned_action_queries, "
            "policy_net.N.*, track_embedder.*, proprio_embedder.* and policy_out_proj.proj.weight"
        ) from exc
    hcfg.grid_size = planner.cfg.vae.latent_grid
    hcfg.num_views = planner.cfg.num_views
    head = InverseDynamicsHead(hcfg)  # small: built with its init, then copied into
    convert.load_strict(head, source, f"policy-head part of {what}", keys={k: k for k in head_keys})
    if isinstance(sd, dict):
        sd.clear()
    planner.requires_grad_(False)
    head.requires_grad_(False)
    return planner.eval(), head.eval(), kind


def _load_trained(path: Path, source: str, device: Any) -> PolicyBundle:
    """A trained checkpoint folder, through `checkpoints.trained.load_policy_bundle`."""
    meta_file = path / TRAINED_META
    if meta_file.is_file():
        try:
            fmt = json.loads(meta_file.read_text()).get("format")
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{meta_file} is not readable JSON ({exc}); the checkpoint folder is damaged"
            ) from exc
        if fmt != TRAINED_FORMAT:
            raise UserError(
                f"{meta_file} says format {fmt!r}; this version reads {TRAINED_FORMAT!r} checkpoint folders"
            )
    try:
        from zipmo_robot.checkpoints.trained import load_policy_bundle
    except ImportError as exc:
        raise UserError(
            f"{path} is a folder: trained checkpoints are read by zipmo_robot.checkpoints.trained, which this "
            f"installation lacks ({exc}); give official:atm, official:tramoe or a .safetensors file"
        ) from exc
    return load_policy_bundle(path, device=device, source=source)


# ----------------------------------------------------------------------------------------------------------
# Stand-alone models (VAE, planners)


def load_model(
    spec: str | os.PathLike,
    kind: str | None = None,
    *,
    config: Any = None,
    dino_heads: int | None = None,
    suite: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """A released-layout VAE or planner file (`official:<name>` or PATH) in eval mode, loaded strictly.

    `kind` None detects it from the keys; `config` (a `VAEConfig`/`PlannerConfig`, e.g. from
    `models.sizes`) replaces the sizes read from the tensor shapes. A policy-head file is refused (use
    `load_policy`).
    """
    from zipmo_robot.checkpoints import convert, hub

    path = hub.resolve_checkpoint(spec, suite=suite, cache_dir=cache_dir)
    source = open_safetensors(path)
    kind = kind or convert.detect_kind(source.keys())
    if kind in convert.POLICY_KINDS:
        raise UserError(f"{path} is a {kind} file: load it with load_policy (planner + head)")
    return model_from_state_dict(
        kind, source, config=config, dino_heads=dino_heads, what=f"official {kind} file {path}"
    )


def model_from_state_dict(
    kind: str,
    sd: Any,
    *,
    config: Any = None,
    dino_heads: int | None = None,
    what: str = "state dict",
    prefix: str = "",
) -> Any:
    """Convert an official-layout state dict or `convert.TensorSource` (the model's keys under `prefix`) of
    a VAE/planner kind, build the model (one shared DINO when the file's two copies are identical, official
    quirks on) and load it strictly, one tensor at a time; eval mode, CPU."""
    from zipmo_robot.checkpoints import convert

    try:
        return convert.model_from_official(
            kind, sd, config, dino_num_heads=dino_heads, what=what, prefix=prefix
        ).eval()
    except convert.SizeInferenceError as exc:
        raise UserError(
            f"{what}: {exc} (its DINO width is not a multiple of 64, so it is not a release-size file); pass "
            "the head count, e.g. `policy_options.dino_heads=2`, or the size name, e.g. `policy_options.model=tiny`"
        ) from exc


def open_safetensors(path: str | os.PathLike) -> Any:
    """A .safetensors file as a lazy `convert.SafetensorsFile`: key names and shapes read from its header,
    tensors read one at a time by the loaders (peak memory: the model plus one tensor); a damaged file
    raises `UserError` naming it."""
    from zipmo_robot.checkpoints.convert import SafetensorsFile

    return SafetensorsFile(path)


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Every tensor of a .safetensors file on CPU (holds the whole file: the loaders use `open_safetensors`);
    a damaged file raises `UserError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"cannot read checkpoint {os.fspath(path)!r}: {exc}; re-download it (zipmo-robot download ...)"
        ) from exc


def nfe_mismatch_warning(bundle: PolicyBundle, nfe: int) -> None:
    """Warn when a checkpoint was trained with another Euler step count than the one it will run with."""
    if bundle.nfe is not None and bundle.nfe != nfe:
        warnings.warn(
            f"{bundle.source} was trained with nfe={bundle.nfe}, running with nfe={nfe}", stacklevel=2
        )
