"""`LiberoEnv`: one LIBERO task behind the gymnasium API, configured by `EnvConfig`.

The env only translates LIBERO/robosuite into gymnasium terms; each protocol knob is one small function:
`orient_image` (raw / vertical flip / 180° rotation), `resize_image` (render size -> policy size), `settle`
(dummy steps after `set_init_state`), and the time limit in `step`. The init state of an episode is chosen by
the caller (`options={"init_state_id": i}`), so it never depends on how many resets happened.

Scenes. `set_init_state` sets every joint (robot, movable objects, doors, knobs), but not the fixtures
(cabinets, stoves, racks, the microwave...): they have no joint, and LIBERO places them at every reset by writing
`sim.model.body_pos/body_quat` from numpy's global RNG (`MultiRegionRandomSampler`). 88 of the 130 tasks draw a
fixture from a 2 cm window; 42 place every fixture at a fixed pose (`scene_table.json`). An official worker
(a fresh `OffScreenRenderEnv`, `env.seed(s)` once after construction, then reset + `set_init_state` + settle
steps per episode) draws its r-th scene (r = 0, 1, ...) from:
1. numpy's global stream: `env.seed(s)` is `np.random.seed(s)`; the stream runs on across the worker's resets
   (stepping draws nothing), so reset r continues where reset r-1 stopped;
2. the reset count: `BDDLBaseDomain.__init__` makes the list `object_property_initializers` once, and every
   `_load_model` (construction and each hard reset) appends another copy of the task's Open/Close/TurnOn/TurnOff
   samplers, all of which draw at every reset before the fixtures are placed: r + 2 copies at reset r (+1 per
   `RandomizationError` retry), 1 copy forever after soft resets. This is what carried over between resets;
3. the fixtures' pose before the draw (their XML pose in a rebuilt model; a soft reset keeps the last one),
   which site-relative samplers read.
Nothing else (no per-env RandomState, no RNG in XML or texture generation; robot init noise has magnitude 0).
So the scene of reset r is a pure function of (task, s, r), and later resets of an ATM worker are reproducible.
`reset(seed=s, options={"init_state_id": i, "reset_index": r})` rebuilds it whatever this env ran before:
"soft" path (tasks whose fixtures are fixed: a plain soft reset) or "replay" (the worker's draws are replayed
in the soft-reset sim with the official copy count and XML fixture poses; replays are cached per seed);
"fresh" (a new raw env per reset) is the fallback a task table entry can name. A GPU renderer changes none of
this (placement and physics are CPU MuJoCo); only its rasterised pixels may differ from llvmpipe's by a few
levels, so byte equality holds for software rendering (EGL llvmpipe, OSMesa) and a GPU needs a tolerance.

Observation (one row of the batched format in `policy/base.py`):
    "<camera>_image": (H, W, 3) uint8 at `policy_image_size`, oriented per `cfg.orientation` (absent if
        `cfg.render` is False), for every camera in `cfg.cameras`
    "joint_states": (7,) float64, "gripper_states": (2,) float64, "ee_pos": (3,) float64,
    "ee_quat": (4,) float64 (xyzw, robosuite), "episode_step": () int64 (policy steps since reset),
    "task_language": str
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import string
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from zipmo_robot.envs.setup import ensure_libero
from zipmo_robot.envs.spec import EnvConfig
from zipmo_robot.envs.suites import TaskInfo, get_task, load_init_states

from zipmo_robot.errors import UserError

ACTION_DIM = 7
DEFAULT_SEED = 0  # LIBERO env seed when reset() gets none: ATM's env seed and the golden frame's
# proprio key in the observation -> robosuite observation key
PROPRIO_KEYS: dict[str, str] = {
    "joint_states": "robot0_joint_pos",
    "gripper_states": "robot0_gripper_qpos",
    "ee_pos": "robot0_eef_pos",
    "ee_quat": "robot0_eef_quat",
}
PROPRIO_DIMS: dict[str, int] = {"joint_states": 7, "gripper_states": 2, "ee_pos": 3, "ee_quat": 4}
LANGUAGE_CHARSET = string.ascii_letters + string.digits + " .,;:'-_/()!?&"
RESET_PATHS: tuple[str, ...] = ("soft", "replay", "fresh")
SCENE_TABLE = "scene_table.json"  # package data of zipmo_robot.envs, written by benchmarks/scene_sweep.py


# Protocol knobs, one function each


def orient_image(image: np.ndarray, orientation: str) -> np.ndarray:
    """Apply the protocol's orientation to a raw robosuite frame (H, W, C), which is upside down.

    "raw": unchanged; "flip_vertical": rows reversed (ATM/Tra-MoE/ZipMo, upright); "rotate_180": rows and
    columns reversed (openvla family, LeRobot). Returns a contiguous copy.
    """
    if orientation == "raw":
        out = image
    elif orientation == "flip_vertical":
        out = image[::-1]
    elif orientation == "rotate_180":
        out = image[::-1, ::-1]
    else:
        raise ValueError(f"unknown orientation {orientation!r}; valid: raw, flip_vertical, rotate_180")
    return np.ascontiguousarray(out)


def resize_image(image: np.ndarray, size: int, method: str = "pil_bilinear") -> np.ndarray:
    """Resize a square uint8 frame (H, W, 3) to (size, size, 3): "pil_bilinear" (antialiased when shrinking;
    a no-op when the size already matches) or "openvla" (OpenVLA's JPEG round trip + lanczos3, always)."""
    if method == "openvla":
        from zipmo_robot.envs.openvla_resize import openvla_resize

        return openvla_resize(image, size)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def settle(raw: Any, action: np.ndarray, n_steps: int, obs: dict[str, Any]) -> dict[str, Any]:
    """Step the raw LIBERO env `n_steps` times with the settle action (after `set_init_state`, inside
    reset, not counted as episode steps); returns the last raw observation (`obs` if `n_steps` is 0)."""
    for _ in range(n_steps):
        obs, _, _, _ = raw.step(action)
    return obs


@contextlib.contextmanager
def seeded_numpy_global_rng(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the duration of the block, then restore its previous state.

    LIBERO samples fixture poses (written into the MuJoCo *model*, so not part of the init state) from the
    global RNG at every reset, and `env.seed(s)` is just `np.random.seed(s)`; scoping keeps the caller's stream.
    """
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


# Scenes (module docstring, "Scenes")


def fixture_samplers(base_env: Any) -> dict[str, Any]:
    """The placement sampler of each fixture of a LIBERO env (`raw.env`), by fixture name."""
    out: dict[str, Any] = {}
    for sampler in base_env.placement_initializer.samplers.values():
        for obj in sampler.mujoco_objects:
            if obj.name in base_env.fixtures_dict:
                out[obj.name] = sampler
    return out


def sampler_is_random(sampler: Any) -> bool:
    """Whether a `MultiRegionRandomSampler` draws different poses for different RNG states: a position
    window wider than 0, several distinct windows, or a yaw range (fixtures use no boundary shrink)."""
    xs = np.asarray(sampler.x_ranges, dtype=np.float64).reshape(-1, 2)
    ys = np.asarray(sampler.y_ranges, dtype=np.float64).reshape(-1, 2)
    windows = {(tuple(x), tuple(y)) for x, y in zip(xs.tolist(), ys.tolist())}
    if len(windows) > 1 or np.ptp(xs, axis=1).max() > 0 or np.ptp(ys, axis=1).max() > 0:
        return True
    rotation = sampler.rotation
    if rotation is None:
        return True
    return bool(np.ptp(np.asarray(rotation, dtype=np.float64))) if np.ndim(rotation) else False


def randomised_fixtures(base_env: Any) -> list[str]:
    """Names of the fixtures LIBERO places at random at each reset (sorted); [] means any RNG state gives
    the same scene, so a soft reset is exact."""
    return sorted(name for name, s in fixture_samplers(base_env).items() if sampler_is_random(s))


@functools.lru_cache(maxsize=1)
def scene_table() -> dict[str, dict[str, Any]]:
    """The shipped task table (`envs/scene_table.json`): per "suite/task_id" its randomised fixtures, reset
    path and sweep result against raw LIBERO; {} if the file is missing."""
    from importlib.resources import files

    path = files("zipmo_robot.envs") / SCENE_TABLE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["tasks"]


def table_reset_path(suite: str, task_id: int) -> str | None:
    """The reset path the task table names for a task (None when the table has no entry)."""
    entry = scene_table().get(f"{suite}/{task_id}")
    return None if entry is None else entry["reset_path"]


@dataclass
class _Stream:
    """Where the global RNG of an official worker that called `env.seed(seed)` before its reset `seeded_at`
    stands before its reset `resets`, and how many property-sampler copies its env holds then (the replay
    cache of `LiberoEnv`)."""

    seed: int
    seeded_at: int
    resets: int
    rng_state: tuple
    copies: int


def _without_gym_banner(text: str) -> str:
    """Drop gym 0.26's "unmaintained" notice (printed on `import gym`, which LIBERO's venv module does)."""
    try:
        import gym
        import gym_notices.notices as notices

        banner = notices.notices.get(gym.__version__)
    except Exception:  # noqa: BLE001 - gym/gym_notices absent or changed: keep the text as it is
        return text
    return text.replace(banner + "\n", "").replace(banner, "") if banner else text


def import_libero_envs(assets: str | None = None) -> Any:
    """Prepare LIBERO (`ensure_libero`) and import `libero.libero.envs`, hiding gym 0.26's import banner."""
    ensure_libero(assets)
    if "libero.libero.envs" in sys.modules:
        return sys.modules["libero.libero.envs"]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import libero.libero.envs as libero_envs
    finally:  # re-emit whatever was printed (also when the import fails), minus gym's banner
        text = _without_gym_banner(captured.getvalue())
        if text.strip():
            sys.stderr.write(text)
    return libero_envs


def observation_space(cfg: EnvConfig) -> spaces.Dict:
    """The gymnasium space of one observation for `cfg` (see the module docstring)."""
    size = cfg.policy_image_size or cfg.image_size
    entries: dict[str, spaces.Space] = {}
    if cfg.render:
        for camera in cfg.cameras:
            entries[f"{camera}_image"] = spaces.Box(0, 255, (size, size, 3), np.uint8)
    for key, dim in PROPRIO_DIMS.items():
        entries[key] = spaces.Box(-np.inf, np.inf, (dim,), np.float64)
    entries["episode_step"] = spaces.Box(0, cfg.max_steps, (), np.int64)
    entries["task_language"] = spaces.Text(max_length=512, charset=LANGUAGE_CHARSET)
    return spaces.Dict(entries)


def _close_raw(raw: Any) -> None:
    """Close a raw LIBERO env (releases the GL context before interpreter teardown: no EGLError at exit)."""
    with contextlib.suppress(Exception):
        raw.close()


def _index_option(options: dict[str, Any], key: str, n: int | None, cfg: EnvConfig) -> int:
    """A non-negative integer option of `reset` (below `n` when given), else a UserError naming the range."""
    value = options.get(key, 0)
    if isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (n is not None and value >= n):
        valid = f"valid ids are 0..{n - 1}" if n is not None else "it must be an integer >= 0"
        raise UserError(f"{key} {value!r} is out of range for {cfg.suite} task {cfg.task_id}: {valid}")
    return value


class LiberoEnv(gym.Env):
    """One LIBERO task as a gymnasium env, built from an `EnvConfig`.

    `reset(seed, options={"init_state_id": i, "reset_index": r})` = the official scene of reset r of a worker
    seeded with `seed` (module docstring, "Scenes") -> `set_init_state(init_states[i])` -> `cfg.settle_steps`
    settle steps. `step` reports success as `terminated` and in `info["success"]`, and `truncated` once
    `cfg.max_steps` policy steps have run. The robosuite env (and its GL context) is kept across episodes
    (soft resets, ~6x faster than rebuilding); `reset_path` ("soft", "replay", "fresh"; default: the task
    table's entry) says how the official scene is restored. `hard_reset=True` (or `cfg.extra["hard_reset"]`)
    rebuilds the MuJoCo model at every reset, with the same scenes.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        cfg: EnvConfig,
        *,
        hard_reset: bool | None = None,
        reset_path: str | None = None,
        assets: str | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if render_mode == "rgb_array" and not cfg.render:
            raise ValueError("render_mode='rgb_array' needs cfg.render=True (cameras on)")
        reset_path = reset_path or cfg.extra.get("reset_path")
        if reset_path is not None and reset_path not in RESET_PATHS:
            raise ValueError(f"unknown reset_path {reset_path!r}; valid: {', '.join(RESET_PATHS)}")
        self.cfg = cfg
        self.render_mode = render_mode
        self.hard_reset = bool(cfg.extra.get("hard_reset", False) if hard_reset is None else hard_reset)
        self.task: TaskInfo = get_task(cfg.suite, cfg.task_id)
        self.init_states = load_init_states(cfg.suite, cfg.task_id)
        self.policy_image_size = cfg.policy_image_size or cfg.image_size
        self.settle_action = np.asarray(cfg.settle_action, dtype=np.float64)
        self.observation_space = observation_space(cfg)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._libero_envs = import_libero_envs(assets)
        self._build_raw()
        self.randomised_fixtures = randomised_fixtures(self._raw.env)
        path = reset_path or table_reset_path(cfg.suite, cfg.task_id)
        if path is None:  # a task the table does not list: decide from its placement regions
            path = "replay" if self.randomised_fixtures else "soft"
        self.reset_path = path
        self._stream: _Stream | None = None
        self._step = 0
        self._needs_reset = True
        self._init_state_id: int | None = None
        self._last_raw_obs: dict[str, Any] | None = None

    def _build_raw(self) -> None:
        """Construct the raw LIBERO env (as the official loops do, plus our `ignore_done`/`hard_reset`)."""
        cfg = self.cfg
        kwargs: dict[str, Any] = dict(
            bddl_file_name=str(self.task.bddl_path),
            ignore_done=True,  # the time limit is ours (robosuite would raise after its horizon)
            hard_reset=self.hard_reset,
        )
        saved = np.random.get_state()  # construction samples a layout too: keep the caller's global stream
        try:
            if cfg.render:
                self._raw = self._libero_envs.OffScreenRenderEnv(
                    camera_names=list(cfg.cameras),
                    camera_heights=cfg.image_size,
                    camera_widths=cfg.image_size,
                    **kwargs,
                )
            else:
                self._raw = self._libero_envs.env_wrapper.ControlEnv(
                    has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, **kwargs
                )
        finally:
            np.random.set_state(saved)
        # Closing must happen before robosuite's atexit `eglTerminate` (registered when the first GL context
        # was made): an atexit hook registered now runs earlier (LIFO) than weakref's own exit hook would.
        self._finalizer = weakref.finalize(self, _close_raw, self._raw)
        atexit.register(self._finalizer)
        # One copy of the task's Open/Close/TurnOn/TurnOff samplers (construction's `_load_model` made it).
        self._property_samplers = list(self._raw.env.object_property_initializers)
        self._fixture_defaults: list[tuple[int, np.ndarray, np.ndarray]] | None = None

    # gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode from init state `options["init_state_id"]` (default 0) of this task.

        `seed` is the official worker's LIBERO env seed (`env.seed(seed)`; default 0, the ATM env seed and the
        golden frame's) and `options["reset_index"]` (default 0) the number of resets that worker did before
        this one; `options["seeded_at"]` (default 0) is the reset before which the worker called `env.seed`
        (0: once after construction, as ATM/ZipMo/OpenVLA; `reset_index`: before every reset, as LeRobot).
        Together they fix where the fixtures stand, which the init state does not cover, so the first
        observation is a pure function of (task, init_state_id, seed, seeded_at, reset_index, cfg), whatever
        this env ran before. `seed` also seeds `self.np_random`; numpy's global RNG is left as the caller had it.
        """
        super().reset(seed=seed)
        options = options or {}
        layout_seed = DEFAULT_SEED if seed is None else int(seed)
        init_state_id = _index_option(options, "init_state_id", len(self.init_states), self.cfg)
        reset_index = _index_option(options, "reset_index", None, self.cfg)
        seeded_at = _index_option(options, "seeded_at", reset_index + 1, self.cfg)
        if self.reset_path == "fresh":
            self.close()
            self._build_raw()
            self._stream = None
        raw = self.raw
        self.make_gl_current()
        saved = np.random.get_state()
        try:
            self._place_scene(layout_seed, reset_index, seeded_at)
            self.make_gl_current()  # a hard reset makes a new GL context
            raw_obs = raw.set_init_state(self.init_states[init_state_id])
            raw_obs = settle(raw, self.settle_action, self.cfg.settle_steps, raw_obs)
        finally:
            np.random.set_state(saved)
        self._step = 0
        self._needs_reset = False
        self._init_state_id = init_state_id
        self._last_raw_obs = raw_obs
        success = bool(raw.check_success())
        info = {
            "success": success,
            "init_state_id": init_state_id,
            "seed": layout_seed,
            "reset_index": reset_index,
            "seeded_at": seeded_at,
            "reset_path": self.reset_path,
            "settle_steps": self.cfg.settle_steps,
            "task_language": self.task.language,
        }
        return self._observation(raw_obs), info

    # scenes

    def _place_scene(self, seed: int, reset_index: int, seeded_at: int) -> None:
        """Reset the sim to the scene of reset `reset_index` of an official worker that called `env.seed(seed)`
        before its reset `seeded_at`.

        Runs with numpy's global RNG free to use (the caller restores it). "soft": the fixtures do not depend on
        the RNG, one plain reset. "replay"/"fresh": the worker's resets since the seed are replayed (their draws
        only: `_reset_internal` with the official sampler copies and XML fixture poses), continuing from the
        cached stream when this env last replayed the same (seed, seeded_at) up to an earlier reset; then the
        real reset. The env holds 1 + k sampler copies before the worker's reset k (none of those retried).
        """
        if self.reset_path == "soft":
            np.random.seed(seed)
            self._reset_once(copies=1 + reset_index, final=True, restore=False)
            self._stream = None
            return
        stream = self._stream
        if (
            stream is not None
            and (stream.seed, stream.seeded_at) == (seed, seeded_at)
            and stream.resets <= reset_index
        ):
            np.random.set_state(stream.rng_state)
            copies, done = stream.copies, stream.resets
        else:
            np.random.seed(seed)
            copies, done = 1 + seeded_at, seeded_at
        while done < reset_index:
            copies = self._reset_once(copies, final=False, restore=True)
            done += 1
            self._stream = _Stream(seed, seeded_at, done, np.random.get_state(), copies)
        copies = self._reset_once(copies, final=True, restore=True)
        self._stream = _Stream(seed, seeded_at, done + 1, np.random.get_state(), copies)

    def _reset_once(self, copies: int, *, final: bool, restore: bool) -> int:
        """One official reset's draws on the current sim; returns the sampler copies the env holds after it.

        Each attempt adds a copy (the official hard reset's `_load_model`), and a `RandomizationError` makes
        another attempt, as `ControlEnv.reset` does. `final` runs robosuite's whole reset (observables, the
        model rebuild if `hard_reset`); otherwise only the sampling (`sim.reset` + `_reset_internal`).
        """
        from robosuite.utils.errors import RandomizationError

        base = self._raw.env
        while True:
            copies += 1
            rebuilds = final and base.hard_reset
            # a rebuilding reset appends the copy itself (and starts from the XML fixture poses)
            base.object_property_initializers = self._property_samplers * (copies - 1 if rebuilds else copies)
            if restore and not rebuilds:
                self._restore_fixture_poses()
            try:
                if final:
                    base.reset()
                else:
                    base.sim.reset()
                    base._reset_internal()
                return copies
            except RandomizationError:
                continue

    def _restore_fixture_poses(self) -> None:
        """Put every fixture back at the pose a freshly compiled model gives it (its XML pose)."""
        base = self._raw.env
        if self._fixture_defaults is None:
            import mujoco

            compiled = mujoco.MjModel.from_xml_string(base.model.get_xml())
            self._fixture_defaults = []
            for fixture in base.fixtures_dict.values():
                body = compiled.body(fixture.root_body).id
                own = base.sim.model.body_name2id(fixture.root_body)
                self._fixture_defaults.append(
                    (own, compiled.body_pos[body].copy(), compiled.body_quat[body].copy())
                )
        model = base.sim.model
        for body, pos, quat in self._fixture_defaults:
            model.body_pos[body] = pos
            model.body_quat[body] = quat

    def fixture_poses(self) -> dict[str, np.ndarray]:
        """Each fixture's current pose in the model, (7,) float64 = position (3) + quaternion wxyz (4)."""
        base = self.raw.env
        out = {}
        for name, fixture in sorted(base.fixtures_dict.items()):
            body = base.sim.model.body_name2id(fixture.root_body)
            out[name] = np.concatenate([base.sim.model.body_pos[body], base.sim.model.body_quat[body]])
        return out

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Apply one 7-D action (6-D delta end-effector pose + gripper, in [-1, 1]).

        Returns (obs, reward, terminated = success at this step, truncated = `max_steps` reached, info).
        Stepping on after success is allowed (as in the ZipMo/ATM loops); after truncation it is an error.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        if self._step >= self.cfg.max_steps:
            raise RuntimeError(
                f"episode already truncated after max_steps={self.cfg.max_steps} steps; call reset()"
            )
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        self.make_gl_current()
        raw_obs, reward, done, _ = self.raw.step(action)
        self._step += 1
        self._last_raw_obs = raw_obs
        success = bool(done)  # LIBERO's step returns done = _check_success() (all BDDL goals hold)
        truncated = self._step >= self.cfg.max_steps
        info = {"success": success, "episode_step": self._step, "init_state_id": self._init_state_id}
        return self._observation(raw_obs), float(reward), success, truncated, info

    def render(self) -> np.ndarray | None:
        """The first camera's current frame at render size, in the configured orientation."""
        if self.render_mode != "rgb_array" or self._last_raw_obs is None:
            return None
        return orient_image(self._last_raw_obs[f"{self.cfg.cameras[0]}_image"], self.cfg.orientation)

    def close(self) -> None:
        """Release the simulator and its GL context (idempotent)."""
        self._finalizer()
        atexit.unregister(self._finalizer)

    # access for the data pipeline

    @property
    def raw(self) -> Any:
        """The underlying LIBERO env (`OffScreenRenderEnv`/`ControlEnv`; `.raw.env` is the robosuite env)."""
        if not self._finalizer.alive:
            raise RuntimeError("this LiberoEnv is closed")
        return self._raw

    @property
    def episode_step(self) -> int:
        """Policy steps taken since the last reset (settle steps excluded)."""
        return self._step

    def check_success(self) -> bool:
        """Whether all BDDL goal predicates hold in the current state."""
        return bool(self.raw.check_success())

    def get_sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (time, qpos, qvel), the format of LIBERO's init states and demos."""
        return np.array(self.raw.get_sim_state(), dtype=np.float64)

    def set_sim_state(self, state: np.ndarray) -> dict[str, Any]:
        """Set the flattened MuJoCo state (as `set_init_state` does: forward, success check, observables
        refreshed) and return the observation; the episode step counter is unchanged."""
        self.make_gl_current()
        raw_obs = self.raw.set_init_state(np.asarray(state, dtype=np.float64))
        self._last_raw_obs = raw_obs
        return self._observation(raw_obs)

    def make_gl_current(self) -> None:
        """Make this env's GL context current. robosuite renders into whichever context is current, so with
        several envs in one process (or after another env was closed) frames would come from the wrong one;
        reset/step/set_sim_state call this, and so must code that renders through `.raw` directly."""
        sim = self.raw.env.sim
        context = getattr(sim, "_render_context_offscreen", None) if sim is not None else None
        if context is not None:
            context.gl_ctx.make_current()

    # translation

    def _observation(self, raw_obs: dict[str, Any]) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        if self.cfg.render:
            for camera in self.cfg.cameras:
                image = orient_image(raw_obs[f"{camera}_image"], self.cfg.orientation)
                obs[f"{camera}_image"] = resize_image(
                    image, self.policy_image_size, self.cfg.policy_image_resize
                )
        for key, raw_key in PROPRIO_KEYS.items():
            obs[key] = np.array(raw_obs[raw_key], dtype=np.float64)
        obs["episode_step"] = np.array(self._step, dtype=np.int64)
        obs["task_language"] = self.task.language
        return obs
