"""`zipmo-robot validate` on real tiny training runs (VAE, planner, policy trained through the CLI on a real
scripted, preprocessed LIBERO demo): its metrics are the trainer's own validation at the checkpoint's step
(same fixed batches, same weights), EMA weights are the default, bad input fails with exit 2 and the fix.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.libero, pytest.mark.slow]

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
# as tests/test_train.py: tiny model, the one demo used for train and validation, 16 tracks per view
COMMON = ("--size", "tiny", "--threads", "1", "data.n_tracks=16", "data.split=demos", "data.val_split=demos",
          "progress=false", "tensorboard=false")  # fmt: skip
# training validates once, at its last step, on 2 fixed batches of 2
TRAIN = ("--steps", "3", "--batch-size", "2", "--log-every", "3", "val_every=3", "val_batches=2")


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def data(spatial_demo: Path) -> Path:
    """One scripted, preprocessed demo of libero_spatial task 0 (`conftest.spatial_demo`)."""
    return spatial_demo


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """VAE -> planner -> policy (online plans, no plan cache), 3 steps each, validated at step 3."""
    root = tmp_path_factory.mktemp("validate_runs")
    out = {k: root / k for k in ("vae", "planner", "policy")}
    extra = {
        "vae": (),
        "planner": ("--vae", str(out["vae"])),
        "policy": ("--planner", str(out["planner"]), "policy.plan_cache.enabled=false"),
    }
    for stage in ("vae", "planner", "policy"):
        proc = _run(
            "train", stage, "--data", str(data), "--out", str(out[stage]), *COMMON, *TRAIN, *extra[stage]
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return out


def _logged_validation(run: Path) -> dict[str, float]:
    from zipmo_robot.training.trainer import read_metrics

    records = [r for r in read_metrics(run) if any(k.startswith("val/") for k in r)]
    assert [r["step"] for r in records] == [3]
    return {k: v for k, v in records[0].items() if k.startswith("val/")}


def test_validate_equals_the_trainers_validation(data, runs, tmp_path):
    out = tmp_path / "all.json"
    proc = _run("validate", str(runs["vae"]), str(runs["planner"]), str(runs["policy"]), "--data", str(data),
                "--split", "demos", "--weights", "model", "--json", str(out), "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["stage"] for r in records] == ["vae", "planner", "policy"]
    for r in records:
        stage = r["stage"]
        assert r["run"] == str(runs[stage]) and r["step"] == 3 and r["weights"] == "model"
        assert r["split"] == "demos" and r["demos"] == 1 and r["windows"] > 4
        assert (r["batches"], r["batch_size"], r["samples"], r["seed"]) == (2, 2, 4, 12345)
        assert 1 <= r["distinct_windows"] <= 4
        assert all(math.isfinite(v) for v in r["metrics"].values()), r["metrics"]
        logged = _logged_validation(runs[stage])
        assert set(r["metrics"]) == set(logged)
        for k, v in logged.items():  # the same batches through the same code on the same weights
            assert r["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (stage, k)
        assert f"{stage} {runs[stage]} (step 3, model weights)" in proc.stdout
        assert not (runs[stage] / "validation.json").exists()  # --json: one file for all runs
    vae = records[0]["metrics"]
    for k in ("val/epe_px128", "val/epe_px128_heldout", "val/recon_px128", "val/pck_mean", "val/pck@4px"):
        assert k in vae
    assert 0 <= vae["val/pck_mean"] <= 1 and vae["val/epe_px128"] > 0
    # the demo's arm moves: the moving-track error and its no-motion baseline are reported (> 2 px by definition)
    assert vae["val/epe_px128_moving"] > 0 and vae["val/epe_px128_moving_static"] > 0
    assert "val/loss" in records[1]["metrics"] and records[2]["plans"]["source"] == "online"
    planner = records[1]["metrics"]
    # one demo: every row's "other" sentence is its own, so the same rows give exactly the same loss
    assert planner["val/loss_other_text"] == planner["val/loss_text"] > 0
    assert records[2]["metrics"]["val/mse_other_plan"] > 0  # how much the head uses the plan


@pytest.mark.usefixtures("one_thread")
def test_default_is_ema_written_beside_the_run(data, runs):
    from zipmo_robot.cli import main

    assert main(["validate", str(runs["vae"]), "--data", str(data), "--split", "demos", "--batches", "1",
                 "--no-progress"]) == 0  # fmt: skip
    r = json.loads((runs["vae"] / "validation.json").read_text())
    assert r["weights"] == "ema" and r["step"] == 3 and (r["batches"], r["samples"]) == (1, 2)
    assert all(math.isfinite(v) for v in r["metrics"].values())
    # 3 steps of EMA (decay 0.999) are other weights than the trained ones: another loss on the same batch
    assert r["metrics"]["val/loss"] != pytest.approx(_logged_validation(runs["vae"])["val/loss"], rel=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_bad_input_exits_2_with_the_fix(data, runs, tmp_path, capsys):
    proc = _run("validate", str(data), "--data", str(data))
    assert proc.returncode == 2
    assert "not a zipmo-robot checkpoint" in proc.stderr and "zipmo-robot train" in proc.stderr
    assert "Traceback" not in proc.stderr

    from zipmo_robot.cli import main

    # the one demo is in `val`/`demos`: the train split is empty
    assert main(["validate", str(runs["vae"]), "--data", str(data), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "no train demos" in err and "--split" in err
    assert main(["validate", str(runs["vae"]), "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "no_run"), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # a planner whose VAE folder is gone names the override that fixes it
    assert (
        main(["validate", str(runs["planner"]), "--data", str(data), f"planner.vae={tmp_path / 'gone'}"]) == 2
    )
    assert "planner.vae=DIR" in capsys.readouterr().err


def test_a_cached_policy_run_validates_with_online_plans(data, runs, tmp_path):
    """The plan cache holds plans of the *training* windows; training-time validation of a cached run plans
    its validation windows online, so it logs what `validate` (always online) computes."""
    run = tmp_path / "policy_cached"
    proc = _run("train", "policy", "--data", str(data), "--out", str(run), *COMMON, *TRAIN, "--planner",
                str(runs["planner"]), "policy.plan_cache.plans_per_frame=1")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert (run / "plan_cache").is_dir()
    out = tmp_path / "v.json"
    proc = _run("validate", str(run), "--data", str(data), "--split", "demos", "--weights", "model", "--json",
                str(out), "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    got = json.loads(out.read_text())[0]["metrics"]
    for k, v in _logged_validation(run).items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
