"""`LiberoEnv`: one LIBERO task behind the gymnasium API, configured by `EnvConfig`.

The env only translates LIBERO/robosuite into gymnasium terms; each protocol knob is one small function:
`orient_image` (raw / vertical flip / 180° rotation), `resize_image` (render size -> policy size), `settle`
(dummy steps after `set_init_state`), and the time limit in `step`. The init state of an episode is chosen by
the caller (`options={"init_state_id": i}`), so it never depends on how many resets happened.

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
import io
import string
import sys
import weakref
from collections.abc import Iterator
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


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square uint8 frame (H, W, 3) to (size, size, 3) with PIL bilinear (antialiased when
    shrinking); a no-op when the size already matches."""
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

    LIBERO samples fixture positions (written into the MuJoCo *model*, so not part of the init state) from
    the global RNG at every reset, and `env.seed(s)` is just `np.random.seed(s)`. Scoping the seed makes the
    scene a pure function of (task, init state, seed) without leaking global RNG state to the caller.
    """
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


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


class LiberoEnv(gym.Env):
    """One LIBERO task as a gymnasium env, built from an `EnvConfig`.

    `reset(seed, options={"init_state_id": i})` = LIBERO reset -> `set_init_state(init_states[i])` ->
    `cfg.settle_steps` settle steps. `step` reports success as `terminated` and in `info["success"]`, and
    `truncated` once `cfg.max_steps` policy steps have run. Soft resets by default: the robosuite env (and its
    GL context) is reused across episodes, bit-identical to a fresh env (LIBERO_SETUP.md) and ~6x faster;
    `hard_reset=True` (or `cfg.extra["hard_reset"]`) rebuilds the MuJoCo model at every reset.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        cfg: EnvConfig,
        *,
        hard_reset: bool | None = None,
        assets: str | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if render_mode == "rgb_array" and not cfg.render:
            raise ValueError("render_mode='rgb_array' needs cfg.render=True (cameras on)")
        self.cfg = cfg
        self.render_mode = render_mode
        self.hard_reset = bool(cfg.extra.get("hard_reset", False) if hard_reset is None else hard_reset)
        self.task: TaskInfo = get_task(cfg.suite, cfg.task_id)
        self.init_states = load_init_states(cfg.suite, cfg.task_id)
        self.policy_image_size = cfg.policy_image_size or cfg.image_size
        self.settle_action = np.asarray(cfg.settle_action, dtype=np.float64)
        self.observation_space = observation_space(cfg)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        libero_envs = import_libero_envs(assets)
        kwargs: dict[str, Any] = dict(
            bddl_file_name=str(self.task.bddl_path),
            ignore_done=True,  # the time limit is ours (robosuite would raise after its horizon)
            hard_reset=self.hard_reset,
        )
        if cfg.render:
            self._raw = libero_envs.OffScreenRenderEnv(
                camera_names=list(cfg.cameras),
                camera_heights=cfg.image_size,
                camera_widths=cfg.image_size,
                **kwargs,
            )
        else:
            self._raw = libero_envs.env_wrapper.ControlEnv(
                has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, **kwargs
            )
        # Closing must happen before robosuite's atexit `eglTerminate` (registered when the first GL context
        # was made): an atexit hook registered now runs earlier (LIFO) than weakref's own exit hook would.
        self._finalizer = weakref.finalize(self, _close_raw, self._raw)
        atexit.register(self._finalizer)
        self._step = 0
        self._needs_reset = True
        self._init_state_id: int | None = None
        self._last_raw_obs: dict[str, Any] | None = None

    # gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode from init state `options["init_state_id"]` (default 0) of this task.

        `seed` is LIBERO's env seed (`env.seed(seed)` right before the reset; default 0, the ATM env seed and
        the golden frame's): it fixes where LIBERO places the fixtures, which the init state does not cover.
        So the first observation is a pure function of (task, init_state_id, seed, cfg), whatever happened
        before. It also seeds `self.np_random`.
        """
        super().reset(seed=seed)
        layout_seed = DEFAULT_SEED if seed is None else int(seed)
        init_state_id = (options or {}).get("init_state_id", 0)
        if isinstance(init_state_id, np.integer):
            init_state_id = int(init_state_id)
        n = len(self.init_states)
        if (
            not isinstance(init_state_id, int)
            or isinstance(init_state_id, bool)
            or not 0 <= init_state_id < n
        ):
            raise UserError(
                f"init_state_id {init_state_id!r} is out of range for {self.cfg.suite} task "
                f"{self.cfg.task_id}: valid ids are 0..{n - 1}"
            )
        raw = self.raw
        self.make_gl_current()
        with seeded_numpy_global_rng(layout_seed):
            raw.reset()  # a hard reset makes a new GL context, current at creation
        raw_obs = raw.set_init_state(self.init_states[init_state_id])
        raw_obs = settle(raw, self.settle_action, self.cfg.settle_steps, raw_obs)
        self._step = 0
        self._needs_reset = False
        self._init_state_id = init_state_id
        self._last_raw_obs = raw_obs
        success = bool(raw.check_success())
        info = {
            "success": success,
            "init_state_id": init_state_id,
            "seed": layout_seed,
            "settle_steps": self.cfg.settle_steps,
            "task_language": self.task.language,
        }
        return self._observation(raw_obs), info

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
                obs[f"{camera}_image"] = resize_image(image, self.policy_image_size)
        for key, raw_key in PROPRIO_KEYS.items():
            obs[key] = np.array(raw_obs[raw_key], dtype=np.float64)
        obs["episode_step"] = np.array(self._step, dtype=np.int64)
        obs["task_language"] = self.task.language
        return obs
