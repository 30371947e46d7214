"""Scene sweep: does `LiberoEnv.reset` give the official scene on every LIBERO task? Writes envs/scene_table.json.

Phase 1 (one process, no renderer, ~3 min): for each of the 130 tasks, which fixtures LIBERO places at random
(`envs.libero.randomised_fixtures`) and hence the reset path ("soft" if none, else "replay"); the table is
written at once. Phase 2 (one subprocess per task, one at a time, ~30 s each on an idle machine): one fresh raw
`OffScreenRenderEnv` runs as an official worker (`env.seed(0)` after construction, then per episode reset +
`set_init_state` + 5 settle steps + a few steps: init states 45, 46 = ATM's worker 9; then `env.seed(7)` and
`env.seed(1042)` with two init states each) and one `LiberoEnv` of the task, after an unrelated episode per
seed, resets to the same (seed, reset index, seeded_at, init state) on the table's path; both cameras (128²,
vertical flip) and the proprio must be byte-identical. It also measures what the old plain soft reset gave.
Results go to a JSONL as each task ends (a killed sweep resumes) and into the table at the end (`--report`
merges a partial run). `--bench N` only times the reset paths, one task per suite.

    MUJOCO_GL=egl python benchmarks/scene_sweep.py --out /tmp/scene_sweep.jsonl [--suites libero_10] [--tasks 9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "envs" / "scene_table.json"
# The raw env's resets: (env seed, reset before which env.seed was called, reset index, init state). Reset 0/1
# are ATM's worker 9 exactly (seed 0 after construction, states 45 then 46); two more seeds follow on the same env.
RESETS: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 0, 45),
    (0, 0, 1, 46),
    (7, 2, 2, 0),
    (7, 2, 3, 1),
    (1042, 4, 4, 10),
    (1042, 4, 5, 11),
)
UNRELATED = (99, 3, 0)  # (seed, init state, reset index): run on our env before each seed's first reset
SETTLE = np.array([0, 0, 0, 0, 0, 0, -1.0])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def static_table(suites: list[str]) -> dict[str, dict[str, Any]]:
    """Phase 1: per task, its fixtures' placement windows, which are random, and the reset path."""
    from zipmo_robot.envs.libero import fixture_samplers, import_libero_envs, randomised_fixtures
    from zipmo_robot.envs.suites import list_tasks

    libero_envs = import_libero_envs()
    out: dict[str, dict[str, Any]] = {}
    for suite in suites:
        for task_id, task in enumerate(list_tasks(suite)):
            raw = libero_envs.env_wrapper.ControlEnv(
                bddl_file_name=str(task.bddl_path),
                has_renderer=False,
                has_offscreen_renderer=False,
                use_camera_obs=False,
            )
            base = raw.env
            windows = {
                name: {
                    "x": np.asarray(s.x_ranges, float).tolist(),
                    "y": np.asarray(s.y_ranges, float).tolist(),
                    "yaw": None if s.rotation is None else np.asarray(s.rotation, float).tolist(),
                }
                for name, s in sorted(fixture_samplers(base).items())
            }
            randomised = randomised_fixtures(base)
            out[f"{suite}/{task_id}"] = {
                "name": task.name,
                "fixtures": windows,
                "randomised_fixtures": randomised,
                "property_samplers": len(base.object_property_initializers),
                "reset_path": "replay" if randomised else "soft",
                "sweep": None,
            }
            raw.close()
            print(f"static {suite}/{task_id}: {randomised or 'fixed'}", flush=True)
    return out


def _views(raw_obs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The compared arrays of a raw LIBERO observation: both cameras flipped vertically (ATM/ZipMo) + proprio."""
    out = {k: np.ascontiguousarray(raw_obs[k][::-1]) for k in ("agentview_image", "robot0_eye_in_hand_image")}
    for key in ("robot0_joint_pos", "robot0_gripper_qpos", "robot0_eef_pos"):
        out[key] = np.asarray(raw_obs[key], dtype=np.float64)
    return out


def _ours(obs: dict[str, Any]) -> dict[str, np.ndarray]:
    keys = {
        "joint_states": "robot0_joint_pos",
        "gripper_states": "robot0_gripper_qpos",
        "ee_pos": "robot0_eef_pos",
    }
    out = {k: obs[k] for k in ("agentview_image", "robot0_eye_in_hand_image")}
    out.update({raw: obs[k] for k, raw in keys.items()})
    return out


def _compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    img = "agentview_image"
    diff = np.abs(a[img].astype(np.int16) - b[img].astype(np.int16))
    return {
        "identical": all(np.array_equal(a[k], b[k]) for k in a),
        "agentview_changed_fraction": float((diff > 0).mean()),
        "agentview_max_abs": int(diff.max()),
        "agentview_mean": [float(a[img].mean()), float(b[img].mean())],
    }


def official_run(task: Any, init_states: np.ndarray) -> tuple[list[tuple[dict, dict]], dict[str, Any]]:
    """One fresh raw LIBERO env (hard resets, as every official loop) runs `RESETS`: `env.seed(seed)` where a
    case says so (reset 0: ATM's worker exactly), reset, `set_init_state`, 5 settle steps, then a few steps."""
    from zipmo_robot.envs.libero import import_libero_envs

    libero_envs = import_libero_envs()
    saved = np.random.get_state()
    t0 = time.perf_counter()
    raw = libero_envs.OffScreenRenderEnv(
        bddl_file_name=str(task.bddl_path), camera_heights=128, camera_widths=128
    )
    build_s = time.perf_counter() - t0
    out, reset_s = [], []
    rng = np.random.default_rng(0)
    for seed, seeded_at, reset_index, init in RESETS:
        if seeded_at == reset_index:
            raw.seed(seed)
        t0 = time.perf_counter()
        raw.reset()
        obs = raw.set_init_state(init_states[init])
        reset_s.append(time.perf_counter() - t0)
        for _ in range(5):
            obs, _, _, _ = raw.step(SETTLE)
        out.append((_views(obs), _fixture_poses(raw.env)))
        for _ in range(5):  # the episode: stepping draws nothing from numpy's global RNG
            raw.step(rng.uniform(-1, 1, 7))
    raw.close()
    np.random.set_state(saved)
    return out, {"build_s": build_s, "hard_reset_s": reset_s}


def _fixture_poses(base: Any) -> dict[str, np.ndarray]:
    model = base.sim.model
    return {
        n: np.concatenate(
            [
                model.body_pos[model.body_name2id(f.root_body)],
                model.body_quat[model.body_name2id(f.root_body)],
            ]
        )
        for n, f in sorted(base.fixtures_dict.items())
    }


def legacy_soft_reset(env: Any, seed: int, init: int) -> dict[str, np.ndarray]:
    """What `LiberoEnv` did before issue 15: numpy seeded with the env seed, a soft reset with the one sampler
    copy a soft-reset env keeps, `set_init_state`, settle steps."""
    from zipmo_robot.envs.libero import seeded_numpy_global_rng, settle

    raw = env.raw
    env.make_gl_current()
    raw.env.object_property_initializers = list(env._property_samplers)
    with seeded_numpy_global_rng(seed):
        raw.reset()
    obs = settle(raw, env.settle_action, 5, raw.set_init_state(env.init_states[init]))
    return _views(obs)


def check_task(suite: str, task_id: int, reset_path: str) -> dict[str, Any]:
    """Phase 2 for one task (runs in its own process)."""
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig
    from zipmo_robot.envs.suites import get_task, load_init_states

    task = get_task(suite, task_id)
    init_states = load_init_states(suite, task_id)
    official, raw_timing = official_run(task, init_states)

    env = LiberoEnv(EnvConfig(suite=suite, task_id=task_id), reset_path=reset_path)
    cases, times = [], {"reset_s": [], "legacy_soft_s": []}
    for (seed, seeded_at, reset_index, init), (ref_views, ref_fixtures) in zip(RESETS, official):
        if reset_index == seeded_at:  # an unrelated episode first: the env's history must not matter
            useed, uinit, ur = UNRELATED
            env.reset(seed=useed, options={"init_state_id": uinit, "reset_index": ur})
            env.step(np.full(7, 0.5))
        t0 = time.perf_counter()
        options = {"init_state_id": init, "reset_index": reset_index, "seeded_at": seeded_at}
        obs, info = env.reset(seed=seed, options=options)
        times["reset_s"].append(time.perf_counter() - t0)
        result = _compare(_ours(obs), ref_views)
        mine = env.fixture_poses()
        result["fixtures_identical"] = all(np.array_equal(mine[k], ref_fixtures[k]) for k in ref_fixtures)
        cases.append({"seed": seed, **options, **result})
        env.step(np.full(7, -0.3))
    legacy = []
    for (seed, _seeded_at, reset_index, init), (ref_views, ref_fixtures) in zip(RESETS, official):
        if reset_index != 0:  # the fresh worker's first reset (what the old default was compared against)
            continue
        t0 = time.perf_counter()
        views = legacy_soft_reset(env, seed, init)
        times["legacy_soft_s"].append(time.perf_counter() - t0)
        mine = env.fixture_poses()
        shift = max(
            (float(np.abs(mine[k][:3] - ref_fixtures[k][:3]).max()) for k in ref_fixtures), default=0.0
        )
        legacy.append(
            {"seed": seed, "reset_index": reset_index, "fixture_shift_m": shift, **_compare(views, ref_views)}
        )
    env.close()
    return {
        "task": f"{suite}/{task_id}",
        "reset_path": reset_path,
        "identical": all(c["identical"] for c in cases),
        "cases": cases,
        "legacy_soft_identical": all(c["identical"] for c in legacy),
        "legacy_soft": legacy,
        "timing": {"ours": times, "official": raw_timing},
    }


def _model_and_state(raw: Any) -> dict[str, np.ndarray]:
    """Everything a reset decides, without rendering: every body's pose in the model and the sim state."""
    model = raw.env.sim.model
    return {
        "body_pos": model.body_pos.copy(),
        "body_quat": model.body_quat.copy(),
        "state": raw.get_sim_state(),
    }


def check_task_state(suite: str, task_id: int, reset_path: str) -> dict[str, Any]:
    """The state-only sweep of one task (no renderer: several times cheaper): after each of `RESETS` + 5 settle
    steps, every body pose of the model and the sim state of `LiberoEnv` (render=False) equal the raw worker's."""
    from zipmo_robot.envs.libero import LiberoEnv, import_libero_envs
    from zipmo_robot.envs.spec import EnvConfig
    from zipmo_robot.envs.suites import get_task, load_init_states

    libero_envs = import_libero_envs()
    task = get_task(suite, task_id)
    init_states = load_init_states(suite, task_id)
    saved = np.random.get_state()
    raw = libero_envs.env_wrapper.ControlEnv(
        bddl_file_name=str(task.bddl_path),
        has_renderer=False,
        has_offscreen_renderer=False,
        use_camera_obs=False,
    )
    official = []
    rng = np.random.default_rng(0)
    for seed, seeded_at, reset_index, init in RESETS:
        if seeded_at == reset_index:
            raw.seed(seed)
        raw.reset()
        raw.set_init_state(init_states[init])
        for _ in range(5):
            raw.step(SETTLE)
        official.append(_model_and_state(raw))
        for _ in range(5):
            raw.step(rng.uniform(-1, 1, 7))
    raw.close()
    np.random.set_state(saved)
    env = LiberoEnv(EnvConfig(suite=suite, task_id=task_id, render=False), reset_path=reset_path)
    cases = []
    for (seed, seeded_at, reset_index, init), ref in zip(RESETS, official):
        if reset_index == seeded_at:
            useed, uinit, ur = UNRELATED
            env.reset(seed=useed, options={"init_state_id": uinit, "reset_index": ur})
            env.step(np.full(7, 0.5))
        options = {"init_state_id": init, "reset_index": reset_index, "seeded_at": seeded_at}
        env.reset(seed=seed, options=options)
        mine = _model_and_state(env.raw)
        same = {k: bool(np.array_equal(mine[k], ref[k])) for k in ref}
        cases.append({"seed": seed, **options, **same, "identical": all(same.values())})
        env.step(np.full(7, -0.3))
    env.close()
    return {
        "task": f"{suite}/{task_id}",
        "mode": "state",
        "reset_path": reset_path,
        "identical": all(c["identical"] for c in cases),
        "cases": cases,
    }


def run_state_sweep(
    table: dict[str, dict[str, Any]], out: Path, chunk: int = 10
) -> dict[str, dict[str, Any]]:
    """Run `check_task_state` over every task of `table`, `chunk` tasks per subprocess, appending to `out`."""
    from tqdm import tqdm

    done = load_results(out)
    todo = [k for k in table if k not in done]
    bar = tqdm(total=len(todo), desc="tasks (state)", unit="task")
    for start in range(0, len(todo), chunk):
        keys = todo[start : start + chunk]
        args = [f"{k}:{table[k]['reset_path']}" for k in keys]
        proc = subprocess.run(
            [sys.executable, __file__, "--state-worker", *args], capture_output=True, text=True, timeout=3600
        )
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                rec = json.loads(line[len("RESULT ") :])
                with out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                done[rec["task"]] = rec
                bar.update(1)
        if proc.returncode != 0:
            print(f"state worker failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
    bar.close()
    return done


def write_table(table: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    from zipmo_robot.files import atomic_write_text

    atomic_write_text(TABLE, json.dumps({**meta, "tasks": table}, indent=1) + "\n")


def summary(table: dict[str, dict[str, Any]]) -> str:
    """The README table: per suite, tasks per reset path, the state-only and the image sweeps' verdicts (tasks
    identical to raw LIBERO / tasks swept), and the old soft reset's verdict on the image-swept tasks."""
    rows = [
        "| suite | tasks | soft path | replay path | state sweep: identical / swept | "
        "image sweep: identical / swept | old soft reset identical (image-swept) |",
        "|---|---|---|---|---|---|---|",
    ]
    order = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]
    for suite in sorted({k.split("/")[0] for k in table}, key=order.index):
        entries = [v for k, v in table.items() if k.split("/")[0] == suite]
        state = [v["state_sweep"] for v in entries if v.get("state_sweep")]
        image = [v["sweep"] for v in entries if v.get("sweep")]
        rows.append(
            f"| {suite} | {len(entries)} | {sum(v['reset_path'] == 'soft' for v in entries)} | "
            f"{sum(v['reset_path'] == 'replay' for v in entries)} | "
            f"{sum(x['identical'] for x in state)} / {len(state)} | {sum(x['identical'] for x in image)} / "
            f"{len(image)} | {sum(x['legacy_soft_identical'] for x in image)} |"
        )
    return "\n".join(rows)


def timing_summary(done: dict[str, dict[str, Any]], table: dict[str, dict[str, Any]]) -> str:
    """Median reset times per suite and path (s, one sweep run): ours on the task's path (the first reset after
    a seed / the next one), the old plain soft reset, and the official fresh worker (hard reset, construction)."""
    rows = [
        "| suite | path | tasks | ours, reset after env.seed | ours, next reset | old soft reset | "
        "official hard reset | official env construction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for key, rec in done.items():
        groups.setdefault((key.split("/")[0], table[key]["reset_path"]), []).append(rec)
    for (suite, path), recs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        pairs = [(c, t) for r in recs for c, t in zip(r["cases"], r["timing"]["ours"]["reset_s"])]
        first = [t for c, t in pairs if c["reset_index"] == c["seeded_at"]]
        later = [t for c, t in pairs if c["reset_index"] > c["seeded_at"]]
        legacy = [t for r in recs for t in r["timing"]["ours"]["legacy_soft_s"]]
        hard = [t for r in recs for t in r["timing"]["official"]["hard_reset_s"]]
        build = [r["timing"]["official"]["build_s"] for r in recs]
        cells = " | ".join(f"{np.median(x):.2f}" for x in (first, later, legacy, hard, build))
        rows.append(f"| {suite} | {path} | {len(recs)} | {cells} |")
    return "\n".join(rows)


def merge_results(table: dict[str, dict[str, Any]], done: dict[str, dict[str, Any]]) -> None:
    """Put each swept task's verdict into its table entry."""
    for key, rec in done.items():
        if key in table:
            table[key]["sweep"] = {
                "identical": rec["identical"],
                "n_cases": len(rec["cases"]),
                "legacy_soft_identical": rec["legacy_soft_identical"],
                "legacy_soft_max_fixture_shift_m": max(c["fixture_shift_m"] for c in rec["legacy_soft"]),
                "legacy_soft_max_changed_fraction": max(
                    c["agentview_changed_fraction"] for c in rec["legacy_soft"]
                ),
            }


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """The per-task records of a sweep JSONL, by task key."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["task"]] = rec
    return done


BENCH_TASKS = (
    ("libero_spatial", 0),
    ("libero_object", 0),
    ("libero_goal", 0),
    ("libero_10", 9),
    ("libero_90", 0),
)


def _timed_reset(env: Any, seed: int, r: int, path: str | None = None) -> float:
    """Seconds of one `LiberoEnv.reset` to (seed, reset r, init state r), on `path` if given."""
    saved = env.reset_path
    env.reset_path = path or saved
    t0 = time.perf_counter()
    env.reset(seed=seed, options={"init_state_id": r, "reset_index": r})
    env.reset_path = saved
    return time.perf_counter() - t0


def bench(repeats: int) -> str:
    """Reset + `set_init_state` + 5 settle steps, median seconds per path, one task per suite, all in one
    process and one run (ratios are what compare): the task's own path for the first reset after a seed, the
    next reset, and a later reset replayed from scratch (r = 1, nothing cached); a plain soft reset; and the
    official fresh worker (construction + first hard reset)."""
    from zipmo_robot.envs.libero import LiberoEnv, import_libero_envs
    from zipmo_robot.envs.spec import EnvConfig
    from zipmo_robot.envs.suites import get_task

    libero_envs = import_libero_envs()
    rows = [
        "| task | path | reset after env.seed | next reset (cached) | reset 1 from scratch | plain soft reset | "
        "official: construction + hard reset |",
        "|---|---|---|---|---|---|---|",
    ]
    for suite, task_id in BENCH_TASKS:
        env = LiberoEnv(EnvConfig(suite=suite, task_id=task_id))
        times: dict[str, list[float]] = {"first": [], "next": [], "scratch": [], "soft": [], "official": []}

        env.reset(seed=12345, options={"init_state_id": 0})  # warm-up (first render, XML compile)
        for k in range(repeats):
            times["first"].append(_timed_reset(env, k, 0))
            times["next"].append(_timed_reset(env, k, 1))
            times["scratch"].append(_timed_reset(env, 100 + k, 1))
            times["soft"].append(_timed_reset(env, k, 0, "soft"))
        env.close()
        for k in range(max(1, repeats // 2)):
            saved = np.random.get_state()
            t0 = time.perf_counter()
            raw = libero_envs.OffScreenRenderEnv(
                bddl_file_name=str(get_task(suite, task_id).bddl_path), camera_heights=128, camera_widths=128
            )
            raw.seed(k)
            raw.reset()
            obs = raw.set_init_state(env.init_states[0])
            for _ in range(5):
                obs, _, _, _ = raw.step(SETTLE)
            times["official"].append(time.perf_counter() - t0)
            raw.close()
            np.random.set_state(saved)
        cells = " | ".join(
            f"{np.median(times[w]):.2f}" for w in ("first", "next", "scratch", "soft", "official")
        )
        rows.append(f"| {suite}/{task_id} | {env.reset_path} | {cells} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="scene_sweep.jsonl", help="per-task results (JSONL; resumed if present)"
    )
    parser.add_argument("--suites", nargs="*", default=None)
    parser.add_argument("--tasks", nargs="*", type=int, default=None, help="task ids (default: all)")
    parser.add_argument("--worker", nargs=3, metavar=("SUITE", "TASK", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--report", action="store_true", help="only merge --out into the table and print it")
    parser.add_argument(
        "--bench", type=int, metavar="N", help="only time each reset path, N repeats per task"
    )
    parser.add_argument(
        "--state-only", action="store_true", help="compare model and sim state only (no renderer, all tasks)"
    )
    parser.add_argument("--state-worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.state_worker:
        for item in args.state_worker:
            key, path = item.split(":")
            suite, task_id = key.split("/")
            print("RESULT " + json.dumps(check_task_state(suite, int(task_id), path)), flush=True)
        return 0
    if args.state_only:
        document = json.loads(TABLE.read_text())
        done = run_state_sweep(document["tasks"], Path(args.out))
        for key, rec in done.items():
            document["tasks"][key]["state_sweep"] = {
                "identical": rec["identical"],
                "n_cases": len(rec["cases"]),
            }
        write_table(document["tasks"], {k: v for k, v in document.items() if k != "tasks"})
        bad = sorted(k for k, rec in done.items() if not rec["identical"])
        print(f"state sweep: {len(done)} tasks, {len(done) - len(bad)} identical; different: {bad or 'none'}")
        return 1 if bad else 0
    if args.bench:
        print(f"CPU: {cpu_name()}; load average before: {os.getloadavg()}")
        print(bench(args.bench))
        print(f"load average after: {os.getloadavg()}")
        return 0
    if args.report:
        document = json.loads(TABLE.read_text())
        done = load_results(Path(args.out))
        merge_results(document["tasks"], done)
        write_table(document["tasks"], {k: v for k, v in document.items() if k != "tasks"})
        print(summary(document["tasks"]) + "\n\n" + timing_summary(done, document["tasks"]))
        bad = [k for k, rec in done.items() if not rec["identical"]]
        print("different from raw LIBERO:", bad or "none")
        return 1 if bad else 0
    if args.worker:
        suite, task_id, path = args.worker
        print("RESULT " + json.dumps(check_task(suite, int(task_id), path)), flush=True)
        return 0

    from tqdm import tqdm
    from zipmo_robot.envs.spec import SUITES

    suites = args.suites or list(SUITES)
    meta = {
        "generated_by": "benchmarks/scene_sweep.py",
        "cpu": cpu_name(),
        "renderer": f"MUJOCO_GL={os.environ['MUJOCO_GL']}",
        "resets": [list(c) for c in RESETS],
    }
    table = json.loads(TABLE.read_text())["tasks"] if TABLE.is_file() else {}
    missing = [s for s in suites if not any(k.startswith(f"{s}/") for k in table)]
    if missing:
        table.update(static_table(missing))
        write_table(table, meta)
    out = Path(args.out)
    done = load_results(out)
    order = {s: n for n, s in enumerate(SUITES)}  # round-robin over suites: a partial sweep covers all five
    todo = sorted(
        (k for k in table if k.split("/")[0] in suites),
        key=lambda k: (int(k.split("/")[1]), order[k.split("/")[0]]),
    )
    todo = [k for k in todo if args.tasks is None or int(k.split("/")[1]) in args.tasks]
    for key in tqdm([k for k in todo if k not in done], desc="tasks", unit="task"):
        suite, task_id = key.split("/")
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", suite, task_id, table[key]["reset_path"]],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{key}: worker failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rec = json.loads(lines[-1][len("RESULT ") :])
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[key] = rec
    merge_results(table, done)
    write_table(table, meta)
    print(summary(table) + "\n\n" + timing_summary(done, table))
    bad = [k for k, rec in done.items() if not rec["identical"]]
    print("different from raw LIBERO:", bad or "none")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
