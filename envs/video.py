"""One mp4 per episode: the camera views side by side, a coloured border for the outcome, a telling file name.

Layout as in ZipMo's rollout videos (ZIPMO_REFERENCE.md §7.5: views side by side with a 2-px white separator,
green border on success); we add a red border on failure and grey for an `error` episode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

OUTCOME_COLOURS: dict[str, tuple[int, int, int]] = {
    "success": (0, 255, 0),
    "failure": (255, 0, 0),
    "error": (128, 128, 128),
}
SEPARATOR_PX = 2
BORDER_PX = 4
FPS = 20  # LIBERO control frequency (20 Hz); ZipMo writes its videos at 20 fps too


def video_name(suite: str, task_id: int, episode_index: int, seed: int, outcome: str) -> str:
    """e.g. `libero_spatial_task03_ep007_seed42_success.mp4`."""
    return f"{suite}_task{task_id:02d}_ep{episode_index:03d}_seed{seed}_{outcome}.mp4"


def compose_frame(views: Sequence[np.ndarray], outcome: str) -> np.ndarray:
    """Views (each (H, W, 3) uint8, equal H) side by side with a white separator, inside a coloured border.

    Returns (H + 2b, sum(W) + s*(V-1) + 2b, 3) uint8, padded by one black row/column if needed so that both
    sides are even (yuv420p needs it).
    """
    if outcome not in OUTCOME_COLOURS:
        raise ValueError(f"unknown outcome {outcome!r}; valid: {', '.join(OUTCOME_COLOURS)}")
    h = views[0].shape[0]
    if any(v.shape[0] != h or v.ndim != 3 or v.shape[2] != 3 for v in views):
        raise ValueError(f"views must be (H, W, 3) with equal H, got shapes {[v.shape for v in views]}")
    sep = np.full((h, SEPARATOR_PX, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, v in enumerate(views):
        if i:
            parts.append(sep)
        parts.append(np.asarray(v, dtype=np.uint8))
    row = np.concatenate(parts, axis=1)
    b = BORDER_PX
    out = np.empty((h + 2 * b + h % 2, row.shape[1] + 2 * b + row.shape[1] % 2, 3), dtype=np.uint8)
    out[:] = OUTCOME_COLOURS[outcome]
    out[b : b + h, b : b + row.shape[1]] = row
    return out


def write_episode_video(
    out_dir: str | os.PathLike,
    frames: Sequence[Sequence[np.ndarray]],
    *,
    suite: str,
    task_id: int,
    episode_index: int,
    seed: int,
    outcome: str,
    fps: int = FPS,
) -> Path:
    """Encode `frames` (per step, one (H, W, 3) uint8 image per camera) to an mp4 in `out_dir`; returns its path.

    Written to a temporary name and renamed, so a killed run never leaves a half-written video under the
    final name.
    """
    import imageio_ffmpeg

    if not frames:
        raise ValueError("no frames to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / video_name(suite, task_id, episode_index, seed, outcome)
    tmp = out_dir / f".{path.stem}.tmp.mp4"
    first = compose_frame(frames[0], outcome)
    h, w = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (w, h), fps=fps, codec="libx264", macro_block_size=1, quality=7, ffmpeg_log_level="error"
    )
    writer.send(None)  # start the encoder
    try:
        writer.send(np.ascontiguousarray(first))
        for views in frames[1:]:
            writer.send(np.ascontiguousarray(compose_frame(views, outcome)))
    finally:
        writer.close()
    os.replace(tmp, path)
    return path
