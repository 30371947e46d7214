"""Trajectory VAE behaviour beyond the fixtures: decoding at arbitrary query counts and lengths, dense
decoding layout, reproducible losses with an explicit generator, and a few real training steps."""

from __future__ import annotations

import pytest
import torch
from parity import tiny_vae_config, unzero

from zipmo_robot.models.vae import TrajectoryVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(B=2, N=6, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    tracks = torch.rand(B, N, T, 2, generator=g) * 2 - 1
    frame = torch.rand(B, 40, 48, 3, generator=g) * 2 - 1
    return tracks, frame


@pytest.fixture(scope="module")
def vae() -> TrajectoryVAE:
    torch.manual_seed(0)
    return unzero(TrajectoryVAE(tiny_vae_config())).eval()


def test_encode_shapes(vae):
    tracks, frame = _data()
    mean, logvar, pos = vae.encode(tracks, frame)
    assert mean.shape == logvar.shape == (2, 16, 16)
    assert pos.shape == (2, 16, 3) and torch.equal(pos[0, :, 0], torch.zeros(16))


@pytest.mark.parametrize("n_queries, T", [(1, 1), (5, 3), (37, 17)])
def test_decode_any_query_count_and_length(vae, n_queries, T):
    _, frame = _data()
    latents = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(1))
    queries = torch.rand(2, n_queries, 2) * 2 - 1
    out = vae.decode(latents, queries, T, frame)
    assert out.shape == (2, n_queries, T, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("grid, chunk", [(8, 4), (8, 2), (4, 4)])
def test_decode_dense_layout_matches_direct_decoding(vae, grid, chunk):
    """Chunk (oh, ow) holds grid rows oh, oh+s, ... and columns ow, ow+s, ...: decoding those queries
    directly gives the same tracks at the same grid cells."""
    from zipmo_robot.models.rope import make_axial_pos_2d

    _, frame = _data(B=1)
    latents = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(2))
    dense = vae.decode_dense(latents, 3, frame, grid_size=grid, chunk_size=chunk)
    assert dense.shape == (1, grid, grid, 3, 2)
    s = grid // chunk
    cells = make_axial_pos_2d(grid, grid).view(grid, grid, 2)
    oh, ow = s - 1, 0
    queries = cells[oh::s, ow::s].reshape(1, chunk * chunk, 2)
    direct = vae.decode(latents, queries, 3, frame).view(chunk, chunk, 3, 2)
    torch.testing.assert_close(dense[0, oh::s, ow::s], direct, rtol=0, atol=1e-5)


def test_decode_dense_rejects_bad_chunking(vae):
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        vae.decode_dense(torch.zeros(1, 16, 16), 2, torch.zeros(1, 8, 8, 3), grid_size=6, chunk_size=4)


def test_loss_reproducible_with_generator(vae):
    tracks, frame = _data()
    with torch.no_grad():
        a, _ = vae(tracks, tracks, frame, generator=torch.Generator().manual_seed(3))
        b, _ = vae(tracks, tracks, frame, generator=torch.Generator().manual_seed(3))
        c, metrics = vae(tracks, tracks, frame, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert metrics["loss"] == metrics["reconstruction_loss"] + metrics["kl_loss"]


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = TrajectoryVAE(tiny_vae_config()).train()
    tracks, frame = _data(B=4, N=8, T=6)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        loss, _ = model(tracks[:, :4], tracks, frame, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.95 * losses[0], losses  # random tracks: slow but steady progress
    assert all(p.grad is None for p in model.img_embedder.parameters())  # frozen DINO


def test_shared_image_encoder_needs_features():
    model = TrajectoryVAE(tiny_vae_config(with_image_encoder=False))
    assert model.img_embedder is None and not any(k.startswith("img_embedder") for k in model.state_dict())
    with pytest.raises(ValueError, match="start_emb"):
        model.decode(torch.zeros(1, 16, 16), torch.zeros(1, 2, 2), 3, torch.zeros(1, 8, 8, 3))
    out = model.decode(torch.zeros(1, 16, 16), torch.zeros(1, 2, 2), 3, start_emb=torch.zeros(1, 16, 16))
    assert out.shape == (1, 2, 3, 2)


def test_image_encoder_input_checks(vae):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vae.embed_frame(torch.full((1, 8, 8, 3), 2.0))
    with pytest.raises(ValueError, match="channel-last"):
        vae.embed_frame(torch.zeros(1, 3, 8, 8))


def test_residual_decoding_offsets_the_start_point(vae):
    """`residual=True` (the CPU recipe's VAE) adds each query's start point to the decoder's output: the same
    weights give the absolute output plus the query, and a zeroed output layer predicts 'no motion'."""
    from dataclasses import replace

    res = TrajectoryVAE(replace(vae.cfg, residual=True)).eval()
    res.load_state_dict(vae.state_dict())
    _, frame = _data()
    latents = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(3))
    queries = torch.rand(2, 7, 2, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            res.decode(latents, queries, 4, frame),
            vae.decode(latents, queries, 4, frame) + queries[:, :, None, :],
            rtol=0,
            atol=1e-6,
        )
        res.decoder.trajs_out[-1].weight.zero_()
        res.decoder.trajs_out[-1].bias.zero_()
        static = res.decode(latents, queries, 4, frame)
    assert torch.equal(static, queries[:, :, None, :].expand(-1, -1, 4, -1))
