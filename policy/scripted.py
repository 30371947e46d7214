"""Rollout policies that need no weights: the scripted expert (`--policy scripted`) and demo replay
(`--policy replay --demo FILE`).

The scripted expert needs privileged simulator state, which the runner's observations do not carry. It keeps
a *shadow* state-only LIBERO env per runner slot, reset as the runner resets the real env (same env seed and
scene options, `RowInfo.env_seed` and `RowInfo.scene_options`, which fix the scene; same init state) and
stepped with the same (float32-rounded) actions. LIBERO is deterministic across processes (LIBERO_SETUP.md,
"Determinism"), so the shadow follows the real env exactly; each step compares the shadow's observed joint
positions with the real ones and counts divergences (`self.divergences`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from zipmo_robot.policy.base import ACTION_DIM, Policy, RowInfo

DUMMY_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
SYNC_TOLERANCE = 1e-6  # max |joint position| difference (rad) between the shadow and the observed env


@functools.cache
def _goal_block(bddl_path: str) -> str:
    """The `(:goal ...)` part of a task's BDDL file."""
    text = Path(bddl_path).read_text()
    start = text.find("(:goal")
    return text[start:] if start >= 0 else ""


class ScriptedPolicy(Policy):
    """The pick-and-place expert of `zipmo_robot.data.expert`, acting through per-row shadow envs.

    Args:
        settle_steps: settle steps the runner's env takes after `set_init_state` (the shadow repeats them).
        seed_offset: added to each row's episode seed for the expert's generator.
    """

    def __init__(self, settle_steps: int = 5, seed_offset: int = 0) -> None:
        self.settle_steps = settle_steps
        self.seed_offset = seed_offset
        self._shadows: dict[int, Any] = {}  # slot -> LiberoEnv (state-only)
        self._experts: dict[int, Any] = {}
        self._joints: dict[int, np.ndarray] = {}  # slot -> the shadow's last observed joint positions (7,)
        self.divergences = 0

    @staticmethod
    def supports(suite: str, task_id: int) -> str | None:
        """None if the pick-and-place expert can act on the task, else the reason: it needs an
        `(On obj dest)` or `(In obj dest)` goal predicate (data/expert.py `PickPlaceExpert.for_env`)."""
        import re

        from zipmo_robot.envs.suites import get_task

        task = get_task(suite, task_id)
        if re.search(r"\(\s*(on|in)\s+\S+\s+\S+\s*\)", _goal_block(str(task.bddl_path)), re.IGNORECASE):
            return None
        return f"task {task_id} ({task.language!r}) has no (On|In obj dest) goal: the expert only picks and places"

    def reset(self, seed: int | None = None) -> None:
        self._experts.clear()
        self._joints.clear()

    def close(self) -> None:
        """Close every shadow env (and say so if a shadow ever lost sync with its real env)."""
        if self.divergences:
            import sys

            print(
                f"scripted policy: the shadow env disagreed with the observed joint positions on "
                f"{self.divergences} steps (> {SYNC_TOLERANCE} rad); its actions were computed from the shadow",
                file=sys.stderr,
            )
        for env in self._shadows.values():
            env.close()
        self._shadows.clear()

    def _shadow(self, row: RowInfo) -> Any:
        from zipmo_robot.envs.libero import LiberoEnv
        from zipmo_robot.envs.spec import EnvConfig

        env = self._shadows.get(row.slot)
        if env is None or (env.cfg.suite, env.cfg.task_id) != (row.suite, row.task_id):
            if env is not None:
                env.close()
            cfg = EnvConfig(
                suite=row.suite,
                task_id=row.task_id,
                render=False,
                settle_steps=self.settle_steps,
                max_steps=10**6,
            )
            env = LiberoEnv(cfg)
            self._shadows[row.slot] = env
        return env

    def act(self, obs: dict[str, Any], rows: list[RowInfo]) -> np.ndarray:
        from zipmo_robot.data.expert import PickPlaceExpert

        out = np.empty((len(rows), ACTION_DIM), dtype=np.float32)
        for i, row in enumerate(rows):
            env = self._shadow(row)
            if row.new_episode or row.slot not in self._experts:
                # the real env's reset call: the env seed fixes the scene, the init state the objects
                options = {"init_state_id": row.init_state_id, **row.scene_options}
                shadow_obs, _ = env.reset(seed=row.env_seed, options=options)
                self._joints[row.slot] = shadow_obs["joint_states"]
                rng = np.random.default_rng(row.seed + self.seed_offset)
                self._experts[row.slot] = PickPlaceExpert.for_env(env.raw.env, rng=rng)
            # the same observable on both sides (robosuite's `robot0_joint_pos` is not `_joint_positions`)
            if "joint_states" in obs:
                if np.abs(np.asarray(obs["joint_states"][i]) - self._joints[row.slot]).max() > SYNC_TOLERANCE:
                    self.divergences += 1
            action = np.clip(self._experts[row.slot].act(env.raw.env), -1.0, 1.0).astype(np.float32)
            shadow_obs, *_ = env.step(action)
            self._joints[row.slot] = shadow_obs["joint_states"]
            out[i] = action
        return out


class ReplayPolicy(Policy):
    """Replays the actions of a demonstration file: the demo recorded from the row's init state when the file
    says so (`init_state_id` attribute), else demo `episode_index mod n`; the dummy action after its end."""

    def __init__(self, path: str | Path) -> None:
        from zipmo_robot.data.hdf5 import iter_demos, read_info

        self.path = Path(path)
        self.info = read_info(self.path)
        self.demos = [
            (d.attrs.get("init_state_id", -1), d.actions.astype(np.float32))
            for d in iter_demos(self.path, load_images=False)
        ]
        self.language = self.info.language

    def reset(self, seed: int | None = None) -> None:
        pass

    def _actions_for(self, row: RowInfo) -> np.ndarray:
        if self.language and row.task_language and row.task_language.strip() != self.language:
            from zipmo_robot.errors import UserError

            raise UserError(
                f"--demo {self.path} holds demos of task {self.language!r} but the episode is task "
                f"{row.task_language!r} ({row.suite} task {row.task_id}); pass --tasks with that task only"
            )
        for init_id, actions in self.demos:
            if int(init_id) == row.init_state_id:
                return actions
        return self.demos[row.episode_index % len(self.demos)][1]

    def act(self, obs: dict[str, Any], rows: list[RowInfo]) -> np.ndarray:
        out = np.empty((len(rows), ACTION_DIM), dtype=np.float32)
        for i, row in enumerate(rows):
            actions = self._actions_for(row)
            out[i] = actions[row.step] if row.step < len(actions) else DUMMY_ACTION
        return out
