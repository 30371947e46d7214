"""Rotary position embeddings and position grids (ZIPMO_REFERENCE.md §1.5).

The rotary frequency tables are `nn.Parameter`s that the official models trained, so a loaded checkpoint's
values are always used; the log-spaced init below only matters when training from scratch.
Positions are `(t, y, x)` triples (3D), `(y, x)` pairs (2D) or one index (1D), in [-1, 1] except 1D.
"""

from __future__ import annotations

import math
from functools import reduce

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------------------
# Position helpers


def centers(start: float, stop: float, num: int, dtype=None, device=None) -> torch.Tensor:
    """Midpoints of `num` equal bins of `[start, stop]`: `(num,)`. `centers(-1, 1, 1) == [0.]`."""
    edges = torch.linspace(start, stop, num + 1, dtype=dtype, device=device)
    return (edges[:-1] + edges[1:]) / 2


def make_axial_pos_2d(h: int, w: int, dtype=None, device=None) -> torch.Tensor:
    """Cell centres of an `h x w` grid, row-major: `(h*w, 2)` as (y, x).

    The box is `[-1, 1]` on the longer side and `[-short/long, short/long]` on the shorter one (§0.F), so
    cells stay square.
    """
    if w > h:
        r = h / w
        y_pos, x_pos = centers(-r, r, h, dtype, device), centers(-1.0, 1.0, w, dtype, device)
    elif h > w:
        r = w / h
        y_pos, x_pos = centers(-1.0, 1.0, h, dtype, device), centers(-r, r, w, dtype, device)
    else:
        y_pos, x_pos = centers(-1.0, 1.0, h, dtype, device), centers(-1.0, 1.0, w, dtype, device)
    grid = torch.stack(torch.meshgrid(y_pos, x_pos, indexing="ij"), dim=-1)  # (h, w, 2)
    return grid.reshape(h * w, 2)


# ----------------------------------------------------------------------------------------------------------
# Kernel


def apply_rotary_emb(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate the first `2*d` channels of `x` by the angles `theta` (split-half pairing, not interleaved).

    x: (..., L, d_head); theta: (..., L, d) broadcastable. Channel i pairs with channel d+i; channels
    `2d:` pass through. Computes in fp32 (or wider), casts the rotated halves back to `x.dtype`.
    """
    return apply_rotary(x, *rotary_tables(theta, x.dtype))


def rotary_tables(theta: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`(cos, sin)` of the angles theta (..., L, d) in the rotation dtype (fp32 or wider), for inputs of
    `dtype`. They depend only on the positions and the frequencies, so a caller can build them once per
    sampling call and reuse them in every Euler step (the layout of theta is kept)."""
    theta = theta.to(reduce(torch.promote_types, (dtype, theta.dtype, torch.float32)))
    return torch.cos(theta), torch.sin(theta)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary_emb` with precomputed `rotary_tables`: x (..., L, d_head), tables (..., L, d)."""
    d = cos.shape[-1]
    if 2 * d > x.shape[-1]:
        raise ValueError(f"rotary angles cover {2 * d} channels but the head has only {x.shape[-1]}")
    x1, x2, x3 = x[..., :d].to(cos.dtype), x[..., d : 2 * d].to(cos.dtype), x[..., 2 * d :]
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    return torch.cat((y1.to(x.dtype), y2.to(x.dtype), x3), dim=-1)


def _log_spaced_freqs(min_theta: float, max_theta: float, n_heads: int, m: int) -> torch.Tensor:
    """`[n_heads, m]` log-spaced frequencies, heads interleaved: `freq[h, j] = f[j * n_heads + h]`."""
    start = math.log(min_theta) if min_theta > 0 else 0.0
    f = torch.exp(torch.linspace(start, math.log(max_theta), n_heads * m + 1)[:-1])
    return f.view(m, n_heads).T.contiguous()


# ----------------------------------------------------------------------------------------------------------
# Modules (the frequency tables are named as in the official state dicts)


class AxialRoPE3D(nn.Module):
    """3D rotary angles for (t, y, x): `d_head/8` frequencies per axis and head, `3*d_head/8` rotated pairs.

    Keys `t_freqs [n_heads, m]`, `yx_freqs [2, n_heads, m]`. Frequencies are cast to `pos.dtype` before the
    product, so under bf16 autocast the angles are bf16 (quirk Q9).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        yx_min_theta: float = 0.0,
        yx_max_theta: float = 40 * math.pi,
        t_min_theta: float = 0.0,
        t_max_theta: float = 10 * math.pi,
    ):
        super().__init__()
        m = dim // 8
        yx = _log_spaced_freqs(yx_min_theta, yx_max_theta, n_heads, m)
        self.yx_freqs = nn.Parameter(torch.stack([yx, yx.clone()]))
        self.t_freqs = nn.Parameter(_log_spaced_freqs(t_min_theta, t_max_theta, n_heads, m))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """pos: (..., 3) (t, y, x) -> angles (..., n_heads, 3m) ordered [t | y | x]."""
        theta_t = pos[..., None, 0:1] * self.t_freqs.to(pos.dtype)
        theta_y = pos[..., None, 1:2] * self.yx_freqs[0].to(pos.dtype)
        theta_x = pos[..., None, 2:3] * self.yx_freqs[1].to(pos.dtype)
        return torch.cat((theta_t, theta_y, theta_x), dim=-1)


class AxialRoPE2D(nn.Module):
    """2D rotary angles for (y, x): key `freqs [2, n_heads, d_head/8]`."""

    def __init__(self, dim: int, n_heads: int, yx_max_theta: float = 40 * math.pi):
        super().__init__()
        f = _log_spaced_freqs(0.0, yx_max_theta, n_heads, dim // 8)
        self.freqs = nn.Parameter(torch.stack([f, f.clone()]))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """pos: (..., 2) (y, x) -> angles (..., n_heads, 2m) ordered [y | x]."""
        freqs = self.freqs.to(pos.dtype)
        return torch.cat((pos[..., None, 0:1] * freqs[0], pos[..., None, 1:2] * freqs[1]), dim=-1)


class AxialRoPE1D(nn.Module):
    """1D rotary angles (text-encoder token index): key `freqs [1, n_heads, d_head/4]`, log-spaced in
    `[1/theta, 1)`; a frozen but persistent parameter, as in the official code."""

    def __init__(self, dim: int, n_heads: int, theta: float = 1000.0, learnable_freqs: bool = False):
        super().__init__()
        m = dim // 4
        f = torch.exp(torch.linspace(math.log(1.0 / theta), math.log(1.0), n_heads * m + 1)[:-1])
        self.freqs = nn.Parameter(f.view(1, m, n_heads).mT.contiguous(), requires_grad=learnable_freqs)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """pos: (..., 1) -> angles (..., n_heads, m)."""
        return pos[..., None, 0:1] * self.freqs[0].to(pos.dtype)


ROPE_MODES = ("3d_40", "3d_10", "2d", "1d", "none")


def make_rope(mode: str, d_head: int, n_heads: int) -> nn.Module | None:
    """Build the rotary module for a rope mode name used by the official layers; `"none"` gives None.

    `"3d_10"` uses `10.0 * 3.14` (not 10π) for y/x, as the official code does (quirk Q8).
    """
    if mode == "3d_40":
        return AxialRoPE3D(d_head, n_heads)
    if mode == "3d_10":
        return AxialRoPE3D(d_head, n_heads, yx_max_theta=10.0 * 3.14)
    if mode == "2d":
        return AxialRoPE2D(d_head, n_heads)
    if mode == "1d":
        return AxialRoPE1D(d_head, n_heads)
    if mode == "none":
        return None
    raise ValueError(f"unknown rope mode {mode!r}; expected one of {ROPE_MODES}")
