"""Collect scripted-expert demonstrations in the official LIBERO HDF5 layout.

Per task: episodes start from LIBERO's 50 fixed init states in order, then (when more successes are needed)
from fresh placements sampled by LIBERO's own placement initializer (`reset()` without `set_init_state`).
Only successful episodes are kept. Collection runs state-only (no cameras, ~10x faster); images are added
afterwards by state replay (`render_file`), in raw orientation as the official files store them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zipmo_robot.data.hdf5 import Demo, DemoWriter, iter_demos, read_info

N_FIXED_INIT_STATES = 50


def demo_file_name(task_name: str) -> str:
    """Official file naming: `<task name>_demo.hdf5`."""
    return f"{task_name}_demo.hdf5"


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """xyzw quaternion(s) (..., 4) -> axis-angle (..., 3) (robosuite `quat2axisangle` convention)."""
    q = np.asarray(quat, dtype=np.float64)
    w = np.clip(q[..., 3], -1.0, 1.0)
    den = np.sqrt(np.maximum(1.0 - w * w, 0.0))
    angle = 2.0 * np.arccos(w)
    scale = np.where(den > 1e-8, angle / np.where(den > 1e-8, den, 1.0), 0.0)
    return q[..., :3] * scale[..., None]


def proprio_from_raw(raw_obs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The official per-step low-dim observations from a robosuite observation dict."""
    quat = np.asarray(raw_obs["robot0_eef_quat"], dtype=np.float64)
    pos = np.asarray(raw_obs["robot0_eef_pos"], dtype=np.float64)
    ori = quat_to_axis_angle(quat)
    return {
        "joint_states": np.asarray(raw_obs["robot0_joint_pos"], dtype=np.float64),
        "gripper_states": np.asarray(raw_obs["robot0_gripper_qpos"], dtype=np.float64),
        "ee_pos": pos,
        "ee_ori": ori,
        "ee_states": np.concatenate([pos, ori]),
        "_ee_quat": quat,
    }


@dataclass
class EpisodeOutcome:
    """One expert attempt: success, length, and the recorded demo (None when it failed)."""

    success: bool
    steps: int
    source: str  # "init_state" or "placement"
    init_state_id: int
    demo: Demo | None


def run_expert_episode(
    env: Any, source: str, index: int, seed: int, max_steps: int, keep: bool = True
) -> EpisodeOutcome:
    """Run the expert once on a state-only `LiberoEnv`; records states, actions and proprio per step.

    `source="init_state"`: start from fixed init state `index`; `"placement"`: a fresh LIBERO placement
    (LIBERO's sampler draws from numpy's global generator, seeded here with `seed` for reproducibility).
    """
    from zipmo_robot.data.expert import PickPlaceExpert
    from zipmo_robot.envs.libero import settle

    raw = env.raw
    if source == "init_state":
        env.reset(seed=seed, options={"init_state_id": index})
        raw_obs = env._last_raw_obs
    else:
        np.random.seed(seed % (2**32))  # LIBERO's placement initializer uses the global numpy generator
        raw.reset()
        raw_obs = raw.env._get_observations(force_update=True)
        raw_obs = settle(raw, env.settle_action, env.cfg.settle_steps, raw_obs)
    rng = np.random.default_rng(seed)
    expert = PickPlaceExpert.for_env(raw.env, rng=rng)
    states, actions, proprio = [], [], []
    success = False
    steps = 0
    while steps < max_steps:
        steps += 1
        states.append(np.array(raw.get_sim_state(), dtype=np.float64))
        proprio.append(proprio_from_raw(raw_obs))
        action = np.clip(expert.act(raw.env), -1.0, 1.0)
        actions.append(action)
        raw_obs, _, _, _ = raw.step(action)
        if raw.check_success():
            success = True
            break
    demo = None
    if success and keep:
        t = len(actions)
        rewards = np.zeros(t, dtype=np.uint8)
        rewards[-1] = 1
        obs = {k: np.stack([p[k] for p in proprio]) for k in proprio[0] if not k.startswith("_")}
        attrs = {
            "source": source,
            "init_state_id": index if source == "init_state" else -1,
            "seed": seed,
            "init_state": states[0],
            "_ee_quat": np.stack([p["_ee_quat"] for p in proprio]),
        }
        demo = Demo("", np.stack(actions), np.stack(states), rewards, rewards.copy(), obs, attrs)
    return EpisodeOutcome(success, steps, source, index if source == "init_state" else -1, demo)


def file_metadata(env: Any, image_size: int = 128) -> tuple[dict, dict, str, str]:
    """(problem_info, env_args, bddl content, bddl path) for a task, as the official files carry them."""
    raw = env.raw
    bddl = str(env.task.bddl_path)
    problem_info = {
        "problem_name": raw.problem_name,
        "domain_name": raw.domain_name,
        "language_instruction": env.task.language,
    }
    env_args = {
        "type": 1,
        "env_name": raw.problem_name,
        "problem_name": raw.problem_name,
        "bddl_file": bddl,
        "env_kwargs": {
            "bddl_file_name": bddl,
            "robots": ["Panda"],
            "controller": "OSC_POSE",
            "camera_names": ["agentview", "robot0_eye_in_hand"],
            "camera_heights": image_size,
            "camera_widths": image_size,
            "control_freq": 20,
        },
    }
    return problem_info, env_args, Path(bddl).read_text(), bddl


def collect_task(
    suite: str,
    task_id: int,
    n_demos: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    max_steps: int = 600,
    max_attempts: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Collect `n_demos` successful expert demos of one task into `<out_dir>/<task>_demo.hdf5` (state-only).

    Idempotent: an existing file with at least `n_demos` demos is kept as is. Returns statistics
    (attempts and successes per source, seconds, steps) which are also written beside it as JSON.
    """
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig
    from zipmo_robot.envs.suites import get_task

    task = get_task(suite, task_id)
    out = Path(out_dir) / demo_file_name(task.name)
    stats_path = out.with_suffix(".stats.json")
    if out.exists():
        with contextlib.suppress(Exception):
            if len(read_info(out).demo_names) >= n_demos:
                return json.loads(stats_path.read_text()) if stats_path.exists() else {"skipped": True}
    max_attempts = max_attempts if max_attempts is not None else max(4 * n_demos, N_FIXED_INIT_STATES)
    t0 = time.perf_counter()
    env = LiberoEnv(EnvConfig(suite=suite, task_id=task_id, render=False, max_steps=max_steps))
    stats: dict[str, Any] = {
        "suite": suite,
        "task_id": task_id,
        "task": task.name,
        "attempts": {"init_state": 0, "placement": 0},
        "successes": {"init_state": 0, "placement": 0},
        "failed_init_state_ids": [],
        "steps": 0,
        "kept_lengths": [],
    }
    try:
        problem_info, env_args, bddl_text, bddl_name = file_metadata(env)
        with DemoWriter(out, problem_info, env_args, bddl_text, bddl_name) as writer:
            attempt = 0
            while writer.count < n_demos and attempt < max_attempts:
                if attempt < N_FIXED_INIT_STATES:
                    source, index = "init_state", attempt
                else:
                    source, index = "placement", attempt - N_FIXED_INIT_STATES
                episode_seed = seed + 100_000 * task_id + attempt
                outcome = run_expert_episode(env, source, index, episode_seed, max_steps)
                stats["attempts"][source] += 1
                stats["steps"] += outcome.steps
                if outcome.success:
                    stats["successes"][source] += 1
                    stats["kept_lengths"].append(outcome.steps)
                    writer.add(outcome.demo)
                    if progress is not None:
                        progress.update(1)
                elif source == "init_state":
                    stats["failed_init_state_ids"].append(index)
                attempt += 1
    finally:
        env.close()
    stats["kept"] = len(stats["kept_lengths"])
    stats["seconds"] = time.perf_counter() - t0
    from zipmo_robot.files import atomic_write_text

    atomic_write_text(stats_path, json.dumps(stats, indent=1))
    return stats


def render_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    image_size: int = 128,
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
    progress: Any = None,
) -> int:
    """Add camera images to a demo file by state replay (raw orientation, as the official files store them).

    Every stored state is set in a rendering env and both views are rendered; `src` may equal `dst`
    (the result replaces the file atomically). Returns the number of demos rendered.
    """
    from zipmo_robot.data.replay import render_states, replay_env

    info = read_info(src)
    suite, task_id = task_of_file(info)
    demos = list(iter_demos(src, load_images=False))
    with replay_env(suite, task_id, image_size, cameras) as env:
        rendered = []
        for demo in demos:
            frames = render_states(env, demo.states, cameras, orientation="raw")
            for cam, images in frames.items():
                demo.obs[CAMERA_KEY[cam]] = images
            rendered.append(demo)
            if progress is not None:
                progress.update(1)
    meta = info.env_args
    meta.setdefault("env_kwargs", {}).update({"camera_heights": image_size, "camera_widths": image_size})
    with DemoWriter(
        dst, info.problem_info, meta, info.bddl_file_content, meta.get("bddl_file", "")
    ) as writer:
        for demo in rendered:
            writer.add(demo)
    return len(rendered)


CAMERA_KEY = {"agentview": "agentview_rgb", "robot0_eye_in_hand": "eye_in_hand_rgb"}


def task_of_file(info: Any) -> tuple[str, int]:
    """(suite, task_id) of a demo file, from its BDDL path or language matched against the suites."""
    from zipmo_robot.envs.spec import SUITES
    from zipmo_robot.envs.suites import list_tasks

    bddl = str(
        info.env_args.get("bddl_file") or info.env_args.get("env_kwargs", {}).get("bddl_file_name", "")
    )
    stem = Path(bddl).stem
    parent = Path(bddl).parent.name
    name_from_file = Path(info.path).name.removesuffix("_demo.hdf5")
    suites = [parent] + [s for s in SUITES if s != parent] if parent in SUITES else list(SUITES)
    for suite in suites:
        for task in list_tasks(suite):
            if task.name in (stem, name_from_file):
                return suite, task.task_id
    from zipmo_robot.errors import UserError

    raise UserError(
        f"{info.path}: cannot tell which LIBERO task this file is (bddl {bddl!r}); name it <task>_demo.hdf5"
    )
