"""The policies that ship with the package (`bundled:libero_spatial`, the CPU recipe on all 10 tasks, and
`bundled:libero_spatial_task0`, its single-task variant; issue 9/10): each loads strictly as a ZipMo agent with the settings it was evaluated with, its evaluation ships beside it, the quick start's offline error
offers it by name, and it acts in a real LIBERO env through `rollout` with no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zipmo_robot.checkpoints import loader, trained
from zipmo_robot.errors import UserError

# name -> the tasks it was trained on and evaluated on (None: every task of the suite)
BUNDLES = {"libero_spatial": None, "libero_spatial_task0": [0]}


def test_exactly_these_ship() -> None:
    assert loader.bundled_names() == sorted(BUNDLES)


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_it_ships_with_its_evaluation_and_loads_strictly(name: str) -> None:
    assert name in loader.bundled_names()
    folder = loader.bundled_path(name)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 25 * 2**20, f"{size / 2**20:.1f} MiB: package data must stay under 25 MiB"
    assert not (folder / trained.STATE).exists()  # no optimiser state in the package
    meta = trained.read_meta(folder)
    # evaluated at nfe 5, planning every 4th step, plans guided as in BC (`policy.cfg_scale`, 1 = none)
    want = {"nfe": 5, "replan_every": 4} | ({"cfg_scale": meta["cfg_scale"]} if "cfg_scale" in meta else {})
    assert meta["stage"] == "policy" and meta["agent_defaults"] == want
    report = (folder / "eval_report.md").read_text()
    assert "## atm — zipmo" in report and "95 % Wilson" in report
    records = [json.loads(line) for line in (folder / "eval_results.jsonl").read_text().splitlines()]
    tasks = BUNDLES[name] or list(range(10))
    assert {r["protocol"] for r in records} == {"atm"} and {r["task_id"] for r in records} == set(tasks)
    # trained on exactly those tasks (a single-task head is evaluated on its task only)
    from omegaconf import OmegaConf

    assert OmegaConf.load(folder / "config.yaml").data.tasks == BUNDLES[name]
    # the shipped report is the one its results give
    from zipmo_robot.eval.reports import read_results

    results = read_results(folder / "eval_results.jsonl")
    for task in tasks:
        mine = [r for r in results if r["task_id"] == task]
        wins = sum(r["status"] == "success" for r in mine)
        assert f"| libero_spatial | {task} | {wins} / {len(mine)} |" in report, task
    bundle = loader.load_policy(f"bundled:{name}")  # strict: every key of meta.json's configs
    assert bundle.kind == "policy_head_atm" and bundle.text_encoder["kind"] == "sentence_code"
    # every file is the one meta.json hashed
    for f in (trained.MODEL, trained.EMA):
        assert trained.sha256_file(folder / f) == meta["files"][f]


def test_the_offline_error_offers_them_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIPMO_CACHE", str(tmp_path / "zipmo"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        loader.load_policy("official:atm")
    msg = str(info.value)
    assert "--checkpoint bundled:libero_spatial (" in msg and "on libero_spatial, shipped" in msg
    assert "--checkpoint bundled:libero_spatial_task0 (" in msg and "on libero_spatial task 0 only" in msg
    for name in BUNDLES:  # each with its shipped result, counted from its results file
        records = (loader.bundled_root() / name / "eval_results.jsonl").read_text().splitlines()
        wins = sum(json.loads(line)["status"] == "success" for line in records)
        assert f"{wins}/{len(records)} episodes succeeded (atm)" in msg, name


@pytest.mark.libero
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_it_acts_in_libero_through_rollout(tmp_path: Path, name: str) -> None:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "rollout", "--suite", "libero_spatial", "--tasks", "0",
         "--episodes", "1", "--num-envs", "1", "--checkpoint", f"bundled:{name}", "--max-steps", "9",
         "--no-video", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["steps"] == 9 and record["status"] in ("success", "failure")
    used = json.loads((out / "summary.json").read_text())["policy_resolved"]
    meta = trained.read_meta(loader.bundled_path(name))
    want = (5, 4, meta.get("cfg_scale", 1.0))  # the checkpoint's agent_defaults
    assert (used["nfe"], used["replan_every"], used["cfg_scale"]) == want
