"""The CLI front door: instant help without heavy imports, override splitting, clear errors."""

from __future__ import annotations

import subprocess
import sys

from zipmo_robot.cli import COMMANDS, _split_overrides, build_parser


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from zipmo_robot.cli import build_parser; build_parser().format_help(); "
        "heavy = [m for m in ('torch', 'libero', 'robosuite', 'mujoco', 'transformers', 'hydra') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imported heavy modules: {out.stdout.strip()}"


def test_every_registered_command_is_a_subcommand_with_help() -> None:
    """Each command of the registry is a real subcommand (a command whose module failed to import would be
    left out of the parser; searching the help text would still find "bench" inside "benchmark")."""
    import argparse

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(sub.choices) == sorted(COMMANDS)
    for name, command in sub.choices.items():
        assert command.description, f"command {name} has no description"


def test_console_script_help_runs() -> None:
    out = subprocess.run(["zipmo-robot", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "rollout" in out.stdout


def test_split_overrides() -> None:
    flags, overrides = _split_overrides(["rollout", "--suite", "libero_spatial", "env.max_steps=5", "a.b=c"])
    assert flags == ["rollout", "--suite", "libero_spatial"]
    assert overrides == ["env.max_steps=5", "a.b=c"]


def test_unknown_command_is_an_error() -> None:
    out = subprocess.run(["zipmo-robot", "no-such-command"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "invalid choice" in out.stderr
