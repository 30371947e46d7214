"""`bench load`: peak resident memory while loading a released-layout checkpoint through the public loader.

A synthetic file with the released key names and shapes (the release-size models' state dicts, which are
the released files' listings: tests/test_checkpoints.py checks that) and seeded random values is written
one tensor at a time (the VAE's DINO copy equals the planner's, as the converter then folds them into one
module). A fresh subprocess per measurement imports the loader, then loads the file with
`loader.load_policy` (policy-head kinds) or `loader.load_model` and reports its peak RSS above what it held
before the load, the same peak including a first use of the model (every weight byte read once: a loader
that leaves weights as views of the file's mapping pages them in only then), the loaded model's own bytes
and the file's largest tensor; the target is peak <= model + one tensor (ratio <= 1). `--baseline-tree DIR` runs the same subprocess against another source tree
(e.g. `git worktree add /tmp/before <commit>`), alternated with this one, so both are measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from zipmo_robot.bench.common import machine_info

_PLANNER_PREFIX = "track_predictor."
_VAE_DINO = "vae.img_embedder.model."
_DINO = "img_embedder.model."

# Runs in a fresh interpreter: argv = path, "policy" | "model", source tree ("" = as installed), threads,
# DINO head count (not visible in the shapes), a tiny file of the same kind and its DINO head count (loaded
# first, so the one-time imports torch does under the meta device, ~4 s and ~40-80 MB, stay out of the window).
# Only uses what every version of the loader has (load_policy / load_model on a file path).
_CHILD = r"""
import json, os, sys, threading, time
path, what, tree, threads, heads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
warm, warm_heads = sys.argv[6], int(sys.argv[7])
if tree:
    sys.path.insert(0, tree)
import zipmo_robot
if tree:  # pyproject maps the top-level policy/ folder into the package: do the same for this tree
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "zipmo_robot.policy", os.path.join(tree, "policy", "__init__.py"),
        submodule_search_locations=[os.path.join(tree, "policy")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    zipmo_robot.policy = mod
import torch
torch.set_num_threads(threads)
from zipmo_robot.checkpoints import convert, hub, loader  # imports outside the measured window
import zipmo_robot.models.planner, zipmo_robot.policy.head

def load(file, dino_heads):
    if what == "policy":
        bundle = loader.load_policy(file, dino_heads=dino_heads)
        return [bundle.planner, bundle.head]
    return [loader.load_model(file, dino_heads=dino_heads)]

load(warm, warm_heads)

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: the kernel's peak then covers only the load
    hwm_reset = True
except OSError:
    hwm_reset = False
start = status("VmRSS")
peak = [start]
stop = threading.Event()

def poll():
    while not stop.wait(0.002):
        peak[0] = max(peak[0], status("VmRSS"))

sampler = threading.Thread(target=poll, daemon=True)
sampler.start()
t0 = time.perf_counter()
models = load(path, heads)
seconds = time.perf_counter() - t0
stop.set()
sampler.join()
peak_rss = max(peak[0], status("VmRSS"), status("VmHWM") if hwm_reset else 0)
after_load = status("VmRSS")
tensors = [t for m in models for t in [*m.parameters(), *m.buffers()]]
seen, model_bytes = set(), 0
for t in tensors:
    key = (t.untyped_storage().data_ptr(), t.data_ptr(), t.nbytes)
    if key not in seen:
        seen.add(key)
        model_bytes += t.nbytes  # the tensor's own bytes (a view of a file mapping has a file-sized storage)
t0 = time.perf_counter()
with torch.no_grad():  # first use: every weight byte read once (a weight still in the file is paged in)
    for t in tensors:
        t.float().sum()
use_seconds = time.perf_counter() - t0
peak_use = max(peak_rss, status("VmRSS"), status("VmHWM") if hwm_reset else 0)
print(json.dumps({
    "start_rss": start, "peak_rss": peak_rss, "after_load_rss": after_load, "peak_rss_with_use": peak_use,
    "after_use_rss": status("VmRSS"), "rss_file_after_use": status("RssFile"),
    "model_bytes": model_bytes, "load_s": seconds, "first_use_s": use_seconds, "hwm_reset": hwm_reset,
    "zipmo_robot": os.path.dirname(zipmo_robot.__file__),
    "head_module": sys.modules["zipmo_robot.policy.head"].__file__,
}))
"""


def load_arguments(parser: argparse.ArgumentParser) -> None:
    from zipmo_robot.models.sizes import KINDS

    parser.add_argument("--kind", default="policy_head_atm", choices=KINDS, help="file layout to load")
    parser.add_argument(
        "--size", default="release", help="model size: release | small | tiny (configs/model/)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    parser.add_argument("--repeats", type=int, default=1, help="loads per source tree (alternated)")
    parser.add_argument(
        "--baseline-tree",
        default=None,
        metavar="DIR",
        help="also load through the source tree DIR (e.g. a git worktree of an earlier commit), alternated",
    )
    parser.add_argument(
        "--dir", default=None, help="folder for the synthetic file (default: a temporary folder, deleted)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the synthetic file")


def release_layout(kind: str, size: str = "release") -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of a released-layout file of `kind` at `size`, in state-dict order: the
    model(s) built on the meta device with two DINO copies (planner + VAE), a policy head's planner under
    `track_predictor.`."""
    from dataclasses import replace

    import torch

    from zipmo_robot.checkpoints import convert
    from zipmo_robot.models.sizes import HEAD_KINDS, load_sizes

    config = load_sizes(size).config_for(kind)
    with torch.device("meta"):
        if kind in HEAD_KINDS:
            from zipmo_robot.policy.head import InverseDynamicsHead

            planner_cfg, head_cfg = config
            planner = convert.build_model(
                convert.planner_kind(kind), replace(planner_cfg, share_vae_dino=False)
            )
            parts = [(_PLANNER_PREFIX, planner), ("", InverseDynamicsHead(head_cfg))]
        else:
            if kind != "vae":
                config = replace(config, share_vae_dino=False)
            parts = [("", convert.build_model(kind, config))]
    return [(p + k, tuple(t.shape)) for p, m in parts for k, t in m.state_dict().items()]


def write_synthetic(path: str | os.PathLike, layout: list[tuple[str, tuple[int, ...]]], seed: int) -> int:
    """Write a float32 .safetensors file of `layout` with seeded N(0, 0.02²) values, one tensor at a time
    (the writer never holds more than one); a VAE DINO tensor gets its planner twin's values. Returns the
    file size in bytes."""
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in layout:
        n = 4 * torch.Size(shape).numel()
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = Path(f"{os.fspath(path)}.tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for key, shape in layout:
            twin = key.replace(_VAE_DINO, _DINO)  # both DINO copies from one seed: identical
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(twin.encode()))
            t = torch.randn(shape, generator=gen).mul_(0.02)
            f.write(t.numpy().data)
            del t
    os.replace(tmp, path)
    return os.path.getsize(path)


def _measure(
    path: Path, what: str, tree: str, threads: int, heads: int, warm: Path, warm_heads: int
) -> dict[str, Any]:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(path),
            what,
            tree,
            str(threads),
            str(heads),
            str(warm),
            str(warm_heads),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load subprocess failed ({tree or 'this tree'}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    """Write the synthetic file, load it in fresh subprocesses (this tree and `--baseline-tree`), report."""
    import torch

    from zipmo_robot.models.sizes import HEAD_KINDS, load_sizes

    layout = release_layout(args.kind, args.size)
    largest = max(4 * torch.Size(s).numel() for _, s in layout)
    this_tree = str(Path(__file__).resolve().parents[2])
    trees = [("this", this_tree)]
    if args.baseline_tree:
        base = Path(args.baseline_tree).expanduser().resolve()
        if not (base / "zipmo_robot" / "checkpoints" / "loader.py").is_file():
            from zipmo_robot.errors import UserError

            raise UserError(
                f"--baseline-tree {base} is not a zipmo-robot source tree (no zipmo_robot/checkpoints/loader.py)"
            )
        trees.insert(0, ("baseline", str(base)))
    report: dict[str, Any] = {
        "benchmark": "load",
        "machine": machine_info(),
        "settings": {
            "kind": args.kind,
            "size": args.size,
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "trees": dict(trees),
            "tensors": len(layout),
            "params": sum(torch.Size(s).numel() for _, s in layout),
            "largest_tensor_bytes": largest,
        },
        "results": [],
    }
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="zipmo_bench_load_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic_{args.kind}_{args.size}.safetensors"
    try:
        t0 = time.perf_counter()
        report["settings"]["file_bytes"] = write_synthetic(path, layout, args.seed)
        report["settings"]["write_s"] = round(time.perf_counter() - t0, 1)
        what = "policy" if args.kind in HEAD_KINDS else "model"
        heads = load_sizes(args.size).dino.num_heads
        warm, warm_heads = folder / f"warmup_{args.kind}_tiny.safetensors", load_sizes("tiny").dino.num_heads
        write_synthetic(warm, release_layout(args.kind, "tiny"), args.seed)
        for repeat in range(args.repeats):
            for name, tree in trees:
                r = _measure(path, what, tree, torch.get_num_threads(), heads, warm, warm_heads)
                above = r["peak_rss"] - r["start_rss"]
                above_use = r["peak_rss_with_use"] - r["start_rss"]
                r.update(
                    tree=name,
                    repeat=repeat,
                    peak_above_start=above,
                    peak_with_use_above_start=above_use,
                    after_use_above_start=r["after_use_rss"] - r["start_rss"],
                    largest_tensor_bytes=largest,
                    ratio_to_model_plus_one_tensor=round(above / (r["model_bytes"] + largest), 3),
                    with_use_ratio_to_model_plus_one_tensor=round(
                        above_use / (r["model_bytes"] + largest), 3
                    ),
                )
                report["results"].append(r)
                if getattr(args, "on_result", None) is not None:
                    args.on_result(report)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            (folder / f"warmup_{args.kind}_tiny.safetensors").unlink(missing_ok=True)
            Path(f"{path}.tmp").unlink(missing_ok=True)
            if not args.dir:
                folder.rmdir()
    report["load_after"] = machine_info().get("loadavg_1_5_15")
    return report


def format_load(report: dict[str, Any]) -> str:
    """A plain-text table of a load report."""
    s, gib = report["settings"], 1024**3
    lines = [
        f"load {s['kind']} size={s['size']}: {s['tensors']} tensors, {s['params'] / 1e6:.1f} M params, file "
        f"{s['file_bytes'] / gib:.2f} GiB, largest tensor {s['largest_tensor_bytes'] / gib:.3f} GiB; "
        f"cpu: {report['machine'].get('cpu_model', '?')}, {s['threads']} threads",
        "peak RSS above the process's RSS before the load, GiB: during the load, and including a first use "
        "(every weight byte read once); ratios to (model + largest tensor)",
        f"{'tree':>8} {'rep':>3} {'model':>6} {'load peak':>9} {'ratio':>5} {'+use peak':>9} {'ratio':>5} "
        f"{'after use':>9} {'file-backed':>11} {'load s':>6} {'use s':>5}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['tree']:>8} {r['repeat']:>3} {r['model_bytes'] / gib:>6.2f} {r['peak_above_start'] / gib:>9.2f} "
            f"{r['ratio_to_model_plus_one_tensor']:>5.2f} {r['peak_with_use_above_start'] / gib:>9.2f} "
            f"{r['with_use_ratio_to_model_plus_one_tensor']:>5.2f} {r['after_use_above_start'] / gib:>9.2f} "
            f"{r['rss_file_after_use'] / gib:>11.2f} {r['load_s']:>6.1f} {r.get('first_use_s', 0):>5.1f}"
        )
    return "\n".join(lines)
