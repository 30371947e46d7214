"""Official-layout HDF5 writer/reader, validation errors, batch scanning, windows and splits (no LIBERO)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from zipmo_robot.data.hdf5 import (
    Demo,
    DemoFileError,
    DemoWriter,
    iter_demos,
    read_info,
    scan_files,
    validate_file,
)
from zipmo_robot.data.splits import split_demos
from zipmo_robot.data.windows import action_chunk, interpolate_time, pick_tracks, track_window


def _demo(t: int, rng: np.random.Generator, images: bool = True) -> Demo:
    obs = {
        "joint_states": rng.normal(size=(t, 7)),
        "gripper_states": rng.normal(size=(t, 2)),
        "ee_pos": rng.normal(size=(t, 3)),
        "ee_ori": rng.normal(size=(t, 3)),
        "ee_states": rng.normal(size=(t, 6)),
    }
    if images:
        obs["agentview_rgb"] = rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)
        obs["eye_in_hand_rgb"] = rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)
    rewards = np.zeros(t, np.uint8)
    rewards[-1] = 1
    return Demo(
        "",
        rng.uniform(-1, 1, (t, 7)),
        rng.normal(size=(t, 20)),
        rewards,
        rewards.copy(),
        obs,
        {"init_state_id": 3},
    )


def _write(path, demos):
    info = {"problem_name": "p", "domain_name": "d", "language_instruction": "pick up the bowl"}
    with DemoWriter(path, info, {"bddl_file": "x/libero_spatial/t.bddl"}, "(define)") as w:
        for d in demos:
            w.add(d)


def test_roundtrip_keeps_arrays_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    demos = [_demo(5, rng), _demo(7, rng)]
    path = tmp_path / "t_demo.hdf5"
    _write(path, demos)
    info = validate_file(path, require_images=True)
    assert info.demo_names == ["demo_0", "demo_1"]
    assert info.language == "pick up the bowl"
    back = list(iter_demos(path))
    for a, b in zip(demos, back):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.obs["agentview_rgb"], b.obs["agentview_rgb"])
        assert b.attrs["init_state_id"] == 3
    with h5py.File(path) as f:
        assert f["data"].attrs["num_demos"] == 2 and f["data"].attrs["total"] == 12


def test_natural_demo_order(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "t_demo.hdf5"
    _write(path, [_demo(2, rng, images=False) for _ in range(12)])
    assert read_info(path).demo_names[:3] == ["demo_0", "demo_1", "demo_2"]
    assert read_info(path).demo_names[-1] == "demo_11"


def test_errors_name_file_demo_and_key(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "bad_demo.hdf5"
    _write(path, [_demo(4, rng), _demo(4, rng)])
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/joint_states"]
        f["data/demo_1/obs/joint_states"] = np.zeros((4, 6))
    with pytest.raises(DemoFileError) as err:
        validate_file(path)
    msg = str(err.value)
    assert str(path) in msg and "demo_1" in msg and "obs/joint_states" in msg and "(4, 7)" in msg

    with h5py.File(path, "a") as f:
        del f["data/demo_0/actions"]
    with pytest.raises(DemoFileError, match=r"demo_0.*'actions'"):
        validate_file(path)


def test_missing_attribute_and_corrupt_file(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "noattr_demo.hdf5"
    _write(path, [_demo(3, rng)])
    with h5py.File(path, "a") as f:
        del f["data"].attrs["problem_info"]
    with pytest.raises(DemoFileError, match="problem_info"):
        read_info(path)
    corrupt = tmp_path / "corrupt_demo.hdf5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    with pytest.raises(DemoFileError, match="not a readable HDF5 file"):
        read_info(corrupt)


def test_scan_reports_bad_files_and_keeps_going(tmp_path):
    rng = np.random.default_rng(4)
    good = tmp_path / "a_demo.hdf5"
    _write(good, [_demo(3, rng)])
    bad = tmp_path / "b_demo.hdf5"
    bad.write_bytes(b"not hdf5")
    good2 = tmp_path / "c_demo.hdf5"
    _write(good2, [_demo(3, rng)])
    ok, failed = scan_files([good, bad, good2])
    assert [i.path for i in ok] == [good, good2]
    assert len(failed) == 1 and failed[0][0] == bad and "b_demo.hdf5" in failed[0][1]


def test_writer_leaves_no_file_when_interrupted(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "x_demo.hdf5"
    with pytest.raises(RuntimeError):
        with DemoWriter(path, {}, {}, "") as w:
            w.add(_demo(3, rng))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atm_split_and_bc_subset():
    names = [f"demo_{i}" for i in range(50)]
    split = split_demos(list(reversed(names)))
    assert split.train == tuple(names[:45]) and split.val == tuple(names[45:])
    assert split.bc == tuple(names[:10])
    with pytest.raises(ValueError, match="bc_demos=46"):
        split_demos(names, bc_demos=46)


def test_windows_interpolate_16_frames_to_64_samples():
    t, n = 40, 5
    frames = np.arange(t, dtype=np.float32)
    tracks = np.stack(
        [np.broadcast_to(frames[:, None], (t, n)), -np.broadcast_to(frames[:, None], (t, n))], -1
    )
    visible = np.ones((t, n), bool)
    visible[10, 2] = False
    window, vis = track_window(tracks, visible, start=10)
    assert window.shape == (n, 64, 2)
    np.testing.assert_allclose(window[0, :, 0], np.linspace(10, 25, 64), atol=1e-5)
    assert not vis[2] and vis.sum() == n - 1
    # past the end the last frame repeats
    end, _ = track_window(tracks, visible, start=35)
    assert end[0, -1, 0] == 39 and end[0, 0, 0] == 35
    chunk = action_chunk(np.arange(40 * 7, dtype=np.float32).reshape(40, 7), 30)
    assert chunk.shape == (16, 7) and (chunk[-1] == chunk[9]).all()
    assert interpolate_time(np.array([[1.0]]), 4).shape == (4, 1)
    picked = pick_tracks(vis, 3, np.random.default_rng(0))
    assert picked is not None and len(set(picked.tolist())) == 3 and 2 not in picked
    assert pick_tracks(vis, n, np.random.default_rng(0)) is None


def test_moving_tracks_are_drawn_at_the_asked_share():
    from zipmo_robot.data.windows import pick_moving_tracks

    # 100 visible tracks over 8 samples: tracks 0-9 move 5 px (in y), the rest stay; track 99 is hidden
    window = np.zeros((100, 8, 2), np.float32)
    window[:10, :, 0] = np.linspace(0, 5 / 64, 8)
    vis = np.ones(100, bool)
    vis[99] = False
    rng = np.random.default_rng(0)
    for _ in range(5):
        picked = pick_moving_tracks(window, vis, 16, 0.5, 2.0, rng)
        assert len(set(picked.tolist())) == 16 and 99 not in picked
        assert (picked < 10).sum() >= 8  # half the draw is movers (plus any the uniform half hits)
    # fewer movers than asked: all of them, the rest uniform
    picked = pick_moving_tracks(window, vis, 40, 0.5, 2.0, rng)
    assert (picked < 10).sum() == 10 and len(set(picked.tolist())) == 40
    assert (pick_moving_tracks(window, vis, 16, 0.5, 6.0, rng) < 10).sum() < 8  # nothing moves > 6 px
    assert pick_moving_tracks(window, vis, 100, 0.5, 2.0, rng) is None  # 99 visible


def test_ledger_ignores_a_line_cut_by_a_kill_and_the_table_counts_attempts(tmp_path):
    from zipmo_robot.bench.data import collection_table
    from zipmo_robot.data.collect import read_ledger

    ledger = tmp_path / "libero_spatial" / ".parts" / "some_task" / "attempts.jsonl"
    ledger.parent.mkdir(parents=True)
    rows = [
        '{"attempt": 0, "seed": 0, "steps": 150, "demo": "demo_0", "success": true, "seconds": 60.0}',
        '{"attempt": 1, "seed": 1, "steps": 600, "success": false, "seconds": 12.5}',
        '{"attempt": 2, "seed": 2, "steps": 170, "demo": "demo_1", "success": true, "seconds": 70.0}',
        '{"attempt": 3, "seed": 3, "st',  # killed mid-write: that attempt is redone
    ]
    ledger.write_text("\n".join(rows))
    assert [r["attempt"] for r in read_ledger(ledger)] == [0, 1, 2]
    (row,) = collection_table(tmp_path)
    assert row["suite"] == "libero_spatial" and row["task"] == "some_task"
    assert (row["kept"], row["attempts"], row["mean_length"], row["seconds"]) == (2, 3, 160.0, 142.5)
