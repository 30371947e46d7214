"""State replay: re-render a demonstration from its stored simulator states, and check replay fidelity.

Setting a stored flattened MuJoCo state and rendering gives the frames of that step at any resolution and
camera set, in any protocol orientation, without re-simulating. The fixture layout is not in the state (LIBERO
samples it into the model at reset): demos collected here carry it (`Demo.layout`), and `restore_layout`
puts it back before replaying, so the replay shows the scene the demo was performed in. `fidelity` compares re-rendered frames with the
stored ones and re-executes the stored actions from the first state to see whether they reach success again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from zipmo_robot.data.hdf5 import CAMERA_TO_KEY, Demo


@contextmanager
def replay_env(
    suite: str,
    task_id: int,
    image_size: int = 128,
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand"),
    render: bool = True,
) -> Iterator[Any]:
    """A `LiberoEnv` (raw orientation) for replaying one task's demos; closed on exit."""
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig

    cfg = EnvConfig(
        suite=suite,
        task_id=task_id,
        image_size=image_size,
        cameras=tuple(cameras),
        orientation="raw",
        render=render,
    )
    env = LiberoEnv(cfg)
    env.reset(options={"init_state_id": 0})
    try:
        yield env
    finally:
        env.close()


def restore_layout(sim: Any, layout: dict[str, np.ndarray]) -> None:
    """Put a demo's fixture layout (`Demo.layout`: body_pos (B, 3), body_quat (B, 4)) into `sim`'s model, so
    its stored states render in the scene they were recorded in; an empty layout changes nothing."""
    if not layout:
        return
    model = sim.model
    for key in ("body_pos", "body_quat"):
        value = np.asarray(layout[key], dtype=np.float64)
        target = getattr(model, key)
        if value.shape != target.shape:
            from zipmo_robot.errors import UserError

            raise UserError(
                f"stored fixture layout {key} has shape {value.shape}, the env's model {target.shape}: "
                "the demo was recorded with another task or LIBERO version"
            )
        target[:] = value
    sim.forward()


def render_state(
    env: Any, state: np.ndarray, cameras: tuple[str, ...], orientation: str = "raw"
) -> dict[str, np.ndarray]:
    """Set one flattened state and render every camera: {camera: (H, W, 3) uint8} in `orientation`."""
    from zipmo_robot.data.tracks import activate_gl
    from zipmo_robot.envs.libero import orient_image

    activate_gl(env.raw.env.sim)
    raw_obs = env.raw.set_init_state(np.asarray(state, dtype=np.float64))
    return {cam: orient_image(raw_obs[f"{cam}_image"], orientation) for cam in cameras}


def render_states(
    env: Any, states: np.ndarray, cameras: tuple[str, ...], orientation: str = "raw"
) -> dict[str, np.ndarray]:
    """Render a state sequence (T, D): {camera: (T, H, W, 3) uint8}."""
    frames: dict[str, list[np.ndarray]] = {cam: [] for cam in cameras}
    for state in states:
        for cam, image in render_state(env, state, cameras, orientation).items():
            frames[cam].append(image)
    return {cam: np.stack(images) for cam, images in frames.items()}


@dataclass
class Fidelity:
    """Replay fidelity of one demo."""

    mean_abs_pixel_error: dict[str, float]  # re-rendered vs stored frames, per camera (0..255 scale)
    max_abs_pixel_error: dict[str, int]
    frames_compared: int
    action_replay_success: bool  # stored actions from the first stored state reach success
    action_replay_steps: int
    # max |qpos| difference between action replay and stored states. Exact (0) only when the solver's warm
    # start matches the recording (e.g. the env was just reset to the same init state): MuJoCo's
    # `qacc_warmstart` is not part of the stored state, and contact-rich motion amplifies the difference.
    max_state_error: float


def fidelity(
    env: Any, demo: Demo, cameras: tuple[str, ...], frame_stride: int = 1, replay_actions: bool = True
) -> Fidelity:
    """Compare a demo with its replay in `env` (raw-orientation rendering env at the stored image size);
    `replay_actions=False` skips re-executing the actions (reported as not replayed: success False, 0 steps)."""
    mean_err: dict[str, float] = {}
    max_err: dict[str, int] = {}
    idx = np.arange(0, demo.length, frame_stride)
    compared = 0
    for cam in cameras:
        key = CAMERA_TO_KEY[cam]
        if key not in demo.obs:
            continue
        stored = demo.obs[key][idx]
        rendered = render_states(env, demo.states[idx], (cam,), "raw")[cam]
        diff = np.abs(stored.astype(np.int16) - rendered.astype(np.int16))
        mean_err[cam], max_err[cam] = float(diff.mean()), int(diff.max())
        compared = len(idx)
    if not replay_actions:
        return Fidelity(mean_err, max_err, compared, False, 0, float("nan"))
    raw = env.raw
    raw.set_init_state(demo.states[0])
    nq = raw.env.sim.model.nq
    success, steps, max_state = False, 0, 0.0
    for t, action in enumerate(demo.actions):
        if t > 0:
            max_state = max(
                max_state, float(np.abs(raw.get_sim_state()[1 : 1 + nq] - demo.states[t][1 : 1 + nq]).max())
            )
        raw.step(np.asarray(action, dtype=np.float64))
        steps = t + 1
        if raw.check_success():
            success = True
            break
    return Fidelity(mean_err, max_err, compared, success, steps, max_state)
