"""Demo splits like ATM (`scripts/split_libero_dataset.py`): per task, the first 90 % of the natsorted demos
train (45 of 50), the rest validate (5); BC subsets are the first N training demos (`bc_train_10`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from zipmo_robot.data.hdf5 import demo_sort_key


@dataclass(frozen=True)
class Split:
    """Demo names of one task per split; `bc` is the first-N subset of `train`."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    bc: tuple[str, ...]


def split_demos(names: Sequence[str], train_ratio: float = 0.9, bc_demos: int | None = 10) -> Split:
    """Split one task's demo names: natsorted, first `ceil`-free `int(n * train_ratio)` train, rest val.

    With 50 demos: 45 train / 5 val (ATM). `bc_demos` (None: all) takes the first ones of train; asking for
    more than there are is an error naming both numbers.
    """
    if not 0.0 < train_ratio <= 1.0:
        raise ValueError(f"train_ratio must be in (0, 1], got {train_ratio}")
    ordered = sorted(names, key=demo_sort_key)
    n_train = int(math.floor(len(ordered) * train_ratio + 1e-9))
    train, val = tuple(ordered[:n_train]), tuple(ordered[n_train:])
    if bc_demos is None:
        bc = train
    else:
        if bc_demos < 1 or bc_demos > len(train):
            raise ValueError(
                f"bc_demos={bc_demos} but the task has {len(train)} training demos (of {len(ordered)})"
            )
        bc = train[:bc_demos]
    return Split(train, val, bc)
