"""The released ZipMo files: where they live, how they are fetched, cached and loaded.

`resolve_checkpoint("official:<name>" | PATH)` returns a local file: a plain path as is, a released name from
the local drop folder, the huggingface cache, or a download (`hf_hub_download`). Without network it fails fast
with one message naming the file, the repo, the cache folders and the command to run elsewhere.
Loading a file into our modules is `checkpoints.loader` (`load_policy`, `load_model`), the one loader.
`dinov2_from_transformers(sd)` converts transformers' `Dinov2WithRegistersModel` weights to the official DINO
layout (ZIPMO_REFERENCE.md §2.1), for training from scratch without a ZipMo checkpoint.

Cache folders: `ZIPMO_CACHE` (default the project folder `$ZIPMO_HOME`, else `~/.cache/zipmo-robot`) holds
`official/<file>` (files copied by hand; checked first) and the text-embedding caches; hub downloads go to the
huggingface cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) unless a cache folder
is given explicitly.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zipmo_robot.errors import UserError

REPO_ID = "CompVis/ZipMo"
DINO_HUB_MODEL = "facebook/dinov2-with-registers-base"
OFFICIAL_PREFIX = "official:"


@dataclass(frozen=True)
class ReleasedFile:
    """One file of the release (ZIPMO_REFERENCE.md §8).

    Args:
        name: our short name, used as `official:<name>` and by `zipmo-robot download`.
        filename: path inside the hub repo (subfolder included).
        kind: the state-dict layout (`official_state_dicts/<kind>.txt`, the converter's `kind`).
        n_tensors: number of tensors in the file.
        numel: total number of elements (state-dict numel, §8 table).
        description: one line for `zipmo-robot download --list`.
    """

    name: str
    filename: str
    kind: str
    n_tensors: int
    numel: int
    description: str

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]

    @property
    def subfolder(self) -> str | None:
        return self.filename.rsplit("/", 1)[0] if "/" in self.filename else None

    @property
    def size_gb(self) -> float:
        """Size of the file if stored in fp32 (the dtype inside the released files is not known, §App. B U1)."""
        return self.numel * 4 / 1e9


_TRAMOE = "Tra-MoE policy head + its LIBERO planner, LIBERO-{}"
RELEASED: dict[str, ReleasedFile] = {
    f.name: f
    for f in (
        ReleasedFile(
            "vae", "zipmo_vae.safetensors", "vae", 611, 339_164_197, "trajectory VAE (+ its DINOv2)"
        ),
        ReleasedFile(
            "planner_sparse",
            "zipmo_planner_sparse.safetensors",
            "planner_sparse",
            1216,
            872_580_645,
            "open-domain planner, sparse pokes (<= 16)",
        ),
        ReleasedFile(
            "planner_dense",
            "zipmo_planner_dense.safetensors",
            "planner_dense",
            1216,
            872_580_645,
            "open-domain planner, 40 dense pokes",
        ),
        ReleasedFile(
            "planner_libero_atm",
            "zipmo_planner_libero_atm.safetensors",
            "planner_libero_atm",
            1218,
            918_591_725,
            "LIBERO planner, ATM protocol (text token)",
        ),
        ReleasedFile(
            "planner_libero_tramoe",
            "zipmo_planner_libero_tramoe.safetensors",
            "planner_libero_tramoe",
            1225,
            929_210_477,
            "LIBERO planner, Tra-MoE protocol (text + episode-step token)",
        ),
        ReleasedFile(
            "head_atm",
            "policy_heads/atm_libero.safetensors",
            "policy_head_atm",
            1316,
            979_407_485,
            "ATM policy head + its LIBERO planner (one file for every suite)",
        ),
        ReleasedFile(
            "head_tramoe_10",
            "policy_heads/tramoe_libero_10.safetensors",
            "policy_head_tramoe",
            1323,
            990_026_237,
            _TRAMOE.format("10"),
        ),
        ReleasedFile(
            "head_tramoe_goal",
            "policy_heads/tramoe_libero_goal.safetensors",
            "policy_head_tramoe",
            1323,
            990_026_237,
            _TRAMOE.format("Goal"),
        ),
        ReleasedFile(
            "head_tramoe_object",
            "policy_heads/tramoe_libero_object.safetensors",
            "policy_head_tramoe",
            1323,
            990_026_237,
            _TRAMOE.format("Object"),
        ),
        ReleasedFile(
            "head_tramoe_spatial",
            "policy_heads/tramoe_libero_spatial.safetensors",
            "policy_head_tramoe",
            1323,
            990_026_237,
            _TRAMOE.format("Spatial"),
        ),
    )
}

# suite -> Tra-MoE head name; there is no LIBERO-90 Tra-MoE head (§8), the ATM head serves every suite.
TRAMOE_HEAD_FOR_SUITE: dict[str, str] = {
    "libero_10": "head_tramoe_10",
    "libero_goal": "head_tramoe_goal",
    "libero_object": "head_tramoe_object",
    "libero_spatial": "head_tramoe_spatial",
}
ALIASES: dict[str, str] = {"atm": "head_atm", "zipmo_vae": "vae"}


# ---------------------------------------------------------------------------------------------------------
# Cache folders


def zipmo_cache_dir() -> Path:
    """Root of zipmo-robot's own caches: `$ZIPMO_CACHE`, else the project folder `envs.setup.zipmo_home()`
    (`$ZIPMO_HOME`, else ~/.cache/zipmo-robot), which also holds LIBERO's config."""
    if os.environ.get("ZIPMO_CACHE"):
        return Path(os.environ["ZIPMO_CACHE"]).expanduser()
    from zipmo_robot.envs.setup import zipmo_home

    return zipmo_home()


def local_drop_dir() -> Path:
    """Folder where a released file copied by hand is looked up first: `<zipmo cache>/official/`."""
    return zipmo_cache_dir() / "official"


def hf_cache_dir() -> Path:
    """The huggingface hub cache, read from the environment at call time (`HF_HUB_CACHE`, `HF_HOME`)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when the user asked for offline mode (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`), read now."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Open one TCP connection to the hub endpoint within `timeout` s; returns (ok, reason).

    huggingface_hub retries DNS/connection errors with backoff for ~25 s; this probe makes a machine without
    network fail in seconds. DNS resolution runs in a daemon thread so a hanging resolver is bounded too.
    """
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append((True, "ok"))
        except OSError as exc:
            result.append((False, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not result:
        return False, f"no answer from {host}:{port} within {timeout:g} s"
    return result[0]


# ---------------------------------------------------------------------------------------------------------
# Names and resolution


def released_file(name: str, suite: str | None = None) -> ReleasedFile:
    """Look up a released file by short name, alias or file name; `tramoe` needs `suite` (e.g. libero_goal)."""
    key = name.strip()
    if key.endswith(".safetensors"):
        for f in RELEASED.values():
            if key in (f.filename, f.basename):
                return f
    key = ALIASES.get(key, key)
    if key in ("tramoe", "head_tramoe"):
        if suite is None:
            raise UserError(
                f"official:{name} needs a suite: there is one Tra-MoE head per suite "
                f"({', '.join(TRAMOE_HEAD_FOR_SUITE)}); pass --suite or name it, e.g. official:head_tramoe_goal"
            )
        if suite not in TRAMOE_HEAD_FOR_SUITE:
            raise UserError(
                f"no released Tra-MoE head for suite {suite!r} (the release has "
                f"{', '.join(TRAMOE_HEAD_FOR_SUITE)}); use official:atm, which serves every suite"
            )
        key = TRAMOE_HEAD_FOR_SUITE[suite]
    if key.startswith("tramoe_"):
        key = "head_" + key
    if key not in RELEASED:
        raise UserError(
            f"unknown released file {name!r}; known names: {', '.join(RELEASED)} "
            f"(aliases: atm, tramoe with a suite, and the file names)"
        )
    return RELEASED[key]


def _cached_hf_file(f: ReleasedFile, cache_dir: Path) -> Path | None:
    """The file from the huggingface cache, without touching the network; None if absent."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(REPO_ID, f.filename, cache_dir=str(cache_dir))
    return Path(hit) if isinstance(hit, str) and os.path.exists(hit) else None


def offline_message(f: ReleasedFile, cache_dir: Path, reason: str) -> str:
    """The error text for a released file that is not on this machine and cannot be downloaded: where we
    looked, how to fetch it elsewhere, where to put it, and how to try the stack without it."""
    from zipmo_robot.checkpoints.loader import weight_free_hint

    drop = local_drop_dir() / f.basename
    return (
        f"the released file {f.filename!r} (repo {REPO_ID}, ~{f.size_gb:.1f} GB in fp32) is not on this machine "
        f"and cannot be downloaded ({reason}).\n"
        f"  looked in: {drop} and the huggingface cache {cache_dir}\n"
        f"  fix: on a machine with network run\n"
        f"      zipmo-robot download {f.name} --cache DIR\n"
        f"    (or: hf download {REPO_ID} {f.filename} --local-dir DIR), then either copy the file to\n"
        f"      {drop}\n"
        f"    or pass its path directly: --checkpoint /path/to/{f.basename}\n"
        f"    (copying a whole huggingface cache folder and setting HF_HOME / --cache works too)\n"
        f"{weight_free_hint()}"
    )


def download(
    name: str,
    *,
    suite: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    probe_timeout: float = 3.0,
) -> Path:
    """Return the local path of a released file, downloading it into the cache if needed.

    Order: the drop folder (`<zipmo cache>/official/<file>`), the huggingface cache, then `hf_hub_download`.
    Offline (`HF_HUB_OFFLINE=1`) or no route to the hub → `UserError` (`offline_message`) within seconds.
    """
    f = released_file(name, suite)
    drop = local_drop_dir() / f.basename
    if drop.is_file():
        return drop
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()
    hit = _cached_hf_file(f, cache)
    if hit is not None:
        return hit
    if hub_offline():
        raise UserError(offline_message(f, cache, "HF_HUB_OFFLINE is set"))
    ok, reason = hub_reachable(probe_timeout)
    if not ok:
        raise UserError(offline_message(f, cache, f"the hub {hub_endpoint()} is unreachable: {reason}"))

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    cache.mkdir(parents=True, exist_ok=True)
    try:
        path = hf_hub_download(REPO_ID, f.basename, subfolder=f.subfolder, cache_dir=str(cache))
    except EntryNotFoundError as exc:
        raise UserError(
            f"{f.filename!r} is not in the hub repo {REPO_ID} ({exc}); the release may have moved"
        ) from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise UserError(offline_message(f, cache, f"download failed: {type(exc).__name__}: {exc}")) from exc
    return Path(path)


def resolve_checkpoint(
    spec: str | os.PathLike,
    *,
    suite: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """`official:<name>` → local path of that released file (downloaded if needed); anything else is a path.

    Examples: `official:atm`, `official:tramoe` (with `suite`), `official:planner_libero_atm`, `./head.safetensors`.
    A path that does not exist raises `UserError` naming it.
    """
    text = os.fspath(spec)
    if text.startswith(OFFICIAL_PREFIX):
        return download(text[len(OFFICIAL_PREFIX) :], suite=suite, cache_dir=cache_dir)
    path = Path(text).expanduser()
    if not path.is_file():
        hint = (
            f"; did you mean official:{text}?"
            if text in RELEASED or text in ALIASES or text == "tramoe"
            else "; give an existing .safetensors file, a trained checkpoint folder, bundled:<name> or "
            f"official:<name> (names: {', '.join(RELEASED)}, atm, tramoe)"
        )
        raise UserError(f"checkpoint file {str(path)!r} does not exist{hint}")
    return path


# ---------------------------------------------------------------------------------------------------------
# DINOv2 weights from transformers (training from scratch without a ZipMo checkpoint)


def dinov2_from_transformers(sd: Mapping[str, Any], n_layers: int | None = None) -> dict[str, Any]:
    """Convert a transformers `Dinov2WithRegistersModel` state dict to the official DINO key layout (§2.1).

    Accepts both transformers layouts: 5.x (`attention.{q,k,v,o}_proj`, `layer_scale1.lambda1`) and 4.x
    (`attention.attention.{query,key,value}`, `attention.output.dense`), with or without a
    `dinov2_with_registers.` prefix. q, k and v are concatenated into `attn.qkv` in that order (output rows
    `[0:d]` = q, `[d:2d]` = k, `[2d:3d]` = v, as the official `qkv.reshape(3, heads, d_head)` reads them).
    Keys returned have no prefix (`cls_token`, ..., `norm.bias`); unknown input keys raise `UserError`.
    """
    import torch

    src: dict[str, Any] = {}
    for key, value in sd.items():
        for prefix in ("dinov2_with_registers.", "model.", "dinov2."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        src[key] = value
    if "embeddings.cls_token" not in src:
        raise UserError(
            "not a transformers Dinov2WithRegistersModel state dict: no embeddings.cls_token key "
            f"(first keys: {list(src)[:5]})"
        )
    if n_layers is None:
        n_layers = 1 + max(int(k.split(".")[2]) for k in src if k.startswith("encoder.layer."))
    out: dict[str, Any] = {
        "cls_token": src.pop("embeddings.cls_token"),
        "pos_embed": src.pop("embeddings.position_embeddings"),
        "register_tokens": src.pop("embeddings.register_tokens"),
        "mask_token": src.pop("embeddings.mask_token"),
        "patch_embed.proj.weight": src.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": src.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": src.pop("layernorm.weight"),
        "norm.bias": src.pop("layernorm.bias"),
    }
    if out["mask_token"].ndim == 3:  # some exports keep (1, 1, D); the official buffer is (1, D)
        out["mask_token"] = out["mask_token"][0]
    new_names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    old_names = {"q": "attention.query", "k": "attention.key", "v": "attention.value", "o": "output.dense"}
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        names = new_names if f"{p}attention.q_proj.weight" in src else old_names
        for part in ("weight", "bias"):
            q, k, v = (src.pop(f"{p}attention.{names[c]}.{part}") for c in "qkv")
            out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([q, k, v], dim=0)
            out[f"blocks.{i}.attn.proj.{part}"] = src.pop(f"{p}attention.{names['o']}.{part}")
            for norm in ("norm1", "norm2"):
                out[f"blocks.{i}.{norm}.{part}"] = src.pop(f"{p}{norm}.{part}")
            for fc in ("fc1", "fc2"):
                out[f"blocks.{i}.mlp.{fc}.{part}"] = src.pop(f"{p}mlp.{fc}.{part}")
        out[f"blocks.{i}.ls1.gamma"] = src.pop(f"{p}layer_scale1.lambda1")
        out[f"blocks.{i}.ls2.gamma"] = src.pop(f"{p}layer_scale2.lambda1")
    if src:
        raise UserError(f"unconverted keys in the transformers DINOv2 state dict: {sorted(src)[:10]}")
    return out


def load_hub_dino(
    model_id: str = DINO_HUB_MODEL, *, cache_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Fetch `facebook/dinov2-with-registers-base` (or a local folder) through transformers and convert it.

    Returns the official-layout DINO state dict (`dinov2_from_transformers`); put it under
    `img_embedder.model.` (and `vae.img_embedder.model.`) before loading. Offline → `UserError` with the fix.
    """
    local = Path(model_id).expanduser()
    if not local.is_dir():
        if hub_offline():
            raise UserError(_hub_model_message(model_id, "HF_HUB_OFFLINE is set"))
        ok, reason = hub_reachable()
        if not ok:
            raise UserError(
                _hub_model_message(model_id, f"the hub {hub_endpoint()} is unreachable: {reason}")
            )
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(
            str(local) if local.is_dir() else model_id,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except OSError as exc:
        raise UserError(_hub_model_message(model_id, f"{type(exc).__name__}: {exc}")) from exc
    finally:
        restore_torch_device_context()
    return dinov2_from_transformers(model.state_dict())


def restore_torch_device_context() -> None:
    """Undo a side effect of transformers 5 `from_pretrained` on torch's device context manager.

    transformers builds the model inside `torch.device("meta")` while it has temporarily replaced torch's
    tensor-creation functions; torch caches its list of device-aware constructors on first use, so the cache
    then holds the replaced functions and, for the rest of the process, `with torch.device(...)` no longer
    applies to e.g. `torch.linspace` (meta-device model builds then mix cpu and meta tensors). Clearing the
    cache (`torch.utils._device._device_constructors`) rebuilds it from the real functions. Call after every
    `from_pretrained`.
    """
    import torch.utils._device as device_module

    cached = getattr(device_module, "_device_constructors", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


def _hub_model_message(model_id: str, reason: str) -> str:
    return (
        f"cannot load the hub model {model_id!r} ({reason}); looked in the huggingface cache {hf_cache_dir()}.\n"
        f"  fix: on a machine with network run `hf download {model_id} --local-dir DIR`, copy DIR here and pass "
        f"the folder path instead of the model name (or copy a huggingface cache and set HF_HOME)"
    )
