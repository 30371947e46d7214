"""Transformer building blocks of the ZipMo models (ZIPMO_REFERENCE.md §1, §5.1).

Read top to bottom: helpers, kernels (pure functions that own the numerics), layers (modules that only hold
parameters). Attribute names are API: they are the official state-dict keys (`norm`, `qkv_proj`, `kv_proj`,
`out_proj`, `up_proj`, `down_proj`, `scale`, `pos_emb`, ...), so official checkpoints load by prefix only.

Dtype contract (needed for bit parity, §0.B/§0.D): reductions run in fp32 through explicit casts; products
are taken in the activation dtype; nothing here turns autocast on, only the top-level caller does.
"""

from __future__ import annotations

import math
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn

from zipmo_robot.models.rope import apply_rotary, make_rope, rotary_tables

Rotary = tuple[torch.Tensor, torch.Tensor]  # (cos, sin) tables of `rope.rotary_tables`
LayerRotary = tuple[Rotary | None, Rotary | None]  # (self-attention, cross-attention query) tables

# ----------------------------------------------------------------------------------------------------------
# Helpers


def zero_init(layer: nn.Linear) -> nn.Linear:
    """Zero the weight (and bias) of `layer` and return it: residual branches start as identities."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _promote_fp32(*tensors: torch.Tensor) -> torch.dtype:
    return reduce(torch.promote_types, [t.dtype for t in tensors] + [torch.float32])


def keep_weights_in_autocast_dtype_(
    module: nn.Module, dtype: torch.dtype, layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
) -> int:
    """Cast the weights and biases of every `nn.Linear` and `nn.Conv2d` (`layers`) in `module` to `dtype`,
    in place.

    Under autocast these layers cast fp32 weights to the autocast dtype on every call (autocast caches the
    casts only for parameters that require grad, and inference models do not): a read and a write of every
    weight per velocity evaluation. Casting once rounds the same way, so outputs are bit-identical, and the
    weights take half the memory. Only for a module that from then on runs exclusively under autocast of
    `dtype` (outside it, a bf16 linear refuses fp32 input). Returns the number of tensors cast.
    """
    n = 0
    for layer in module.modules():
        if isinstance(layer, layers):
            for name in ("weight", "bias"):
                p = getattr(layer, name, None)
                if p is not None and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    n += 1
    return n


class weights_in_dtype:  # noqa: N801 (a context manager, used like a function)
    """Context manager: inside it, the weights and biases of every `nn.Linear` / `nn.Conv2d` of `module` are
    `dtype` copies (made on entry, the originals put back on exit; reusable, not re-entrant).

    Under autocast to `dtype` these layers would cast their weights on every call (autocast caches casts only
    for parameters that require grad): once per Euler step. Casting once per sampling call rounds the same
    way, so outputs are bit-identical, and the caller's module is left as it was (others may use it in fp32).
    A module whose weights already are `dtype` (`keep_weights_in_autocast_dtype_`) costs nothing here.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        self.module, self.dtype = module, dtype
        self._saved: list[tuple[nn.Module, str, torch.Tensor]] = []

    def __enter__(self) -> weights_in_dtype:
        for layer in self.module.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                for name in ("weight", "bias"):
                    p = layer._parameters.get(name)
                    if p is not None and p.dtype != self.dtype:
                        self._saved.append((layer, name, p))
                        layer._parameters[name] = p.detach().to(self.dtype)
        return self

    def __exit__(self, *exc: object) -> None:
        for layer, name, p in reversed(self._saved):
            layer._parameters[name] = p
        self._saved.clear()


# ----------------------------------------------------------------------------------------------------------
# Kernels


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim of `x` and multiply by `scale`.

    The mean square and the factor are computed in fp32 (explicit casts: CPU autocast does not upcast
    them); the final product happens in `x.dtype` (§1.2).
    """
    dtype = _promote_fp32(x, scale)
    mean_sq = torch.mean(x.to(dtype) ** 2, dim=-1, keepdim=True)
    factor = scale.to(dtype) * torch.rsqrt(mean_sq + eps)
    return x * factor.to(x.dtype)


def scale_for_cosine_sim(
    q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalise q and k over the head dim and multiply each by `sqrt(scale)`, so `q'.k' = scale*cos`.

    q: (B, nh, Lq, e), k: (B, nh, Lk, e), scale: (nh, 1, 1). Sums of squares in fp32; the factors are
    cast back to the q/k dtype before the product (§1.4, §0.B).
    """
    return _cosine_factor(q, scale, eps), _cosine_factor(k, scale, eps)


def _cosine_factor(x: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    dtype = _promote_fp32(x, scale, eps)
    sum_sq = torch.sum(x.to(dtype) ** 2, dim=-1, keepdim=True)
    factor = torch.sqrt(scale.to(dtype)) * torch.rsqrt(sum_sq + eps.to(dtype))
    return x * factor.to(x.dtype)


def linear_swiglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`value * silu(gate)` where `(value, gate)` are the first and second halves of `x @ W^T (+ b)`."""
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return value * F.silu(gate)


# ----------------------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    """RMSNorm with a learned `scale` (no bias, no mean subtraction), eps 1e-6."""

    def __init__(self, shape: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(shape))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.scale.shape)}, eps={self.eps}"

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return rms_norm(x, self.scale, self.eps)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose scale is `linear(cond) + 1` (zero-init linear, so it starts as a plain RMSNorm).

    cond: (B, cond_features); x: (B, L, features). The `+ 1` is added in the linear's output dtype (bf16
    under autocast, quirk Q10).
    """

    def __init__(self, features: int, cond_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.linear = zero_init(nn.Linear(cond_features, features, bias=False))

    def extra_repr(self) -> str:
        return f"eps={self.eps}"

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("AdaRMSNorm needs a conditioning tensor (cond_norm) of shape (B, cond_features)")
        return rms_norm(x, self.linear(cond)[:, None, :] + 1, self.eps)


def _make_norm(d_model: int, d_cond_norm: int | None) -> nn.Module:
    return AdaRMSNorm(d_model, d_cond_norm) if d_cond_norm else RMSNorm(d_model)


class LinearSwiGLU(nn.Linear):
    """`nn.Linear(in, 2*out)` followed by SwiGLU: output `value * silu(gate)` (value = first half)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features * 2, bias=bias)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_swiglu(x, self.weight, self.bias)


class FeedForwardBlock(nn.Module):
    """Pre-norm residual SwiGLU FFN: `x + down_proj(up_proj(norm(x[, cond])))`; AdaRMSNorm if conditioned."""

    def __init__(self, d_model: int, d_ff: int, cond_features: int | None = None):
        super().__init__()
        self.norm = _make_norm(d_model, cond_features)
        self.up_proj = LinearSwiGLU(d_model, d_ff, bias=False)
        self.down_proj = zero_init(nn.Linear(d_ff, d_model, bias=False))

    def forward(self, x: torch.Tensor, cond_norm: torch.Tensor | None = None) -> torch.Tensor:
        skip = x
        x = self.norm(x, cond_norm)
        x = self.up_proj(x)
        x = self.down_proj(x)
        return x + skip


def _split_heads(x: torch.Tensor, n_parts: int, d_head: int) -> torch.Tensor:
    """(B, L, n_parts*nh*e) -> (n_parts, B, nh, L, e): features are part-major, then head-major."""
    B, L, _ = x.shape
    return x.view(B, L, n_parts, -1, d_head).permute(2, 0, 3, 1, 4)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, nh, L, e) -> (B, L, nh*e)."""
    B, nh, L, e = x.shape
    return x.transpose(1, 2).reshape(B, L, nh * e)


def _rope_tables(pos_emb: nn.Module, pos: torch.Tensor, dtype: torch.dtype) -> Rotary:
    """Rotary tables (cos, sin), (B, nh, L, n_rot) each, of positions pos (B, L, P), angles in `dtype`."""
    return rotary_tables(pos_emb(pos.to(dtype)).movedim(-2, -3), dtype)


class _CosineAttention(nn.Module):
    """What self- and cross-attention share: `n_heads` heads of `d_head`, the per-head temperature `scale`
    (init 10), the pre-norm `norm`, and the rotary tables of the query positions. A subclass sets `pos_emb`
    (None without rope) and says which projection makes the queries (`_query_weight`)."""

    pos_emb: nn.Module | None

    def __init__(self, d_model: int, d_cond_norm: int | None, d_head: int):
        super().__init__()
        if d_model % d_head:
            raise ValueError(f"d_model={d_model} is not a multiple of d_head={d_head}")
        self.d_head = d_head
        self.n_heads = d_model // d_head
        self.register_buffer("eps", torch.tensor(1e-6), persistent=False)
        self.scale = nn.Parameter(torch.full([self.n_heads], 10.0))
        self.norm = _make_norm(d_model, d_cond_norm)

    def _query_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"d_head={self.d_head}, n_heads={self.n_heads}"

    def nonpersistent_buffers(self) -> dict[str, torch.Tensor]:
        """Values of the buffers checkpoints do not store (for models built on the meta device)."""
        return {"eps": torch.tensor(1e-6)}

    def rotary(self, pos: torch.Tensor, dtype: torch.dtype | None = None) -> Rotary | None:
        """Rotary tables of query positions pos (B, L, P) for q/k of `dtype` (default: what the query
        projection produces in the current autocast state): (B, nh, L, n_rot) each (a view of token-major
        storage, the layout of q and k), or None without rope. Constant over the Euler steps of one sampling
        call, so the planner builds them once (`Level.rotaries`)."""
        if self.pos_emb is None:
            return None
        dtype = _linear_out_dtype(self._query_weight()) if dtype is None else dtype
        return _rope_tables(self.pos_emb, pos, dtype)


class SelfAttentionBlock(_CosineAttention):
    """Pre-norm cosine-similarity self-attention with a learned per-head temperature and rotary positions.

    `scale [n_heads]` (init 10) multiplies the cosine similarity; SDPA runs with `scale=1`. x: (B, L, d_model),
    pos: (B, L, P) with P = 3/2/1 for the 3d/2d/1d rope modes.
    """

    def __init__(
        self, d_model: int, d_cond_norm: int | None = None, d_head: int = 64, rope_mode: str = "3d_40"
    ):
        super().__init__(d_model, d_cond_norm, d_head)
        self.qkv_proj = nn.Linear(d_model, d_model * 3, bias=False)
        self.pos_emb = make_rope(rope_mode, d_head, self.n_heads)
        self.out_proj = zero_init(nn.Linear(d_model, d_model, bias=False))

    def _query_weight(self) -> torch.Tensor:
        return self.qkv_proj.weight

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor | None,
        cond_norm: torch.Tensor | None = None,
        rotary: Rotary | None = None,
    ) -> torch.Tensor:
        skip = x
        x = self.norm(x, cond_norm)
        qkv = self.qkv_proj(x)
        q, k, v = _split_heads(qkv, 3, self.d_head)  # each (B, nh, L, e)
        q, k = scale_for_cosine_sim(q, k, self.scale[:, None, None], self.eps)
        if self.pos_emb is not None:
            cos, sin = rotary if rotary is not None else self.rotary(pos, qkv.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        x = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        x = self.out_proj(_merge_heads(x))
        return x + skip


class CrossAttentionBlock(_CosineAttention):
    """Pre-norm cosine-similarity cross-attention to a context `x_cross` (B, Lc, d_cross) normalised by a
    plain RMSNorm (`norm_cross`). Rotary positions on q and k unless `rope_mode == "none"`.

    The keys/values depend only on the context, so `context(x_cross, pos_cross)` computes them once and
    `forward(..., context=...)` reuses them (the planner calls it once per sample, not once per Euler step).
    """

    def __init__(
        self,
        d_model: int,
        d_cross: int,
        d_cond_norm: int | None = None,
        d_head: int = 64,
        rope_mode: str = "3d_40",
    ):
        super().__init__(d_model, d_cond_norm, d_head)
        self.norm_cross = RMSNorm(d_cross)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_cross, d_model * 2, bias=False)
        self.pos_emb = make_rope(rope_mode, d_head, self.n_heads)
        self.out_proj = zero_init(nn.Linear(d_model, d_model, bias=False))

    def _query_weight(self) -> torch.Tensor:
        return self.q_proj.weight

    def context(
        self, x_cross: torch.Tensor, pos_cross: torch.Tensor | None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled, rotated keys and values `(B, nh, Lc, e)` of a context.

        `dtype` is the dtype of the queries (the rotary angles are computed in it, §1.4 step 4); by default
        the dtype `q_proj` produces (bf16 under autocast).
        """
        xc = self.norm_cross(x_cross)
        kv = self.kv_proj(xc)
        k, v = _split_heads(kv, 2, self.d_head)
        k = _cosine_factor(k, self.scale[:, None, None], self.eps)
        if self.pos_emb is not None:
            if dtype is None:
                dtype = _linear_out_dtype(self.q_proj.weight)
            k = apply_rotary(k, *_rope_tables(self.pos_emb, pos_cross, dtype))
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor | None,
        x_cross: torch.Tensor | None = None,
        pos_cross: torch.Tensor | None = None,
        cond_norm: torch.Tensor | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
        rotary: Rotary | None = None,
    ) -> torch.Tensor:
        skip = x
        x = self.norm(x, cond_norm)
        q = self.q_proj(x)
        if context is None:
            if x_cross is None:
                raise ValueError(
                    "CrossAttentionBlock needs x_cross (B, Lc, d_cross) or a precomputed context"
                )
            context = self.context(x_cross, pos_cross, q.dtype)
        k, v = context
        (q,) = _split_heads(q, 1, self.d_head)
        q = _cosine_factor(q, self.scale[:, None, None], self.eps)
        if self.pos_emb is not None:
            q = apply_rotary(q, *(rotary if rotary is not None else self.rotary(pos, q.dtype)))
        x = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        x = self.out_proj(_merge_heads(x))
        return x + skip


def _linear_out_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype an `nn.Linear` with this weight produces for fp32 input under the current autocast state."""
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return weight.dtype


class TransformerLayer(nn.Module):
    """Self-attention, optional cross-attention, SwiGLU FFN (each pre-norm residual); no final norm.

    Submodules `self_attn`, `cross_attn`, `ff` (official key names). `cross_rope_mode=None` means "same as
    self". With `d_cond_norm` every norm except `norm_cross` is an AdaRMSNorm on `cond_norm (B, d_cond_norm)`.
    """

    def __init__(
        self,
        d_model: int,
        d_cross: int | None = None,
        d_cond_norm: int | None = None,
        d_head: int = 64,
        ff_expand: int = 3,
        self_rope_mode: str = "3d_40",
        cross_rope_mode: str | None = None,
        use_ca: bool = True,
    ):
        super().__init__()
        self.self_attn = SelfAttentionBlock(d_model, d_cond_norm, d_head, self_rope_mode)
        self.use_ca = use_ca
        if use_ca:
            cross_rope_mode = self_rope_mode if cross_rope_mode is None else cross_rope_mode
            self.cross_attn = CrossAttentionBlock(
                d_model, d_cross if d_cross is not None else d_model, d_cond_norm, d_head, cross_rope_mode
            )
        self.ff = FeedForwardBlock(d_model, d_model * ff_expand, d_cond_norm)

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor | None,
        x_cross: torch.Tensor | None = None,
        pos_cross: torch.Tensor | None = None,
        cond_norm: torch.Tensor | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
        rotary: LayerRotary | None = None,
    ) -> torch.Tensor:
        self_rot, cross_rot = rotary if rotary is not None else (None, None)
        x = self.self_attn(x, pos, cond_norm, self_rot)
        if self.use_ca:
            x = self.cross_attn(x, pos, x_cross, pos_cross, cond_norm, context, cross_rot)
        return self.ff(x, cond_norm)

    def rotary(self, pos: torch.Tensor) -> LayerRotary:
        """(self-attention, cross-attention query) rotary tables of positions pos (B, L, P)."""
        return self.self_attn.rotary(pos), self.cross_attn.rotary(pos) if self.use_ca else None


class Level(nn.ModuleList):
    """A stack of `TransformerLayer`s applied in order with the same arguments (keys `<i>.<...>`)."""

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor | None,
        x_cross: torch.Tensor | None = None,
        pos_cross: torch.Tensor | None = None,
        cond_norm: torch.Tensor | None = None,
        contexts: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        rotaries: list[LayerRotary] | None = None,
    ) -> torch.Tensor:
        for i, layer in enumerate(self):
            ctx = contexts[i] if contexts is not None else None
            rot = rotaries[i] if rotaries is not None else None
            x = layer(x, pos, x_cross, pos_cross, cond_norm, ctx, rot)
        return x

    def rotaries(self, pos: torch.Tensor) -> list[LayerRotary]:
        """Per-layer rotary tables of positions pos (B, L, P) (B may be 1 when every row has the same
        positions: the tables broadcast), for `forward(..., rotaries=...)` in every Euler step."""
        return [layer.rotary(pos) for layer in self]

    def contexts(
        self, x_cross: torch.Tensor, pos_cross: torch.Tensor | None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values for a fixed context (see `CrossAttentionBlock.context`)."""
        return [layer.cross_attn.context(x_cross, pos_cross) for layer in self]


class InputMLP(nn.Module):
    """Random-Fourier features of a small vector followed by residual SwiGLU blocks (§1.6).

    x: (..., in_features) -> (..., dim). Features per input dim: `n` sines then `n` cosines,
    `n = dim // (2*in_features)`, zero-padded to `dim`. `coeffs` is cast with `.to(x)`: an int64 input
    truncates the frequencies toward zero (quirk Q5); `official_int_cast=False` keeps them float instead.
    """

    def __init__(
        self, in_features: int, dim: int, depth: int = 2, theta: float = 40 * math.pi, ff_expand: int = 3
    ):
        super().__init__()
        self.in_features = in_features
        self.dim = dim
        n = dim // (2 * in_features)
        self.n_pad = dim - 2 * in_features * n
        # Random Fourier frequencies, std theta/1.96 (the official `random_fourier=True` variant).
        self.register_buffer("coeffs", torch.randn(n) * (theta / 1.96))
        self.mlp = nn.Sequential(*[FeedForwardBlock(dim, dim * ff_expand) for _ in range(depth)])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, dim={self.dim}, n_pad={self.n_pad}"

    def features(self, x: torch.Tensor, official_int_cast: bool = True) -> torch.Tensor:
        """The Fourier features (..., dim) before the MLP."""
        if not official_int_cast and not torch.is_floating_point(x):
            x = x.to(self.coeffs.dtype)
        c = self.coeffs.to(x)
        f = x[..., None] * c  # (..., in, n)
        s = torch.stack([torch.sin(f), torch.cos(f)], dim=-2)  # (..., in, 2, n)
        s = s.flatten(-3)  # (..., 2*in*n)
        pad = torch.zeros(*s.shape[:-1], self.n_pad, device=s.device)  # default dtype, as the official code
        return torch.cat([s, pad], dim=-1)

    def forward(self, x: torch.Tensor, official_int_cast: bool = True) -> torch.Tensor:
        return self.mlp(self.features(x, official_int_cast))


class OutputMLP(nn.Sequential):
    """`RMSNorm, Linear, SiLU, Linear, SiLU, Linear` (keys `0.scale`, `1.*`, `3.*`, `5.*`)."""

    def __init__(self, width: int, d_out: int):
        super().__init__(
            RMSNorm(width),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, d_out),
        )


class FourierFeatures(nn.Module):
    """Gaussian Fourier features of the flow time: `cat(cos f, sin f)`, `f = (2π t) @ weight^T` (cos first).

    t: (B, in_features) -> (B, out_features). `weight [out/2, in]` is a random buffer stored in checkpoints.
    """

    def __init__(self, in_features: int, out_features: int, std: float = 1.0):
        super().__init__()
        if out_features % 2:
            raise ValueError(f"FourierFeatures needs an even out_features, got {out_features}")
        self.register_buffer("weight", torch.randn([out_features // 2, in_features]) * std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class MappingNetwork(nn.Module):
    """`in_norm` -> `depth` plain SwiGLU FFN blocks -> `out_norm`; maps time features to the AdaRMSNorm
    conditioning (B, width)."""

    def __init__(self, depth: int, width: int, d_ff: int):
        super().__init__()
        self.in_norm = RMSNorm(width)
        self.blocks = nn.ModuleList([FeedForwardBlock(width, d_ff) for _ in range(depth)])
        self.out_norm = RMSNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)
