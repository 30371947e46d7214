"""Motion-planner behaviour beyond the fixtures: the hot-path guarantees of `sample` (conditioning once per
call, no unconditional pass at guidance 1, inference mode), quirk switches, training losses, the
checkpoint converter (shared DINO), strict-load errors and release-size parameter counts."""

from __future__ import annotations

import json
from dataclasses import replace

import parity as P
import pytest
import torch
from parity import tiny_vae_config, unzero

from zipmo_robot.checkpoints import convert as checkpoints
from zipmo_robot.checkpoints import hub
from zipmo_robot.models.planner import PlannerConfig, build_planner
from zipmo_robot.models.sizes import VARIANTS

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(variant: str, **kw) -> PlannerConfig:
    vae = tiny_vae_config()
    return PlannerConfig(
        variant=variant,
        width=32,
        depth=1,
        d_head=16,
        d_cond_norm=16,
        text_enc_depth=1,
        vae=vae,
        dino=vae.dino,
        **kw,
    )


def _planner(variant: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return unzero(build_planner(tiny_config(variant, **kw)), seed).eval()


def _inputs(variant: str, B: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    libero = variant.startswith("libero")
    frame_shape = (B, 2, 32, 32, 3) if libero else (B, 40, 40, 3)
    n_pokes = {"sparse": 3, "dense": 40}.get(variant, 1)
    out = {
        "start_frame": torch.rand(frame_shape, generator=g) * 2 - 1,
        "track_conds": torch.rand(B, n_pokes, 5, generator=g) * 2 - 1,
    }
    if libero:
        out["txt_emb"] = torch.randn(B, 1, 16, generator=g)
    if variant == "libero_tramoe":
        out["start_t"] = torch.tensor([3, 57])[:B]
    return out


def _latent_len(model) -> int:
    return model.n_views * model.cfg.vae.n_latents


class _Counter:
    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(self)

    def __call__(self, *args):
        self.n += 1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_sample_computes_conditioning_once_and_skips_uncond_at_scale_1(variant, cfg_scale):
    model = _planner(variant)
    inputs = _inputs(variant)
    z = torch.randn(2, _latent_len(model), 16, generator=torch.Generator().manual_seed(1))
    dino = _Counter(model.img_embedder)
    poke = _Counter(model.track_cond_emb)
    kv = _Counter(model.backbone[0].cross_attn.kv_proj)
    cond_proj = _Counter(model.in_proj.cond_proj)
    text = _Counter(model.text_encoder) if variant.startswith("libero") else None
    calls = []
    original = model.predict_velocity
    model.predict_velocity = lambda *a: calls.append(1) or original(*a)
    steps = 4
    out = model.sample(z, sample_steps=steps, cfg_scale=cfg_scale, **inputs)
    branches = 2 if cfg_scale > 1 else 1
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert len(calls) == steps * branches  # no unconditional pass at scale 1
    assert dino.n == 1 and cond_proj.n == branches and kv.n == branches  # once per call, not per step
    assert poke.n == (0 if variant.startswith("libero") else 1)  # LIBERO skips the discarded poke embedding
    if text is not None:
        assert text.n == 1
    assert out.is_inference()


def test_guidance_changes_the_sample_only_above_1():
    model = _planner("libero_atm")
    inputs = _inputs("libero_atm")
    z = torch.randn(2, _latent_len(model), 16, generator=torch.Generator().manual_seed(1))
    base = model.sample(z, sample_steps=3, **inputs)
    assert torch.equal(base, model.sample(z, sample_steps=3, cfg_scale=1.0, **inputs))
    assert not torch.equal(base, model.sample(z, sample_steps=3, cfg_scale=2.0, **inputs))


def test_sample_decodes_per_view():
    model = _planner("libero_tramoe")
    inputs = _inputs("libero_tramoe")
    z = torch.randn(2, _latent_len(model), 16)
    queries = torch.rand(2, 2, 7, 2) * 2 - 1
    tracks = model.sample(z, sample_steps=2, query_pos=queries, points_per_track=5, **inputs)
    assert tracks.shape == (2, 2, 7, 5, 2)
    latents = model.sample(z, sample_steps=2, **inputs)
    assert torch.equal(model.decode(latents, queries, 5, inputs["start_frame"]), tracks)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_sample_is_prepare_then_euler(precision, cfg_scale):
    """`sample` is exactly the one sampler the agent and plan generation call: `prepare_sampling` + `euler`
    (bit for bit, under bf16 autocast too), with the official time grid t = k/S, k = S..1."""
    from zipmo_robot.models.planner import sampling_autocast

    model = _planner("libero_tramoe")
    inputs = _inputs("libero_tramoe")
    z = torch.randn(2, _latent_len(model), 16, generator=torch.Generator().manual_seed(1))
    times = []
    original = model.predict_velocity
    model.predict_velocity = lambda x, t, c: times.append(t[0].item()) or original(x, t, c)
    with sampling_autocast(precision, "cpu"):
        whole = model.sample(z, sample_steps=3, cfg_scale=cfg_scale, **inputs)
        n_whole = len(times)
        with torch.inference_mode():
            frame, pokes = inputs["start_frame"], inputs["track_conds"]
            guidance = model.prepare_sampling(
                frame, cfg_scale, track_conds=pokes, txt_emb=inputs["txt_emb"], start_t=inputs["start_t"]
            )
            parts = model.euler(z, guidance, 3)
    assert torch.equal(whole, parts) and whole.dtype == torch.float32
    assert (guidance.uncond is None) is (cfg_scale <= 1.0) and guidance.scale == cfg_scale
    branches = 2 if cfg_scale > 1 else 1
    assert times[:n_whole] == pytest.approx([t for t in (1.0, 2 / 3, 1 / 3) for _ in range(branches)])
    with pytest.raises(ValueError, match="steps >= 1"):
        model.euler(z, guidance, 0)


def test_draw_noise_is_the_official_per_row_stream():
    """Per row: `randn(1, L, C)` then the dummy `randn(1, 1, 5)` from that row's generator, so a row's noise
    does not depend on the other rows, and each call advances every generator by one such pair."""
    model = _planner("libero_atm")
    L, C = model.latent_shape
    assert (L, C) == (_latent_len(model), 16)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    z, dummy = model.draw_noise(gens)
    assert z.shape == (2, L, C) and dummy.shape == (2, 1, 5)
    for i, seed in enumerate((5, 6)):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(z[i : i + 1], torch.randn((1, L, C), generator=g))
        assert torch.equal(dummy[i : i + 1], torch.randn((1, 1, 5), generator=g))
        assert torch.equal(gens[i].get_state(), g.get_state())
    alone, _ = model.draw_noise([torch.Generator().manual_seed(6)])
    assert torch.equal(alone[0], z[1])


def test_latent_normalisation_round_trip_and_float64_switch():
    model = _planner("sparse")
    z = torch.randn(2, 16, 16) * 3
    n = model.normalize_latents(z)
    assert n.dtype == z.dtype
    torch.testing.assert_close(model.denormalize_latents(n), z, rtol=0, atol=1e-5)
    torch.testing.assert_close(n, (z + 0.175) * 0.20761369963434995)
    clean = _planner("sparse", float64_latent_norm=False)
    torch.testing.assert_close(clean.normalize_latents(z), n, rtol=0, atol=1e-5)


def test_per_token_latent_normalisation_uses_each_views_token_means():
    """latent_norm=per_token: the (V, L, C) buffer is the shift of each view's tokens, in both layouts the
    planner uses ((B V), L, C) and (B, V*L, C); it is saved in the state dict; other variants refuse it."""
    model = _planner("libero_atm", latent_norm="per_token", vae_shift=0.0, vae_scale=4.0)
    V, L, C = model.latent_token_mean.shape
    assert "latent_token_mean" in model.state_dict()
    mean = torch.randn(V, L, C)
    model.latent_token_mean.copy_(mean)
    z = mean[None] + torch.randn(3, V, L, C) * 2  # (B, V, L, C)
    n = model.normalize_latents(z.reshape(3 * V, L, C))
    torch.testing.assert_close(n.reshape(3, V, L, C), (z - mean) * (0.5**0.5 / 2.0))
    torch.testing.assert_close(
        model.normalize_latents(z.reshape(3, V * L, C)).reshape(3, V, L, C), n.reshape(3, V, L, C)
    )
    torch.testing.assert_close(model.denormalize_latents(n), z.reshape(3 * V, L, C), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="LIBERO"):
        tiny_config("sparse", latent_norm="per_token")
    with pytest.raises(ValueError, match="latent_norm"):
        tiny_config("libero_atm", latent_norm="per_view")


def test_quirk_flags_follow_the_master_switch():
    assert tiny_config("libero_tramoe").int_truncated_step_embedding is True
    cfg = tiny_config("libero_tramoe", official_quirks=False)
    assert cfg.int_truncated_step_embedding is False and cfg.float64_latent_norm is False
    assert tiny_config("sparse", official_quirks=False, float64_latent_norm=True).float64_latent_norm is True


def test_step_token_truncation_switch():
    official = _planner("libero_tramoe")
    clean = _planner("libero_tramoe", int_truncated_step_embedding=False)
    steps = torch.tensor([3, 57])
    assert torch.equal(clean.step_token(steps), clean.step_token(steps.float()))
    assert not torch.equal(official.step_token(steps), official.step_token(steps.float()))


def test_tramoe_needs_the_episode_step():
    model = _planner("libero_tramoe")
    inputs = _inputs("libero_tramoe")
    inputs.pop("start_t")
    with pytest.raises(ValueError, match="start_t"):
        model.sample(torch.randn(2, _latent_len(model), 16), sample_steps=1, **inputs)


def test_poke_count_checks():
    sparse, dense = _planner("sparse"), _planner("dense")
    frame = torch.zeros(1, 16, 16, 3)
    with pytest.raises(ValueError, match="at most 16"):
        sparse.conditioning(frame, torch.zeros(1, 17, 5))
    with pytest.raises(ValueError, match="exactly 40"):
        dense.conditioning(frame, torch.zeros(1, 39, 5))
    cond = sparse.conditioning(frame, torch.rand(1, 3, 5))
    assert cond.x_cross.shape == (1, 16, 16) and torch.equal(cond.x_cross[:, 3:], torch.zeros(1, 13, 16))


def test_paper_time_convention_is_a_relabelling():
    official = _planner("sparse")
    paper = build_planner(replace(official.cfg, paper_time_convention=True)).eval()
    paper.load_state_dict(official.state_dict())
    inputs = _inputs("sparse")
    cond = official.conditioning(inputs["start_frame"], inputs["track_conds"])
    x = torch.randn(2, 16, 16)
    t = torch.tensor([0.25, 0.75])
    with torch.no_grad():
        torch.testing.assert_close(
            paper.predict_velocity(x, 1 - t, cond), -official.predict_velocity(x, t, cond)
        )


@pytest.mark.parametrize("variant", ["sparse", "libero_tramoe"])
def test_training_loss_finite_and_decreasing(variant):
    model = _planner(variant).train()
    g = torch.Generator().manual_seed(0)
    B = 4
    inputs = _inputs(variant, B=2)
    if variant == "sparse":
        batch = {"tracks": torch.rand(2, 20, 6, 2, generator=g) * 2 - 1, "start_frame": inputs["start_frame"]}
    else:
        batch = {
            "tracks": torch.rand(2, 2, 8, 6, 2, generator=g) * 2 - 1,
            "start_frame": inputs["start_frame"],
            "txt_emb": inputs["txt_emb"][:, 0],
            "start_t": inputs["start_t"],
        }
    batch = {k: torch.cat([v] * (B // 2)) for k, v in batch.items()}
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("vae.")]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for step in range(10):
        loss, _ = model(batch, generator=torch.Generator().manual_seed(step % 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-2:]) < 0.8 * max(losses[:2]), losses


def test_converter_shares_identical_dino_copies_and_keeps_different_ones():
    kind = "planner_libero_atm"
    assert kind in P.kinds(), f"the parity manifest lacks {kind}"
    sd = P.weights(kind)
    cfg = P.planner_config(kind)
    dino_keys = [k for k in sd if k.startswith("img_embedder.model.")]
    # Different copies (one tensor perturbed): both are kept.
    different = dict(sd)
    different["vae." + dino_keys[0]] = sd[dino_keys[0]] + 1.0
    assert not checkpoints.dino_copies_identical(different)
    kept = checkpoints.convert_official_state_dict(kind, different)
    assert kept.keys() == different.keys() and not checkpoints.shares_vae_dino(kind, kept)
    # Identical copies: the VAE's is dropped and one module serves both.
    same = dict(sd)
    for k in dino_keys:
        same["vae." + k] = sd[k].clone()
    converted = checkpoints.convert_official_state_dict(kind, same)
    assert len(converted) == len(same) - len(dino_keys) and checkpoints.shares_vae_dino(kind, converted)
    shared = checkpoints.model_from_official(kind, same, cfg).eval()
    assert shared.cfg.share_vae_dino and shared.vae.img_embedder is None
    separate = checkpoints.build_model(kind, cfg).eval()
    checkpoints.load_strict(separate, same)
    io = P.io(kind)
    args = dict(track_conds=io["track_conds"], txt_emb=io["txt_emb"], sample_steps=2, points_per_track=4)
    frame = P.frame(io["start_frame_u8"])
    a = shared.sample(io["z"], frame, query_pos=io["query_pos"], **args)
    b = separate.sample(io["z"], frame, query_pos=io["query_pos"], **args)
    assert torch.equal(a, b)
    assert shared.num_params() == separate.num_params() - sum(
        v.numel() for k, v in sd.items() if k.startswith("img_embedder.")
    )


def test_load_strict_lists_every_problem():
    model = _planner("libero_atm")
    sd = dict(model.state_dict())
    sd.pop("ca_mask_token")
    sd["bogus.weight"] = torch.zeros(1)
    sd["learnable_emb_grid_tokens"] = torch.zeros(3, 32)
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.load_strict(model, sd)
    msg = str(err.value)
    assert "missing key(s)" in msg and "ca_mask_token" in msg
    assert "unexpected key(s)" in msg and "bogus.weight" in msg
    assert "learnable_emb_grid_tokens: expected [2, 32], got [3, 32]" in msg


def test_own_checkpoint_round_trip_keeps_config_and_quirks(tmp_path):
    model = _planner("libero_tramoe", int_truncated_step_embedding=False)
    checkpoints.save_checkpoint(model, "planner_libero_tramoe", tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["config"]["int_truncated_step_embedding"] is False
    kind, loaded = checkpoints.load_checkpoint(tmp_path / "ckpt")
    assert kind == "planner_libero_tramoe" and loaded.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


# state-dict numel of the released VAE and planner files (§8.2, the released-file table)
RELEASE_NUMEL = {f.kind: f.numel for f in hub.RELEASED.values() if f.kind in checkpoints.MODEL_KINDS}
PLANNER_KINDS = list(checkpoints.MODEL_KINDS)


@pytest.mark.parametrize("kind", PLANNER_KINDS)
def test_release_size_num_params(kind):
    with torch.device("meta"):
        model = checkpoints.build_model(kind)
    assert model.num_params() == RELEASE_NUMEL[kind]


@pytest.mark.parametrize("kind", checkpoints.MODEL_KINDS)
def test_infer_config_recovers_fixture_sizes(kind):
    """The sizes read from a fixture file's shapes are the manifest's, and the file loads strictly into them."""
    assert kind in P.kinds(), f"the parity manifest lacks {kind}"
    dino_heads = P.manifest()["config"]["dino"]["num_heads"]
    converted = checkpoints.convert_official_state_dict(kind, P.weights(kind))
    cfg = checkpoints.infer_config(kind, converted, dino_num_heads=dino_heads)
    want = P.vae_config() if kind == "vae" else P.planner_config(kind)
    vae, want_vae = (cfg, want) if kind == "vae" else (cfg.vae, want.vae)
    for name in ("d_model", "d_head", "enc_depth", "dec_depth", "latent_dim", "latent_grid"):
        assert getattr(vae, name) == getattr(want_vae, name), name
    assert vae.dino == want_vae.dino
    if kind != "vae":
        for name in ("width", "depth", "d_head", "d_cond_norm", "mapping_depth", "mapping_d_ff", "ff_expand"):
            assert getattr(cfg, name) == getattr(want, name), name
        assert (cfg.variant, cfg.n_cond, cfg.num_views) == (want.variant, want.n_cond, want.num_views)
        if cfg.is_libero:
            assert cfg.text_enc_depth == want.text_enc_depth
    model = checkpoints.build_model(kind, cfg)
    checkpoints.load_strict(model, converted)
    assert model.num_params() == sum(v.numel() for v in converted.values())


def test_converter_policy_head_and_meta_state_dicts():
    """Inside a policy-head file the planner sits under `track_predictor.`: identical DINO copies are folded
    there too; shape-only (meta) state dicts keep both copies (values unknown)."""
    kind = next((k for k in checkpoints.POLICY_KINDS if k in P.kinds()), None)
    assert kind is not None, "the parity manifest lists no policy-head kind"
    sd = P.weights(kind)
    prefix = "track_predictor.img_embedder.model."
    same = dict(sd)
    for k in [k for k in sd if k.startswith(prefix)]:
        same["track_predictor.vae." + k[len("track_predictor.") :]] = sd[k].clone()
    converted = checkpoints.convert_official_state_dict(kind, same)
    assert checkpoints.shares_vae_dino(kind, converted)
    assert not any(k.startswith("track_predictor.vae.img_embedder.") for k in converted)
    assert {k for k in converted if not k.startswith("track_predictor.")} == {
        k for k in sd if not k.startswith("track_predictor.")
    }
    meta = {k: torch.empty(v.shape, device="meta") for k, v in same.items()}
    assert checkpoints.convert_official_state_dict(kind, meta).keys() == meta.keys()
