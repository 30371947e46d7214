"""Temporal ensembling of overlapping action chunks (the policy head predicts 16 future actions per step).

Two index rules, both with weights `discount ** age` (newest chunk heaviest), normalised, in float64:

* `official` (default; what `PolicyHead.act` in the released code does, ZIPMO_REFERENCE.md §6.4 / Q1):
  of the last `H = min(#chunks, horizon)` chunks, oldest first (`h = 0..H-1`), chunk `h` contributes its
  action index `(-h) mod T`: the oldest gives action 0, the next ones `T-1, T-2, ...`, the newest `T-(H-1)`.
  The released numbers depend on this, so it is the default with official weights.
* `textbook` (ACT-style): the chunk predicted `k` steps ago contributes its action `k`, i.e. the action it
  planned for the current step: chunk `h` gives index `H-1-h` (newest gives 0).

Weights: `w_h = discount ** (H-1-h)`, built as `discount ** arange(H, float64)` flipped, divided by their
float64 sum (§0.E: an integer `arange` would round the powers in fp32 first). The weighted sum runs in float64
and is cast back to the chunk dtype.
"""

from __future__ import annotations

from collections import deque

import torch

ENSEMBLE_MODES = ("official", "textbook")
_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # see TemporalEnsembler._tables


def ensemble_weights(num_chunks: int, discount: float) -> torch.Tensor:
    """Normalised float64 weights (H,) for H chunks ordered oldest → newest (newest heaviest)."""
    w = discount ** torch.arange(num_chunks, dtype=torch.float64)
    w = w.flip(0)
    return w / w.sum()


def ensemble_indices(num_chunks: int, chunk_len: int, mode: str) -> torch.Tensor:
    """Action index taken from each of H chunks (oldest → newest), int64 (H,)."""
    h = torch.arange(num_chunks)
    if mode == "official":
        return (-h) % chunk_len
    if mode == "textbook":
        if num_chunks > chunk_len:
            raise ValueError(f"textbook ensembling needs at most {chunk_len} chunks, got {num_chunks}")
        return num_chunks - 1 - h
    raise ValueError(f"unknown ensembling mode {mode!r}; choose one of {ENSEMBLE_MODES}")


class TemporalEnsembler:
    """Keeps the last `horizon` action chunks of one batch of episodes and blends them into one action.

    `update(chunk (B, T, A)) -> action (B, A)` appends the new chunk and returns the blended action in the
    chunk's dtype; `reset()` forgets the history. All rows of a batch share the history length, so the agent
    keeps one ensembler per episode row.
    """

    def __init__(self, horizon: int = 16, discount: float = 0.99, mode: str = "official") -> None:
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"unknown ensembling mode {mode!r}; choose one of {ENSEMBLE_MODES}")
        if horizon < 1:
            raise ValueError(f"ensembling horizon must be >= 1, got {horizon}")
        self.horizon = horizon
        self.discount = discount
        self.mode = mode
        self._chunks: deque[torch.Tensor] = deque(maxlen=horizon)
        self.num_updates = 0  # chunks seen since reset (the official queue length; never truncated)

    def reset(self) -> None:
        """Forget every stored chunk (start of a new episode)."""
        self._chunks.clear()
        self.num_updates = 0

    def update(self, chunk: torch.Tensor) -> torch.Tensor:
        """Append `chunk` (B, T, A) and return the ensembled action (B, A) in the chunk's dtype."""
        if chunk.ndim != 3:
            raise ValueError(f"expected an action chunk (B, T, A), got shape {tuple(chunk.shape)}")
        if self._chunks and self._chunks[-1].shape != chunk.shape:
            raise ValueError(
                f"chunk shape changed from {tuple(self._chunks[-1].shape)} to {tuple(chunk.shape)} "
                "without reset(); reset the ensembler when the episode batch changes"
            )
        self._chunks.append(chunk)
        self.num_updates += 1
        num = len(self._chunks)
        weights, rows, idx = self._tables(num, chunk.shape[1], chunk.device)
        hist = torch.stack(tuple(self._chunks), dim=1)  # (B, H, T, A), oldest first
        selected = hist[:, rows, idx]  # (B, H, A)
        blended = (selected.to(torch.float64) * weights).sum(dim=1)
        return blended.to(chunk.dtype)

    def _tables(
        self, num: int, chunk_len: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights (1, H, 1) float64, chunk rows (H,), action indices (H,)) for H = num chunks, built once
        per history length and setting, shared by every ensembler (saves a dozen small ops per row and step;
        the tensors are only read)."""
        key = (num, chunk_len, str(device), self.discount, self.mode)
        tables = _TABLES.get(key)
        if tables is None:
            weights = ensemble_weights(num, self.discount).to(device)[None, :, None]
            rows = torch.arange(num, device=device)
            tables = (weights, rows, ensemble_indices(num, chunk_len, self.mode).to(device))
            _TABLES[key] = tables
        return tables
