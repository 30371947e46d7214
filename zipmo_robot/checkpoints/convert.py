"""Model factories, official-checkpoint conversion and strict loading, our own checkpoint files.

Our parameter names are the official state-dict keys (ZIPMO_REFERENCE.md §12), so converting a released
file is prefix remapping (the identity today, kept as data in `PREFIX_MAP`) plus one structural change:
a planner carries two DINO copies (`img_embedder.model.*` and `vae.img_embedder.model.*`, quirk Q20); when
they are identical the converter drops the VAE's copy and the model is built with `share_vae_dino=True`, so
one DINO module serves both. When they differ both are kept.

Our own checkpoints are a folder with `config.json` (kind + the full config dataclass, including every
quirk switch) and `model.safetensors`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from zipmo_robot.errors import UserError
from zipmo_robot.models.dino import DinoConfig
from zipmo_robot.models.planner import PlannerConfig, build_planner
from zipmo_robot.models.sizes import HEAD_KINDS, KINDS, PLANNER_KINDS
from zipmo_robot.models.vae import TrajectoryVAE, VAEConfig

# Views of the one list of kinds (`models.sizes.KINDS`): models built alone, and policy-head files.
MODEL_KINDS: tuple[str, ...] = ("vae", *PLANNER_KINDS)
POLICY_KINDS: tuple[str, ...] = tuple(HEAD_KINDS)
ALL_KINDS: tuple[str, ...] = KINDS

# official prefix -> our prefix, per kind (identity: module names follow the official keys).
PREFIX_MAP: dict[str, dict[str, str]] = {kind: {"": ""} for kind in ALL_KINDS}

_DINO = "img_embedder.model."
_VAE_DINO = "vae.img_embedder.model."
_HEAD_PREFIX = "track_predictor."  # where a policy-head file keeps its planner
_PLANNER_PREFIX = dict.fromkeys(HEAD_KINDS, _HEAD_PREFIX)


class CheckpointError(UserError, ValueError):
    """A state dict does not fit a model: lists missing keys, unexpected keys and shape mismatches (a
    `UserError`: the CLI prints it as one message)."""


class SizeInferenceError(ValueError):
    """A size the tensor shapes do not reveal (the DINO head count of a non-release width)."""


def _check_kind(kind: str, allowed: tuple[str, ...] = ALL_KINDS) -> None:
    if kind not in allowed:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(allowed)}")


def detect_kind(keys: Any) -> str:
    """The official kind of a state dict from its key names (§12): the one kind detector.

    Tra-MoE vs ATM is §7.3's rule: a `start_t_mapping.*` module (under `track_predictor.` in a policy-head
    file). Sparse and dense planners share one key set (§12.3; dense differs only in n_cond): `planner_sparse`.
    """
    names = list(keys)
    if any(k.startswith(_HEAD_PREFIX) for k in names):
        tramoe = any(k.startswith(_HEAD_PREFIX + "start_t_mapping.") for k in names)
        return "policy_head_tramoe" if tramoe else "policy_head_atm"
    if any(k.startswith("text_encoder.") for k in names):
        tramoe = any(k.startswith("start_t_mapping.") for k in names)
        return "planner_libero_tramoe" if tramoe else "planner_libero_atm"
    if any(k.startswith("backbone.") for k in names):
        return "planner_sparse"
    if any(k.startswith("encoder.") for k in names) and any(k.startswith("decoder.") for k in names):
        return "vae"
    raise UserError(
        "cannot tell which model this state dict is: no track_predictor.*, text_encoder.*, backbone.* or "
        "encoder./decoder.* keys; pass the kind explicitly"
    )


def planner_kind(kind: str) -> str:
    """The planner kind inside a policy-head kind (`policy_head_tramoe` -> `planner_libero_tramoe`)."""
    _check_kind(kind, POLICY_KINDS)
    return "planner_" + HEAD_KINDS[kind]


def head_kind(variant: str) -> str:
    """The policy-head kind whose planner has `variant` (`libero_tramoe` -> `policy_head_tramoe`)."""
    for kind, v in HEAD_KINDS.items():
        if v == variant:
            return kind
    raise ValueError(
        f"no policy-head kind has a {variant!r} planner; LIBERO variants: {list(HEAD_KINDS.values())}"
    )


# ----------------------------------------------------------------------------------------------------------
# Factories


def default_config(kind: str) -> VAEConfig | PlannerConfig:
    """Release-size config of a model kind."""
    _check_kind(kind, MODEL_KINDS)
    if kind == "vae":
        return VAEConfig()
    return PlannerConfig(variant=kind.removeprefix("planner_"))


def build_model(kind: str, config: VAEConfig | PlannerConfig | dict | None = None) -> nn.Module:
    """Build a model of `kind` ("vae" or "planner_<variant>") from its config (default: release sizes).

    A dict config is turned into the dataclass; a planner config's `variant` must agree with the kind.
    """
    _check_kind(kind, MODEL_KINDS)
    if config is None:
        config = default_config(kind)
    if kind == "vae":
        cfg = VAEConfig(**config) if isinstance(config, dict) else config
        if not isinstance(cfg, VAEConfig):
            raise TypeError(f"kind 'vae' needs a VAEConfig, got {type(cfg).__name__}")
        return TrajectoryVAE(cfg)
    variant = kind.removeprefix("planner_")
    if isinstance(config, dict):
        config = PlannerConfig(**{"variant": variant, **config})
    if not isinstance(config, PlannerConfig):
        raise TypeError(f"kind {kind!r} needs a PlannerConfig, got {type(config).__name__}")
    if config.variant != variant:
        raise ValueError(f"kind {kind!r} but PlannerConfig.variant={config.variant!r}; make them agree")
    return build_planner(config)


# ----------------------------------------------------------------------------------------------------------
# Conversion of official state dicts


def _remap(kind: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rules = sorted(PREFIX_MAP[kind].items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key, value in sd.items():
        for old, new in rules:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            out[key] = value
    return out


def dino_copies_identical(sd: dict[str, torch.Tensor], prefix: str = "") -> bool:
    """True when the planner's DINO (`<prefix>img_embedder.model.*`) and its VAE's copy
    (`<prefix>vae.img_embedder.model.*`) have the same keys, shapes, dtypes and values (meta tensors,
    whose values are unknown, never count as identical)."""
    a = {k[len(prefix + _DINO) :]: v for k, v in sd.items() if k.startswith(prefix + _DINO)}
    b = {k[len(prefix + _VAE_DINO) :]: v for k, v in sd.items() if k.startswith(prefix + _VAE_DINO)}
    if not a or a.keys() != b.keys():
        return False
    return all(_same_tensor(a[k], b[k]) for k in a)


def _same_tensor(x: torch.Tensor, y: torch.Tensor) -> bool:
    if x is y:
        return True
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.is_meta or y.is_meta:
        return False  # values unknown (shape-only state dicts): keep both copies
    return torch.equal(x, y.to(x.device))


def convert_official_state_dict(kind: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official state dict of `kind` -> ours: prefix remapping; for planners (and the planner inside a
    policy head, under `track_predictor.`) the VAE's DINO copy is dropped when it equals the planner's.

    Tensors are not copied. Use `shares_vae_dino(kind, converted)` to configure the model to build.
    """
    _check_kind(kind)
    out = _remap(kind, sd)
    if kind == "vae":
        return out
    prefix = _PLANNER_PREFIX.get(kind, "")
    if dino_copies_identical(out, prefix):
        out = {k: v for k, v in out.items() if not k.startswith(prefix + _VAE_DINO)}
    return out


def shares_vae_dino(kind: str, converted: dict[str, torch.Tensor]) -> bool:
    """Whether a converted planner state dict holds a single (shared) DINO copy."""
    if kind == "vae":
        return False
    prefix = _PLANNER_PREFIX.get(kind, "")
    has_planner_dino = any(k.startswith(prefix + _DINO) for k in converted)
    return has_planner_dino and not any(k.startswith(prefix + _VAE_DINO) for k in converted)


# ----------------------------------------------------------------------------------------------------------
# Tensor sources: a state dict in memory, or a .safetensors file read one tensor at a time

_T = TypeVar("_T")

# safetensors dtype names -> torch dtypes, for shape-only stand-ins (an unknown name stands in as float32)
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorSource(Protocol):
    """Where weights come from: key names, shapes and dtypes without data (`stand_in`: a meta tensor), and
    values one at a time (`read(key, use)` returns `use(tensor)`; `owned` False: the tensor is a view valid
    only inside `use`, so `use` must copy what it keeps; True: it may be kept as it is)."""

    what: str
    owned: bool

    def keys(self) -> list[str]: ...

    def stand_in(self, key: str) -> torch.Tensor: ...

    def read(self, key: str, use: Callable[[torch.Tensor], _T]) -> _T: ...

    def equal(self, a: str, b: str) -> bool: ...


class StateDictSource:
    """A state dict in memory as a `TensorSource`; its tensors are handed out as they are."""

    owned = True

    def __init__(self, sd: Mapping[str, torch.Tensor], what: str = "state dict") -> None:
        self.sd, self.what = sd, what

    def keys(self) -> list[str]:
        return list(self.sd)

    def stand_in(self, key: str) -> torch.Tensor:
        t = self.sd[key]
        return t if t.is_meta else torch.empty(t.shape, dtype=t.dtype, device="meta")

    def read(self, key: str, use: Callable[[torch.Tensor], _T]) -> _T:
        return use(self.sd[key])

    def equal(self, a: str, b: str) -> bool:
        return _same_tensor(self.sd[a], self.sd[b])


class SafetensorsFile:
    """A .safetensors file as a `TensorSource`: names, shapes and dtypes come from its header (validated
    by `safe_open`; no tensor data is read); each tensor is read straight from the file into its own new
    memory, one at a time, when a loader asks for it.

    Why not `safe_open(...).get_tensor`: it hands out views of a map of the whole file, and every page read
    stays resident until the handle is closed, so reading a file through one handle holds all of it beside
    the model (peak 2x the model); a handle per tensor bounds that but costs ~4 ms a handle at release size
    (header parse), 10 s for a policy file. A plain read goes through the page cache, which is not this
    process's memory. A damaged, truncated or unreadable file raises `UserError` naming it and `fix`.
    """

    owned = True  # every read is a new tensor

    def __init__(
        self,
        path: str | os.PathLike,
        what: str | None = None,
        fix: str = "re-download it (zipmo-robot download ...)",
    ) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = os.fspath(path)
        self.what = what or f"checkpoint {self.path!r}"
        self.fix = fix
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        try:
            with safe_open(self.path, framework="pt", device="cpu") as f:  # checks header, offsets, size
                for key in f.keys():
                    header = f.get_slice(key)  # the header entry only: no tensor data
                    self.shapes[key] = tuple(header.get_shape())
                    self.dtypes[key] = header.get_dtype()
            with open(self.path, "rb") as f:  # the byte ranges: 8-byte little-endian length, JSON header
                n = int.from_bytes(f.read(8), "little")
                entries = json.loads(f.read(n))
        except (SafetensorError, OSError, ValueError) as exc:
            raise self._error(exc) from exc
        self._ranges = {
            k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for k, v in entries.items()
            if k in self.shapes
        }

    def _error(self, exc: BaseException | str) -> UserError:
        return UserError(f"cannot read checkpoint {self.path!r}: {exc}; {self.fix}")

    def _load(self, key: str) -> torch.Tensor:
        """Tensor `key` as a new CPU tensor, its bytes read from the file into it (no mapping)."""
        import sys

        dtype = _ST_DTYPES.get(self.dtypes[key])
        if dtype is None or sys.byteorder != "little":  # rare dtypes, big-endian hosts: the library's path
            return self._load_mapped(key)
        begin, end = self._ranges[key]
        out = torch.empty(self.shapes[key], dtype=dtype)
        if out.numel() * out.element_size() != end - begin:
            raise self._error(f"tensor {key!r} has {end - begin} bytes for shape {list(out.shape)}")
        if out.numel() == 0:
            return out
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        try:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(begin)
                done = 0
                while done < len(view):  # a read may return less than asked (e.g. > 2 GiB)
                    got = f.readinto(view[done:])
                    if not got:
                        raise self._error(f"file ends inside tensor {key!r}")
                    done += got
        except OSError as exc:
            raise self._error(exc) from exc
        return out

    def _load_mapped(self, key: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(self.path, framework="pt", device="cpu") as f:
                return f.get_tensor(key).clone()  # own memory: the mapping closes with the handle
        except (SafetensorError, OSError, ValueError) as exc:
            raise self._error(exc) from exc

    def keys(self) -> list[str]:
        return list(self.shapes)

    def stand_in(self, key: str) -> torch.Tensor:
        dtype = _ST_DTYPES.get(self.dtypes[key], torch.float32)
        return torch.empty(self.shapes[key], dtype=dtype, device="meta")

    def read(self, key: str, use: Callable[[torch.Tensor], _T]) -> _T:
        return use(self._load(key))

    def equal(self, a: str, b: str) -> bool:
        if self.shapes[a] != self.shapes[b] or self.dtypes[a] != self.dtypes[b]:
            return False
        return torch.equal(self._load(a), self._load(b))

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor (for callers that need a state dict; holds the whole file)."""
        return {k: self._load(k) for k in self.shapes}


def as_source(sd: Any, what: str = "state dict") -> TensorSource:
    """`sd` as a `TensorSource`: a source is returned as is, a mapping is wrapped (`StateDictSource`)."""
    if isinstance(sd, StateDictSource | SafetensorsFile):
        return sd
    if isinstance(sd, Mapping):
        return StateDictSource(sd, what)
    raise TypeError(f"expected a state dict or a TensorSource, got {type(sd).__name__}")


def stand_ins(source: TensorSource, keys: Mapping[str, str] | Iterable[str]) -> dict[str, torch.Tensor]:
    """Meta tensors (shape and dtype, no data) for `keys` (names, or our name -> the source's name): what
    size inference and the strict key check need."""
    pairs = keys.items() if isinstance(keys, Mapping) else ((k, k) for k in keys)
    return {ours: source.stand_in(theirs) for ours, theirs in pairs}


def official_keys(kind: str, source: TensorSource, prefix: str = "") -> dict[str, str]:
    """Our key -> the source's key for the model of `kind` stored under `prefix` (e.g. `track_predictor.`
    in a policy-head file): the key-level part of `convert_official_state_dict` (prefix remapping; for
    planners the VAE's DINO copy left out when it equals the planner's, compared one tensor pair at a time).
    """
    _check_kind(kind)
    rules = sorted(PREFIX_MAP[kind].items(), key=lambda kv: -len(kv[0]))
    out: dict[str, str] = {}
    for key in source.keys():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        for old, new in rules:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        out[name] = key
    if kind != "vae" and _source_copies_identical(source, out):
        out = {k: v for k, v in out.items() if not k.startswith(_VAE_DINO)}
    return out


def _source_copies_identical(source: TensorSource, keys: Mapping[str, str]) -> bool:
    a = {k[len(_DINO) :]: v for k, v in keys.items() if k.startswith(_DINO)}
    b = {k[len(_VAE_DINO) :]: v for k, v in keys.items() if k.startswith(_VAE_DINO)}
    if not a or a.keys() != b.keys():
        return False
    return all(source.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------
# Strict loading


def state_dict_diff(
    model: nn.Module, sd: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing keys, unexpected keys, [(key, expected shape, got shape)]) of `sd` against `model`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(sd[k].shape))
        for k in expected
        if k in sd and tuple(expected[k].shape) != tuple(sd[k].shape)
    ]
    return missing, unexpected, mismatched


def _listing(items: list, limit: int = 20) -> str:
    lines = [f"    {x}" for x in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def check_fits(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str = "state dict") -> None:
    """Raise one `CheckpointError` listing missing keys, unexpected keys and shape mismatches (key,
    expected, got) of `sd` (tensors or shape-only stand-ins) against `model`; nothing when it fits."""
    missing, unexpected, mismatched = state_dict_diff(model, sd)
    if missing or unexpected or mismatched:
        parts = [f"{what} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"  {len(missing)} missing key(s):\n{_listing(missing)}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected key(s):\n{_listing(unexpected)}")
        if mismatched:
            rows = [f"{k}: expected {list(e)}, got {list(g)}" for k, e, g in mismatched]
            parts.append(f"  {len(mismatched)} shape mismatch(es):\n{_listing(rows)}")
        parts.append("  Check that the model config (sizes, variant, share_vae_dino) matches the file.")
        raise CheckpointError("\n".join(parts))


def load_strict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor] | TensorSource,
    what: str = "state dict",
    assign: bool = False,
    keys: Mapping[str, str] | None = None,
) -> None:
    """Load `sd` (a state dict, or a `TensorSource` such as `SafetensorsFile`) into `model`, requiring every
    key and shape to match (checked on names and shapes before any data is read); otherwise raise one
    `CheckpointError` (`check_fits`). `keys`: our key -> the source's key (default: the source's keys).

    Tensors are read one at a time and copied into the parameters/buffers; with `assign` (a model built on
    the meta device) they become them (`_assign_loaded`). Either way a file is never held beside the model.
    """
    source = as_source(sd, what)
    keys = {k: k for k in source.keys()} if keys is None else dict(keys)
    check_fits(model, stand_ins(source, keys), what)
    if assign:
        _assign_loaded(model, source, keys)
        return
    targets = model.state_dict()
    with torch.no_grad():
        for ours, theirs in keys.items():
            source.read(theirs, targets[ours].copy_)  # casts to the model's dtype, as load_state_dict does


def model_from_official(
    kind: str,
    sd: Mapping[str, torch.Tensor] | TensorSource,
    config: VAEConfig | PlannerConfig | None = None,
    *,
    dino_num_heads: int | None = None,
    what: str | None = None,
    prefix: str = "",
) -> nn.Module:
    """Convert an official state dict (or `TensorSource`, e.g. a `SafetensorsFile`; the model's keys under
    `prefix`) of a model kind, build the model (sharing DINO when the file's two copies are identical) on
    the meta device and load it strictly, one tensor at a time. The official quirks are on (the released
    behaviour). `config` None: sizes from the tensor shapes (`infer_config`; `dino_num_heads` as there)."""
    _check_kind(kind, MODEL_KINDS)
    what = what or f"official {kind} checkpoint"
    source = as_source(sd, what)
    keys = official_keys(kind, source, prefix)
    shapes = stand_ins(source, keys)
    if config is None:
        config = infer_config(kind, shapes, dino_num_heads=dino_num_heads)
    if isinstance(config, PlannerConfig):
        config = replace(config, share_vae_dino=shares_vae_dino(kind, shapes), official_quirks=True)
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = build_model(kind, config)
    load_strict(model, source, what, assign=True, keys=keys)
    return model


def _assign_loaded(model: nn.Module, source: TensorSource, keys: Mapping[str, str]) -> None:
    """Load a model built on the meta device by taking the source's tensors as its parameters (a state
    dict's own tensors, a file's tensors as read, one at a time; no copy): peak memory is the model. Then fill the buffers checkpoints do not store from each module's
    `nonpersistent_buffers()`. Tensors of another dtype than the model's are cast (as a copying load)."""
    expected = model.state_dict()

    def take(want: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
        def use(t: torch.Tensor) -> torch.Tensor:
            if source.owned:
                return t if t.dtype == want else t.to(want)
            return torch.empty(t.shape, dtype=want).copy_(t)  # own memory: the view dies with its handle

        return use

    loaded = {ours: source.read(theirs, take(expected[ours].dtype)) for ours, theirs in keys.items()}
    model.load_state_dict(loaded, strict=True, assign=True)
    del loaded
    for module in model.modules():
        if any(b is not None and b.is_meta for b in module._buffers.values()):
            fill = getattr(module, "nonpersistent_buffers", None)
            if fill is None:
                raise RuntimeError(
                    f"{type(module).__name__} has buffers that are neither stored nor rebuildable"
                )
            for name, value in fill().items():
                module._buffers[name] = value
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device after loading: {left[:5]}")


# ----------------------------------------------------------------------------------------------------------
# Sizes from tensor shapes (for files of non-release sizes, e.g. the parity fixtures)


def infer_config(
    kind: str, sd: dict[str, torch.Tensor], dino_num_heads: int | None = None, prefix: str = ""
) -> VAEConfig | PlannerConfig:
    """Model config whose sizes match an (official-layout) state dict.

    Head counts come from the attention `scale` vectors; DINO's head count is not visible in its shapes:
    pass `dino_num_heads` (default: embed_dim // 64, the DINOv2 head size).
    """
    _check_kind(kind, MODEL_KINDS)
    sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    vp = "" if kind == "vae" else "vae."
    dino_prefix = next(
        p for p in (_DINO, vp + _DINO, "vae." + _DINO) if p + "cls_token" in sd
    )  # planner, or the VAE's
    E = sd[dino_prefix + "cls_token"].shape[-1]
    if dino_num_heads is None:
        if E % 64:
            raise SizeInferenceError(
                f"cannot infer the DINO head count for embed_dim={E}; pass dino_num_heads"
            )
        dino_num_heads = E // 64
    dino = DinoConfig(
        embed_dim=E,
        depth=_count(sd, dino_prefix + "blocks."),
        num_heads=dino_num_heads,
        mlp_ratio=sd[dino_prefix + "blocks.0.mlp.fc1.weight"].shape[0] // E,
        patch_size=sd[dino_prefix + "patch_embed.proj.weight"].shape[-1],
        num_register_tokens=sd[dino_prefix + "register_tokens"].shape[1],
        pos_embed_grid=round((sd[dino_prefix + "pos_embed"].shape[1] - 1) ** 0.5),
    )
    d_model = sd[vp + "encoder.query_token"].shape[-1]
    n_heads = sd[vp + "encoder.backbone.0.self_attn.scale"].shape[0]
    latent_grid = round(sd[vp + "encoder.query_pos"].shape[1] ** 0.5)
    vae = VAEConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        enc_depth=_count(sd, vp + "encoder.backbone."),
        dec_depth=_count(sd, vp + "decoder.backbone."),
        latent_dim=sd[vp + "encoder.to_mean.weight"].shape[0],
        latent_grid=latent_grid,
        ff_expand=sd[vp + "encoder.backbone.0.ff.down_proj.weight"].shape[1] // d_model,
        dino=dino,
    )
    if kind == "vae":
        return vae
    width = sd["in_proj.proj.weight"].shape[0]
    d_cond = sd["time_in_proj.weight"].shape[0]
    variant = kind.removeprefix("planner_")
    cfg = PlannerConfig(
        variant=variant,
        width=width,
        depth=_count(sd, "backbone."),
        d_head=width // sd["backbone.0.self_attn.scale"].shape[0],
        d_cond_norm=d_cond,
        mapping_depth=_count(sd, "mapping.blocks."),
        mapping_d_ff=sd["mapping.blocks.0.down_proj.weight"].shape[1],
        ff_expand=sd["backbone.0.ff.down_proj.weight"].shape[1] // width,
        text_enc_depth=_count(sd, "text_encoder.") if "text_encoder.0.ff.norm.scale" in sd else 6,
        num_views=sd["learnable_emb_dino"].shape[0] if sd["learnable_emb_dino"].ndim == 2 else 2,
        vae=vae,
        dino=dino,
        share_vae_dino=not any(k.startswith(_VAE_DINO) for k in sd),
    )
    if cfg.is_libero and "text_encoder.0.self_attn.scale" in sd:
        text_heads = sd["text_encoder.0.self_attn.scale"].shape[0]
        if E // text_heads != cfg.d_head:
            raise ValueError(
                f"text encoder head size {E // text_heads} != backbone head size {cfg.d_head}: "
                "one d_head serves both (as in the official code)"
            )
    return cfg


def _count(sd: dict, prefix: str) -> int:
    idx = {int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


# ----------------------------------------------------------------------------------------------------------
# Our own checkpoints: config.json + model.safetensors


def save_checkpoint(model: nn.Module, kind: str, folder: str | os.PathLike) -> Path:
    """Write `config.json` (kind + full config, quirk switches included) and `model.safetensors`."""
    from safetensors.torch import save_file

    from zipmo_robot.files import atomic_write_text

    _check_kind(kind, MODEL_KINDS)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / ".model.safetensors.tmp"
    save_file(sd, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
    atomic_write_text(
        folder / "config.json", json.dumps({"kind": kind, "config": asdict(model.cfg)}, indent=2)
    )
    return folder


def load_checkpoint(folder: str | os.PathLike, map_location: str = "cpu") -> tuple[str, nn.Module]:
    """Rebuild a model saved by `save_checkpoint` and load it strictly, one tensor at a time (built on the
    meta device, so peak memory is the model plus one tensor); returns (kind, model on `map_location`)."""
    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    for path in (cfg_path, weights):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: a checkpoint folder holds config.json and model.safetensors"
            )
    meta = json.loads(cfg_path.read_text())
    kind = meta["kind"]
    source = SafetensorsFile(weights, fix="the checkpoint is damaged; save it again")
    with torch.device("meta"):
        model = build_model(kind, meta["config"])
    load_strict(model, source, str(weights), assign=True)
    return kind, model.to(map_location)
