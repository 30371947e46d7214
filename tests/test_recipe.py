"""The CPU recipe in miniature (issue 9/10): `zipmo-robot recipe libero_spatial_cpu` with the recipe's own
configs, shrunk by command-line overrides to one task, one demo and a few steps per stage, runs collect -> VAE
-> planner -> policy -> eval end to end in real subprocesses and a real LIBERO env, leaves an evaluable
checkpoint, and a rerun skips every finished stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.libero, pytest.mark.slow]

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}


# one demo: train and validate on it; tiny widths; the recipe's own stage overrides stay in force otherwise
EXTRA = ("model=tiny", "data.split=demos", "data.val_split=demos", "data.n_tracks=16", "progress=false")


# the recipe's planner continues in two phases (rounds 5 and 6 of README's log), its policy in one (round 8):
# 2 steps each here
PHASES = ("planner.then.round5.steps=2", "planner.then.round6.steps=2", "policy.then.round8.steps=2")


def _recipe(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    mini = [
        f"data.raw={data / 'raw'}", f"data.pre={data / 'pre'}", "data.tasks=[0]", "data.demos_per_task=1",
        "nproc=1", "vae.steps=3", "planner.steps=3", *PHASES, "policy.steps=3",
        "extra=[" + ",".join(f'"{o}"' for o in EXTRA) + "]",
        "eval.episodes=1", "eval.num_envs=1", "eval.flags=[--max-steps,'12',--no-video]",
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "recipe", "libero_spatial_cpu", "--out", str(out), *mini, *extra],
        env=ENV, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip


def test_recipe_miniature_runs_end_to_end_and_resumes(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training.recipe import compose_recipe

    out, data = tmp_path / "run", tmp_path / "data"
    proc = _recipe(out, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = [json.loads(line) for line in (out / "recipe.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == [
        "collect", "vae", "planner", "planner:round5", "planner:round6", "policy", "policy:round8", "eval"
    ]  # fmt: skip
    assert all(r["returncode"] == 0 and r["seconds"] > 0 for r in records)
    for stage in ("vae", "planner-first", "policy-first"):
        meta = trained.read_meta(out / stage)
        assert meta["stage"] == stage.split("-")[0] and meta["step"] == 3
    # each phase starts from the previous one's weights, with the phase's own overrides on top
    for run, parent in (
        ("planner-round5", "planner-first"), ("planner", "planner-round5"), ("policy", "policy-first")
    ):  # fmt: skip
        meta = trained.read_meta(out / run)
        init = meta["sources"][f"{meta['stage']}_init"]["path"]
        assert meta["step"] == 2 and Path(init).parent == out / parent, run
    # the policy's phases share one plan cache: the second samples no plan again
    assert OmegaConf.load(out / "policy" / "config.yaml").policy.plan_cache.dir == str(
        out / "policy-first" / "plan_cache"
    )
    assert OmegaConf.load(out / "planner" / "config.yaml").data.track_pick == "grid"
    assert OmegaConf.load(out / "planner-round5" / "config.yaml").data.track_pick == "random"
    # a VAE trained here: the planner normalises latents with statistics measured on it, not the release's
    pcfg = trained.read_meta(out / "planner")["planner_config"]
    assert (pcfg["vae_shift"], pcfg["vae_scale"]) != (-0.175, 11.6) and 0 < pcfg["vae_scale"] < 11.6
    assert trained.read_meta(out / "policy")["planner_config"]["vae_scale"] == pcfg["vae_scale"]
    # the recipe's configs are what ran: each of its policy overrides is in the resolved training config
    resolved = OmegaConf.load(out / "policy" / "config.yaml")
    parsed = OverridesParser.create().parse_overrides(
        list(compose_recipe("libero_spatial_cpu").policy.overrides)
    )
    mini = {e.split("=", 1)[0] for e in EXTRA}
    for o in parsed:
        if o.key_or_group in mini:  # the miniature's own setting wins (it comes last)
            continue
        assert OmegaConf.select(resolved, o.key_or_group) == o.value(), o.input_line
    records = [json.loads(line) for line in (out / "eval" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["steps"] == 12 and records[0]["protocol"] == "atm+overrides"
    assert "| libero_spatial | 0 | " in (out / "eval" / "report.md").read_text()
    assert (out / "recipe.yaml").is_file()
    # the failure diagnostics run on the trained planner: eval-tracks uses the text encoder it was trained with
    tracks = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "eval-tracks", str(data / "pre"), "--checkpoint", str(out / "planner"),
         "--split", "all", "--k", "2", "--nfe", "1", "--max-demos", "1", "--stride", "32", "--out", str(tmp_path / "tr")],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert tracks.returncode == 0, tracks.stderr[-3000:]
    assert "MeanT" in (tmp_path / "tr" / "tracks_report.md").read_text()
    # a rerun finds every training stage finished and the eval complete: nothing is retrained
    again = _recipe(out, data)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("vae", "planner", "planner:round5", "planner:round6", "policy", "policy:round8"):
        assert f"[recipe] {stage}: done already, skipped" in again.stdout
    assert trained.read_meta(out / "policy")["step"] == 2


def test_unknown_recipe_and_stage_are_clear_errors(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "zipmo_robot", "recipe", "nope", "--out", str(tmp_path)],
                         env=ENV, capture_output=True, text=True)  # fmt: skip
    assert (
        bad.returncode == 2 and "unknown recipe 'nope'" in bad.stderr and "libero_spatial_cpu" in bad.stderr
    )
    bad = subprocess.run([sys.executable, "-m", "zipmo_robot", "recipe", "libero_spatial_cpu", "--out",
                          str(tmp_path), "--stages", "vae,bake"], env=ENV, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "unknown recipe stage(s) ['bake']" in bad.stderr


def test_exported_checkpoint_runs_with_its_agent_defaults(tmp_path):
    """`trained.export` (how the bundled checkpoint is made) drops the trainer state, can store fp16 weights,
    and its `agent_defaults` set the agent's knobs unless the user gives them; the fp16 copy acts like the
    original up to fp16 rounding. Uses a tiny policy trained here by the CLI (1 demo, 2 steps per stage)."""
    import numpy as np
    from zipmo_robot.policy.base import RowInfo
    from zipmo_robot.policy.factory import make_policy

    from zipmo_robot.checkpoints import trained

    out, data = tmp_path / "run", tmp_path / "data"
    proc = _recipe(out, data, "vae.steps=2", "planner.steps=2", *PHASES, "policy.steps=2", "--stages",
                   "collect,vae,planner,policy")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    dst = trained.export(out / "policy", tmp_path / "bundle", half=True, extra={"notes.txt": out / "recipe.yaml"},
                         agent_defaults={"nfe": 3, "replan_every": 2})  # fmt: skip
    assert sorted(p.name for p in dst.iterdir()) == sorted(
        [trained.META, trained.MODEL, trained.EMA, trained.CONFIG, "notes.txt"]
    )
    # the recipe's BC samples its plans with guidance 8: the export adds it to the agent's defaults
    assert trained.read_meta(dst)["agent_defaults"] == {"nfe": 3, "replan_every": 2, "cfg_scale": 8.0}
    agent = make_policy("zipmo", {"checkpoint": str(dst), "device": "cpu", "precision": "fp32"})
    assert agent.resolved_options()["nfe"] == 3 and agent.resolved_options()["replan_every"] == 2
    mine = make_policy("zipmo", {"checkpoint": str(dst), "device": "cpu", "precision": "fp32", "nfe": 4})
    assert mine.resolved_options()["nfe"] == 4 and mine.resolved_options()["replan_every"] == 2
    # as the CLIs pass them: every knob present, those at PolicyConfig's defaults count as not given
    cli = make_policy("zipmo", {"checkpoint": str(dst), "device": "cpu", "precision": "fp32", "nfe": 10,
                                "replan_every": 1, "cfg_scale": 1.0, "ensemble": "official"})  # fmt: skip
    assert (cli.resolved_options()["nfe"], cli.resolved_options()["replan_every"]) == (3, 2)
    orig = make_policy("zipmo", {"checkpoint": str(out / "policy"), "device": "cpu", "precision": "fp32",
                                 "nfe": 3, "replan_every": 2})  # fmt: skip
    rng = np.random.default_rng(0)
    obs = {"agentview_image": rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8),
           "robot0_eye_in_hand_image": rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8),
           "joint_states": rng.normal(size=(1, 7)), "gripper_states": rng.normal(size=(1, 2))}  # fmt: skip
    row = [RowInfo(0, "libero_spatial", 0, "pick up the black bowl", 0, 0, 7, 0, env_seed=0)]
    a, b = agent.act(obs, row), orig.act(obs, row)
    assert np.isfinite(a).all() and np.abs(a - b).max() < 0.05 * (np.abs(b).max() + 1e-3)


def test_single_task_variant_changes_only_the_head_and_its_evaluation():
    """`libero_spatial_task0_cpu` (how `bundled:libero_spatial_task0` was trained) is libero_spatial_cpu with
    BC on task 0's training demos and the ATM evaluation of task 0: the same demos, VAE and planner (its first
    phase: the variant was trained before the planner's continuation phases)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from zipmo_robot.training.recipe import compose_recipe

    full, one = compose_recipe("libero_spatial_cpu"), compose_recipe("libero_spatial_task0_cpu")
    for key in ("suite", "data", "nproc", "threads", "common", "vae"):
        assert one[key] == full[key], key
    assert (one.planner.steps, one.planner.overrides) == (full.planner.steps, full.planner.overrides)
    assert one.planner.then is None and list(full.planner.then) == ["round5", "round6"]
    assert one.policy.then is None and list(full.policy.then) == ["round8"]
    assert (one.eval.protocol, list(one.eval.tasks), one.eval.episodes) == ("atm", [0], 10)
    assert list(one.eval.flags) == list(full.eval.flags)
    policy = {
        o.key_or_group: o.value()
        for o in OverridesParser.create().parse_overrides(list(one.policy.overrides))
    }
    assert policy["data.tasks"] == [0] and policy["data.split"] == "train"


def test_a_phase_resumes_only_from_its_own_parent(tmp_path):
    """A `<out>/planner` from before the recipe had phases (no `planner_init`) is not continued as the last
    phase: a clear error names the folder to move; a phase started from its parent resumes with `--resume`."""
    from zipmo_robot.errors import UserError
    from zipmo_robot.training.recipe import compose_recipe, stage_commands

    cfg = compose_recipe("libero_spatial_cpu")

    def ckpt(run: Path, step: int, init: Path | None) -> None:
        (run / "checkpoint").mkdir(parents=True)
        sources = (
            {} if init is None else {"planner_init": {"path": str(init / "checkpoint"), "stage": "planner"}}
        )
        (run / "checkpoint" / "meta.json").write_text(json.dumps({"step": step, "sources": sources}))

    out = tmp_path / "run"
    ckpt(out / "planner", 800, None)  # the old single-stage layout
    with pytest.raises(
        UserError, match=r"did not start from .*planner-round5.*move that folder to .*planner-first"
    ):
        stage_commands(cfg, "planner", out)
    (out / "planner").rename(out / "planner-first")
    ckpt(out / "planner-round5", 700, out / "planner-first")
    ckpt(out / "planner", 300, out / "planner-round5")
    cmds = dict(stage_commands(cfg, "planner", out))
    assert cmds["planner"] is None and cmds["planner:round5"] is None  # finished: 800 and 700 steps
    assert "--resume" in cmds["planner:round6"] and "--init" not in cmds["planner:round6"]
    assert "data.track_pick=grid" in cmds["planner:round6"]
