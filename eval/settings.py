"""Structured-config schemas of the `rollout` and `eval` commands (configs/rollout.yaml, configs/eval.yaml).

Registered with hydra's ConfigStore (`register_schemas`), so an unknown key or a wrong type in a YAML file or
a command-line override is refused before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zipmo_robot.eval.protocols import ProtocolConfig

from zipmo_robot.errors import UserError


@dataclass
class RunnerConfig:
    """How the vector runner's worker processes are managed (envs/runner.py)."""

    start_method: str = "forkserver"  # never fork: no GL context may cross a fork
    reset_timeout: float = 300.0  # s; a reset may build an env (4-20 s, +11 s numba JIT on a first run)
    step_timeout: float = 60.0
    recycle_episodes: int | None = 100  # replace a worker after this many episodes
    recycle_rss_gb: float | None = 4.0  # ... or when its resident memory passes this
    lockstep: bool = False  # wait for resetting envs so every batch holds all active envs
    progress: bool = True


@dataclass
class RolloutConfig:
    """`zipmo-robot rollout`: one suite, one seed (a thin case of the eval engine)."""

    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    suite: str = "libero_spatial"
    tasks: Any = None  # list of task ids, "0,3", "2-5"; null = every task of the suite
    episodes: int | None = None  # per task; null = protocol.episodes_per_task
    num_envs: int = 2
    policy: str | None = None
    seed: int | None = None  # null = protocol.seed
    out: str | None = None
    video: bool = True
    image_size: int | None = None  # null = protocol.image_size
    max_steps: int | None = None  # every suite's cap; null = protocol.max_steps
    retries: int = 2
    assets: str | None = None
    resume: bool = True
    policy_options: Any = field(default_factory=dict)  # schema owned by policy.factory
    runner: RunnerConfig = field(default_factory=RunnerConfig)


@dataclass
class EvalConfig:
    """`zipmo-robot eval`: cells (suite, task, seed, episode) under one protocol."""

    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    suites: Any = None  # list; null = protocol.suites
    tasks: Any = None  # task ids applied to every suite; null = all
    episodes: int | None = None  # per task and seed; null = protocol.episodes_per_task
    seeds: Any = None  # list of ints; null = [protocol.seed] (or 0..n-1 with n checkpoints)
    policy: str = "zipmo"  # a policy name or module:Class
    checkpoint: Any = field(default_factory=list)  # PATH, SUITE=PATH, or one PATH per seed
    num_envs: int = 2
    out: str | None = None
    video: bool = True
    max_steps: int | None = None  # every suite's cap (a protocol override)
    retries: int = 2
    errors_as_failures: bool | None = None  # null = the protocol's convention
    assets: str | None = None
    resume: bool = True
    policy_options: Any = field(default_factory=dict)
    runner: RunnerConfig = field(default_factory=RunnerConfig)


def register_schemas(cs: Any) -> None:
    cs.store(name="rollout_schema", node=RolloutConfig)
    cs.store(name="eval_schema", node=EvalConfig)


def _schema_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for k, v in node.items():
        keys.append(f"{prefix}{k}")
        if isinstance(v, DictConfig):
            keys.extend(_schema_keys(v, f"{prefix}{k}."))
    return keys


def compose_command(config_name: str, user_overrides: list[str], flag_overrides: list[str]) -> Any:
    """Compose `configs/<config_name>.yaml` with the command's flags and the user's trailing `key=value` words.

    The user's words are checked on their own first, so an error quotes only what the user typed: an unknown
    key (also with hydra's `+`/`++` append prefixes, which would otherwise slip past the schema into
    config.yaml) or a bad value raise `UserError` naming the word and the valid keys.
    """
    from omegaconf import OmegaConf
    from zipmo_robot.configs import compose

    base = compose(config_name, [])
    groups = {"protocol"}
    for word in user_overrides:
        key, _, value = word.partition("=")
        if key == "protocol":
            from zipmo_robot.eval.protocols import preset_names

            names = [n for n in preset_names()]
            if value not in names:
                raise UserError(f"unknown protocol {value!r}; known protocols: {', '.join(names)}")
        bare = key.lstrip("+~")
        known = bare in groups or OmegaConf.select(base, bare, default="<missing>") != "<missing>"
        if key.startswith(("+", "~")) or not known:
            top = sorted(k for k in base if not str(k).startswith("_"))
            raise UserError(
                f"unknown setting {bare!r} in {word!r}: `{config_name}` has no such key (settings: "
                f"{', '.join(top)}; nested ones as e.g. runner.step_timeout=30)"
                if not known
                else f"{word!r}: adding or deleting keys is not allowed; {bare!r} exists, set it with "
                f"{bare}=VALUE"
            )
    try:
        compose(config_name, list(user_overrides))
    except UserError as exc:
        cause: BaseException | None = exc.__cause__
        while cause is not None and cause.__cause__ is not None:
            cause = cause.__cause__  # the innermost reason (e.g. omegaconf's type check)
        reason = str(cause or exc).splitlines()[0]
        raise UserError(f"bad setting in {' '.join(user_overrides)!r}: {reason}") from None
    return compose(config_name, list(flag_overrides) + list(user_overrides))
