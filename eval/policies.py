"""Which policy serves an evaluation: a built-in name (policy/factory.py) or a user's `module:Class`
implementing the `Policy` protocol (policy/base.py), and what it supports (`Policy.supports`), checked
before any env is built.
"""

from __future__ import annotations

import importlib
from typing import Any

from zipmo_robot.errors import UserError


def is_user_policy(name: str) -> bool:
    return ":" in name


def check_name(name: str) -> None:
    """Fail early (before any file or env) on an unknown policy name or a `module:Class` that does not import."""
    if is_user_policy(name):
        _user_class(name)
        return
    from zipmo_robot.policy.factory import POLICY_NAMES

    if name not in POLICY_NAMES:
        raise UserError(
            f"unknown policy {name!r}; available: {', '.join(POLICY_NAMES)}, or module:Class of your own"
        )


def _user_class(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"--policy {name}: cannot import module {module_name!r} ({exc}); give module:Class with the "
            "module on PYTHONPATH"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise UserError(f"--policy {name}: module {module_name!r} has no attribute {attr!r}")
    return cls


def make(name: str, options: dict[str, Any]) -> Any:
    """A fresh policy: `policy.factory.make_policy(name, options)`, or `module:Class()` for a user policy
    (constructed without arguments; it must implement `reset(seed)` and `act(obs, rows) -> (B, 7)`)."""
    if not is_user_policy(name):
        from zipmo_robot.policy.factory import make_policy

        return make_policy(name, options)
    from zipmo_robot.policy.base import Policy

    attr = name.partition(":")[2]
    cls = _user_class(name)
    try:
        policy = cls()
    except TypeError as exc:
        raise UserError(f"--policy {name}: {attr}() must take no arguments ({exc})") from None
    if not isinstance(policy, Policy):
        raise UserError(
            f"--policy {name}: {attr} does not implement the Policy protocol (policy/base.py): it needs "
            "reset(seed=None) and act(obs, rows) -> actions (B, 7)"
        )
    return policy


def check_support(name: str, suite_tasks: dict[str, list[int]]) -> None:
    """Raise one `UserError` line if the policy cannot act on some of the requested tasks (its class's
    `supports(suite, task_id)` hook, `Policy` protocol; checked before any env is built)."""
    from zipmo_robot.policy.factory import POLICY_CLASSES, policy_class

    if is_user_policy(name):
        cls = _user_class(name)
    elif name in POLICY_CLASSES:
        cls = policy_class(name)
    else:
        return
    check = getattr(cls, "supports", None)
    if check is None:
        return
    bad = [(s, t) for s, tasks in suite_tasks.items() for t in tasks if check(s, t) is not None]
    if not bad:
        return
    from zipmo_robot.envs.suites import list_tasks

    suites = sorted({s for s, _ in bad})
    hint = "; ".join(
        f"{s}: --tasks {','.join(str(t.task_id) for t in list_tasks(s) if check(s, t.task_id) is None)}"
        for s in suites
    )
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise UserError(
        f"--policy {name} cannot run {bad[0][0]} {check(*bad[0])}{more}; tasks it can run: {hint}"
    )
