"""Model sizes from hydra (`configs/model/{release,small,tiny}.yaml`) to the config dataclasses, and the one
list of planner variants and model kinds (`VARIANTS`, `KINDS`; `checkpoints.convert` detects them).

A composed `model` node has four sections: `dino` (`DinoConfig`, shared by the planner's image encoder and
the VAE's), `vae` (`VAEConfig`), `planner` (`PlannerConfig` minus `variant`, `vae`, `dino`) and `head`
(`InverseDynamicsHeadConfig`). `config_for(kind)` returns what `checkpoints.build_model(kind, config)` takes
for one of the official kinds (`vae`, `planner_<variant>`, `policy_head_<atm|tramoe>`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zipmo_robot.errors import UserError

SIZES: tuple[str, ...] = ("release", "small", "cpu", "tiny")
# The planner variants (open-domain pokes; LIBERO text + two views, Tra-MoE adding the episode step) and the
# one list of model kinds (the official state-dict layouts, ZIPMO_REFERENCE.md §12) derived from them:
# kind -> planner variant, for planner files and for policy-head files (which carry their planner).
VARIANTS: tuple[str, ...] = ("sparse", "dense", "libero_atm", "libero_tramoe")
PLANNER_KINDS: dict[str, str] = {f"planner_{v}": v for v in VARIANTS}
HEAD_KINDS: dict[str, str] = {
    f"policy_head_{v.removeprefix('libero_')}": v for v in VARIANTS if v.startswith("libero")
}
KINDS: tuple[str, ...] = ("vae", *PLANNER_KINDS, *HEAD_KINDS)
# PlannerConfig fields a size file must not set: they come from the kind or from the other sections.
_PLANNER_DERIVED = ("variant", "vae", "dino")


@dataclass
class ModelSizes:
    """Every model's sizes, as composed from one `configs/model/<name>.yaml`.

    Args:
        name: the size name (release, small, tiny, or what the file says).
        dino: image-encoder sizes (both DINO copies).
        vae: trajectory-VAE sizes; its `dino` is `dino`.
        planner: `PlannerConfig` keyword arguments other than `variant`, `vae`, `dino`.
        head: `InverseDynamicsHeadConfig` keyword arguments.
    """

    name: str
    dino: Any
    vae: Any
    planner: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)

    def planner_config(self, variant: str, **overrides: Any) -> Any:
        """`PlannerConfig` for one variant (sparse, dense, libero_atm, libero_tramoe) at these sizes."""
        from zipmo_robot.models.planner import PlannerConfig

        kwargs = {**self.planner, **overrides}
        return _build(
            PlannerConfig, "planner", {**kwargs, "variant": variant, "vae": self.vae, "dino": self.dino}
        )

    def head_config(self, **overrides: Any) -> Any:
        """`InverseDynamicsHeadConfig` at these sizes."""
        from zipmo_robot.policy.head import InverseDynamicsHeadConfig

        return _build(InverseDynamicsHeadConfig, "head", {**self.head, **overrides})

    def config_for(self, kind: str) -> Any:
        """The config `checkpoints.build_model(kind, config)` takes: `VAEConfig` for `vae`, `PlannerConfig` for
        planners, `(PlannerConfig, InverseDynamicsHeadConfig)` for policy heads."""
        if kind == "vae":
            return self.vae
        if kind in PLANNER_KINDS:
            return self.planner_config(PLANNER_KINDS[kind])
        if kind in HEAD_KINDS:
            return self.planner_config(HEAD_KINDS[kind]), self.head_config()
        raise UserError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")


def _build(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    """`cls(**values)`, with unknown keys and invalid values reported as `UserError` naming the section."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise UserError(
            f"model config section {section!r} has unknown key(s) {unknown}; valid keys: {', '.join(sorted(valid))}"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model config section {section!r} is invalid: {exc}") from exc


def _plain(node: Any) -> Any:
    """OmegaConf node → plain Python containers (resolved); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra is a dependency
        return node
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def model_sizes(cfg: Any) -> ModelSizes:
    """Turn a composed model config into dataclasses.

    `cfg` is a composed config with a `model` node, the `model` node itself, or a plain dict of the same shape.
    """
    from zipmo_robot.models.dino import DinoConfig
    from zipmo_robot.models.vae import VAEConfig

    data = _plain(cfg)
    if not isinstance(data, Mapping):
        raise UserError(f"a model config must be a mapping, got {type(data).__name__}")
    if "model" in data and isinstance(data["model"], Mapping):
        data = data["model"]
    missing = [s for s in ("dino", "vae", "planner", "head") if s not in data]
    if missing:
        raise UserError(f"model config lacks section(s) {missing}; see configs/model/release.yaml")
    extra = sorted(set(data) - {"name", "dino", "vae", "planner", "head"})
    if extra:
        raise UserError(f"model config has unknown section(s) {extra}; valid: name, dino, vae, planner, head")
    dino = _build(DinoConfig, "dino", dict(data["dino"]))
    vae_values = dict(data["vae"])
    if "dino" in vae_values:
        raise UserError("set the image encoder in the top-level `dino` section, not in `vae.dino`")
    vae = _build(VAEConfig, "vae", {**vae_values, "dino": dino})
    planner = dict(data["planner"])
    derived = [k for k in _PLANNER_DERIVED if k in planner]
    if derived:
        raise UserError(
            f"model config section 'planner' sets {derived}; the variant comes from the model kind and the "
            "VAE/DINO sizes from the `vae` and `dino` sections"
        )
    sizes = ModelSizes(str(data.get("name", "custom")), dino, vae, planner, dict(data["head"]))
    sizes.planner_config("libero_atm")  # validate the planner and head sections now, not at first use
    sizes.head_config()
    return sizes


def load_sizes(size: str = "release", overrides: Sequence[str] = ()) -> ModelSizes:
    """Compose `configs/model/<size>.yaml` with hydra overrides (`model.planner.depth=2`) into `ModelSizes`."""
    from zipmo_robot.configs import compose

    if size not in SIZES:
        raise UserError(f"unknown model size {size!r}; available sizes: {', '.join(SIZES)}")
    return model_sizes(compose(f"model/{size}", list(overrides)))


def config_for_kind(kind: str, size: str = "release", overrides: Sequence[str] = ()) -> Any:
    """`load_sizes(size, overrides).config_for(kind)`."""
    return load_sizes(size, overrides).config_for(kind)


def release_config(kind: str) -> Any:
    """The release-size config of an official kind (what the released files load into)."""
    return config_for_kind(kind, "release")
