"""Training windows cut at load time from full-episode preprocessed demos.

ZipMo (supplement A) trains the VAE and planner on 16 future frames interpolated linearly in time to 64
samples; the paper leaves the interpolation open, so it is linear with both end frames kept
(sample s of 64 sits at frame start + s * 15/63). Action chunks are the next 16 actions. Windows that run
past the episode end repeat the last frame / last action (the scene is at rest after success).
"""

from __future__ import annotations

import numpy as np

FUTURE_FRAMES = 16
TRACK_SAMPLES = 64
ACTION_HORIZON = 16
TRACK_PICKS = ("random", "grid")  # `WindowDataset(pick=...)`, `data.track_pick`


def frame_indices(start: int, length: int, n_frames: int = FUTURE_FRAMES) -> np.ndarray:
    """Frames start .. start + n_frames - 1, clipped to the episode (length T)."""
    return np.minimum(np.arange(start, start + n_frames), length - 1)


def interpolate_time(x: np.ndarray, n_out: int) -> np.ndarray:
    """Linear interpolation along axis 0 from T to `n_out` samples, end points kept: (T, ...) -> (n_out, ...)."""
    t = x.shape[0]
    if t == 1:
        return np.repeat(x, n_out, axis=0)
    pos = np.linspace(0.0, t - 1, n_out)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, t - 1)
    w = (pos - lo).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x[lo] * (1.0 - w) + x[hi] * w).astype(x.dtype, copy=False)


def track_window(
    tracks: np.ndarray,
    visible: np.ndarray,
    start: int,
    n_frames: int = FUTURE_FRAMES,
    n_samples: int = TRACK_SAMPLES,
) -> tuple[np.ndarray, np.ndarray]:
    """One view's window: tracks (T, N, 2) yx -> (N, n_samples, 2) (the VAE's (N, T, 2) layout) and the
    visibility at the window start (N,) bool."""
    idx = frame_indices(start, tracks.shape[0], n_frames)
    window = interpolate_time(tracks[idx].astype(np.float32), n_samples)
    return np.ascontiguousarray(window.transpose(1, 0, 2)), visible[idx[0]].astype(bool)


def pick_tracks(visible_at_start: np.ndarray, n_tracks: int, rng: np.random.Generator) -> np.ndarray | None:
    """Indices of `n_tracks` distinct tracks visible at the window start, random order; None if too few."""
    candidates = np.flatnonzero(visible_at_start)
    if len(candidates) < n_tracks:
        return None
    return rng.permutation(candidates)[:n_tracks]


def pick_moving_tracks(
    window: np.ndarray,
    visible_at_start: np.ndarray,
    n_tracks: int,
    fraction: float,
    threshold_px: float,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """Like `pick_tracks`, but about `fraction` of the tracks are moving ones (largest displacement from the
    start point over the window `(N, T, 2)` yx in [-1, 1] above `threshold_px` pixels of a 128² frame), the rest
    drawn from all visible tracks; the result is shuffled so the encoded and held-out halves both get movers.
    In a LIBERO agentview window ~6 % of the tracks move more than 2 px, so a uniform draw of 16 tracks gives
    the VAE about one moving track to encode."""
    candidates = np.flatnonzero(visible_at_start)
    if len(candidates) < n_tracks:
        return None
    disp = np.abs(window[candidates] - window[candidates, :1]).max(axis=(1, 2)) * 64.0
    movers = candidates[disp > threshold_px]
    k = min(len(movers), int(round(fraction * n_tracks)))
    first = rng.permutation(movers)[:k]
    rest = rng.permutation(np.setdiff1d(candidates, first, assume_unique=True))[: n_tracks - k]
    return rng.permutation(np.concatenate([first, rest]))


def pick_grid_tracks(
    visible_at_start: np.ndarray, query_frame: np.ndarray, n_tracks: int
) -> np.ndarray | None:
    """A deterministic, spatially even draw: `n_tracks` of the visible tracks of the latest query grid (the
    16x16 grid re-queried every 16 frames, row-major), evenly spaced in grid order, ordered so that each half
    (the VAE's encoded and held-out halves) is itself evenly spread; all visible tracks when that grid has too
    few. None if fewer than `n_tracks` are visible.

    A random draw makes the VAE latent of a window depend on which tracks were drawn about half as much as on
    the window itself (`benchmarks/planner_conditioning.py --targets`); as the planner's targets that draw is
    noise no observation explains, and a small planner trained on a CPU budget learns the unconditional
    spread of latents and ignores frames and sentence. With this pick the target is a function of the window."""
    candidates = np.flatnonzero(visible_at_start)
    if len(candidates) < n_tracks:
        return None
    queried = query_frame[candidates]
    latest = candidates[queried == queried.max()]
    pool = latest if len(latest) >= n_tracks else candidates
    picked = pool[np.round(np.linspace(0, len(pool) - 1, n_tracks)).astype(np.int64)]
    return np.concatenate([picked[0::2], picked[1::2]])


def action_chunk(actions: np.ndarray, start: int, horizon: int = ACTION_HORIZON) -> np.ndarray:
    """Actions start .. start + horizon - 1 (T, 7) -> (horizon, 7), the last action repeated past the end."""
    return actions[frame_indices(start, actions.shape[0], horizon)]


class WindowDataset:
    """Training samples cut at load time from preprocessed demo files (`zipmo-robot preprocess` output).

    Sample i is (demo, start frame); `get(i, rng)` returns numpy arrays:
    "start_frames" (V, H, W, 3) uint8 at `start`; "tracks" (V, n_tracks, 64, 2) yx in [-1, 1] (16 future
    frames interpolated to 64 samples) of tracks visible at `start`; "actions" (16, 7);
    "joint_states" (7,), "gripper_states" (2,) at `start`; "start_t" (); "task_emb" (768,) when stored.
    Starts whose views lack `n_tracks` visible tracks are left out.

    Args:
        files: preprocessed demo files (e.g. the `train` demos of each task's `task.json`).
        cameras: view order (view 0 = agentview).
        n_tracks: tracks per view and sample (80 = the VAE's 40 encoded + 40 held out).
        stride: keep window starts 0, stride, 2*stride, ... of each demo (1: every frame); behavioural cloning
            on a CPU uses 2-4 so the plan cache (one planner sample per start) stays affordable.
        moving_fraction / moving_threshold_px: draw about this fraction of each view's tracks from those
            moving more than the threshold (`pick_moving_tracks`); 0 (default, the release) draws uniformly.
        pick: "random" (default, the release: a fresh draw per sample, `moving_fraction` applies) or "grid"
            (`pick_grid_tracks`: the same evenly spread tracks of a window every time, `rng` unused).
    """

    def __init__(
        self,
        files: list,
        cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
        n_tracks: int = 80,
        stride: int = 1,
        moving_fraction: float = 0.0,
        moving_threshold_px: float = 2.0,
        pick: str = "random",
    ):
        from zipmo_robot.data.preprocess import load_preprocessed

        if pick not in TRACK_PICKS:
            raise ValueError(f"pick={pick!r}: expected one of {TRACK_PICKS}")
        self.cameras, self.n_tracks, self.pick = cameras, n_tracks, pick
        self.moving_fraction, self.moving_threshold_px = moving_fraction, moving_threshold_px
        self.demos = [load_preprocessed(f) for f in files]
        self.index: list[tuple[int, int]] = []
        for d, demo in enumerate(self.demos):
            for start in range(0, demo["actions"].shape[0], stride):
                if all(self._candidates(demo, c, start).sum() >= n_tracks for c in cameras):
                    self.index.append((d, start))

    def _candidates(self, demo: dict, cam: str, start: int) -> np.ndarray:
        """(N,) bool: the tracks a sample at `start` may draw: visible then (and, for the grid pick, already
        queried: a track's visibility is stored for every frame, also before its query frame)."""
        vis = demo["visible"][cam][start].astype(bool)
        return vis & (demo["query_frame"][cam] <= start) if self.pick == "grid" else vis

    def __len__(self) -> int:
        return len(self.index)

    def get(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        d, start = self.index[i]
        demo = self.demos[d]
        keys = {"agentview": "agentview_rgb", "robot0_eye_in_hand": "eye_in_hand_rgb"}
        tracks = []
        for cam in self.cameras:
            window, vis = track_window(demo["tracks"][cam], demo["visible"][cam], start)
            if self.pick == "grid":
                picked = pick_grid_tracks(
                    self._candidates(demo, cam, start), demo["query_frame"][cam], self.n_tracks
                )
            elif self.moving_fraction > 0:
                picked = pick_moving_tracks(
                    window, vis, self.n_tracks, self.moving_fraction, self.moving_threshold_px, rng
                )
            else:
                picked = pick_tracks(vis, self.n_tracks, rng)
            tracks.append(window[picked])
        sample = {
            "start_frames": np.stack([demo[keys[c]][start] for c in self.cameras]),
            "tracks": np.stack(tracks).astype(np.float32),
            "actions": action_chunk(demo["actions"], start),
            "joint_states": demo["joint_states"][start],
            "gripper_states": demo["gripper_states"][start],
            "start_t": np.array(start, dtype=np.int64),
        }
        if "task_emb" in demo:
            sample["task_emb"] = demo["task_emb"]
        return sample
