"""Draw planned point tracks on camera frames (blue at the start of the plan → red at its end).

The agent decodes its planned latents at a grid of query points through the VAE and hands the tracks here;
this module is plain numpy so it can also run on saved tracks.
"""

from __future__ import annotations

import numpy as np

START_COLOR = np.array([0, 64, 255], dtype=np.float32)  # blue
END_COLOR = np.array([255, 32, 0], dtype=np.float32)  # red


def overlay_query_grid(side: int = 8, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
    """(side*side, 2) yx query points in [-1, 1], a regular grid over [lo, hi]² of the unit square
    (the official visualisation uses an 8×8 grid in [0.05, 0.95]²), row-major."""
    ticks = np.linspace(lo, hi, side) * 2.0 - 1.0
    yy, xx = np.meshgrid(ticks, ticks, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=-1).astype(np.float32)


def _to_pixels(yx: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised yx in [-1, 1] (−1 = top/left border) → float pixel centres (row, col)."""
    rows = (yx[..., 0] + 1.0) * 0.5 * height - 0.5
    cols = (yx[..., 1] + 1.0) * 0.5 * width - 0.5
    return np.stack([rows, cols], axis=-1)


def draw_tracks(image: np.ndarray, tracks_yx: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Return a copy of `image` (H, W, 3) uint8 with `tracks_yx` (N, T, 2) drawn as polylines whose
    colour goes from blue (t = 0) to red (t = T-1); the start point gets a blue dot."""
    out = image.copy()
    h, w = out.shape[:2]
    pix = _to_pixels(np.asarray(tracks_yx, dtype=np.float32), h, w)  # (N, T, 2)
    n_tracks, n_steps = pix.shape[:2]
    frac = np.linspace(0.0, 1.0, max(n_steps - 1, 1), dtype=np.float32)
    colors = (START_COLOR[None] * (1.0 - frac[:, None]) + END_COLOR[None] * frac[:, None]).astype(np.uint8)
    r = max(thickness - 1, 0)
    for i in range(n_tracks):
        for t in range(n_steps - 1):
            a, b = pix[i, t], pix[i, t + 1]
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                continue
            n = int(np.ceil(np.abs(b - a).max())) + 1
            pts = np.rint(a[None] + (b - a)[None] * np.linspace(0.0, 1.0, n)[:, None]).astype(np.int64)
            for dr in range(-r, r + 1):
                for dc in range(-r, r + 1):
                    rr, cc = pts[:, 0] + dr, pts[:, 1] + dc
                    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                    out[rr[ok], cc[ok]] = colors[t]
        start = np.rint(pix[i, 0]).astype(np.int64)
        if np.isfinite(pix[i, 0]).all() and 0 <= start[0] < h and 0 <= start[1] < w:
            out[start[0], start[1]] = START_COLOR.astype(np.uint8)
    return out


def draw_plan(views: list[np.ndarray], tracks_per_view: np.ndarray, thickness: int = 1) -> list[np.ndarray]:
    """Draw each view's tracks on that view: `views[v]` (H, W, 3), `tracks_per_view` (V, N, T, 2) yx."""
    return [draw_tracks(img, tr, thickness) for img, tr in zip(views, tracks_per_view, strict=True)]
