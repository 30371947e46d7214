"""Build the rollout policy named on the command line. One function per policy family, so each family's
owner edits only its own function.

`make_policy(name, options)` where `options` is a plain dict of the rollout command's settings
(checkpoint, nfe, cfg_scale, precision, device, overlay, demo, suite, tasks, seed, ...).
"""

from __future__ import annotations

from typing import Any

from zipmo_robot.policy.base import SIMPLE_POLICIES, Policy

POLICY_NAMES: tuple[str, ...] = ("zipmo", "random", "zero", "scripted", "replay")


def _make_zipmo(options: dict[str, Any]) -> Policy:
    from zipmo_robot.cli import UserError

    raise UserError("--policy zipmo is not available yet (issue 3/6); use --policy random or zero")


def _make_scripted(options: dict[str, Any]) -> Policy:
    from zipmo_robot.cli import UserError

    raise UserError("--policy scripted is not available yet (issue 4/6); use --policy random or zero")


def _make_replay(options: dict[str, Any]) -> Policy:
    from zipmo_robot.cli import UserError

    raise UserError("--policy replay is not available yet (issue 4/6); use --policy random or zero")


def make_policy(name: str, options: dict[str, Any]) -> Policy:
    """Return a fresh policy; an unknown name raises `UserError` listing the known ones."""
    from zipmo_robot.cli import UserError

    if name in SIMPLE_POLICIES:
        return SIMPLE_POLICIES[name]()
    builders = {"zipmo": _make_zipmo, "scripted": _make_scripted, "replay": _make_replay}
    if name not in builders:
        raise UserError(f"unknown policy {name!r}; available policies: {', '.join(POLICY_NAMES)}")
    return builders[name](options)
