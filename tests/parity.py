"""Helpers shared by the test modules (test modules never import each other): the loader of the official-parity
fixture folder (`ZIPMO_PARITY_FIXTURES`, default ../shared/fixtures/official_parity relative to the repo root;
everything is read from `manifest.json`, no case name or size is hard-coded here), and tiny random models for
the tests that need a model but no fixture."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """The fixture folder; a relative `ZIPMO_PARITY_FIXTURES` is taken relative to the repo root."""
    path = Path(os.environ.get("ZIPMO_PARITY_FIXTURES", "../shared/fixtures/official_parity"))
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


@cache
def manifest() -> dict:
    path = fixture_dir() / "manifest.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def kinds() -> list[str]:
    return list(manifest().get("kinds", {}))


def kind_info(kind: str) -> dict:
    """The manifest entry of `kind`; a kind the manifest lacks is an error (the shared set has every kind)."""
    kinds = manifest().get("kinds", {})
    if kind not in kinds:
        raise LookupError(
            f"the parity manifest in {fixture_dir()} has no kind {kind!r} (it has: {', '.join(kinds) or 'none'}); "
            "set ZIPMO_PARITY_FIXTURES to the complete fixture folder"
        )
    return kinds[kind]


@cache
def _load(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def io(kind: str) -> dict[str, torch.Tensor]:
    """Inputs and outputs of a kind (a fresh dict; tensors are shared, do not modify them in place)."""
    return dict(_load(str(fixture_dir() / kind_info(kind)["io"])))


def weights(kind: str) -> dict[str, torch.Tensor]:
    return dict(_load(str(fixture_dir() / kind_info(kind)["weights"])))


def outputs(kind: str) -> list[str]:
    """Names of the output tensors of a kind, in manifest order."""
    return [name for name, t in kind_info(kind)["tensors"].items() if t["role"] == "output"]


def frame(u8: torch.Tensor) -> torch.Tensor:
    """The float model input of a uint8 fixture frame: `u8.float()/127.5 - 1` (README, Conventions)."""
    return u8.float() / 127.5 - 1.0


def max_abs_err(got: torch.Tensor, want: torch.Tensor) -> float:
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"shape mismatch: got {tuple(got.shape)}, expected {tuple(want.shape)}")
    if got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
        raise AssertionError(f"dtype mismatch: got {got.dtype}, expected {want.dtype}")
    if got.numel() == 0:
        return 0.0
    return (got.double() - want.double()).abs().max().item()


def dino_config():
    from zipmo_robot.models.dino import DinoConfig

    d = manifest()["config"]["dino"]
    return DinoConfig(
        embed_dim=d["embed_dim"],
        depth=d["depth"],
        num_heads=d["num_heads"],
        mlp_ratio=d["mlp_ratio"],
        patch_size=d["patch_size"],
        img_size=d["img_size"],
        num_register_tokens=d["num_register_tokens"],
    )


def vae_config():
    from zipmo_robot.models.vae import VAEConfig

    v = manifest()["config"]["vae"]
    grid = v["grid_size"]
    if grid[0] != 1 or grid[1] != grid[2]:
        raise ValueError(f"only a (1, G, G) latent grid is supported, the manifest has {grid}")
    return VAEConfig(
        d_model=v["d_model"],
        d_head=v["d_head"],
        enc_depth=v["enc_depth"],
        dec_depth=v["dec_depth"],
        latent_dim=v["latent_dim"],
        latent_grid=grid[1],
        kl_weight=v["kl_weight"],
        dino=dino_config(),
    )


def planner_config(kind: str):
    """PlannerConfig of a planner kind (`planner_<variant>`) from the manifest sizes."""
    from zipmo_robot.models.planner import PlannerConfig

    p = manifest()["config"]["planner"]
    variant = kind.removeprefix("planner_")
    group = "libero" if variant.startswith("libero") else variant
    grid = p["grid_size"]
    vae = vae_config()
    if p["latent_dim"] != vae.latent_dim or grid[1] != vae.latent_grid:
        raise ValueError("planner and VAE latent sizes disagree in the manifest")
    return PlannerConfig(
        variant=variant,
        width=p["width"],
        depth=p["depth"],
        d_head=p["d_head"],
        d_cond_norm=p["d_cond_norm"],
        mapping_depth=p["mapping"]["depth"],
        mapping_d_ff=p["mapping"]["d_ff"],
        ff_expand=p["ff_expand"],
        text_enc_depth=p["text_enc_depth"],
        n_cond=p["n_cond"][group],
        poisson_rate=p["poisson_rate"][group],
        num_views=p["num_views"],
        vae_shift=p["vae_shift"],
        vae_scale=p["vae_scale"],
        vae=vae,
        dino=dino_config(),
    )


# ---------------------------------------------------------------------------------------------------------
# Tiny random models


def tiny_vae_config(**kw):
    """A VAE small enough for CPU tests: width 32, one encoder and decoder layer, 4x4 latent grid, 56 px DINO."""
    from zipmo_robot.models.dino import DinoConfig
    from zipmo_robot.models.vae import VAEConfig

    dino = DinoConfig(embed_dim=16, depth=1, num_heads=2, img_size=56)  # 4x4 patches
    return VAEConfig(d_model=32, d_head=16, enc_depth=1, dec_depth=1, latent_grid=4, dino=dino, **kw)


def unzero(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised residual projections random values, so every block does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model
