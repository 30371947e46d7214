"""Hydra configs shipped with the package (model sizes, protocols, training stages) and their composition.

`compose(name, overrides)` uses hydra's compose API (never `@hydra.main`), so every CLI command can take
trailing `key=value` overrides; `save_resolved` writes the fully resolved config beside a run's results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Modules that define structured-config dataclasses (the schema of a config group) and register them with
# hydra's ConfigStore through a `register_schemas(cs: ConfigStore) -> None` function. `compose` calls each
# one before composing, so a YAML preset is validated against its dataclass: unknown keys and wrong types
# are refused. Add a module here when it owns a config group.
SCHEMA_MODULES: tuple[str, ...] = (
    "zipmo_robot.eval.protocols",
    "zipmo_robot.eval.settings",
    "zipmo_robot.training.config",
    "zipmo_robot.training.recipe",
    "zipmo_robot.policy.config",
)


def register_schemas() -> None:
    """Register every structured-config schema of `SCHEMA_MODULES` with hydra's ConfigStore (idempotent)."""
    import importlib

    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name in SCHEMA_MODULES:
        importlib.import_module(name).register_schemas(cs)


def compose(config_name: str, overrides: list[str] | None = None) -> Any:
    """Compose `zipmo_robot/configs/<config_name>.yaml` with hydra overrides; returns a DictConfig.

    A bad override raises `UserError` naming the override and hydra's reason.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from zipmo_robot.errors import UserError

    GlobalHydra.instance().clear()
    register_schemas()
    try:
        with initialize_config_module(config_module="zipmo_robot.configs", version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"bad config override in {overrides}: {exc}") from exc


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=True)


def save_resolved(cfg: Any, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the fully resolved config beside a run's results."""
    from zipmo_robot.files import atomic_write_text

    path = Path(out_dir) / name
    atomic_write_text(path, to_yaml(cfg))
    return path
