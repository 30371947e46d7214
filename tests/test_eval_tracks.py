"""`zipmo-robot eval-tracks`: the WHN / ZipMo Table E metrics against hand-computed values, the non-static
track selection, and the command on a real preprocessed-layout file with a tiny random planner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from zipmo_robot.eval import tracks


def test_metrics_match_hand_computed_values() -> None:
    gt = np.zeros((1, 2, 2))  # one track, two steps, (y, x)
    pred = np.stack([np.full((1, 2, 2), 1.0), np.full((1, 2, 2), 3.0), np.full((1, 2, 2), -1.0)])
    m = tracks.window_metrics(pred, gt)
    # per-sample MSE over tracks, steps and both coordinates: 1, 9, 1; mean track = 1 -> MeanT 1
    assert m == {"single": 1.0, "min": 1.0, "mean": pytest.approx(11 / 3), "mean_t": 1.0, "static": 0.0}
    moving = np.array([[[0.0, 0.0], [2.0, 0.0]]])  # a track moving 2 px in y: static error (0 + 4) / 4
    assert tracks.window_metrics(moving[None], moving)["static"] == 1.0
    assert tracks.window_metrics(gt[None], gt) == dict.fromkeys(tracks.METRICS, 0.0)
    assert np.allclose(tracks.to_pixels(np.array([-1.0, 0.0, 1.0])), [0.0, 64.0, 128.0])


def test_only_moving_visible_tracks_are_selected() -> None:
    T = 16
    still = np.zeros((T, 1, 2)) + 50.0
    # sample variance of 0..6 in 16 steps: 0.4² · 16 · 17 / 12 = 3.63
    slow = np.stack([np.linspace(0, 6, T), np.zeros(T)], -1)[:, None]
    fast = np.stack([np.linspace(0, 20, T), np.linspace(0, 20, T)], -1)[:, None]  # 2 x 40.3 (step 4/3)
    hidden = fast.copy()
    window = np.concatenate([still, slow, fast, hidden], axis=1)
    visible = np.array([True, True, True, False])
    assert tracks.moving_tracks(window, visible, 10.0).tolist() == [2]
    assert tracks.moving_tracks(window, visible, 3.6).tolist() == [1, 2]
    assert tracks.moving_tracks(window, visible, 3.7).tolist() == [2]


def _demo_file(path: Path, T: int = 40, N: int = 48) -> None:
    """A file in the `zipmo-robot preprocess` layout: half the tracks move, half stay."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["actions"] = np.zeros((T, 7), np.float32)
        f["joint_states"] = np.zeros((T, 7))
        f["gripper_states"] = np.zeros((T, 2))
        for key in ("agentview_rgb", "eye_in_hand_rgb"):
            f[key] = rng.integers(0, 255, (T, 128, 128, 3), np.uint8)
        for cam in tracks.CAMERAS:
            start = rng.uniform(-0.8, 0.8, (1, N, 2))
            speed = np.where(np.arange(N) < N // 2, 0.02, 0.0)[None, :, None]
            f[f"tracks/{cam}"] = (start + speed * np.arange(T)[:, None, None]).astype(np.float32)
            f[f"visible/{cam}"] = np.ones((T, N), bool)
            f[f"query_frame/{cam}"] = np.zeros(N, np.int64)
        f.attrs.update(language="put the bowl on the plate", suite="libero_10", demo="demo_0", task_id=0)


def test_eval_tracks_command_on_a_preprocessed_file(tmp_path: Path) -> None:
    demo = tmp_path / "pre" / "libero_10" / "task" / "demo_0.hdf5"
    _demo_file(demo)
    s = tracks.TrackEvalSettings(n_tracks=8)
    (w0, w1) = tracks.demo_windows(demo, s, np.random.default_rng(0))  # starts 0 and 16 of 40 frames
    assert (w0.start, w1.start) == (0, 16)
    for cam in tracks.CAMERAS:  # only the moving half (indices < 24), 8 of them
        assert len(w0.picked[cam]) == 8 and (w0.picked[cam] < 24).all()
        assert w0.gt_px[cam].shape == (8, 16, 2)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "eval-tracks", str(tmp_path / "pre"), "--split", "all",
         "--k", "2", "--nfe", "1", "--n-tracks", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "tracks_metrics.json").read_text())
    assert set(result["table"]) == {"libero_10/agentview", "libero_10/robot0_eye_in_hand"}
    for row in result["table"].values():
        assert row["windows"] == 2
        assert row["min"] <= row["mean"] and row["min"] <= row["single"]  # best of k
        assert row["mean_t"] <= row["mean"] + 1e-9  # Jensen: error of the mean <= mean error
    assert "| libero_10 | Side | 2 |" in proc.stdout and "10.73 / 7.43 / 9.05" in proc.stdout
