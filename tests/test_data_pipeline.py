"""The LIBERO data pipeline end to end on real envs: scripted collection from fresh placements with images and
training files in one pass (CLI, subprocess), the scene of the stored frames, exact resume after a kill,
preprocess by replay (CLI), state-replay rendering and fidelity, exact simulator tracks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.libero, pytest.mark.slow]

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
TASK = "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"
CAMERAS = ("agentview", "robot0_eye_in_hand")
KEYS = {"agentview": "agentview_rgb", "robot0_eye_in_hand": "eye_in_hand_rgb"}
# small track settings keep the test short; the same ones are passed to `preprocess`
TRACK_ARGS = ("--query-every", "64", "--grid", "10", "--random-queries", "16")


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """One scripted demo of libero_spatial task 0 from a fresh placement (seed 1: a fixture layout other than
    the one a new env gets with seed 0), images and training file in the same pass, via the CLI."""
    out = tmp_path_factory.mktemp("collect")
    args = ("collect", "--suite", "libero_spatial", "--tasks", "0", "--demos-per-task", "1", "--seed", "1",
            "--out", str(out / "raw"), "--pre", str(out / "pre"), "--no-text", *TRACK_ARGS)  # fmt: skip
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = out / "raw" / "libero_spatial" / f"{TASK}_demo.hdf5"
    assert path.is_file(), proc.stdout + proc.stderr[-2000:]
    return path, out / "pre" / "libero_spatial" / TASK, args


@pytest.fixture(scope="module")
def render_env():
    from zipmo_robot.data.replay import replay_env

    with replay_env("libero_spatial", 0, image_size=128) as env:
        yield env


def test_collect_writes_a_demo_with_images_and_its_training_file(collected):
    from zipmo_robot.envs.suites import load_init_states

    from zipmo_robot.data.hdf5 import read_demo, validate_file
    from zipmo_robot.data.preprocess import load_preprocessed

    path, pre, args = collected
    info = validate_file(path, require_images=True)
    assert info.language == TASK.replace("_", " ")
    assert info.env_args["env_kwargs"]["controller"] == "OSC_POSE"
    demo = read_demo(path, "demo_0")
    assert demo.attrs["source"] == "placement" and demo.attrs["init_state_id"] == -1
    assert 50 < demo.length < 600
    assert demo.dones[-1] == 1 and demo.dones[:-1].sum() == 0 and demo.rewards[-1] == 1
    assert np.abs(demo.actions).max() <= 1.0
    assert demo.obs["agentview_rgb"].shape == (demo.length, 128, 128, 3)
    assert demo.layout["body_pos"].shape[1] == 3 and demo.layout["body_quat"].shape[1] == 4
    fixed = load_init_states("libero_spatial", 0)  # the evaluation's: never a demo's start
    assert np.abs(fixed[:, 1:] - demo.states[0][1:]).max(axis=1).min() > 1e-3

    data = load_preprocessed(pre / "demo_0.hdf5")
    assert data["actions"].shape == (demo.length, 7)
    for cam in CAMERAS:  # the training file holds the same renders, flipped upright
        np.testing.assert_array_equal(data[KEYS[cam]], demo.obs[KEYS[cam]][:, ::-1])
        assert data["tracks"][cam].shape[0] == demo.length and data["visible"][cam].any()
    index = json.loads((pre / "task.json").read_text())
    assert index["demos"] == ["demo_0"] and index["language"] == TASK.replace("_", " ")
    ledger = (path.parent / ".parts" / TASK / "attempts.jsonl").read_text().splitlines()
    assert json.loads(ledger[-1])["demo"] == "demo_0"


def test_stored_frames_are_the_scene_the_demo_was_performed_in(collected, render_env):
    """A new env (other fixture layout) shows another scene at the same states; with the demo's stored layout
    the evaluation env's own camera observations equal the stored frames byte for byte."""
    from zipmo_robot.data.hdf5 import read_demo
    from zipmo_robot.data.replay import render_states, restore_layout

    demo = read_demo(collected[0], "demo_0")
    idx = np.array([0, demo.length // 2, demo.length - 1])
    sim = render_env.raw.env.sim
    own = {"body_pos": np.array(sim.model.body_pos), "body_quat": np.array(sim.model.body_quat)}
    try:
        other = render_states(render_env, demo.states[idx], ("agentview",))["agentview"]
        assert not np.array_equal(other, demo.obs["agentview_rgb"][idx])
        restore_layout(sim, demo.layout)
        frames = render_states(render_env, demo.states[idx], CAMERAS)
    finally:
        restore_layout(sim, own)
    for cam in CAMERAS:
        np.testing.assert_array_equal(frames[cam], demo.obs[KEYS[cam]][idx])


def test_preprocess_cli_reproduces_the_training_file_made_while_collecting(collected, tmp_path):
    """`preprocess` replays a file (here the demo's first 20 steps) in a new env, in the stored layout: the
    frames and the agentview tracks of the frame-0 queries equal those made in the collecting env."""
    from zipmo_robot.data.hdf5 import Demo, DemoWriter, read_demo, read_info
    from zipmo_robot.data.preprocess import load_preprocessed

    path, pre, _ = collected
    demo, info = read_demo(path, "demo_0"), read_info(path)
    n = 20
    obs = {k: v[:n] for k, v in demo.obs.items()}
    short = Demo(
        "", demo.actions[:n], demo.states[:n], demo.rewards[:n], demo.dones[:n], obs, {}, demo.layout
    )
    src = tmp_path / "src"
    with DemoWriter(src / path.name, info.problem_info, info.env_args, info.bddl_file_content) as writer:
        writer.add(short)
    (src / "broken_demo.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"truncated" * 50)
    dst = tmp_path / "pre"
    args = ("preprocess", "--src", str(src), "--dst", str(dst), "--no-text", *TRACK_ARGS)
    proc = _cli(*args)
    # the bad file is reported and skipped (exit 1 says the run was not clean); the good one is processed
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "skipped bad file" in proc.stdout and "broken_demo.hdf5" in proc.stdout
    assert '"ok": 1' in proc.stdout, proc.stdout
    replayed = load_preprocessed(dst / "libero_spatial" / TASK / "demo_0.hdf5")
    original = load_preprocessed(pre / "demo_0.hdf5")
    for cam in CAMERAS:
        np.testing.assert_array_equal(replayed[KEYS[cam]], original[KEYS[cam]][:n])
    # the first view's frame-0 queries are drawn first from the same seed in both runs
    first = original["query_frame"]["agentview"] == 0
    assert first.sum() == replayed["tracks"]["agentview"].shape[1] > 50
    np.testing.assert_array_equal(replayed["tracks"]["agentview"], original["tracks"]["agentview"][:n, first])
    np.testing.assert_array_equal(
        replayed["visible"]["agentview"], original["visible"]["agentview"][:n, first]
    )
    from zipmo_robot.data.windows import WindowDataset

    dataset = WindowDataset([pre / "demo_0.hdf5"], n_tracks=40)
    sample = dataset.get(0, np.random.default_rng(0))
    assert sample["tracks"].shape == (2, 40, 64, 2) and sample["actions"].shape == (16, 7)
    again = _cli(*args)  # idempotent: nothing to redo
    assert '"skipped": 1' in again.stdout, again.stdout + again.stderr[-2000:]


def _state_only(out, demos: int) -> list[str]:
    return ["collect", "--suite", "libero_spatial", "--tasks", "1", "--demos-per-task", str(demos), "--seed", "5",
            "--render", "none", "--max-steps", "400", "--out", str(out)]  # fmt: skip


def test_a_killed_collection_resumes_exactly(tmp_path):
    """SIGKILL after the first attempt is recorded, rerun the same command: the same demos as one run."""
    from zipmo_robot.data.hdf5 import iter_demos

    ref = _cli(*_state_only(tmp_path / "ref", 2))
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = _state_only(tmp_path / "run", 2)
    proc = subprocess.Popen([sys.executable, "-m", "zipmo_robot", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    parts = tmp_path / "run" / "libero_spatial" / ".parts"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        ledgers = list(parts.glob("*/attempts.jsonl"))
        if ledgers and ledgers[0].read_text().count("\n") >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    again = _cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    name = next((tmp_path / "ref" / "libero_spatial").glob("*_demo.hdf5")).name
    a = list(iter_demos(tmp_path / "ref" / "libero_spatial" / name))
    b = list(iter_demos(tmp_path / "run" / "libero_spatial" / name))
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.states, y.states)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.layout["body_pos"], y.layout["body_pos"])
    assert a[0].attrs["seed"] != a[1].attrs["seed"]


def test_replayed_actions_reach_success_and_states_match(collected):
    """The stored actions, re-executed from the stored first state (state-only env), succeed again."""
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig

    from zipmo_robot.data.hdf5 import read_demo
    from zipmo_robot.data.replay import fidelity, restore_layout

    demo = read_demo(collected[0], "demo_0", load_images=False)
    env = LiberoEnv(EnvConfig(suite="libero_spatial", task_id=0, render=False))
    try:
        env.reset(options={"init_state_id": 0})
        restore_layout(env.raw.env.sim, demo.layout)
        fid = fidelity(env, demo, ())
    finally:
        env.close()
    assert fid.action_replay_success and fid.action_replay_steps == demo.length
    assert fid.max_state_error < 1e-6


def test_render_by_state_replay_uses_the_stored_layout(collected, tmp_path):
    """`render_file` on a state-only copy (first 12 steps) gives back the stored raw-orientation frames."""
    from zipmo_robot.data.collect import render_file
    from zipmo_robot.data.hdf5 import Demo, DemoWriter, read_demo, read_info, validate_file

    demo = read_demo(collected[0], "demo_0")
    info = read_info(collected[0])
    short = Demo("", demo.actions[:12], demo.states[:12], demo.rewards[:12], demo.dones[:12],
                 {"joint_states": demo.obs["joint_states"][:12], "gripper_states": demo.obs["gripper_states"][:12]},
                 {}, demo.layout)  # fmt: skip
    src = tmp_path / collected[0].name
    with DemoWriter(src, info.problem_info, info.env_args, info.bddl_file_content) as writer:
        writer.add(short)
    assert render_file(src, src, image_size=128) == 1
    validate_file(src, require_images=True)
    back = read_demo(src, "demo_0")
    for cam in CAMERAS:
        np.testing.assert_array_equal(back.obs[KEYS[cam]], demo.obs[KEYS[cam]][:12])


def _sim_tracks(env, states, camera, query_frames=(0,), grid=12):
    from zipmo_robot.data.tracks import track_view

    return track_view(
        env,
        states,
        camera,
        size=128,
        orientation="flip_vertical",
        query_frames=query_frames,
        grid=grid,
        n_random=32,
        rng=np.random.default_rng(7),
    )


def test_tracks_return_the_query_pixel_at_the_query_frame(collected, render_env):
    from zipmo_robot.data.hdf5 import read_demo

    states = read_demo(collected[0], "demo_0", load_images=False).states[::10]
    for camera in CAMERAS:
        view = _sim_tracks(render_env, states, camera, query_frames=(0, 5))
        assert view.tracks.shape[0] == len(states) and view.tracks.shape[2] == 2
        assert view.tracks.shape[1] > 100
        for q in (0, 5):
            sel = view.query_frame == q
            err_px = np.abs(view.tracks[q, sel] - view.query_yx[sel]) * 128 / 2
            assert err_px.max() < 0.5, (camera, q, err_px.max())
            assert view.visible[q, sel].mean() > 0.95
        assert np.isfinite(view.tracks).all()
        # visible points are inside the image; invisible ones may project anywhere (off-screen, behind the camera)
        assert np.abs(view.tracks[view.visible]).max() <= 1.0


def test_object_tracks_land_on_the_object_in_the_last_frame(collected, render_env):
    """Points queried on the bowl at frame 0 project, at the last frame, onto pixels the segmentation render
    attributes to the bowl (the object moved across the image in between)."""
    from zipmo_robot.data.hdf5 import read_demo
    from zipmo_robot.data.replay import restore_layout
    from zipmo_robot.data.tracks import _set_state, from_normalised, render_bodies

    demo = read_demo(collected[0], "demo_0", load_images=False)
    states = demo.states[:: max(1, demo.length // 12)]
    states = np.concatenate([states, demo.states[-1:]])
    sim = render_env.raw.env.sim
    own = {"body_pos": np.array(sim.model.body_pos), "body_quat": np.array(sim.model.body_quat)}
    try:
        restore_layout(sim, demo.layout)
        view = _sim_tracks(render_env, states, "agentview", grid=32)
        _set_state(render_env, states[-1])
        bodies = render_bodies(sim, "agentview", 128, "flip_vertical")
    finally:
        restore_layout(sim, own)
    root = sim.model.body_rootid
    obj_roots = {name: root[b] for name, b in render_env.raw.env.obj_body_id.items()}
    motion = {}  # object -> image motion of its visible points (pixels)
    for name, r in obj_roots.items():
        sel = (root[view.body] == r) & view.visible[-1]
        if sel.sum() >= 5:
            motion[name] = np.abs(view.tracks[-1, sel] - view.tracks[0, sel]).max() * 64
    picked = max(motion, key=motion.get)  # the object the expert carried
    assert motion[picked] > 5, motion
    on_obj = (root[view.body] == obj_roots[picked]) & view.visible[-1]
    rows, cols = from_normalised(view.tracks[-1, on_obj], 128, 128)
    under = bodies[np.floor(rows).astype(int), np.floor(cols).astype(int)]
    hit = (under >= 0) & (root[np.maximum(under, 0)] == obj_roots[picked])
    assert hit.mean() > 0.9, (picked, hit.mean())


def test_static_points_stay_and_gripper_points_follow_the_end_effector(collected, render_env):
    from zipmo_robot.data.hdf5 import read_demo
    from zipmo_robot.data.tracks import _set_state, camera_at, to_normalised, world_to_pixel

    states = read_demo(collected[0], "demo_0", load_images=False).states[::8]
    view = _sim_tracks(render_env, states, "agentview", grid=32)
    sim = render_env.raw.env.sim
    model = sim.model
    static = model.body_weldid[view.body] == 0
    assert static.sum() > 20
    moved = np.abs(view.tracks[:, static] - view.tracks[0, static]).max() * 64
    assert moved < 1e-3, moved
    hand_bodies = {
        model.body_name2id(n)
        for n in ("gripper0_right_gripper", "robot0_right_hand", "gripper0_eef", "robot0_link7")
    }
    on_hand = np.isin(view.body, list(hand_bodies))
    assert on_hand.sum() > 0, "no query point landed on the hand body"
    site = model.site_name2id("gripper0_grip_site")
    eef = []
    for state in states:
        _set_state(render_env, state)
        cam = camera_at(sim, "agentview", 128, 128)
        r, c, _ = world_to_pixel(cam, np.array(sim.data.site_xpos[site])[None], "flip_vertical")
        eef.append(to_normalised(r, c, 128, 128)[0])
    eef = np.array(eef)
    eef_motion = (eef - eef[0]) * 64
    point_motion = (view.tracks[:, on_hand] - view.tracks[0, on_hand]) * 64
    assert np.abs(eef_motion).max() > 10  # the gripper really moves across the image
    # Rigid with the hand: the image motion matches the end effector's up to perspective (points sit a few cm
    # from the grip site, so their motion differs by a fraction of the total) and small wrist rotations.
    err = np.median(np.abs(point_motion - eef_motion[:, None]).max(axis=(0, 2)))
    assert err < 2.0 + 0.15 * np.abs(eef_motion).max(), (err, np.abs(eef_motion).max())
    assert view.visible[:, ~static].any()
