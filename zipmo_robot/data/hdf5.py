"""LIBERO demonstration files in the official HDF5 layout: a validating reader and a writer.

Layout (LIBERO `scripts/create_dataset.py`): group `data` with attributes `problem_info` (JSON),
`env_args` (JSON), `bddl_file_content`, `bddl_file_name`, `num_demos`, `total`; one group `data/demo_<i>` per
demonstration with `actions (T, 7)`, `states (T, D)`, `rewards (T,)`, `dones (T,)`, `robot_states (T, 9)`
and `obs/{agentview_rgb, eye_in_hand_rgb (T, H, W, 3) uint8, joint_states (T, 7), gripper_states (T, 2),
ee_pos (T, 3), ee_ori (T, 3), ee_states (T, 6)}`. Images are stored as rendered (raw robosuite orientation,
upside down); `obs` may be absent in state-only files written by `collect --render none` before replay.
Files written by `collect` add per demo `layout/{body_pos (B, 3), body_quat (B, 4)}`: the fixture layout LIBERO
sampled into the MuJoCo model for that episode (not part of `states`), which replay needs to show its scene.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_KEYS: tuple[str, ...] = ("agentview_rgb", "eye_in_hand_rgb")
# key -> expected trailing shape (None = any size); checked against the demo length T.
LOW_DIM_KEYS: dict[str, tuple[int, ...]] = {
    "joint_states": (7,),
    "gripper_states": (2,),
    "ee_pos": (3,),
    "ee_ori": (3,),
    "ee_states": (6,),
}
REQUIRED_OBS: tuple[str, ...] = ("joint_states", "gripper_states")
REQUIRED_ATTRS: tuple[str, ...] = ("problem_info", "env_args", "bddl_file_content")
CAMERA_TO_KEY: dict[str, str] = {"agentview": "agentview_rgb", "robot0_eye_in_hand": "eye_in_hand_rgb"}


class DemoFileError(ValueError):
    """A demonstration file that cannot be used: the message names the file, the demo and the key."""

    def __init__(
        self, path: str | os.PathLike, message: str, demo: str | None = None, key: str | None = None
    ):
        where = str(path) + (f" [{demo}]" if demo else "") + (f" key {key!r}" if key else "")
        super().__init__(f"{where}: {message}")
        self.path, self.demo, self.key = str(path), demo, key


@dataclass
class Demo:
    """One demonstration read into memory (arrays as stored; images in raw orientation)."""

    name: str
    actions: np.ndarray  # (T, 7) float
    states: np.ndarray  # (T, D) float64 flattened MuJoCo states, the state before each action
    rewards: np.ndarray  # (T,)
    dones: np.ndarray  # (T,)
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    # fixture layout of the scene it was performed in (group `layout`: body_pos (B, 3), body_quat (B, 4));
    # LIBERO samples it into the MuJoCo model, not the state. Empty for files from elsewhere.
    layout: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class DemoFileInfo:
    """File-level metadata: the task and how the env was built."""

    path: Path
    problem_info: dict[str, Any]
    env_args: dict[str, Any]
    bddl_file_content: str
    demo_names: list[str]

    @property
    def language(self) -> str:
        return str(self.problem_info.get("language_instruction", "")).strip()


def demo_sort_key(name: str) -> tuple[int, str]:
    """Natural order of `demo_<i>` names (demo_2 before demo_10)."""
    match = re.fullmatch(r"demo_(\d+)", name)
    return (int(match.group(1)), name) if match else (1 << 30, name)


def _attr_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_info(path: str | os.PathLike) -> DemoFileInfo:
    """Open and validate the file-level layout (attributes, demo groups) without loading arrays."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DemoFileError(path, f"not a readable HDF5 file ({exc})") from exc
    with f:
        if "data" not in f:
            raise DemoFileError(
                path, "no top-level group 'data' (not a LIBERO demonstration file)", key="data"
            )
        data = f["data"]
        for attr in REQUIRED_ATTRS:
            if attr not in data.attrs:
                raise DemoFileError(
                    path, f"missing attribute of group 'data' (has: {sorted(data.attrs)})", key=attr
                )
        try:
            problem_info = json.loads(_attr_text(data.attrs["problem_info"]))
            env_args = json.loads(_attr_text(data.attrs["env_args"]))
        except json.JSONDecodeError as exc:
            raise DemoFileError(
                path, f"attribute is not valid JSON ({exc})", key="problem_info/env_args"
            ) from exc
        names = sorted((k for k in data.keys() if k.startswith("demo_")), key=demo_sort_key)
        if not names:
            raise DemoFileError(path, "group 'data' holds no demo_<i> groups")
        return DemoFileInfo(path, problem_info, env_args, _attr_text(data.attrs["bddl_file_content"]), names)


def _read_demo(f: Any, path: Path, name: str, load_images: bool, require_images: bool) -> Demo:
    grp = f["data"][name]
    arrays: dict[str, np.ndarray] = {}
    for key in ("actions", "states", "rewards", "dones"):
        if key not in grp:
            raise DemoFileError(path, f"missing dataset (has: {sorted(grp.keys())})", name, key)
        try:
            arrays[key] = grp[key][()]
        except (OSError, ValueError) as exc:
            raise DemoFileError(path, f"unreadable dataset ({exc})", name, key) from exc
    actions = arrays["actions"]
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise DemoFileError(path, f"shape {actions.shape}, expected (T, 7)", name, "actions")
    t = actions.shape[0]
    if t == 0:
        raise DemoFileError(path, "empty demonstration (T = 0)", name, "actions")
    if arrays["states"].ndim != 2 or arrays["states"].shape[0] != t:
        raise DemoFileError(path, f"shape {arrays['states'].shape}, expected ({t}, D)", name, "states")
    for key in ("rewards", "dones"):
        if arrays[key].shape != (t,):
            raise DemoFileError(path, f"shape {arrays[key].shape}, expected ({t},)", name, key)
    obs: dict[str, np.ndarray] = {}
    obs_grp = grp.get("obs")
    if obs_grp is None and require_images:
        raise DemoFileError(
            path,
            "missing group (state-only file: render it with `zipmo-robot collect --render-only`)",
            name,
            "obs",
        )
    if obs_grp is not None:
        for key, tail in LOW_DIM_KEYS.items():
            if key not in obs_grp:
                if key in REQUIRED_OBS:
                    raise DemoFileError(
                        path, f"missing dataset (has: {sorted(obs_grp.keys())})", name, f"obs/{key}"
                    )
                continue
            try:
                value = obs_grp[key][()]
            except (OSError, ValueError) as exc:
                raise DemoFileError(path, f"unreadable dataset ({exc})", name, f"obs/{key}") from exc
            if value.shape != (t, *tail):
                raise DemoFileError(path, f"shape {value.shape}, expected {(t, *tail)}", name, f"obs/{key}")
            obs[key] = value
        for key in IMAGE_KEYS:
            if key not in obs_grp:
                if require_images:
                    raise DemoFileError(
                        path, f"missing dataset (has: {sorted(obs_grp.keys())})", name, f"obs/{key}"
                    )
                continue
            ds = obs_grp[key]
            if len(ds.shape) != 4 or ds.shape[0] != t or ds.shape[3] != 3 or ds.dtype != np.uint8:
                raise DemoFileError(
                    path, f"shape {ds.shape} {ds.dtype}, expected ({t}, H, W, 3) uint8", name, f"obs/{key}"
                )
            if load_images:
                try:
                    obs[key] = ds[()]
                except (OSError, ValueError) as exc:
                    raise DemoFileError(path, f"unreadable dataset ({exc})", name, f"obs/{key}") from exc
    attrs = {k: grp.attrs[k] for k in grp.attrs}
    if "robot_states" in grp:
        attrs["_robot_states"] = grp["robot_states"][()]
    layout = {k: grp["layout"][k][()] for k in grp["layout"]} if "layout" in grp else {}
    return Demo(name, actions, arrays["states"], arrays["rewards"], arrays["dones"], obs, attrs, layout)


def iter_demos(
    path: str | os.PathLike,
    names: list[str] | None = None,
    load_images: bool = True,
    require_images: bool = False,
) -> Iterator[Demo]:
    """Yield validated demos of one file in natural order; a bad demo raises `DemoFileError`."""
    import h5py

    info = read_info(path)
    path = Path(path)
    wanted = info.demo_names if names is None else names
    with h5py.File(path, "r") as f:
        for name in wanted:
            if name not in f["data"]:
                raise DemoFileError(
                    path, f"no such demo (has {len(info.demo_names)}: {info.demo_names[:5]}...)", name
                )
            yield _read_demo(f, path, name, load_images, require_images)


def read_demo(
    path: str | os.PathLike, name: str, load_images: bool = True, require_images: bool = False
) -> Demo:
    """Read one validated demo."""
    return next(iter_demos(path, [name], load_images, require_images))


def validate_file(path: str | os.PathLike, require_images: bool = False) -> DemoFileInfo:
    """Check every demo of a file (shapes and keys, images not loaded); raises `DemoFileError`."""
    info = read_info(path)
    for _ in iter_demos(path, load_images=False, require_images=require_images):
        pass
    return info


def scan_files(
    paths: list[Path], require_images: bool = False
) -> tuple[list[DemoFileInfo], list[tuple[Path, str]]]:
    """Validate many files; returns (good files, [(bad file, reason)]) and never raises for a bad file."""
    good: list[DemoFileInfo] = []
    bad: list[tuple[Path, str]] = []
    for p in paths:
        try:
            good.append(validate_file(p, require_images))
        except DemoFileError as exc:
            bad.append((Path(p), str(exc)))
    return good, bad


# ---------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------


class DemoWriter:
    """Write demonstrations one by one into a new file in the official layout; the file appears atomically.

    Use as a context manager: demos go into `<path>.partial`, renamed to `path` on a clean exit.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        problem_info: dict,
        env_args: dict,
        bddl_file_content: str,
        bddl_file_name: str = "",
    ):
        self.path = Path(path)
        self.problem_info, self.env_args = problem_info, env_args
        self.bddl_file_content, self.bddl_file_name = bddl_file_content, bddl_file_name
        self._file: Any = None
        self._tmp: str | None = None
        self.count = 0
        self.total = 0

    def __enter__(self) -> DemoWriter:
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial"
        )
        os.close(fd)
        self._file = h5py.File(self._tmp, "w")
        data = self._file.create_group("data")
        data.attrs["problem_info"] = json.dumps(self.problem_info)
        data.attrs["env_args"] = json.dumps(self.env_args)
        data.attrs["bddl_file_content"] = self.bddl_file_content
        data.attrs["bddl_file_name"] = self.bddl_file_name
        data.attrs["macros_image_convention"] = "opengl"
        return self

    def add(self, demo: Demo) -> str:
        """Append one demo (renamed to the next `demo_<i>`); returns its name."""
        name = f"demo_{self.count}"
        grp = self._file["data"].create_group(name)
        grp.create_dataset("actions", data=np.asarray(demo.actions, dtype=np.float64))
        grp.create_dataset("states", data=np.asarray(demo.states, dtype=np.float64))
        grp.create_dataset("rewards", data=np.asarray(demo.rewards, dtype=np.uint8))
        grp.create_dataset("dones", data=np.asarray(demo.dones, dtype=np.uint8))
        if demo.obs:
            obs = grp.create_group("obs")
            for key, value in demo.obs.items():
                if key in IMAGE_KEYS:
                    obs.create_dataset(
                        key,
                        data=value,
                        dtype=np.uint8,
                        chunks=(1, *value.shape[1:]),
                        compression="gzip",
                        compression_opts=4,
                    )
                else:
                    obs.create_dataset(key, data=np.asarray(value, dtype=np.float64))
        # robot_states (T, 9) = gripper qpos, eef pos, eef quat (xyzw), as LIBERO's create_dataset stores it.
        robot_states = demo.attrs.get("_robot_states")
        quat = demo.attrs.get("_ee_quat")
        if (
            robot_states is None
            and quat is not None
            and all(k in demo.obs for k in ("gripper_states", "ee_pos"))
        ):
            robot_states = np.concatenate([demo.obs["gripper_states"], demo.obs["ee_pos"], quat], 1)
        if robot_states is not None:
            grp.create_dataset("robot_states", data=np.asarray(robot_states, dtype=np.float64))
        for key, value in demo.layout.items():
            grp.create_dataset(f"layout/{key}", data=np.asarray(value, dtype=np.float64))
        grp.attrs["num_samples"] = demo.length
        for key, value in demo.attrs.items():
            if not key.startswith("_"):
                grp.attrs[key] = value
        self.count += 1
        self.total += demo.length
        self._file.flush()
        return name

    def add_from(self, path: str | os.PathLike, name: str) -> str:
        """Append demo `name` of another file in this layout by copying its group (no re-encoding)."""
        import h5py

        new = f"demo_{self.count}"
        with h5py.File(path, "r") as src:
            src.copy(src["data"][name], self._file["data"], name=new)
            length = int(src["data"][name]["actions"].shape[0])
        self.count += 1
        self.total += length
        self._file.flush()
        return new

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            data = self._file["data"]
            data.attrs["num_demos"] = self.count
            data.attrs["total"] = self.total
            self._file.close()
            if exc_type is None:
                os.chmod(self._tmp, 0o644)  # mkstemp creates 0600; data files are shared
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp and os.path.exists(self._tmp):
                os.unlink(self._tmp)
