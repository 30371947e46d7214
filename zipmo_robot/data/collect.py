"""Collect scripted-expert demonstrations with images and exact tracks in one pass (`zipmo-robot collect`).

Per task, every attempt starts from a FRESH placement drawn by LIBERO's own placement sampler (a reset with
numpy's global RNG seeded, in scope, from (seed, task, attempt)); the 50 fixed init states are the
evaluation's and are never used (a placement equal to one of them is skipped). The expert acts on privileged
state with no camera rendering. When it succeeds, the SAME env, whose MuJoCo model still holds this episode's
fixture layout (LIBERO writes it into the model, not into the saved state), sets every stored state again and
renders both views (RGB + depth in one call, segmentation at the query frames): the stored images are the
scene the demo was performed in, and the exact tracks come from the same renders (`tracks.Capture`).

Output per success, written atomically before the attempt is recorded:
- `<out>/<suite>/.parts/<task>/demo_<i>.hdf5`: the demo in the official layout (raw-orientation images,
  states, actions, proprio) plus its fixture layout (`layout/body_pos`, `layout/body_quat`), so any env of
  the task can re-render it in the right scene (`replay.restore_layout`);
- `<pre>/<suite>/<task>/demo_<i>.hdf5`: the training file, in `preprocess`'s format, and `task.json`.
The ledger `<out>/<suite>/.parts/<task>/attempts.jsonl` has one line per finished attempt. A killed run
resumes exactly when rerun with the same command: an attempt is a pure function of its seed (the scene, the
expert's generator and the physics are reset from it) and the ledger says which attempts are done. When a
task has its demos, the parts are copied into the official per-task file `<out>/<suite>/<task>_demo.hdf5`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
import weakref
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zipmo_robot.data.hdf5 import CAMERA_TO_KEY, Demo, DemoWriter, iter_demos, read_info

N_FIXED_INIT_STATES = 50
CAMERA_KEY = CAMERA_TO_KEY


def demo_file_name(task_name: str) -> str:
    """Official file naming: `<task name>_demo.hdf5`."""
    return f"{task_name}_demo.hdf5"


def episode_seed(seed: int, task_id: int, attempt: int) -> int:
    """The seed of one attempt: its placement (numpy's global RNG, scoped) and the expert's generator."""
    return seed + 100_000 * task_id + attempt


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


def model_layout(sim: Any) -> dict[str, np.ndarray]:
    """The fixture layout LIBERO samples into the MuJoCo model at reset: body_pos (B, 3), body_quat (B, 4)."""
    return {"body_pos": np.array(sim.model.body_pos), "body_quat": np.array(sim.model.body_quat)}


class CollectEnv:
    """One LIBERO task for collection: the expert steps without rendering, but the sim has an offscreen GL
    context so the same env can render the stored states of a successful episode (robosuite's camera
    observation settings: same cameras, size, visual geom groups)."""

    def __init__(
        self,
        suite: str,
        task_id: int,
        image_size: int = 128,
        cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
        assets: str | None = None,
    ) -> None:
        from zipmo_robot.envs.libero import import_libero_envs
        from zipmo_robot.envs.spec import EnvConfig
        from zipmo_robot.envs.suites import get_task, load_init_states

        self.cfg = EnvConfig(suite=suite, task_id=task_id, image_size=image_size, cameras=tuple(cameras))
        self.task = get_task(suite, task_id)
        self.init_states = load_init_states(suite, task_id)
        self.settle_action = np.asarray(self.cfg.settle_action, dtype=np.float64)
        libero_envs = import_libero_envs(assets)
        self._raw = libero_envs.env_wrapper.ControlEnv(
            bddl_file_name=str(self.task.bddl_path),
            has_renderer=False,
            has_offscreen_renderer=True,
            use_camera_obs=False,
            camera_names=list(cameras),
            camera_heights=image_size,
            camera_widths=image_size,
            ignore_done=True,
            # A soft reset places objects that sit on a fixture from a stale reference (libero_spatial task 7:
            # the bowl "on the stove" lands 0.6 m lower, off the table); a hard reset rebuilds the model and
            # places them right. Both are a pure function of the seed (checked: same env, fresh env).
            hard_reset=True,
        )
        # close before robosuite's atexit eglTerminate (as LiberoEnv does)
        self._finalizer = weakref.finalize(self, _close_quietly, self._raw)
        atexit.register(self._finalizer)

    @property
    def raw(self) -> Any:
        if not self._finalizer.alive:
            raise RuntimeError("this CollectEnv is closed")
        return self._raw

    @property
    def sim(self) -> Any:
        return self.raw.env.sim

    def close(self) -> None:
        self._finalizer()
        atexit.unregister(self._finalizer)

    def __enter__(self) -> CollectEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _close_quietly(raw: Any) -> None:
    with contextlib.suppress(Exception):
        raw.close()


@dataclass
class EpisodeOutcome:
    """One expert attempt: success, length, and the recorded demo (None when it failed)."""

    success: bool
    steps: int
    source: str  # "init_state" (benchmarks of the expert only) or "placement"
    init_state_id: int
    demo: Demo | None


def start_episode(env: Any, source: str, index: int, seed: int) -> dict[str, Any]:
    """Reset `env` (a `CollectEnv` or a state-only `LiberoEnv`: anything with `.raw`, `.init_states`,
    `.settle_action`, `.cfg.settle_steps`) and return the raw observation after the settle steps.

    `"placement"`: a fresh LIBERO placement, numpy's global RNG seeded with `seed` only for the reset (LIBERO
    samples the layout from it) and restored after; `"init_state"`: fixed init state `index`.
    """
    from zipmo_robot.envs.libero import seeded_numpy_global_rng, settle

    raw = env.raw
    with seeded_numpy_global_rng(seed % (2**32)):
        raw.reset()
    if source == "init_state":
        raw_obs = raw.set_init_state(env.init_states[index])
    elif source == "placement":
        raw_obs = raw.env._get_observations(force_update=True)
    else:
        raise ValueError(f"source must be 'placement' or 'init_state', got {source!r}")
    raw_obs = settle(raw, env.settle_action, env.cfg.settle_steps, raw_obs)
    if source == "placement":
        # LIBERO's sampler can drop an object from above its region (libero_spatial task 4: the bowl starts
        # 0.7 m above the drawer); the fixed init states are at rest. Settle until the scene is still.
        for _ in range(MAX_EXTRA_SETTLE_STEPS):
            if scene_speed(raw.env) < REST_SPEED:
                break
            raw_obs = settle(raw, env.settle_action, 1, raw_obs)
    return raw_obs


MAX_EXTRA_SETTLE_STEPS = 200
REST_SPEED = 0.02  # max |qvel| of the non-robot joints (m/s or rad/s) counted as at rest


def scene_speed(env: Any) -> float:
    """Max |qvel| over the joints that are not the robot's (objects, drawers, doors); `env` is robosuite's."""
    robot = env.robots[0]
    own = set(np.ravel(robot._ref_joint_vel_indexes)) | set(np.ravel(robot._ref_gripper_joint_vel_indexes))
    rest = [i for i in range(env.sim.model.nv) if i not in own]
    return float(np.abs(env.sim.data.qvel[rest]).max()) if rest else 0.0


def is_benchmark_init_state(state: np.ndarray, init_states: np.ndarray, nq: int, atol: float = 1e-6) -> bool:
    """Whether a start state has the qpos of one of the task's fixed init states (those are the evaluation's)."""
    diff = np.abs(np.asarray(init_states)[:, 1 : 1 + nq] - np.asarray(state)[1 : 1 + nq]).max(axis=1)
    return bool(diff.min() <= atol)


def run_expert_episode(
    env: Any, source: str, index: int, seed: int, max_steps: int, keep: bool = True
) -> EpisodeOutcome:
    """Run the expert once without rendering; records states, actions and proprio per step.

    The expert's generator is `default_rng(seed)`; see `start_episode` for `source`/`index`/`seed`.
    """
    from zipmo_robot.data.expert import PickPlaceExpert

    raw = env.raw
    raw_obs = start_episode(env, source, index, seed)
    expert = PickPlaceExpert.for_env(raw.env, rng=np.random.default_rng(seed))
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
    init_state_id = index if source == "init_state" else -1
    if success and keep:
        t = len(actions)
        rewards = np.zeros(t, dtype=np.uint8)
        rewards[-1] = 1
        obs = {k: np.stack([p[k] for p in proprio]) for k in proprio[0] if not k.startswith("_")}
        attrs = {
            "source": source,
            "init_state_id": init_state_id,
            "seed": seed,
            "init_state": states[0],
            "_ee_quat": np.stack([p["_ee_quat"] for p in proprio]),
        }
        layout = model_layout(raw.env.sim)
        demo = Demo("", np.stack(actions), np.stack(states), rewards, rewards.copy(), obs, attrs, layout)
    return EpisodeOutcome(success, steps, source, init_state_id, demo)


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


# ---------------------------------------------------------------------------------------------------------
# One task, resumable
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectSettings:
    """What a collection depends on (stored beside the ledger; a resume with other settings is refused)."""

    seed: int = 0
    max_steps: int = 600
    image_size: int = 128
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
    preprocess: dict = field(default_factory=dict)  # PreprocessSettings as a dict

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def track_seed(preprocess_seed: int, demo_name: str) -> int:
    """The query-sampling seed of a demo's tracks (the same rule as `preprocess`, so both agree)."""
    return preprocess_seed + (zlib.crc32(demo_name.encode()) & 0xFFFF)


def read_ledger(path: Path) -> list[dict]:
    """Finished attempts in order; a line cut by a kill is ignored (that attempt is redone)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and "attempt" in r]


def _append_line(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def collect_task(
    suite: str,
    task_id: int,
    n_demos: int,
    out_dir: str | os.PathLike,
    pre_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_steps: int = 600,
    max_attempts: int | None = None,
    image_size: int = 128,
    preprocess_settings: Any = None,
    task_emb: np.ndarray | None = None,
    progress: Any = None,
    frame_progress: Any = None,
    log: Any = None,
    assets: str | None = None,
    render: bool = True,
) -> dict[str, Any]:
    """Collect `n_demos` successful expert demos of one task from fresh placements, with images (and, with
    `pre_dir`, preprocessed training files with exact tracks), resumably; see the module docstring.
    `render=False` keeps state-only demos (no images, no training files; `render_file` adds images later).

    `out_dir` is the suite folder (`<out>/<suite>`), `pre_dir` the preprocess root (files go to
    `<pre_dir>/<suite>/<task>/`). Returns statistics, also written to `<out_dir>/<task>_demo.stats.json`.
    """
    from zipmo_robot.data.preprocess import PreprocessSettings
    from zipmo_robot.envs.suites import get_task
    from zipmo_robot.errors import UserError
    from zipmo_robot.files import atomic_write_text

    task = get_task(suite, task_id)
    out_dir = Path(out_dir)
    pre = preprocess_settings or PreprocessSettings(image_size=image_size)
    if pre.image_size != image_size:
        raise UserError(f"preprocess image size {pre.image_size} != collection image size {image_size}")
    cameras = tuple(pre.cameras)
    settings = CollectSettings(seed, max_steps, image_size if render else 0, cameras, asdict(pre))
    pre_dir = pre_dir if render else None
    final = out_dir / demo_file_name(task.name)
    stats_path = final.with_suffix(".stats.json")
    parts = out_dir / ".parts" / task.name
    parts.mkdir(parents=True, exist_ok=True)
    ledger_path = parts / "attempts.jsonl"
    config_path = parts / "settings.json"
    if config_path.exists():
        if json.loads(config_path.read_text()) != json.loads(settings.key()):
            raise UserError(
                f"{parts} was collected with other settings ({config_path.read_text().strip()}); "
                f"use another --out folder or the same settings ({settings.key()})"
            )
    else:
        atomic_write_text(config_path, settings.key())
    ledger = read_ledger(ledger_path)
    kept = [r for r in ledger if r.get("success")]
    if len(kept) >= n_demos and final.exists() and _count_demos(final) >= n_demos:
        if progress is not None:
            progress.update(n_demos)
        return json.loads(stats_path.read_text()) if stats_path.exists() else {"kept": len(kept)}
    # fresh placements are harder than the fixed init states on some tasks (libero_spatial task 4: 2 of 8)
    max_attempts = max_attempts if max_attempts is not None else max(6 * n_demos, n_demos + 20)
    pre_task_dir = Path(pre_dir) / suite / task.name if pre_dir is not None else None
    if progress is not None:
        progress.update(min(len(kept), n_demos))
    t0 = time.perf_counter()
    seconds_before = sum(float(r.get("seconds", 0.0)) for r in ledger)
    env = None
    try:
        attempt = 1 + max((int(r["attempt"]) for r in ledger), default=-1)
        while len(kept) < n_demos and attempt < max_attempts:
            if env is None:
                env = CollectEnv(suite, task_id, image_size, cameras, assets)
                problem_info, env_args, bddl_text, bddl_name = file_metadata(env, image_size)
            t_attempt = time.perf_counter()
            s = episode_seed(seed, task_id, attempt)
            outcome = run_expert_episode(env, "placement", attempt, s, max_steps)
            row: dict[str, Any] = {"attempt": attempt, "seed": s, "steps": outcome.steps}
            nq = env.sim.model.nq
            if outcome.success and is_benchmark_init_state(outcome.demo.states[0], env.init_states, nq):
                row["skipped"] = "placement equals a benchmark init state"
            elif outcome.success:
                name = f"demo_{len(kept)}"
                demo = outcome.demo
                demo.attrs["attempt"] = attempt
                if render:
                    _render_and_store(
                        env, demo, name, parts, final, pre_task_dir, pre, task, suite, task_id,
                        problem_info, env_args, bddl_text, bddl_name, task_emb, frame_progress,
                    )  # fmt: skip
                else:
                    with DemoWriter(
                        parts / f"{name}.hdf5", problem_info, env_args, bddl_text, bddl_name
                    ) as w:
                        w.add(demo)
                row["demo"] = name
            row["success"] = "demo" in row
            row["seconds"] = round(time.perf_counter() - t_attempt, 2)
            _append_line(ledger_path, row)
            if row["success"]:
                kept.append(row)
                if pre_task_dir is not None:
                    _write_task_index(
                        pre_task_dir, suite, task, final, [r["demo"] for r in kept], pre, task_emb
                    )
                if progress is not None:
                    progress.update(1)
            elif log is not None and "skipped" in row:
                log(f"task {task_id} attempt {attempt}: {row['skipped']}; skipped")
            attempt += 1
    finally:
        if env is not None:
            env.close()
    ledger = read_ledger(ledger_path)
    kept_rows = [r for r in ledger if r.get("success")]
    if kept_rows and not (final.exists() and _count_demos(final) == len(kept_rows)):
        merge_parts(parts, [r["demo"] for r in kept_rows], final)
    stats = {
        "suite": suite,
        "task_id": task_id,
        "task": task.name,
        "source": "placement",
        "attempts": len(ledger),
        "successes": len(kept_rows),
        "skipped_benchmark_states": sum(1 for r in ledger if "skipped" in r),
        "kept": len(kept_rows),
        "kept_lengths": [r["steps"] for r in kept_rows],
        "steps": sum(int(r["steps"]) for r in ledger),
        "seconds": round(sum(float(r.get("seconds", 0.0)) for r in ledger), 1),
        "seconds_this_run": round(time.perf_counter() - t0, 1),
        "seconds_before_this_run": round(seconds_before, 1),
        "settings": json.loads(settings.key()),
    }
    atomic_write_text(stats_path, json.dumps(stats, indent=1))
    return stats


def _count_demos(path: Path) -> int:
    try:
        return len(read_info(path).demo_names)
    except Exception:  # noqa: BLE001 - an unreadable file counts as empty (it is rewritten)
        return 0


def _render_and_store(
    env: CollectEnv,
    demo: Demo,
    name: str,
    parts: Path,
    final: Path,
    pre_task_dir: Path | None,
    pre: Any,
    task: Any,
    suite: str,
    task_id: int,
    problem_info: dict,
    env_args: dict,
    bddl_text: str,
    bddl_name: str,
    task_emb: np.ndarray | None,
    frame_progress: Any,
) -> None:
    """Render the demo's states in the env that collected it, then write its part file and training file."""
    from zipmo_robot.data.preprocess import Job, write_preprocessed
    from zipmo_robot.data.tracks import capture_states, query_frame_list, tracks_of_capture

    queries = query_frame_list(demo.length, pre.query_every)
    cap = capture_states(env.sim, demo.states, tuple(pre.cameras), pre.image_size, queries, frame_progress)
    for cam in pre.cameras:
        demo.obs[CAMERA_KEY[cam]] = cap.rgb[cam]
    with DemoWriter(parts / f"{name}.hdf5", problem_info, env_args, bddl_text, bddl_name) as writer:
        writer.add(demo)
    if pre_task_dir is None:
        return
    views = tracks_of_capture(
        cap, tuple(pre.cameras), pre.orientation, pre.query_every, pre.grid, pre.n_random,
        track_seed(pre.seed, name), keep_frames=True,
    )  # fmt: skip
    emb = None if task_emb is None else tuple(float(v) for v in task_emb)
    job = Job(str(final), name, str(pre_task_dir / f"{name}.hdf5"), suite, task_id, task.language, emb, pre)
    write_preprocessed(Path(job.dst), job, demo, views)


def _write_task_index(
    folder: Path, suite: str, task: Any, source: Path, demos: list[str], pre: Any, task_emb: Any
) -> None:
    """`task.json` of a preprocessed task folder (the format `preprocess` writes), for the demos so far."""
    from zipmo_robot.data.splits import split_demos
    from zipmo_robot.files import atomic_write_text

    split = split_demos(demos, bc_demos=None)
    meta = {
        "suite": suite,
        "task_id": task.task_id,
        "task": task.name,
        "language": task.language,
        "source": str(source),
        "demos": demos,
        "train": list(split.train),
        "val": list(split.val),
        "bc_train_10": list(split.train[:10]),
        "task_emb": "ok" if task_emb is not None else "skipped (no BERT weights at collection time)",
        "settings": json.loads(pre.key()),
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "task.json", json.dumps(meta, indent=1))


def merge_parts(parts: Path, names: list[str], final: Path) -> None:
    """Copy the single-demo part files `parts/<name>.hdf5` into one official-layout file (atomic)."""
    info = read_info(parts / f"{names[0]}.hdf5")
    with DemoWriter(
        final, info.problem_info, info.env_args, info.bddl_file_content, info.env_args.get("bddl_file", "")
    ) as writer:
        for name in names:
            writer.add_from(parts / f"{name}.hdf5", "demo_0")


# ---------------------------------------------------------------------------------------------------------
# Files from elsewhere: images by state replay
# ---------------------------------------------------------------------------------------------------------


def render_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    image_size: int = 128,
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
    progress: Any = None,
) -> int:
    """Add camera images to a state-only demo file by state replay (raw orientation, as the official files
    store them). A demo that carries its fixture layout is rendered in that layout (exact scene); one without
    is rendered in the replay env's own layout. `src` may equal `dst` (replaced atomically)."""
    from zipmo_robot.data.replay import render_states, replay_env, restore_layout

    info = read_info(src)
    suite, task_id = task_of_file(info)
    demos = list(iter_demos(src, load_images=False))
    with replay_env(suite, task_id, image_size, cameras) as env:
        default = model_layout(env.raw.env.sim)
        rendered = []
        for demo in demos:
            restore_layout(env.raw.env.sim, demo.layout or default)
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
