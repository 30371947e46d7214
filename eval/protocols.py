"""Named LIBERO evaluation protocols: the knobs a success rate depends on, and which init state and seed each
episode gets.

One explicit dict (`PROTOCOLS`), readable in one place. Values and sources: PROTOCOLS.md §1 (ATM), §2 (Tra-MoE),
§3 (ZipMo release) and ZIPMO_REFERENCE.md §7.4. The init state and seed of an episode are pure functions of
(protocol, task, episode index, seed): never of worker count, batch order or how many resets happened.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from zipmo_robot.envs.spec import DUMMY_ACTION, ORIENTATIONS, EnvConfig

INIT_RULES: tuple[str, ...] = ("zipmo_random", "atm_blocks", "sequential")
N_INIT_STATES = 50  # every .pruned_init file of the five suites holds 50 states (PROTOCOLS.md §0)


@dataclass(frozen=True)
class Protocol:
    """How a suite is evaluated.

    Args:
        name: the protocol's name (key of `PROTOCOLS`).
        image_size: render size (square) of both cameras.
        orientation: image orientation given to the policy (see `EnvConfig.orientation`).
        settle_steps: dummy steps after `set_init_state`, inside reset.
        settle_action: the action of those steps (arm still, gripper open).
        max_steps: policy steps before an episode counts as a failure.
        episodes_per_task: episodes per task and seed when the user does not say.
        init_rule: "zipmo_random" (`random.Random(seed + 1000*task).sample(range(50), n_parallel)`, then +1 per
            later reset of a worker, wrapping), "atm_blocks" (worker i walks the block 5i..5i+4: {0,5,...,45},
            then {1,6,...,46}, ...), "sequential" (episode e uses init state e mod 50).
        n_parallel: the official vector width the init-state rule is defined over (10 for ATM and ZipMo).
        seed: the protocol's default seed (ZipMo's `--seed 42`; ATM/Tra-MoE env seed 0).
    """

    name: str
    image_size: int = 128
    orientation: str = "flip_vertical"
    settle_steps: int = 5
    settle_action: tuple[float, ...] = DUMMY_ACTION
    max_steps: int = 600
    episodes_per_task: int = 10
    init_rule: str = "zipmo_random"
    n_parallel: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        if self.init_rule not in INIT_RULES:
            raise ValueError(f"unknown init_rule {self.init_rule!r}; valid: {', '.join(INIT_RULES)}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"unknown orientation {self.orientation!r}; valid: {', '.join(ORIENTATIONS)}")
        if self.n_parallel <= 0 or self.episodes_per_task <= 0 or self.max_steps <= 0:
            raise ValueError(
                f"n_parallel, episodes_per_task and max_steps must be positive, got "
                f"{self.n_parallel}, {self.episodes_per_task}, {self.max_steps}"
            )
        if self.init_rule == "atm_blocks" and N_INIT_STATES % self.n_parallel:
            raise ValueError(f"atm_blocks needs n_parallel dividing {N_INIT_STATES}, got {self.n_parallel}")
        # hydra hands lists over; keep the dataclass hashable and comparable.
        object.__setattr__(self, "settle_action", tuple(float(a) for a in self.settle_action))

    def env_config(self, suite: str, task_id: int, **changes: Any) -> EnvConfig:
        """The `EnvConfig` of one task under this protocol (`changes` override single fields)."""
        cfg = EnvConfig(
            suite=suite,
            task_id=task_id,
            image_size=self.image_size,
            orientation=self.orientation,
            settle_steps=self.settle_steps,
            settle_action=self.settle_action,
            max_steps=self.max_steps,
        )
        return replace(cfg, **changes) if changes else cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settle_action"] = list(self.settle_action)
        return d


PROTOCOLS: dict[str, Protocol] = {
    # ZipMo's released evaluation: 10 episodes per task and seed, 10 distinct random init states per task
    # (scripts/eval_libero_policy.py, build_libero_env; PROTOCOLS.md §3).
    "zipmo_release": Protocol(name="zipmo_release", episodes_per_task=10, init_rule="zipmo_random", seed=42),
    # ATM: 20 episodes per task on the fixed states {0,1,5,6,...,45,46}, env seed 0 (PROTOCOLS.md §1).
    "atm": Protocol(name="atm", episodes_per_task=20, init_rule="atm_blocks", seed=0),
    # Tra-MoE: the ATM engine unchanged (PROTOCOLS.md §2).
    "tramoe": Protocol(name="tramoe", episodes_per_task=20, init_rule="atm_blocks", seed=0),
    # `zipmo-robot rollout` without --protocol: the ZipMo env knobs, init states 0, 1, 2, ... so a short run
    # is easy to reason about (and init state 0 is the golden frame's).
    "default": Protocol(name="default", episodes_per_task=10, init_rule="sequential", seed=42),
}


def get_protocol(name: str) -> Protocol:
    """The named protocol; an unknown name raises `KeyError` listing the known ones."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_from_dict(d: dict[str, Any]) -> Protocol:
    """Build a `Protocol` from a config mapping (e.g. `configs/protocol/<name>.yaml`); unknown keys raise."""
    known = {f.name for f in fields(Protocol)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown protocol field(s) {unknown}; valid fields: {', '.join(sorted(known))}")
    return Protocol(**d)


def init_state_for(protocol: Protocol, task_id: int, episode_index: int, seed: int) -> int:
    """The init-state index (0..49) of episode `episode_index` of task `task_id` (pure function).

    Episode e plays worker `e % n_parallel` at its reset number `e // n_parallel`, as in the official loops.
    """
    if episode_index < 0:
        raise ValueError(f"episode_index must be >= 0, got {episode_index}")
    worker, n_reset = episode_index % protocol.n_parallel, episode_index // protocol.n_parallel
    if protocol.init_rule == "sequential":
        return episode_index % N_INIT_STATES
    if protocol.init_rule == "atm_blocks":
        block = N_INIT_STATES // protocol.n_parallel
        return worker * block + n_reset % block
    # zipmo_random: ZIPMO_REFERENCE.md §7.4 (distinct draw when n_parallel <= 50, else with replacement).
    rng = random.Random(seed + 1000 * task_id)
    if protocol.n_parallel <= N_INIT_STATES:
        first = rng.sample(range(N_INIT_STATES), protocol.n_parallel)
    else:
        first = [rng.randrange(N_INIT_STATES) for _ in range(protocol.n_parallel)]
    return (first[worker] + n_reset) % N_INIT_STATES


def env_seed(protocol: Protocol, task_id: int, episode_index: int, seed: int) -> int:
    """The seed given to `LiberoEnv.reset` (pure function).

    LIBERO re-places the fixed furniture at every reset from numpy's global RNG, so the scene layout depends on
    this seed, not only on the init state. ZipMo seeds worker i of task t with `seed + 1000*t + i`
    (`build_libero_env`); ATM/Tra-MoE build every worker with `env.seed(0)`. Later resets of an official worker
    continue its RNG stream, which a per-episode seed cannot reproduce; the first reset of each worker matches.
    """
    if protocol.init_rule == "atm_blocks":
        return 0
    if protocol.init_rule == "zipmo_random":
        return seed + 1000 * task_id + episode_index % protocol.n_parallel
    return seed + 1000 * task_id + episode_index


def episode_seed(protocol: Protocol, task_id: int, episode_index: int, seed: int) -> int:
    """The seed of the policy's per-row generator for one episode.

    ZipMo's `rollout_seed = seed + 100000*task + rollout_i` (ZIPMO_REFERENCE.md §7.5), with the episode index
    in place of the rollout index so every episode has its own seed.
    """
    return seed + 100000 * task_id + episode_index
