"""Hydra config composition (compose API, not @hydra.main) and writing resolved configs beside results."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def compose(config_name: str, overrides: list[str] | None = None) -> Any:
    """Compose `zipmo_robot/configs/<config_name>.yaml` with hydra overrides; returns a DictConfig.

    A bad override raises `UserError` naming the override and hydra's reason.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from zipmo_robot.cli import UserError

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="zipmo_robot.configs", version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"bad config override in {overrides}: {exc}") from exc


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically (temp file + fsync + rename), so a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_resolved(cfg: Any, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the fully resolved config beside a run's results."""
    path = Path(out_dir) / name
    atomic_write_text(path, to_yaml(cfg))
    return path
