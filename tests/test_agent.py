"""RollingReplanner behaviour beyond the fixtures: reproducibility, per-row independence in mixed batches,
per-row resets, the episode step, the head's training loss, plan overlays and the missing-checkpoint error.

The model is the tiny official-layout Tra-MoE head from the parity fixtures, loaded through the same path
as a released file; observations are synthetic (no LIBERO here; tests/test_zipmo_rollout.py runs LIBERO).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import parity  # tests/parity.py: the fixture loader
import pytest
import torch
from zipmo_robot.policy.base import RowInfo

from zipmo_robot.errors import UserError

TRAMOE = next(
    (k for k in parity.kinds() if "PolicyHeadTraMoE" in parity.kind_info(k).get("official_class", "")), None
)


@pytest.fixture(scope="module")
def models():
    from zipmo_robot.checkpoints.loader import policy_from_state_dict

    assert TRAMOE is not None, "the parity manifest lists no Tra-MoE policy-head kind"
    heads = parity.manifest()["config"]["dino"]["num_heads"]
    planner, head, kind = policy_from_state_dict(dict(parity.weights(TRAMOE)), dino_heads=heads)
    assert kind == "policy_head_tramoe"
    return planner, head


def _agent(models, **kw):
    """The agent with 2 Euler steps per replan (the behaviour under test does not depend on the count)."""
    from zipmo_robot.policy.agent import RollingReplanner

    from zipmo_robot.models.text import SentenceCodeEmbedder

    planner, head = models
    kw.setdefault("nfe", 2)
    return RollingReplanner(planner, head, task_embedder=SentenceCodeEmbedder(planner.cfg.d_cross), **kw)


def _obs(n: int, step: int, salt: int = 0) -> dict:
    """A synthetic batched observation; row i's content depends only on (salt + i, step)."""
    imgs = {"agentview_image": [], "robot0_eye_in_hand_image": []}
    joints, grip = [], []
    for i in range(n):
        rng = np.random.default_rng(1000 * (salt + i) + step)
        for k in imgs:
            imgs[k].append(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
        joints.append(rng.normal(size=7))
        grip.append(rng.normal(size=2))
    return {
        **{k: np.stack(v) for k, v in imgs.items()},
        "joint_states": np.stack(joints),
        "gripper_states": np.stack(grip),
    }


def _row(slot: int, step: int, seed: int, task: int, suite: str = "libero_goal") -> RowInfo:
    return RowInfo(slot, suite, task, f"task number {task} of {suite}", 0, 0, seed, step, env_seed=0)


def _stack(rows: list[dict]) -> dict:
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reset_makes_rollouts_reproducible(models, precision: str) -> None:
    agent = _agent(models, precision=precision)
    runs = []
    for _ in range(2):
        agent.reset(seed=7)
        acts = []
        for step in range(3):
            rows = [_row(0, step, seed=11, task=0), _row(1, step, seed=12, task=3)]
            a = agent.act(_obs(2, step), rows)
            assert a.shape == (2, 7) and a.dtype == np.float32 and np.isfinite(a).all()
            acts.append(a)
        runs.append(np.stack(acts))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][:, 0], runs[0][:, 1])  # different seeds/tasks → different actions


def test_a_rows_actions_do_not_depend_on_the_other_rows(models) -> None:
    """Row A alone vs row A batched with two rows of other suites/tasks/seeds: same noise bit for bit and
    the same actions (up to the batched-matmul rounding of fp32 BLAS)."""
    alone, mixed = _agent(models, precision="fp32"), _agent(models, precision="fp32")
    for step in range(3):
        obs_a = _obs(1, step, salt=0)
        a1 = alone.act(obs_a, [_row(5, step, seed=42, task=2)])
        others = _obs(2, step, salt=10)
        rows = [
            _row(1, step, seed=9, task=4, suite="libero_10"),
            _row(5, step, seed=42, task=2),
            _row(3, step, seed=100, task=7, suite="libero_spatial"),
        ]
        batch = _stack([{k: v[:1] for k, v in others.items()}, obs_a, {k: v[1:] for k, v in others.items()}])
        a3 = mixed.act(batch, rows)
        np.testing.assert_allclose(a3[1], a1[0], atol=1e-5, rtol=0)
        assert not np.allclose(a3[0], a1[0])
    # the noise each row drew is the official batch-1 stream of its own seed
    g = torch.Generator().manual_seed(42)
    for _ in range(3):
        torch.randn((1, *alone.latent_shape), generator=g)
        torch.randn((1, 1, 5), generator=g)
    assert torch.equal(alone._rows[5].generator.get_state(), g.get_state())
    assert torch.equal(mixed._rows[5].generator.get_state(), g.get_state())


def test_a_new_episode_resets_only_its_own_row(models) -> None:
    ref, agent = _agent(models, precision="fp32"), _agent(models, precision="fp32")
    for step in range(4):
        obs = _obs(2, step)
        a_ref = ref.act(obs, [_row(0, step, 1, 0), _row(1, step, 2, 1)])
        # in `agent`, slot 1 starts a new episode (other seed, task) at step 2
        r1 = _row(1, step, 2, 1) if step < 2 else _row(1, step - 2, 77, 5)
        a = agent.act(obs, [_row(0, step, 1, 0), r1])
        np.testing.assert_allclose(a[0], a_ref[0], atol=1e-5, rtol=0)
        if step >= 2:
            assert not np.allclose(a[1], a_ref[1])
    assert agent._rows[0].step == 4 and agent._rows[1].step == 2
    assert agent._rows[1].ensembler.num_updates == 2


def test_episode_step_is_counted_per_row_and_checked(models) -> None:
    agent = _agent(models, precision="fp32")
    assert agent.uses_episode_step
    agent.act(_obs(1, 0), [_row(0, 0, 1, 0)])
    agent.act(_obs(2, 1), [_row(0, 1, 1, 0), _row(1, 0, 2, 1)])
    out = agent.step(np.zeros((2, 2, 16, 16, 3), np.uint8), np.zeros((2, 9)), [0, 1])
    assert out.start_t.tolist() == [2, 1]
    with pytest.raises(ValueError, match="episode step"):
        agent.act(_obs(1, 5), [_row(0, 7, 1, 0)])  # the runner's step and the agent's disagree


def test_stage_timing_and_episode_info(models) -> None:
    agent = _agent(models, precision="fp32")
    for step in range(2):
        agent.act(_obs(2, step), [_row(0, step, 1, 0), _row(1, step, 2, 1)])
    info = agent.episode_info(0)
    assert info["steps"] == 2
    assert set(info["timing"]) == {"preprocess_s", "encode_s", "plan_s", "head_s", "overlay_s"}
    assert info["timing"]["plan_s"] > 0 and info["timing"]["encode_s"] > 0 and info["timing"]["head_s"] > 0
    assert info["timing"]["overlay_s"] == 0.0  # overlays off


def test_cfg_scale_above_one_changes_the_plan(models) -> None:
    base, guided = _agent(models, precision="fp32"), _agent(models, precision="fp32", cfg_scale=2.5)
    rows = [_row(0, 0, 3, 1)]
    assert not np.allclose(base.act(_obs(1, 0), rows), guided.act(_obs(1, 0), rows))


def test_overlay_draws_the_plan_on_both_views(models) -> None:
    agent = _agent(models, precision="fp32", overlay=True)
    obs = _obs(2, 0)
    rows = [_row(0, 0, 1, 0), _row(1, 0, 2, 1)]
    agent.act(obs, rows)
    tracks = agent._rows[0].last_tracks
    assert tracks.shape == (2, 64, 16, 2) and np.isfinite(tracks).all()
    views = agent.overlay_views(obs, rows)
    assert len(views) == 2 and len(views[0]) == 2
    for i in range(2):
        for v, cam in enumerate(("agentview_image", "robot0_eye_in_hand_image")):
            assert views[i][v].shape == obs[cam][i].shape
    assert agent.episode_info(0)["timing"]["overlay_s"] > 0


def test_draw_tracks_colours_from_blue_to_red() -> None:
    from zipmo_robot.policy.overlay import END_COLOR, START_COLOR, draw_tracks, overlay_query_grid

    grid = overlay_query_grid(8)
    assert grid.shape == (64, 2) and np.isclose(grid.min(), -0.9) and np.isclose(grid.max(), 0.9)
    img = np.zeros((64, 64, 3), np.uint8)
    track = np.array([[[0.0, -0.8], [0.0, 0.0], [0.0, 0.8]]], np.float32)  # left → right along the middle row
    out = draw_tracks(img, track)
    row = out[int(np.argmax(out.any(axis=-1).sum(axis=1)))]  # the row the track runs along
    drawn = np.flatnonzero(row.any(axis=-1))
    assert drawn.min() <= 7 and drawn.max() >= 56
    assert tuple(row[drawn.min()]) == tuple(START_COLOR.astype(np.uint8))
    assert row[drawn.max()][0] > row[drawn.max()][2]  # red end
    assert tuple(row[drawn.max()]) == tuple(END_COLOR.astype(np.uint8))
    assert not img.any()  # input untouched


def test_head_training_loss_is_the_discounted_l2_and_decreases(models) -> None:
    from zipmo_robot.policy.head import InverseDynamicsHead

    _, trained = models
    head = InverseDynamicsHead(trained.config)
    g = torch.Generator().manual_seed(0)
    c = head.config
    batch = {
        "latents": torch.randn(4, c.num_views * c.grid_size**2, c.latent_dim, generator=g),
        "proprio": torch.randn(4, c.proprio_dim, generator=g),
        "actions": torch.randn(4, c.chunk_len, c.action_dim, generator=g),
    }
    loss, metrics = head(batch)
    pred = head.predict(batch["latents"], batch["proprio"])
    w = 0.99 ** torch.arange(c.chunk_len, dtype=torch.float32)
    manual = ((pred - batch["actions"]) ** 2 * w[None, :, None]).mean()
    assert torch.allclose(loss, manual) and metrics["loss"] == pytest.approx(manual.item(), rel=1e-6)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        loss, _ = head(batch)
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_missing_official_checkpoint_gives_the_fix(tmp_path) -> None:
    """No network and no local file: the rollout stops before building envs and says which file to get,
    from where, and where to put it."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", ZIPMO_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "rollout", "--suite", "libero_goal", "--checkpoint", "official:tramoe",
         "--out", str(tmp_path / "run"), "--no-video"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "policy_heads/tramoe_libero_goal.safetensors" in err and "CompVis/ZipMo" in err
    assert "--checkpoint" in err and str(tmp_path / "cache") in err
    assert "--policy scripted" in err  # the weight-free way to try the stack
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_a_planner_file_is_refused_as_a_policy(tmp_path) -> None:
    from safetensors.torch import save_file
    from zipmo_robot.policy.factory import make_policy

    from zipmo_robot.errors import UserError

    planner_kind = next(k for k in parity.kinds() if k.startswith("planner_libero"))
    path = tmp_path / "planner.safetensors"
    save_file(dict(parity.weights(planner_kind)), str(path))
    with pytest.raises(UserError, match="not a policy head"):
        make_policy("zipmo", {"checkpoint": str(path), "dino_heads": 2, "device": "cpu"})


def test_replan_every_runs_each_chunk_open_loop_between_plans(models) -> None:
    """replan_every=3: a row plans at its episode steps 0, 3, 6 (noise drawn only then) and takes actions
    0, 1, 2 of that plan's chunk; a row that joins later keeps its own phase."""
    agent = _agent(models, precision="fp32", replan_every=3)
    taken: dict[int, list[np.ndarray]] = {0: [], 1: []}
    chunks: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for step in range(7):
        rows = [_row(0, step, seed=5, task=0)] + ([_row(1, step - 2, seed=6, task=1)] if step >= 2 else [])
        a = agent.act(_obs(len(rows), step), rows)
        for i, r in enumerate(rows):
            taken[r.slot].append(a[i])
            if r.step % 3 == 0:
                chunks[r.slot].append(agent._rows[r.slot].chunk.copy())
    for slot, n in ((0, 7), (1, 5)):
        assert len(taken[slot]) == n and len(chunks[slot]) == (n + 2) // 3
        for s, act in enumerate(taken[slot]):
            np.testing.assert_array_equal(act, chunks[slot][s // 3][s % 3])
    assert not np.array_equal(chunks[0][0], chunks[0][1])  # a new plan from the new frame
    g = torch.Generator().manual_seed(5)
    for _ in range(3):  # row 0 planned 3 times: one noise draw (+ the dummy draw) each
        torch.randn((1, *agent.latent_shape), generator=g)
        torch.randn((1, 1, 5), generator=g)
    assert torch.equal(agent._rows[0].generator.get_state(), g.get_state())
    assert agent.resolved_options()["replan_every"] == 3
    with pytest.raises(UserError, match="replan_every"):
        _agent(models, replan_every=17)


def test_episode_noise_reuses_one_draw_per_episode(models) -> None:
    """noise="episode": an episode's first plan draws as the released mode does (same first action), every
    later replan reuses that draw (the generator advances once per episode), a new episode in the slot draws
    again from its own seed, and an unknown mode is refused."""
    fresh, fixed = _agent(models, precision="fp32"), _agent(models, precision="fp32", noise="episode")
    acts: dict[str, list[np.ndarray]] = {"fresh": [], "episode": []}
    for name, agent in (("fresh", fresh), ("episode", fixed)):
        for step in range(3):
            acts[name].append(agent.act(_obs(2, step), [_row(0, step, 5, 0), _row(1, step, 6, 1)]))
    np.testing.assert_array_equal(acts["fresh"][0], acts["episode"][0])
    assert not np.allclose(acts["fresh"][2], acts["episode"][2])
    for slot, seed in ((0, 5), (1, 6)):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((1, *fixed.latent_shape), generator=g)
        torch.randn((1, 1, 5), generator=g)
        assert torch.equal(fixed._rows[slot].noise[0], z)  # the official first draw, kept
        assert torch.equal(fixed._rows[slot].generator.get_state(), g.get_state())  # and no other draw
    out = fixed.step(np.zeros((2, 2, 16, 16, 3), np.uint8), np.zeros((2, 9)), [0, 1])
    assert torch.equal(out.noise[0:1], fixed._rows[0].noise[0])
    fixed.act(_obs(1, 0), [_row(0, 0, 9, 0)])  # a new episode in slot 0
    g9 = torch.Generator().manual_seed(9)
    assert torch.equal(fixed._rows[0].noise[0], torch.randn((1, *fixed.latent_shape), generator=g9))
    assert fixed.resolved_options()["noise"] == "episode"
    with pytest.raises(UserError, match="noise"):
        _agent(models, noise="sometimes")
