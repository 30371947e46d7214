"""The LIBERO task catalogue: suites, tasks in LIBERO benchmark order, their BDDL and init-state files.

Read straight from the installed LIBERO package without importing `libero.libero.benchmark` (which imports
torch): the task map is parsed as a literal, and the `.pruned_init` files (torch zip archives that hold one
pickled numpy array, no tensor storage) are unpickled directly.
"""

from __future__ import annotations

import ast
import functools
import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from zipmo_robot.envs.setup import libero_package_dir
from zipmo_robot.envs.spec import SUITES

from zipmo_robot.errors import UserError

N_INIT_STATES = 50  # every .pruned_init file of the five suites holds 50 states (PROTOCOLS.md §0)


@dataclass(frozen=True)
class TaskInfo:
    """One LIBERO task: identity, language instruction and the files it is built from."""

    suite: str
    task_id: int  # index in LIBERO benchmark order (task_order_index 0)
    name: str  # file stem, e.g. "KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet"
    language: str  # instruction as LIBERO's benchmark derives it from the name
    bddl_path: Path
    init_states_path: Path


def language_from_name(name: str) -> str:
    """LIBERO's rule: drop a leading "<ROOM>_SCENE<k>_" prefix (libero_10/90), then underscores -> spaces."""
    if name[:1].isupper():
        match = re.search(r"SCENE\d+_", name)
        if match:
            name = name[match.end() :]
    return name.replace("_", " ")


@functools.cache
def _task_map() -> dict[str, tuple[str, ...]]:
    """`libero_task_map` from the installed package, parsed without executing it."""
    path = libero_package_dir() / "benchmark" / "libero_suite_task_map.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "libero_task_map" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return {suite: tuple(names) for suite, names in value.items()}
    raise RuntimeError(f"no `libero_task_map = {{...}}` literal in {path}; unsupported LIBERO version")


def check_suite(suite: str) -> str:
    """Return `suite` if it is known, else raise `UserError` listing the valid suites."""
    if suite not in SUITES:
        raise UserError(f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return suite


@functools.cache
def _list_tasks(suite: str) -> tuple[TaskInfo, ...]:
    root = libero_package_dir()
    names = _task_map()[suite]
    return tuple(
        TaskInfo(
            suite=suite,
            task_id=i,
            name=name,
            language=language_from_name(name),
            bddl_path=root / "bddl_files" / suite / f"{name}.bddl",
            init_states_path=root / "init_files" / suite / f"{name}.pruned_init",
        )
        for i, name in enumerate(names)
    )


def list_tasks(suite: str) -> list[TaskInfo]:
    """All tasks of `suite` in LIBERO benchmark order (10 per suite, 90 for libero_90)."""
    return list(_list_tasks(check_suite(suite)))


def get_task(suite: str, task_id: int) -> TaskInfo:
    """One task; an unknown suite or task id raises `UserError` listing the valid ones."""
    tasks = list_tasks(suite)
    if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 <= task_id < len(tasks):
        listing = "; ".join(f"{t.task_id}: {t.language}" for t in tasks)
        raise UserError(
            f"unknown task id {task_id!r} for suite {suite!r}; valid ids are 0..{len(tasks) - 1}: {listing}"
        )
    return tasks[task_id]


class _NoTensorUnpickler(pickle.Unpickler):
    """Unpickles a torch archive's `data.pkl` that holds only numpy objects; tensors are refused."""

    def persistent_load(self, pid):  # called only for torch tensor storages
        raise pickle.UnpicklingError("archive holds torch tensors")


def read_init_states_file(path: str | Path) -> np.ndarray:
    """Load a LIBERO `.pruned_init`/`.init` file as a float64 array (n_states, D).

    Same values as `torch.load(path, weights_only=False)`; falls back to torch when the file holds tensors.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            states = _NoTensorUnpickler(io.BytesIO(archive.read(member))).load()
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError):
        import torch

        states = torch.load(path, weights_only=False, map_location="cpu")
        if hasattr(states, "numpy"):
            states = states.numpy()
    states = np.asarray(states)
    if states.ndim != 2:
        raise ValueError(f"init-state file {path} holds an array of shape {states.shape}, expected (n, D)")
    return states


def load_init_states(suite: str, task_id: int) -> np.ndarray:
    """The fixed init states of one task, (50, D) float64 (D = 45..123 depending on the scene)."""
    task = get_task(suite, task_id)
    if not task.init_states_path.is_file():
        raise UserError(
            f"init-state file missing: {task.init_states_path}; reinstall LIBERO: "
            "pip install --force-reinstall rlinf-libero==0.1.3"
        )
    return read_init_states_file(task.init_states_path)
