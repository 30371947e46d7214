"""Plan cache for behavioural cloning: K planner samples per training frame, made once, reused every epoch.

Sampling the frozen planner (10 Euler steps per plan) dominates the cost of a BC step; the head itself is
small. The cache samples `K` plans for every training window start (dataset index i) with noise from a
generator seeded by `(cache seed, i, k)` and THE agent's sampler (`stages.plan`), and stores them as
`chunk_<c>.safetensors` files of `chunk_frames` indices each, `(n, K, L, C)` in `dtype`. A chunk file appears
atomically, so an interrupted build resumes where it stopped; DDP processes build disjoint chunks in
parallel. The folder is `<dir>/<key>/` where the key hashes everything a plan depends on (planner weights,
the data's window index, nfe, precision, K, seed, dtype), so a changed planner never reads stale plans.

Trade-off: a cached run sees K plans per frame instead of a fresh one per visit (the online run).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zipmo_robot.errors import UserError
from zipmo_robot.files import atomic_write_text

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


class PlanCache:
    """Plans `(N, K, L, C)` for the N windows of a `TrainData`, built with `build` and read with `get`."""

    def __init__(
        self,
        root: str | os.PathLike,
        data: Any,
        planner: torch.nn.Module,
        planner_sha256: str | None,
        *,
        plans_per_frame: int,
        nfe: int,
        precision: str,
        chunk_frames: int = 64,
        batch: int = 32,
        dtype: str = "float16",
        seed: int = 0,
        cfg_scale: float = 1.0,
    ) -> None:
        if dtype not in DTYPES:
            raise UserError(f"plan_cache.dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        if plans_per_frame < 1 or chunk_frames < 1 or batch < 1:
            raise UserError("plan_cache.plans_per_frame, chunk_frames and batch must be >= 1")
        self.data, self.planner = data, planner
        self.K, self.nfe, self.precision = plans_per_frame, nfe, precision
        self.chunk, self.batch, self.dtype, self.seed = chunk_frames, batch, DTYPES[dtype], seed
        self.fields = {
            "planner_sha256": planner_sha256,
            "data": data.key(),
            "text": data.text.choice if data.text is not None else None,
            "nfe": nfe,
            "precision": precision,
            "K": plans_per_frame,
            "seed": seed,
            "dtype": dtype,
            "chunk_frames": chunk_frames,
        }
        self.cfg_scale = float(cfg_scale)
        if self.cfg_scale != 1.0:  # only then: caches made before guidance existed keep their keys
            self.fields["cfg_scale"] = self.cfg_scale
        self.dir = Path(root).expanduser() / cache_key(self.fields)
        self.n = len(data)
        self.n_chunks = math.ceil(self.n / self.chunk)
        self._plans: torch.Tensor | None = None

    def chunk_path(self, c: int) -> Path:
        return self.dir / f"chunk_{c:05d}.safetensors"

    def missing(self) -> list[int]:
        return [c for c in range(self.n_chunks) if not self.chunk_path(c).is_file()]

    def build(self, rank: int = 0, world: int = 1, progress: bool = True) -> dict[str, float]:
        """Sample the missing chunks (this process: chunks c with c % world == rank); returns timing."""
        import time

        from tqdm import tqdm

        from zipmo_robot.training.stages import frames_to_float, plan

        self.dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            atomic_write_text(self.dir / "meta.json", json.dumps(self.fields | {"n": self.n}, indent=1))
        todo = [c for c in self.missing() if c % world == rank]
        dev = next(self.planner.parameters()).device
        t0 = time.perf_counter()
        n_plans = 0
        bar = tqdm(
            total=len(todo) * self.chunk * self.K,
            desc="plan cache",
            unit="plan",
            disable=not progress or rank != 0,
            dynamic_ncols=True,
        )
        for c in todo:
            idx = list(range(c * self.chunk, min((c + 1) * self.chunk, self.n)))
            jobs = [(i, k) for i in idx for k in range(self.K)]
            out = torch.empty((len(jobs), *self.planner.latent_shape), dtype=self.dtype)
            for s in range(0, len(jobs), self.batch):
                part = jobs[s : s + self.batch]
                inputs = [self.data.frame_inputs(i) for i, _ in part]
                frames = frames_to_float(torch.from_numpy(np.stack([x[0] for x in inputs])).to(dev))
                txt = torch.from_numpy(np.stack([x[1] for x in inputs])).to(dev)[:, None]
                start_t = torch.tensor([x[2] for x in inputs], dtype=torch.int64, device=dev)
                seeds = [self._seed(i, k) for i, k in part]
                latents = plan(
                    self.planner, frames, txt, start_t, seeds, self.nfe, self.precision, self.cfg_scale
                )
                out[s : s + len(part)] = latents.to("cpu", self.dtype)
                n_plans += len(part)
                bar.update(len(part))
            self._write(c, out.view(len(idx), self.K, *out.shape[1:]))
        bar.close()
        dt = time.perf_counter() - t0
        return {"plans": n_plans, "seconds": dt, "plans_per_s": n_plans / dt if dt > 0 else 0.0}

    def _seed(self, index: int, k: int) -> int:
        return int(np.random.SeedSequence([self.seed, index, k]).generate_state(1, np.uint64)[0]) >> 1

    def _write(self, c: int, plans: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self.chunk_path(c)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"plans": plans.contiguous()}, str(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def load(self) -> None:
        """Read every chunk into memory; a missing or damaged chunk raises `UserError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        missing = self.missing()
        if missing:
            raise UserError(f"plan cache {self.dir} lacks {len(missing)} chunk(s); build it first")
        parts = []
        for c in range(self.n_chunks):
            try:
                parts.append(load_file(str(self.chunk_path(c)))["plans"])
            except (SafetensorError, OSError, KeyError) as exc:
                raise UserError(
                    f"plan-cache chunk {self.chunk_path(c)} is damaged ({exc}); delete it and rerun to rebuild it"
                ) from exc
        plans = torch.cat(parts)
        if plans.shape[:2] != (self.n, self.K):
            raise UserError(f"plan cache {self.dir} has shape {tuple(plans.shape)}; delete it to rebuild")
        self._plans = plans

    def get(self, index: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Plans (B, L, C) for dataset indices (B,) and plan numbers (B,)."""
        if self._plans is None:
            self.load()
        return self._plans[index.long(), k.long()].float()

    @property
    def nbytes(self) -> int:
        return 0 if self._plans is None else self._plans.numel() * self._plans.element_size()
