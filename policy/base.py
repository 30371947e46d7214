"""The policy interface the runner calls, and the two trivial policies (`random`, `zero`).

One batched `act` call serves every active env of the runner; rows may belong to different suites, tasks
and episodes. Each row carries a `RowInfo`, so a policy keeps per-row state keyed by `RowInfo.slot` and
resets only that row when `RowInfo.new_episode` is set.

Batched observations (B = number of rows) are a dict of numpy arrays:
    "agentview_image", "robot0_eye_in_hand_image": (B, H, W, 3) uint8, oriented per protocol
    "joint_states": (B, 7) float64, "gripper_states": (B, 2) float64
    "ee_pos": (B, 3), "ee_quat": (B, 4) (xyzw, robosuite convention), "episode_step": (B,) int64
and "task_language": list[str] of length B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

ACTION_DIM = 7


@dataclass(frozen=True)
class RowInfo:
    """Who a batch row is: the runner slot, the episode's identity and its step."""

    slot: int  # runner env slot (stable while an episode runs)
    suite: str
    task_id: int
    task_language: str
    episode_index: int  # index of this episode within its task
    init_state_id: int
    seed: int  # the episode seed: policies seed their per-row generators with it
    step: int  # number of act() calls for this episode before this one (0 at the first)
    env_seed: int  # the seed the runner gave `LiberoEnv.reset` (scene layout; differs from `seed`)
    # the other scene options of that reset (`Episode.scene_options`: the episode's place in its official worker)
    scene_options: dict[str, int] = field(default_factory=dict, hash=False)

    @property
    def new_episode(self) -> bool:
        return self.step == 0


@runtime_checkable
class Policy(Protocol):
    """Everything the runner and the rollout call on a policy. `reset` and `act` are required; the hooks
    below have a default (subclass `Policy` to inherit them, as the built-in policies do)."""

    def reset(self, seed: int | None = None) -> None:
        """Forget all per-row state (all episodes)."""

    def act(self, obs: dict[str, Any], rows: list[RowInfo]) -> np.ndarray:
        """Return actions (B, 7) float32 for the B rows of `obs`."""

    def overlay_views(self, obs: dict[str, Any], rows: list[RowInfo]) -> list[tuple[np.ndarray, ...] | None]:
        """Called after `act` when videos are recorded: per row, the camera images (one per view, as in
        `obs`) to store in the video instead of the raw ones (e.g. with the plan drawn on), or None to
        keep the raw images. Default: None for every row."""
        return [None] * len(rows)

    def episode_info(self, slot: int) -> dict[str, Any]:
        """Called when the episode in `slot` ends: extra fields for its results.jsonl record (`policy_info`),
        e.g. per-stage timing. Default: none."""
        return {}

    def resolved_options(self) -> dict[str, Any]:
        """The options the policy actually runs with, every default decided (e.g. nfe, precision, device),
        written beside the results (config.yaml, summary.json). Default: none."""
        return {}

    @classmethod
    def supports(cls, suite: str, task_id: int) -> str | None:
        """Checked on the class before any env is built: None if the policy can act on the task, else the
        reason it cannot (one line, e.g. "task 3 (...) has no (On|In obj dest) goal"). Default: every task."""
        return None


class ZeroPolicy(Policy):
    """Always the dummy action: arm still, gripper open."""

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: dict[str, Any], rows: list[RowInfo]) -> np.ndarray:
        actions = np.zeros((len(rows), ACTION_DIM), dtype=np.float32)
        actions[:, -1] = -1.0
        return actions


class RandomPolicy(Policy):
    """Uniform actions in [-1, 1]; each row draws from its own generator seeded by the episode seed,
    so an episode's actions do not depend on which other episodes share its batch."""

    def __init__(self) -> None:
        self._rngs: dict[int, np.random.Generator] = {}

    def reset(self, seed: int | None = None) -> None:
        self._rngs.clear()

    def act(self, obs: dict[str, Any], rows: list[RowInfo]) -> np.ndarray:
        out = np.empty((len(rows), ACTION_DIM), dtype=np.float32)
        for i, row in enumerate(rows):
            if row.new_episode or row.slot not in self._rngs:
                self._rngs[row.slot] = np.random.default_rng(row.seed)
            out[i] = self._rngs[row.slot].uniform(-1.0, 1.0, ACTION_DIM)
        return out


# name -> factory of the policies that take no options (`policy.factory` builds the others from their options).
SIMPLE_POLICIES = {"random": RandomPolicy, "zero": ZeroPolicy}
