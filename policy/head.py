"""The inverse-dynamics policy head: planned motion latents + proprioception → a chunk of future actions.

Re-implements the action part of the official `PolicyHead` (ZIPMO_REFERENCE.md §6.1–6.3). The planner that
produces the latents is not part of this module (the agent owns it); parameter names follow the official
state-dict keys without the `track_predictor.` part, so loading a released head is prefix remapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zipmo_robot.models.blocks import TransformerLayer
from zipmo_robot.models.rope import make_axial_pos_2d

# rows of `learnable_modality_emb` the official head uses (0, 1, 4 exist in the checkpoint but are unused)
_MOTION_ROWS = (2, 3)  # view 0, view 1 motion tokens
_PROPRIO_ROW = 5
_NUM_MODALITIES = 6


@dataclass
class InverseDynamicsHeadConfig:
    """Sizes of the policy head. Defaults are the release sizes (§6.1, §8.1).

    Args:
        model_dim: token width of the head transformer (768 released).
        depth: number of transformer layers (6 released).
        d_head: attention head width (64 released; the parity fixtures use 32).
        ff_expand: SwiGLU hidden width = ff_expand * model_dim.
        latent_dim: channels per planned motion latent token (16).
        grid_size: latent grid side per view (16 → 256 tokens per view).
        num_views: camera views whose latents are cross-attended (2: agentview, wrist).
        proprio_dim: joint positions (7) + gripper qpos (2).
        action_dim: 7 (delta end-effector pose + gripper).
        chunk_len: number of learned action queries = predicted future actions (16).
        loss_discount: training loss weight of action t is loss_discount**t (§6.3).
    """

    model_dim: int = 768
    depth: int = 6
    d_head: int = 64
    ff_expand: int = 3
    latent_dim: int = 16
    grid_size: int = 16
    num_views: int = 2
    proprio_dim: int = 9
    action_dim: int = 7
    chunk_len: int = 16
    loss_discount: float = 0.99

    def __post_init__(self) -> None:
        if self.model_dim % self.d_head:
            raise ValueError(
                f"model_dim {self.model_dim} is not a multiple of d_head {self.d_head}; pick sizes that divide"
            )
        if self.num_views > 2:
            raise ValueError(f"num_views {self.num_views} > 2: the official modality table has 2 motion rows")

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str = "") -> InverseDynamicsHeadConfig:
        """Infer the sizes from a head state dict (official key layout), e.g. a tiny test checkpoint."""
        q = sd[f"{prefix}learned_action_queries"]
        dim = q.shape[-1]
        depth = 1 + max(
            int(k[len(prefix) :].split(".")[1]) for k in sd if k.startswith(f"{prefix}policy_net.")
        )
        n_heads = sd[f"{prefix}policy_net.0.self_attn.scale"].shape[0]
        up = sd[f"{prefix}policy_net.0.ff.up_proj.weight"].shape[0]
        return cls(
            model_dim=dim,
            depth=depth,
            d_head=dim // n_heads,
            ff_expand=up // (2 * dim),
            latent_dim=sd[f"{prefix}track_embedder.weight"].shape[1],
            proprio_dim=sd[f"{prefix}proprio_embedder.weight"].shape[1],
            action_dim=sd[f"{prefix}policy_out_proj.proj.weight"].shape[0],
            chunk_len=q.shape[1],
        )


class _Proj(nn.Module):
    """Bias-free linear kept under the official sub-name `proj` (`policy_in_proj.proj.weight`, ...)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class InverseDynamicsHead(nn.Module):
    """Cross-attends 16 learned action queries to both views' motion latents plus a proprio token.

    `predict(latents (B, V*G*G, C), proprio (B, P)) -> (B, chunk_len, action_dim)`, stateless, fp32.
    Latents are the planner's *normalised* output (never decoded); no action normalisation or clipping (Q22).
    """

    def __init__(self, config: InverseDynamicsHeadConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or InverseDynamicsHeadConfig()
        d = cfg.model_dim
        self.learned_action_queries = nn.Parameter(torch.randn(1, cfg.chunk_len, d) * 0.02)
        self.learnable_modality_emb = nn.Parameter(torch.randn(_NUM_MODALITIES, d) * 0.02)
        self.policy_in_proj = _Proj(d, d)
        self.policy_net = nn.ModuleList(
            TransformerLayer(
                d,
                d_cross=d,
                d_head=cfg.d_head,
                ff_expand=cfg.ff_expand,
                self_rope_mode="2d",
                cross_rope_mode="2d",
            )
            for _ in range(cfg.depth)
        )
        self.policy_out_proj = _Proj(d, cfg.action_dim)
        self.track_embedder = nn.Linear(cfg.latent_dim, d)
        self.proprio_embedder = nn.Linear(cfg.proprio_dim, d)
        grid = make_axial_pos_2d(cfg.grid_size, cfg.grid_size)  # (G*G, 2) yx
        cross_pos = torch.cat([grid] * cfg.num_views + [torch.zeros(1, 2)], dim=0)
        self.register_buffer("cross_pos", cross_pos, persistent=False)  # (V*G*G + 1, 2)
        self.register_buffer("query_pos", torch.zeros(cfg.chunk_len, 2), persistent=False)
        weights = cfg.loss_discount ** torch.arange(cfg.chunk_len, dtype=torch.float32)
        self.register_buffer("loss_weights", weights, persistent=False)  # (chunk_len,)

    def predict(self, latents: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Action chunk (B, chunk_len, action_dim) from normalised latents (B, V*G*G, C) and proprio (B, P)."""
        cfg = self.config
        per_view = cfg.grid_size * cfg.grid_size
        if latents.shape[1:] != (cfg.num_views * per_view, cfg.latent_dim):
            raise ValueError(
                f"latents must be (B, {cfg.num_views * per_view}, {cfg.latent_dim}), got {tuple(latents.shape)}"
            )
        b = latents.shape[0]
        motion = self.track_embedder(latents)  # (B, V*G*G, D)
        view_emb = torch.cat(
            [self.learnable_modality_emb[r].expand(per_view, -1) for r in _MOTION_ROWS[: cfg.num_views]]
        )
        motion = motion + view_emb
        prop = self.proprio_embedder(proprio)[:, None, :] + self.learnable_modality_emb[_PROPRIO_ROW]
        x_cross = torch.cat([motion, prop], dim=1)  # (B, V*G*G + 1, D)
        pos_cross = self.cross_pos.expand(b, -1, -1)
        h = self.policy_in_proj(self.learned_action_queries).expand(b, -1, -1)
        pos = self.query_pos.expand(b, -1, -1)
        for layer in self.policy_net:
            h = layer(h, pos, x_cross=x_cross, pos_cross=pos_cross)
        return self.policy_out_proj(h)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Discounted L2 loss (§6.3): mean over (B, T, A) of (pred - actions)² · discount^t.

        `batch`: "latents" (B, V*G*G, C) planned latents, "proprio" (B, P) at the window's first step,
        "actions" (B, chunk_len, action_dim).
        """
        pred = self.predict(batch["latents"], batch["proprio"])
        err = (pred - batch["actions"]) ** 2
        loss = (err * self.loss_weights[None, :, None]).mean()
        metrics = {"loss": float(loss.detach()), "mse": float(err.detach().mean())}
        return loss, metrics
