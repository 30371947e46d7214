"""Named LIBERO evaluation protocols: the knobs a success rate depends on, and which init state and seeds each
episode gets.

One definition per preset: the YAML files of `configs/protocol/` (values and sources in PROTOCOLS.md §1-§4),
validated by the structured-config dataclass `ProtocolConfig` registered with hydra's ConfigStore. The init
state and seeds of an episode are pure functions of (protocol, task, episode index, seed): never of worker
count, batch order or how many resets happened.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from zipmo_robot.envs.spec import IMAGE_RESIZES, ORIENTATIONS, SUITES, EnvConfig

INIT_RULES: tuple[str, ...] = ("zipmo_random", "atm_blocks", "sequential")
ENV_SEED_RULES: tuple[str, ...] = ("zipmo_workers", "fixed", "task_episode", "seed_plus_episode")
HEADS: tuple[str, ...] = ("shared", "per_suite")
N_INIT_STATES = 50  # every .pruned_init file of the five suites holds 50 states (PROTOCOLS.md §0)

# Fields that say what to run by default (overridable selections: --suites, --episodes, --seeds) or how to
# report, not how an episode plays out; every other field is a knob, and changing one relabels the run.
SELECTION_FIELDS: tuple[str, ...] = ("name", "suites", "episodes_per_task", "seed", "errors_as_failures")


def _all_suites(value: int) -> dict[str, int]:
    return {s: value for s in SUITES}


@dataclass
class ProtocolConfig:
    """How LIBERO suites are evaluated (the schema of `configs/protocol/*.yaml`).

    Args:
        name: the preset's name (file stem in configs/protocol).
        suites: suites evaluated when the user does not choose (`--suites`).
        image_size: render size (square) of both cameras.
        policy_image_size: size the images are resized to for the policy (None: the render size).
        policy_image_resize: "pil_bilinear" or "openvla" (JPEG round trip + lanczos3, OpenVLA's
            `resize_image_for_policy`; applied even when the sizes match).
        orientation: "flip_vertical" (ATM/Tra-MoE/ZipMo), "rotate_180" (OpenVLA family, LeRobot) or "raw".
        settle_steps: dummy steps after `set_init_state`, inside reset, no policy query.
        settle_action: the action of those steps (arm still, gripper open).
        max_steps: policy steps before an episode counts as a failure, per suite (all five suites).
        episodes_per_task: episodes per task and seed when the user does not say (`--episodes`).
        init_rule: "zipmo_random" (`random.Random(seed + 1000*task).sample(range(50), n_parallel)`, then +1 per
            later reset of a worker, wrapping), "atm_blocks" (worker i walks the block 5i..5i+4: {0,5,...,45},
            then {1,6,...,46}, ...), "sequential" (episode e uses init state e mod 50).
        n_parallel: the official vector width the init-state and env-seed rules are defined over.
        seed: the default seed axis value (ZipMo `--seed 42`, ATM training seed 0, OpenVLA 7, LeRobot 1000).
        env_seed_rule: seed of `LiberoEnv.reset`: "zipmo_workers" (seed + 1000*task + worker), "fixed"
            (`env_seed` for every episode), "task_episode" (seed + 1000*task + episode), "seed_plus_episode"
            (seed + episode, LeRobot's per-episode seeds).
        env_seed: the constant of the "fixed" rule.
        heads: "shared" (one policy for every suite) or "per_suite" (Tra-MoE: one head per suite).
        errors_as_failures: count an episode still in `error` after its retries as a failure (the OpenVLA
            family's convention) instead of reporting it apart.
    """

    name: str = "custom"
    suites: list[str] = field(default_factory=lambda: list(SUITES))
    image_size: int = 128
    policy_image_size: int | None = None
    policy_image_resize: str = "pil_bilinear"
    orientation: str = "flip_vertical"
    settle_steps: int = 5
    settle_action: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    max_steps: dict[str, int] = field(default_factory=lambda: _all_suites(600))
    episodes_per_task: int = 10
    init_rule: str = "zipmo_random"
    n_parallel: int = 10
    seed: int = 42
    env_seed_rule: str = "zipmo_workers"
    env_seed: int = 0
    heads: str = "shared"
    errors_as_failures: bool = False

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"protocol {self.name!r}: {msg}")

        for attr, valid in (
            ("init_rule", INIT_RULES),
            ("orientation", ORIENTATIONS),
            ("policy_image_resize", IMAGE_RESIZES),
            ("env_seed_rule", ENV_SEED_RULES),
            ("heads", HEADS),
        ):
            if getattr(self, attr) not in valid:
                raise bad(f"unknown {attr} {getattr(self, attr)!r}; valid: {', '.join(valid)}")
        unknown = [s for s in list(self.suites) + list(self.max_steps) if s not in SUITES]
        if unknown:
            raise bad(f"unknown suite(s) {unknown}; valid suites: {', '.join(SUITES)}")
        missing = [s for s in SUITES if s not in self.max_steps]
        if missing:
            raise bad(f"max_steps has no cap for {missing} (give one per suite)")
        if min(self.max_steps.values()) <= 0 or self.n_parallel <= 0 or self.episodes_per_task <= 0:
            raise bad("max_steps, n_parallel and episodes_per_task must be positive")
        if self.settle_steps < 0 or self.image_size <= 0 or (self.policy_image_size or 1) <= 0:
            raise bad("settle_steps must be >= 0 and image sizes positive")
        if len(self.settle_action) != 7:
            raise bad(f"settle_action needs 7 entries, got {len(self.settle_action)}")
        if self.init_rule == "atm_blocks" and N_INIT_STATES % self.n_parallel:
            raise bad(f"atm_blocks needs n_parallel dividing {N_INIT_STATES}, got {self.n_parallel}")
        # hydra hands ListConfig/DictConfig over: plain containers keep equality and JSON simple.
        self.suites = [str(s) for s in self.suites]
        self.settle_action = [float(a) for a in self.settle_action]
        self.max_steps = {s: int(self.max_steps[s]) for s in SUITES}

    def env_config(self, suite: str, task_id: int, **changes: Any) -> EnvConfig:
        """The `EnvConfig` of one task under this protocol (`changes` override single fields)."""
        cfg = EnvConfig(
            suite=suite,
            task_id=task_id,
            image_size=self.image_size,
            policy_image_size=self.policy_image_size,
            policy_image_resize=self.policy_image_resize,
            orientation=self.orientation,
            settle_steps=self.settle_steps,
            settle_action=tuple(self.settle_action),
            max_steps=self.max_steps[suite],
        )
        return replace(cfg, **changes) if changes else cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def knobs(self) -> dict[str, Any]:
        """The fields that decide how an episode plays out (everything but the selections)."""
        return {k: v for k, v in self.to_dict().items() if k not in SELECTION_FIELDS}

    def knob_hash(self) -> str:
        """Content hash of the knobs (16 hex digits): equal hashes, equal episodes."""
        text = json.dumps(self.knobs(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def changed_knobs(self) -> dict[str, Any]:
        """Knobs that differ from the preset this config names, flattened (`max_steps.libero_10`): {} when the
        run is the preset itself, or when the name is not a preset."""
        if self.name not in preset_names():
            return {}
        ref, mine = _flatten(load_preset(self.name).knobs()), _flatten(self.knobs())
        return {k: v for k, v in mine.items() if ref.get(k) != v}

    def label(self) -> str:
        """ "<preset>" or "<preset>+overrides" when any knob was changed (never the bare preset name then)."""
        return f"{self.name}+overrides" if self.changed_knobs() else self.name


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def register_schemas(cs: Any) -> None:
    """Store `ProtocolConfig` as `protocol/schema`: every preset YAML lists it first in its defaults."""
    cs.store(group="protocol", name="schema", node=ProtocolConfig)


def preset_dir() -> Path:
    """configs/protocol of the installed package."""
    from importlib.resources import files

    return Path(str(files("zipmo_robot.configs") / "protocol"))


def preset_names() -> list[str]:
    """The presets shipped in configs/protocol (file stems)."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def protocol_from_dict(d: Any) -> ProtocolConfig:
    """Validate a mapping (a composed `protocol` node or a plain dict) against the schema; unknown keys raise
    `ValueError` naming them."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(d, DictConfig):
        d = OmegaConf.to_container(d, resolve=True)
    d = {k: v for k, v in dict(d).items() if k != "defaults"}
    known = {f.name for f in fields(ProtocolConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown protocol field(s) {unknown}; valid fields: {', '.join(sorted(known))}")
    return ProtocolConfig(**d)


def load_preset(name: str) -> ProtocolConfig:
    """A preset of configs/protocol, validated; an unknown name raises `KeyError` listing the known ones."""
    from omegaconf import OmegaConf

    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown protocol {name!r}; known protocols: {', '.join(preset_names())}")
    return protocol_from_dict(OmegaConf.load(path))


get_protocol = load_preset


def init_state_for(protocol: ProtocolConfig, task_id: int, episode_index: int, seed: int) -> int:
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


def env_seed(protocol: ProtocolConfig, task_id: int, episode_index: int, seed: int) -> int:
    """The seed given to `LiberoEnv.reset` (pure function).

    LIBERO places the fixtures of 88 of the 130 tasks at random at every reset (numpy's global RNG), so the scene
    depends on this seed and on the episode's place in its official worker (`official_reset`), not only on the
    init state (envs/libero.py, "Scenes").
    """
    rule = protocol.env_seed_rule
    if rule == "fixed":
        return protocol.env_seed
    if rule == "zipmo_workers":
        return seed + 1000 * task_id + episode_index % protocol.n_parallel
    if rule == "seed_plus_episode":
        return seed + episode_index
    return seed + 1000 * task_id + episode_index


def official_reset(protocol: ProtocolConfig, episode_index: int) -> tuple[int, int]:
    """`(reset_index, seeded_at)` of an episode in the protocol's official worker (pure function): the resets
    that worker did before it, and the reset before which it called `env.seed` (`LiberoEnv.reset` options).

    Episode e is reset `e // n_parallel` of its worker. ATM/Tra-MoE/ZipMo/OpenVLA seed once after building the
    env ("fixed", "zipmo_workers"); LeRobot resets once unseeded when it builds the env, then seeds before every
    reset ("seed_plus_episode"); "task_episode" gives every episode a fresh worker of its own.
    """
    n_reset = episode_index // protocol.n_parallel
    if protocol.env_seed_rule in ("fixed", "zipmo_workers"):
        return n_reset, 0
    if protocol.env_seed_rule == "seed_plus_episode":
        return 1 + n_reset, 1 + n_reset
    return 0, 0


def episode_seed(protocol: ProtocolConfig, task_id: int, episode_index: int, seed: int) -> int:
    """The seed of the policy's per-row generator for one episode.

    ZipMo's `rollout_seed = seed + 100000*task + rollout_i` (ZIPMO_REFERENCE.md §7.5), with the episode index
    in place of the rollout index so every episode has its own seed.
    """
    return seed + 100000 * task_id + episode_index
