"""Bit-exactness records of the agent's actions: seeded random weights, fixed inputs,
a few control steps, and the actions/latents they give, so a speed change can be checked to move no bit.

The records in `tests/data/exact_<cpu kind>.safetensors` were made with the code of commit 8321ee5 (before
the speed and cleanup work, whose actions equal the official code's) by running this file against that
tree: `git worktree add /tmp/zipmo_before 8321ee5 && python tests/exact_record.py --tree /tmp/zipmo_before`.
bf16 (and fp32) GEMM results depend on the CPU's instruction set and the torch build, so a record holds for
one CPU kind (`cpu_kind()`); `tests/test_speed_exact.py` compares bit for bit where the kind matches.

Cases: `small` (the small size, both LIBERO variants, batch 2) and `release_width` (release widths and head
sizes everywhere, fewer layers so a step takes seconds on one thread). Weights come from `random_weights`,
a function of the key names, shapes and a seed only, so they are the same in every version of the code.
Runs with one intra-op thread (the record and the check must split the GEMMs the same way).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

COMMIT_BEFORE = "8321ee5"
DATA = Path(__file__).resolve().parent / "data"

_RELEASE_WIDTH = {
    "name": "release_width",
    "dino": {
        "embed_dim": 768,
        "depth": 2,
        "num_heads": 12,
        "mlp_ratio": 4,
        "patch_size": 14,
        "img_size": 224,
        "num_register_tokens": 4,
        "pos_embed_grid": 37,
    },
    "vae": {
        "d_model": 768,
        "d_head": 64,
        "enc_depth": 1,
        "dec_depth": 1,
        "latent_dim": 16,
        "latent_grid": 16,
        "ff_expand": 3,
    },
    "planner": {
        "width": 1024,
        "depth": 2,
        "d_head": 64,
        "d_cond_norm": 256,
        "mapping_depth": 2,
        "ff_expand": 3,
        "text_enc_depth": 1,
        "num_views": 2,
    },
    "head": {"model_dim": 768, "depth": 1, "d_head": 64, "ff_expand": 3},
}

# name -> (size: "small" or a plain sizes dict, variant, batch, control steps, nfe)
CASES: dict[str, tuple[Any, str, int, int, int]] = {
    "small_atm": ("small", "libero_atm", 2, 2, 3),
    "small_tramoe": ("small", "libero_tramoe", 2, 2, 3),
    "release_width_atm": (_RELEASE_WIDTH, "libero_atm", 1, 2, 2),
}
PRECISIONS = ("bf16", "fp32")


def cpu_kind() -> str:
    """CPU model + the ISA features that change GEMM results + torch major.minor, as a file-name-safe key."""
    import torch

    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    parts = [
        model,
        torch.backends.cpu.get_cpu_capability(),
        *isa,
        "torch" + ".".join(torch.__version__.split(".")[:2]),
    ]
    return "_".join("".join(c if c.isalnum() else "-" for c in p) for p in parts)


def record_path(kind: str | None = None) -> Path:
    return DATA / f"exact_{kind or cpu_kind()}.safetensors"


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    """Deterministic weights from key names and shapes only: matrices N(0, 0.02), norm/attention scales
    around 1, rotary and Fourier frequencies of the size real models use, vectors small."""
    import torch

    out = {}
    for name in sorted(shapes):
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        x = torch.randn(shapes[name], generator=gen)
        leaf, ndim = name.rsplit(".", 1)[-1], len(shapes[name])
        if leaf.endswith("freqs"):
            x = x.abs() * 10.0  # rotary frequencies: positive, up to ~40
        elif leaf == "coeffs":
            x = x * 10.0  # Fourier features of pokes / episode steps
        elif name.endswith("time_emb.weight"):
            pass  # Fourier time features: N(0, 1) as at init
        elif leaf in ("scale", "gamma") or (leaf == "weight" and ndim == 1):
            x = 1.0 + 0.1 * x  # norm scales, attention temperatures, LayerScale, LayerNorm weights
        else:
            x = x * 0.02  # matrices, biases, embeddings
        out[name] = x
    return out


def _imports() -> dict[str, Any]:
    """The APIs this file needs, from the new layout or the pre-6/10 one."""
    try:
        from zipmo_robot.models.planner import build_planner
        from zipmo_robot.models.sizes import load_sizes, model_sizes
    except ImportError:
        from zipmo_robot.model_configs import load_sizes, model_sizes
        from zipmo_robot.planner import build_planner
    from zipmo_robot.policy.agent import RollingReplanner
    from zipmo_robot.policy.head import InverseDynamicsHead

    return {
        "build_planner": build_planner,
        "load_sizes": load_sizes,
        "model_sizes": model_sizes,
        "RollingReplanner": RollingReplanner,
        "InverseDynamicsHead": InverseDynamicsHead,
    }


def build_case(name: str, precision: str) -> tuple[Any, dict[str, Any]]:
    """The agent of a case (weights from `random_weights`) and its inputs."""
    import numpy as np
    import torch

    api = _imports()
    size, variant, batch, steps, nfe = CASES[name]
    sizes = api["load_sizes"](size) if isinstance(size, str) else api["model_sizes"](copy.deepcopy(size))
    cfg = sizes.planner_config(variant, share_vae_dino=True)
    planner = api["build_planner"](cfg)
    head = api["InverseDynamicsHead"](
        sizes.head_config(
            grid_size=cfg.vae.latent_grid, num_views=cfg.num_views, latent_dim=cfg.vae.latent_dim
        )
    )
    for i, module in enumerate((planner, head)):
        sd = module.state_dict()
        weights = random_weights({k: tuple(v.shape) for k, v in sd.items()}, seed=i)
        module.load_state_dict(weights, strict=True)
    agent = api["RollingReplanner"](planner.eval(), head.eval(), nfe=nfe, precision=precision)
    rng = np.random.default_rng(7)
    inputs = {
        "images": rng.integers(0, 256, (steps, batch, cfg.num_views, 128, 128, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(steps, batch, 9)).astype(np.float32),
        "task_emb": torch.from_numpy(rng.normal(size=(batch, cfg.d_cross)).astype(np.float32)),
        "seeds": [1000 + i for i in range(batch)],
    }
    return agent, inputs


def run_case(name: str, precision: str) -> dict[str, Any]:
    """`{"<name>/<precision>/actions": (S, B, 7), ".../latents": (S, B, L, C)}` of the case."""
    import torch

    agent, inputs = build_case(name, precision)
    batch = len(inputs["seeds"])
    for i, seed in enumerate(inputs["seeds"]):
        agent.reset_row(i, seed, inputs["task_emb"][i])
    actions, latents = [], []
    with torch.inference_mode():
        for s in range(inputs["images"].shape[0]):
            out = agent.step(inputs["images"][s], inputs["proprio"][s], list(range(batch)))
            actions.append(out.actions.clone())
            latents.append(out.latents.clone())
    key = f"{name}/{precision}"
    return {f"{key}/actions": torch.stack(actions), f"{key}/latents": torch.stack(latents)}


def _use_tree(tree: str) -> None:
    """Import `zipmo_robot` from an old checkout (its policy/, envs/, eval/, configs/ folders mapped into the
    package as its pyproject does) instead of the editable install."""
    import tempfile

    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__ + repr(f)]
    root = Path(tempfile.mkdtemp(prefix="zipmo_tree_"))
    pkg = root / "zipmo_robot"
    pkg.mkdir()
    src = Path(tree)
    for entry in (src / "zipmo_robot").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for sub in ("policy", "envs", "eval", "configs"):
        if (src / sub).is_dir() and not (pkg / sub).exists():
            (pkg / sub).symlink_to(src / sub)
    sys.path.insert(0, str(root))
    for mod in [m for m in sys.modules if m == "zipmo_robot" or m.startswith("zipmo_robot.")]:
        del sys.modules[mod]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", help=f"old checkout to record with (commit {COMMIT_BEFORE})")
    parser.add_argument("--out", help="output file (default tests/data/exact_<cpu kind>.safetensors)")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    args = parser.parse_args(argv)
    if args.tree:
        _use_tree(args.tree)
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    tensors: dict[str, Any] = {}
    for name in args.cases:
        for precision in PRECISIONS:
            tensors.update(run_case(name, precision))
            print(name, precision, "done", flush=True)
    import zipmo_robot

    meta = {
        "cpu_kind": cpu_kind(),
        "torch": torch.__version__,
        "code": str(Path(zipmo_robot.__file__).resolve().parent.parent),
        "commit": COMMIT_BEFORE if args.tree else "working tree",
    }
    out = Path(args.out) if args.out else record_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
    print(f"wrote {out} ({os.path.getsize(out)} bytes) {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
