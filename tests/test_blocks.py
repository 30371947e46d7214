"""Behaviour of the building blocks that the parity fixtures do not pin: shapes, the numeric contracts
(fp32 reductions, dtype of outputs), identities at init, the cross-attention cache and argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from zipmo_robot.models import blocks, rope

pytestmark = pytest.mark.usefixtures("one_thread")


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (zero-init projections would make blocks identities)."""
    g = _g(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.3 + (10.0 if p.ndim == 1 and p.shape[0] < 8 else 0.0)
            )
    return module


def test_rms_norm_reduces_in_fp32_and_multiplies_in_input_dtype():
    x = torch.randn(2, 5, 64, generator=_g()).to(torch.bfloat16) * 30
    scale = torch.rand(64, generator=_g(1)) + 0.5
    out = blocks.rms_norm(x, scale, 1e-6)
    assert out.dtype == torch.bfloat16
    factor = scale * torch.rsqrt((x.float() ** 2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(out, x * factor.to(torch.bfloat16))


def test_cosine_sim_logits_are_scale_times_cosine():
    q = torch.randn(2, 3, 7, 16, generator=_g())
    k = torch.randn(2, 3, 5, 16, generator=_g(1))
    scale = torch.tensor([1.0, 10.0, 30.0])[:, None, None]
    qs, ks = blocks.scale_for_cosine_sim(q, k, scale, torch.tensor(1e-6))
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(
        -1, -2
    )
    torch.testing.assert_close(qs @ ks.transpose(-1, -2), scale * cos, rtol=1e-5, atol=1e-5)


def test_swiglu_uses_first_half_as_value():
    layer = _randomize(blocks.LinearSwiGLU(8, 4, bias=False))
    x = torch.randn(3, 8, generator=_g(2))
    y = x @ layer.weight.T
    torch.testing.assert_close(layer(x), y[:, :4] * torch.nn.functional.silu(y[:, 4:]))


# d_head 32: d_head/8 = 4 frequencies per axis for 3D (3 axes) and 2D (2 axes), d_head/4 = 8 for 1D (§0.F)
@pytest.mark.parametrize(
    "mode, n_pos, n_theta", [("3d_40", 3, 12), ("3d_10", 3, 12), ("2d", 2, 8), ("1d", 1, 8)]
)
def test_rope_shapes_and_norm_preservation(mode, n_pos, n_theta):
    d_head, n_heads = 32, 3
    module = rope.make_rope(mode, d_head, n_heads)
    pos = torch.rand(2, 7, n_pos, generator=_g()) * 2 - 1
    theta = module(pos)
    assert theta.shape == (2, 7, n_heads, n_theta)
    x = torch.randn(2, n_heads, 7, d_head, generator=_g(1))
    y = rope.apply_rotary_emb(x, theta.movedim(-2, -3))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    d = theta.shape[-1]
    assert torch.equal(y[..., 2 * d :], x[..., 2 * d :])  # the unrotated tail passes through


def test_rope_3d_layout_time_first():
    """With t = 0 only the y/x pairs rotate: the first d_head/8 pairs (time) are untouched (quirk Q8)."""
    module = rope.AxialRoPE3D(64, 2)
    pos = torch.tensor([[[0.0, 0.5, -0.25]]])
    theta = module(pos)  # (1, 1, 2, 24)
    assert torch.equal(theta[..., :8], torch.zeros_like(theta[..., :8]))
    assert module.yx_freqs.shape == (2, 2, 8) and module.t_freqs.shape == (2, 8)
    assert module.yx_freqs[0, 0, 0].item() == 1.0  # min_theta 0 -> lowest frequency exactly 1


def test_rope_angles_follow_position_dtype():
    module = rope.AxialRoPE3D(64, 2)
    assert module(torch.rand(1, 3, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_make_axial_pos_non_square_keeps_square_cells():
    pos = rope.make_axial_pos_2d(2, 4)
    assert pos.shape == (8, 2)
    ys, xs = pos[:, 0].unique(), pos[:, 1].unique()
    assert math.isclose(ys[1] - ys[0], xs[1] - xs[0], rel_tol=1e-6)
    assert math.isclose(xs.max().item(), 0.75) and math.isclose(ys.max().item(), 0.25)


def test_zero_init_blocks_are_identities():
    x = torch.randn(2, 6, 32, generator=_g())
    cond = torch.randn(2, 8, generator=_g(1))
    pos = torch.rand(2, 6, 3, generator=_g(2))
    xc = torch.randn(2, 4, 24, generator=_g(3))
    layer = blocks.TransformerLayer(32, d_cross=24, d_cond_norm=8, d_head=16)
    assert torch.equal(layer(x, pos, xc, torch.rand(2, 4, 3), cond), x)
    ada, plain = blocks.AdaRMSNorm(32, 8), blocks.RMSNorm(32)
    assert torch.equal(ada(x, cond), plain(x))


def test_layer_shapes_and_cross_attention_cache_is_exact():
    torch.manual_seed(0)
    layer = _randomize(
        blocks.TransformerLayer(48, d_cross=24, d_cond_norm=8, d_head=16, self_rope_mode="3d_10")
    )
    level = blocks.Level([layer])
    x = torch.randn(2, 9, 48, generator=_g(1))
    pos = torch.rand(2, 9, 3, generator=_g(2))
    xc, pos_c = torch.randn(2, 5, 24, generator=_g(3)), torch.rand(2, 5, 3, generator=_g(4))
    cond = torch.randn(2, 8, generator=_g(5))
    out = level(x, pos, xc, pos_c, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    cached = level(x, pos, None, None, cond, level.contexts(xc, pos_c))
    assert torch.equal(out, cached)


def test_cross_attention_without_rope_ignores_positions():
    block = _randomize(blocks.CrossAttentionBlock(32, 16, None, 16, rope_mode="none"))
    assert block.pos_emb is None
    x, xc = torch.randn(1, 3, 32, generator=_g()), torch.randn(1, 2, 16, generator=_g(1))
    assert torch.equal(block(x, None, xc, None), block(x, torch.rand(1, 3, 3), xc, torch.rand(1, 2, 3)))


def test_input_mlp_int_truncation_switch():
    mlp = _randomize(blocks.InputMLP(1, 8, theta=10 * math.pi))
    with torch.no_grad():
        mlp.coeffs.copy_(torch.tensor([0.4, -3.9, 15.7, 2.5]))
    steps = torch.tensor([[[3]], [[57]]])
    truncated = mlp.features(steps)
    assert torch.equal(truncated[..., :4], torch.sin(steps * torch.tensor([0, -3, 15, 2])).float())
    clean = mlp.features(steps, official_int_cast=False)
    assert torch.equal(clean, mlp.features(steps.float()))
    assert not torch.equal(clean, truncated)


def test_input_mlp_feature_layout_and_padding():
    mlp = blocks.InputMLP(3, 32)
    assert mlp.n_pad == 2 and mlp.coeffs.shape == (5,)
    x = torch.rand(4, 3, generator=_g())
    f = mlp.features(x)
    assert f.shape == (4, 32) and torch.equal(f[:, -2:], torch.zeros(4, 2))
    torch.testing.assert_close(f[:, 5:10], torch.cos(x[:, :1] * mlp.coeffs))  # dim 0: 5 sin, 5 cos


def test_fourier_features_cos_first():
    ff = blocks.FourierFeatures(1, 8)
    t = torch.tensor([[0.25], [0.5]])
    f = 2 * math.pi * t @ ff.weight.T
    assert torch.equal(ff(t), torch.cat([f.cos(), f.sin()], -1))


def test_bad_sizes_raise_readable_errors():
    with pytest.raises(ValueError, match="d_head=16"):
        blocks.SelfAttentionBlock(40, d_head=16)
    with pytest.raises(ValueError, match="unknown rope mode"):
        rope.make_rope("4d", 64, 2)
    with pytest.raises(ValueError, match="cond_norm"):
        blocks.AdaRMSNorm(8, 4)(torch.randn(1, 2, 8))
