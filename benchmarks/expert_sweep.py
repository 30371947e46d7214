"""Scripted-expert sweep: success of `PickPlaceExpert` from the fixed init states of a suite's tasks.

State-only envs (no renderer, ~10-25 s per episode on 2 cores), one episode per (task, init state), the
expert's generator seeded with the init state. Each episode is a JSONL line as it ends (a killed sweep
resumes, skipping what the file holds); the per-task table (successes, Wilson 95 %) is printed at the end.
What a suite's expert reaches here decides whether `collect` is worth running on it (README "Scripted expert").

    MUJOCO_GL=egl python benchmarks/expert_sweep.py --suite libero_object --init-states 0-29 \
        --out runs/expert_object.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _done(path: Path) -> set[tuple[int, int]]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: run that episode again
            continue
        keys.add((int(r["task"]), int(r["init_state"])))
    return keys


def run_episode(env, init_state: int, max_steps: int) -> dict:
    """One expert episode from `init_state`; the phases it went through with the step each began."""
    from zipmo_robot.data.collect import start_episode
    from zipmo_robot.data.expert import PickPlaceExpert

    raw = env.raw
    start_episode(env, "init_state", init_state, init_state)
    expert = PickPlaceExpert.for_env(raw.env, rng=np.random.default_rng(init_state))
    phases: list[tuple[str, int]] = []
    success, step = False, 0
    while step < max_steps:
        action = np.clip(expert.act(raw.env), -1.0, 1.0)
        if not phases or phases[-1][0] != expert.phase:
            phases.append((expert.phase, step))
        raw.step(action)
        step += 1
        if raw.check_success():
            success = True
            break
    return {"success": success, "steps": step, "phases": phases, "object": expert.obj, "dest": expert.dest}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default=None, help="task ids, e.g. 0-9 or 1,3 (default: all)")
    p.add_argument("--init-states", default="0-9", help="init-state ids, e.g. 0-29 (default 0-9)")
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--out", required=True, help="JSONL file (appended; a rerun resumes)")
    args = p.parse_args()

    from tqdm import tqdm
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig
    from zipmo_robot.envs.suites import check_suite, list_tasks
    from zipmo_robot.eval.protocols import N_INIT_STATES
    from zipmo_robot.eval.rollout import check_task_ids, parse_tasks
    from zipmo_robot.eval.tables import wilson

    suite = check_suite(args.suite)
    tasks = parse_tasks(args.tasks, len(list_tasks(suite)), suite)  # the eval CLI's "0,3" / "2-5" ids
    check_task_ids(suite, tasks)
    states = parse_tasks(args.init_states, N_INIT_STATES, suite)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    todo = [(t, i) for t in tasks for i in states if (t, i) not in done]
    cpu = platform.processor() or platform.machine()
    with tqdm(total=len(tasks) * len(states), initial=len(tasks) * len(states) - len(todo), unit="ep") as bar:
        env, env_task = None, None
        for t, i in todo:
            if env_task != t:
                if env is not None:
                    env.close()
                env, env_task = LiberoEnv(EnvConfig(suite=suite, task_id=t, render=False)), t
            t0 = time.perf_counter()
            row = {"suite": suite, "task": t, "init_state": i, **run_episode(env, i, args.max_steps)}
            row["seconds"] = round(time.perf_counter() - t0, 2)
            row["cpu"] = cpu
            with open(out, "a") as f:  # one write per line: a kill loses at most the line being written
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            bar.update(1)
        if env is not None:
            env.close()

    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    print(f"| {suite} task | successes | Wilson 95 % | longest success (steps) |")
    print("|---|---|---|---|")
    total = 0
    for t in tasks:
        mine = [r for r in rows if r["task"] == t and r["init_state"] in states]
        k = sum(r["success"] for r in mine)
        total += k
        lo, hi = wilson(k, len(mine)) or (0.0, 0.0)
        longest = max((r["steps"] for r in mine if r["success"]), default=0)
        print(f"| {t} | {k}/{len(mine)} | [{100 * lo:.1f}, {100 * hi:.1f}] | {longest} |")
    n = len(tasks) * len(states)
    print(f"| all | {total}/{n} ({100 * total / max(n, 1):.1f} %) | | |")


if __name__ == "__main__":
    main()
