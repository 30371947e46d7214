"""Training end to end at tiny sizes on a real scripted, preprocessed LIBERO demo: each stage's loss falls on a
fixed batch, `--resume` reproduces the uninterrupted run, 2-process DDP (gloo) equals 1 process on the same
global batch, the plan cache holds the agent sampler's plans and resumes, the trained policy loads in
`rollout --checkpoint` and steps a real env (and is evaluated during training), bad checkpoints fail clearly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.libero, pytest.mark.slow]

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": "1"}
# tiny model, one demo used for train and validation, 16 tracks per view
COMMON = ("--size", "tiny", "--threads", "1", "data.n_tracks=16", "data.split=demos", "data.val_split=demos",
          "progress=false", "tensorboard=true")  # fmt: skip


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    return proc


def _train(stage: str, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = _run("train", stage, "--data", str(data), "--out", str(out), *COMMON, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


def _losses(out: Path) -> list[tuple[int, float]]:
    from zipmo_robot.training.trainer import read_metrics

    return [(r["step"], r["train/loss"]) for r in read_metrics(out) if "train/loss" in r]


@pytest.fixture(scope="module")
def data(spatial_demo: Path) -> Path:
    """One scripted, preprocessed demo of libero_spatial task 0 (`conftest.spatial_demo`)."""
    return spatial_demo


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """The three stages chained through the CLI: VAE -> planner (on the VAE) -> policy (on the planner, plan
    cache, one evaluation rollout at the end)."""
    root = tmp_path_factory.mktemp("train_runs")
    out = {k: root / k for k in ("vae", "planner", "policy")}
    _train("vae", data, out["vae"], "--steps", "4", "--batch-size", "2", "--log-every", "1", "val_every=2",
           "val_batches=1")  # fmt: skip
    _train("planner", data, out["planner"], "--vae", str(out["vae"]), "--steps", "4", "--batch-size", "2",
           "--log-every", "1")  # fmt: skip
    _train("policy", data, out["policy"], "--planner", str(out["planner"]), "--steps", "4", "--batch-size",
           "2", "--log-every", "1", "policy.plan_cache.plans_per_frame=1", f"policy.plan_cache.dir={root / 'cache'}",
           "eval.every=4", "eval.episodes=1", "eval.max_steps=3", "eval.video=true")  # fmt: skip
    out["cache"] = root / "cache"
    return out


def _fixed_batch_losses(stage, data_root: Path, steps: int, lr: float) -> list[float]:
    from zipmo_robot.training.data import TrainData, find_demos

    refs = find_demos(data_root, ["libero_spatial"], "demos")
    data = TrainData(refs, ["agentview", "robot0_eye_in_hand"], 16, stage.text, stage.extras)
    batch = stage.prepare(data.batch(0, 0, 4))
    params = [p for p in stage.trainable.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = stage.loss_module(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _stage(name: str, *overrides: str):
    from zipmo_robot.models.sizes import model_sizes
    from zipmo_robot.training.config import compose_train
    from zipmo_robot.training.stages import STAGE_CLASSES

    cfg = compose_train(name, ["model=tiny", "data.n_tracks=16", *overrides])
    torch.manual_seed(0)
    return STAGE_CLASSES[name](cfg, model_sizes(cfg.model), torch.device("cpu"), lambda *a: None)


@pytest.mark.usefixtures("one_thread")
def test_each_stage_loss_falls_on_a_fixed_batch(data, runs):
    vae = _fixed_batch_losses(_stage("vae"), data, 25, 3e-3)
    assert vae[-1] < 0.6 * vae[0], vae
    # data.root: the planner measures its latent normalisation on the trained VAE's latents of these demos
    planner_stage = _stage("planner", f"planner.vae={runs['vae']}", f"data.root={data}", "data.split=demos")
    planner = _fixed_batch_losses(planner_stage, data, 25, 3e-3)
    assert min(planner[-5:]) < 0.8 * planner[0], planner
    policy = _stage("policy", f"planner.vae={runs['vae']}", f"policy.planner={runs['planner']}")
    head = _fixed_batch_losses(policy, data, 25, 3e-3)
    assert head[-1] < 0.5 * head[0], head


def test_cli_runs_write_checkpoint_logs_and_metrics(runs):
    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training.trainer import read_metrics

    for stage in ("vae", "planner", "policy"):
        meta = trained.read_meta(runs[stage])
        assert meta["format"] == trained.FORMAT and meta["stage"] == stage and meta["step"] == 4
        folder = Path(meta["path"])
        for f in (trained.MODEL, trained.EMA, trained.CONFIG, trained.STATE):
            assert (folder / f).is_file(), f
        assert [s for s, _ in _losses(runs[stage])] == [1, 2, 3, 4]
        assert any((runs[stage] / "tb").iterdir())
    val = [r for r in read_metrics(runs["vae"]) if "val/epe_px128" in r]
    assert [r["step"] for r in val] == [2, 4] and 0 <= val[-1]["val/pck_mean"] <= 1
    # the planner records the VAE it was trained on by content hash; the policy its planner and text encoder
    pmeta = trained.read_meta(runs["planner"])
    assert pmeta["sources"]["vae"]["sha256"] == trained.read_meta(runs["vae"])["files"][trained.MODEL]
    assert pmeta["text_encoder"] == {"kind": "sentence_code", "dim": 16}  # tiny width: no BERT
    meta = trained.read_meta(runs["policy"])
    assert meta["sources"]["planner"]["sha256"] == pmeta["files"][trained.MODEL]
    assert meta["text_encoder"] == pmeta["text_encoder"] and meta["nfe"] == 10
    evals = [r for r in read_metrics(runs["policy"]) if "eval/success_rate" in r]
    assert len(evals) == 1 and evals[0]["eval/episodes"] == 1 and evals[0]["step"] == 4
    assert list((runs["policy"] / "eval" / "step_0000004" / "videos").glob("*.mp4"))


@pytest.mark.parametrize("stage", ["vae", "policy"])
def test_resume_reproduces_the_uninterrupted_run(stage, data, runs, tmp_path):
    extra = {
        "vae": (),
        "policy": (
            "--planner",
            str(runs["planner"]),
            "policy.plan_cache.plans_per_frame=1",
            f"policy.plan_cache.dir={runs['cache']}",
        ),  # fmt: skip
    }[stage]
    args = ("--steps", "5", "--batch-size", "2", "--log-every", "1", "--save-every", "100", *extra)
    _train(stage, data, tmp_path / "a", *args)
    _train(stage, data, tmp_path / "b", *args, "stop_after=2")
    assert [s for s, _ in _losses(tmp_path / "b")] == [1, 2]
    _train(stage, data, tmp_path / "b", *args, "--resume")
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [s for s, _ in b] == [1, 2, 3, 4, 5]
    assert a == b  # bit-identical per-step losses on CPU
    from zipmo_robot.checkpoints import trained

    wa = trained.read_weights(tmp_path / "a", trained.EMA)
    wb = trained.read_weights(tmp_path / "b", trained.EMA)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(data, runs, tmp_path):
    args = ("train", "planner", "--data", str(data), "--vae", str(runs["vae"]), *COMMON, "--steps", "3",
            "--batch-size", "4", "--log-every", "1", "tensorboard=false")  # fmt: skip
    one = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args, "--out", str(tmp_path / "one")],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "zipmo_robot", *args, "--out", str(tmp_path / "two")],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]
    assert "over 2 process(es)" in two.stdout
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in a], [v for _, v in b], rtol=1e-5, atol=1e-6)
    from zipmo_robot.checkpoints import trained

    wa = trained.read_weights(tmp_path / "one", trained.MODEL)
    wb = trained.read_weights(tmp_path / "two", trained.MODEL)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_plan_cache_holds_the_agent_samplers_plans_and_resumes(data, runs, tmp_path):
    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training.data import TrainData, find_demos
    from zipmo_robot.training.plan_cache import PlanCache
    from zipmo_robot.training.stages import frames_to_float, plan

    stage = _stage("policy", f"policy.planner={runs['planner']}")
    refs = find_demos(data, ["libero_spatial"], "demos")
    d = TrainData(refs, ["agentview", "robot0_eye_in_hand"], 16, stage.text, stage.extras)
    sha = trained.read_meta(runs["planner"])["files"][trained.MODEL]
    kw = dict(plans_per_frame=1, nfe=2, precision="fp32", chunk_frames=48, batch=16, dtype="float32")
    cache = PlanCache(tmp_path, d, stage.planner, sha, **kw)
    first = cache.build(progress=False)
    assert first["plans"] == len(d) and cache.missing() == []
    cache.chunk_path(1).unlink()
    again = PlanCache(tmp_path, d, stage.planner, sha, **kw)
    assert again.missing() == [1]
    assert again.build(progress=False)["plans"] == 48  # only the lost chunk is sampled again
    idx = torch.tensor([0, 50, len(d) - 1])
    got = again.get(idx, torch.zeros(3, dtype=torch.int64))
    for row, i in enumerate(idx.tolist()):
        frames, txt, step = d.frame_inputs(i)
        want = plan(stage.planner, frames_to_float(torch.from_numpy(frames)[None]), torch.from_numpy(txt)[None, None],
                    torch.tensor([step]), [again._seed(i, 0)], 2, "fp32")  # fmt: skip
        torch.testing.assert_close(got[row], want[0], rtol=1e-5, atol=1e-5)
    other = PlanCache(tmp_path, d, stage.planner, "another planner", **kw)
    assert other.dir != again.dir and other.missing() == list(range(other.n_chunks))


@pytest.mark.usefixtures("one_thread")
def test_guided_plans_are_cached_apart_recorded_and_used_by_the_agent(data, runs, tmp_path):
    """`policy.cfg_scale`: BC's plans are the agent's sampler with guidance on the sentence (its own cache
    key), and the trained policy's agent samples the same way unless told otherwise."""
    from zipmo_robot.policy.factory import make_policy

    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training.data import TrainData, find_demos
    from zipmo_robot.training.plan_cache import PlanCache
    from zipmo_robot.training.stages import frames_to_float, plan

    stage = _stage("policy", f"policy.planner={runs['planner']}")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a 4-step planner's cross-attention outputs are ~0 (zero init): wake them up
        for block in stage.planner.backbone:
            w = block.cross_attn.out_proj.weight
            w.copy_(0.1 * torch.randn(w.shape, generator=gen))
    refs = find_demos(data, ["libero_spatial"], "demos")
    d = TrainData(refs, ["agentview", "robot0_eye_in_hand"], 16, stage.text, stage.extras)
    kw = dict(plans_per_frame=1, nfe=2, precision="fp32", chunk_frames=512, batch=64, dtype="float32")
    plain = PlanCache(tmp_path, d, stage.planner, "sha", **kw)
    guided = PlanCache(tmp_path, d, stage.planner, "sha", cfg_scale=4.0, **kw)
    assert guided.dir != plain.dir and plain.fields.get("cfg_scale") is None
    guided.build(progress=False)
    frames, txt, step = d.frame_inputs(7)
    args = (stage.planner, frames_to_float(torch.from_numpy(frames)[None]), torch.from_numpy(txt)[None, None],
            torch.tensor([step]), [guided._seed(7, 0)], 2, "fp32")  # fmt: skip
    got = guided.get(torch.tensor([7]), torch.zeros(1, dtype=torch.int64))[0]
    torch.testing.assert_close(got, plan(*args, 4.0)[0], rtol=1e-5, atol=1e-5)
    assert (got - plan(*args)[0]).abs().max() > 1e-3  # guidance changed the plan
    out = tmp_path / "policy_cfg"
    _train("policy", data, out, "--planner", str(runs["planner"]), "--steps", "2", "--batch-size", "2",
           "policy.cfg_scale=4", "policy.plan_cache.plans_per_frame=1", "policy.nfe=2")  # fmt: skip
    meta = trained.read_meta(out)
    assert meta["cfg_scale"] == 4.0 and meta["agent_defaults"] == {"cfg_scale": 4.0}
    assert make_policy("zipmo", {"checkpoint": str(out)}).config.cfg_scale == 4.0
    assert make_policy("zipmo", {"checkpoint": str(out), "cfg_scale": 2.0}).config.cfg_scale == 2.0


@pytest.mark.usefixtures("one_thread")
def test_head_on_true_latents_gets_the_planners_targets_and_trains(data, runs, tmp_path):
    """`policy.plans=vae` (the diagnostic upper bound): the head's latents are exactly the normalised VAE
    posterior means the planner was trained to produce for the window's tracks, and no plan cache is built."""
    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training.data import TrainData, find_demos
    from zipmo_robot.training.stages import frames_to_float

    stage = _stage("policy", f"policy.planner={runs['planner']}", "policy.plans=vae")
    refs = find_demos(data, ["libero_spatial"], "demos")
    d = TrainData(refs, ["agentview", "robot0_eye_in_hand"], 16, stage.text, stage.extras)
    raw = d.batch(0, 0, 3)
    got = stage.prepare(raw)["latents"]
    p = stage.planner
    assert got.shape == (3, *p.latent_shape)
    for v in range(2):  # view v's 256 tokens from its 8 encoded tracks and its own start frame
        frames = frames_to_float(raw["start_frames"][:, v])
        want = p.encode_targets(raw["tracks"][:, v, :8], frames, None)
        torch.testing.assert_close(got[:, v * 256 : (v + 1) * 256], want)
    out = tmp_path / "policy_vae"
    _train("policy", data, out, "--planner", str(runs["planner"]), "--steps", "2", "--batch-size", "2",
           "policy.plans=vae")  # fmt: skip
    assert trained.read_meta(out)["plans"] == "vae" and not (out / "plan_cache").exists()
    bad = _run("train", "policy", "--data", str(data), "--out", str(tmp_path / "bad"), *COMMON,
               "--planner", str(runs["planner"]), "policy.plans=oracle")  # fmt: skip
    assert bad.returncode != 0 and "policy.plans='oracle' is not one of" in bad.stderr


def test_grid_track_pick_is_one_even_draw_of_the_latest_query_grid(data, runs, tmp_path):
    """`data.track_pick=grid`: every draw of a window gives the same tracks (the planner's target is a function
    of the window), all from the latest query grid at or before the start, both halves spread over that grid;
    the planner trains with it and a bad value is refused by name."""
    from zipmo_robot.data.preprocess import load_preprocessed
    from zipmo_robot.data.windows import WindowDataset, pick_grid_tracks
    from zipmo_robot.training.data import find_demos

    path = find_demos(data, ["libero_spatial"], "demos")[0].path
    grid = WindowDataset([path], n_tracks=16, pick="grid")
    rand = WindowDataset([path], n_tracks=16)
    i = len(grid) // 2
    a, b = (grid.get(i, np.random.default_rng(s))["tracks"] for s in (0, 1))
    np.testing.assert_array_equal(a, b)
    r0, r1 = (rand.get(i, np.random.default_rng(s))["tracks"] for s in (0, 1))
    assert not np.array_equal(r0, r1)
    demo = load_preprocessed(path)
    for cam in ("agentview", "robot0_eye_in_hand"):
        query, start = demo["query_frame"][cam], 40
        cand = demo["visible"][cam][start].astype(bool) & (query <= start)
        picked = pick_grid_tracks(cand, query, 32)
        latest = np.flatnonzero(cand & (query == query[cand].max()))
        assert len(set(picked.tolist())) == 32 and set(picked.tolist()) <= set(latest.tolist())
        assert query[latest[0]] == 32  # re-queried every 16 frames: the grid of frame 32
        for half in (picked[:16], picked[16:]):  # each half spans the grid (row-major: top to bottom)
            pos = np.searchsorted(latest, np.sort(half))
            assert pos[0] <= 0.1 * len(latest) and pos[-1] >= 0.9 * (len(latest) - 1)
    out = tmp_path / "planner_grid"
    _train("planner", data, out, "--vae", str(runs["vae"]), "--steps", "2", "--batch-size", "2",
           "data.track_pick=grid")  # fmt: skip
    assert (out / "checkpoint" / "meta.json").exists()
    bad = _run("train", "planner", "--data", str(data), "--out", str(tmp_path / "bad"), *COMMON,
               "--vae", str(runs["vae"]), "data.track_pick=nearest")  # fmt: skip
    assert bad.returncode != 0 and "data.track_pick='nearest' must be 'random' or 'grid'" in bad.stderr
    both = _run("train", "planner", "--data", str(data), "--out", str(tmp_path / "both"), *COMMON,
                "--vae", str(runs["vae"]), "data.track_pick=grid", "data.moving_fraction=0.5")  # fmt: skip
    assert both.returncode != 0 and "data.moving_fraction=0.5 would be ignored" in both.stderr


def test_trained_policy_steps_a_real_env_through_rollout(runs, tmp_path):
    out = tmp_path / "rollout"
    proc = _run("rollout", "--policy", "zipmo", "--checkpoint", str(runs["policy"]), "--suite", "libero_spatial",
                "--tasks", "0", "--episodes", "1", "--max-steps", "3", "--num-envs", "1", "--no-video",
                "--device", "cpu", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] in ("success", "failure")
    assert records[0]["steps"] == 3


def test_corrupt_or_mismatched_checkpoints_give_one_clear_error(runs, tmp_path):
    from zipmo_robot.checkpoints import trained
    from zipmo_robot.errors import UserError

    src = trained.resolve_dir(runs["policy"])
    bundle = trained.load_policy_bundle(src)
    assert bundle.planner.cfg.variant == "libero_atm" and bundle.text_encoder["kind"] == "sentence_code"

    damaged = tmp_path / "damaged"
    shutil.copytree(src, damaged)
    data = (damaged / trained.MODEL).read_bytes()
    (damaged / trained.MODEL).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="sha256"):
        trained.load_policy_bundle(damaged)

    mismatched = tmp_path / "mismatched"
    shutil.copytree(src, mismatched)
    meta = json.loads((mismatched / trained.META).read_text())
    meta["head_config"]["depth"] = 2
    (mismatched / trained.META).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="missing key"):
        trained.load_policy_bundle(mismatched)

    with pytest.raises(UserError, match="is a 'vae' checkpoint"):
        trained.load_policy_bundle(runs["vae"])
    with pytest.raises(UserError, match="not a zipmo-robot checkpoint"):
        trained.load_policy_bundle(tmp_path)

    proc = _run("rollout", "--policy", "zipmo", "--checkpoint", str(damaged), "--tasks", "0", "--episodes", "1",
                "--max-steps", "2", "--num-envs", "1", "--out", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 2 and "sha256" in proc.stderr, proc.stderr[-2000:]
    resumed = _run(
        "train", "vae", "--data", str(tmp_path), "--out", str(tmp_path / "none"), "--resume", *COMMON
    )
    assert resumed.returncode == 2 and "no checkpoint to resume" in resumed.stderr


def test_lr_schedules_and_atomic_checkpoint_swap(tmp_path):
    from omegaconf import OmegaConf

    from zipmo_robot.checkpoints import trained
    from zipmo_robot.training.trainer import lr_factor

    paper = OmegaConf.create({"lr": 1e-4, "min_lr": 0.0, "schedule": "wsd", "warmup_steps": 300,
                              "warmup_start_factor": 0.0, "decay_fraction": 0.1})  # fmt: skip
    f = [lr_factor(s, 1000, paper) for s in range(1000)]
    assert f[0] == 0.0 and f[150] == 0.5 and f[300] == f[899] == 1.0 and f[950] < 1.0 and f[999] == 0.0
    released = OmegaConf.create({"lr": 1e-4, "min_lr": 1e-8, "schedule": "cosine", "warmup_steps": 1000,
                                 "warmup_start_factor": 1e-8, "decay_fraction": 0.0})  # fmt: skip
    g = [lr_factor(s, 5000, released) for s in (0, 1000, 3000, 4999)]
    assert g[0] == pytest.approx(1e-8) and g[1] == 1.0 and g[2] == pytest.approx(0.5 + 0.5e-4, rel=1e-3)
    assert g[3] == pytest.approx(1e-4, rel=1e-2)

    sd = {"w": torch.arange(4.0)}
    path = trained.save(tmp_path / "checkpoint", stage="vae", kind="vae", model=sd, meta={"step": 1})
    # a swap killed between its two renames leaves only `<name>.old`: the loader reads it
    os.replace(path, tmp_path / "checkpoint.old")
    assert trained.read_meta(tmp_path)["step"] == 1
    assert torch.equal(trained.read_weights(tmp_path, trained.MODEL)["w"], sd["w"])
