"""Trajectory VAE: tracks + start frame -> a 16x16 grid of 16-channel motion latents -> tracks at any query
points (ZIPMO_REFERENCE.md §4). Module and parameter names follow the official `ZipMoVAE` state dict
(`encoder.*`, `decoder.*`, `img_embedder.model.*`).

Tracks are (y, x) in [-1, 1]; `B, N, T` = batch, tracks, frames; `Nq` = query points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from zipmo_robot.models.blocks import InputMLP, Level, OutputMLP, TransformerLayer
from zipmo_robot.models.dino import DinoConfig, ImageEncoder
from zipmo_robot.models.rope import centers, make_axial_pos_2d

# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class VAEConfig:
    """Sizes of the trajectory VAE (defaults: the release, §4, §8.1).

    Args:
        d_model: transformer width of encoder and decoder (768).
        d_head: attention head size (64 in the official code, which hard-codes it).
        enc_depth / dec_depth: encoder / decoder layers (12 / 12).
        latent_dim: channels per latent token (16).
        latent_grid: side of the square latent grid (16 -> 256 tokens at t = 0).
        ff_expand: SwiGLU hidden width / d_model (3).
        traj_fourier_theta: scale of the random Fourier track features (40π).
        kl_weight: β of the KL term (1e-7).
        dino: the VAE's own image encoder; its `embed_dim` is the cross-attention width.
        with_image_encoder: False when a planner shares its DINO copy with the VAE (then `decode` needs
            `start_emb`); the converter sets this when the two copies in a checkpoint are identical (Q20).
        residual: not in the official model (False there, and for every released file): the decoder's
            output is an offset added to the query's start point, so an untrained decoder (small random
            offsets) starts near "no motion" and training spends its steps on motion. The CPU recipe sets it: its small,
            briefly trained VAEs never got below the no-motion error with absolute outputs (README).
    """

    d_model: int = 768
    d_head: int = 64
    enc_depth: int = 12
    dec_depth: int = 12
    latent_dim: int = 16
    latent_grid: int = 16
    ff_expand: int = 3
    traj_fourier_theta: float = 40 * math.pi
    kl_weight: float = 1e-7
    dino: DinoConfig = field(default_factory=DinoConfig)
    with_image_encoder: bool = True
    residual: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.dino, dict):
            self.dino = DinoConfig(**self.dino)
        if self.d_model % self.d_head:
            raise ValueError(f"VAEConfig.d_model={self.d_model} is not a multiple of d_head={self.d_head}")

    @property
    def d_cross(self) -> int:
        return self.dino.embed_dim

    @property
    def n_latents(self) -> int:
        return self.latent_grid**2


def _image_pos(grid: int, t: float) -> torch.Tensor:
    """(grid*grid, 3) positions (t, y, x) of the DINO patch tokens."""
    yx = make_axial_pos_2d(grid, grid)
    return torch.cat([torch.full((grid * grid, 1), t), yx], dim=-1)


def _track_pos(points: torch.Tensor, T: int) -> torch.Tensor:
    """Positions of track tokens: points (B, N, 2) -> (B, N*T, 3) with t = centers(-1, 1, T), yx = point."""
    B, N, _ = points.shape
    t = centers(-1.0, 1.0, T, dtype=points.dtype, device=points.device)
    t = t.view(1, 1, T, 1).expand(B, N, T, 1)
    yx = points[:, :, None, :].expand(B, N, T, 2)
    return torch.cat([t, yx], dim=-1).reshape(B, N * T, 3)


def _layers(cfg: VAEConfig, depth: int) -> Level:
    return Level(
        [
            TransformerLayer(cfg.d_model, cfg.d_cross, None, cfg.d_head, cfg.ff_expand, "3d_40", "3d_40")
            for _ in range(depth)
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# Encoder / decoder


class TrajEncoder(nn.Module):
    """Tracks (B, N, T, 2) + DINO tokens -> posterior mean/logvar (B, G*G, latent_dim) and latent positions."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        d, G = cfg.d_model, cfg.latent_grid
        self.reg_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.query_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.register_buffer("reg_pos", torch.zeros(1, 1, 3))
        latent_pos = torch.cat(
            [torch.full((G * G, 1), centers(-1.0, 1.0, 1, device="cpu")[0].item()), make_axial_pos_2d(G, G)],
            -1,
        )
        self.register_buffer("query_pos", latent_pos[None])  # (1, G*G, 3), t = 0
        self.register_buffer("pos_cross", _image_pos(cfg.dino.grid, -1.0))  # DINO tokens at t = -1
        self.backbone = _layers(cfg, cfg.enc_depth)
        self.trajs_in = InputMLP(2, d, theta=cfg.traj_fourier_theta, ff_expand=cfg.ff_expand)
        self.to_mean = nn.Linear(d, cfg.latent_dim)
        self.to_logvar = nn.Linear(d, cfg.latent_dim)

    def forward(
        self, tracks: torch.Tensor, start_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tracks: (B, N, T, 2) yx; start_emb: (B, L_img, d_cross) -> mean, logvar (B, G*G, C), pos (B, G*G, 3)."""
        B, N, T, _ = tracks.shape
        n_lat = self.query_pos.shape[1]
        emb = self.trajs_in(tracks).reshape(B, N * T, -1)  # track-major, time-minor
        x = torch.cat([self.query_token.expand(B, n_lat, -1), emb, self.reg_token.expand(B, 1, -1)], dim=1)
        latent_pos = self.query_pos.expand(B, -1, -1)
        pos = torch.cat([latent_pos, _track_pos(tracks[:, :, 0], T), self.reg_pos.expand(B, -1, -1)], dim=1)
        pos_cross = self.pos_cross.expand(B, -1, -1)
        h = self.backbone(x, pos, start_emb, pos_cross)[:, :n_lat]
        return self.to_mean(h), self.to_logvar(h), latent_pos


class TrajRegressorDecoderMAE(nn.Module):
    """Latents (B, G*G, C) + query start points (B, Nq, 2) + DINO tokens -> tracks (B, Nq, T, 2).

    All decode tokens attend to each other, so a query's output depends on the other queries of the call
    (quirk Q12).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        d = cfg.d_model
        self.residual = cfg.residual
        self.decode_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.register_buffer("pos_cross", _image_pos(cfg.dino.grid, -1.0))
        self.backbone = _layers(cfg, cfg.dec_depth)
        self.trajs_out = OutputMLP(d, 2)
        self.latents_in = nn.Linear(cfg.latent_dim, d)

    def decode_tracks(
        self,
        latents: torch.Tensor,
        query_pos: torch.Tensor,
        points_per_track: int,
        start_emb: torch.Tensor,
        latent_pos: torch.Tensor,
    ) -> torch.Tensor:
        """latents (B, L, C), query_pos (B, Nq, 2), start_emb (B, L_img, d_cross), latent_pos (B, L, 3)
        -> absolute tracks (B, Nq, T, 2) yx (with `residual`, the output offset plus the start point)."""
        B, Nq, _ = query_pos.shape
        T = points_per_track
        n_lat = latents.shape[1]
        lat = self.latents_in(latents)
        x = torch.cat([lat, self.decode_token.expand(B, Nq * T, -1)], dim=1)
        pos = torch.cat([latent_pos, _track_pos(query_pos, T)], dim=1)
        h = self.backbone(x, pos, start_emb, self.pos_cross.expand(B, -1, -1))
        out = self.trajs_out(h[:, n_lat:]).reshape(B, Nq, T, 2)
        return out + query_pos[:, :, None, :] if self.residual else out

    def forward(
        self, latents: torch.Tensor, tracks: torch.Tensor, latent_pos: torch.Tensor, start_emb: torch.Tensor
    ) -> torch.Tensor:
        """Mean L1 reconstruction loss of `tracks (B, Nq, T, 2)` decoded from their first points."""
        pred = self.decode_tracks(latents, tracks[:, :, 0], tracks.shape[2], start_emb, latent_pos)
        return F.l1_loss(pred, tracks)


# ----------------------------------------------------------------------------------------------------------
# Model


class TrajectoryVAE(nn.Module):
    """β-VAE over point tracks conditioned on the start frame (official `ZipMoVAE`)."""

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VAEConfig()
        self.encoder = TrajEncoder(cfg)
        self.decoder = TrajRegressorDecoderMAE(cfg)
        self.img_embedder = ImageEncoder(cfg.dino) if cfg.with_image_encoder else None

    def num_params(self) -> int:
        """State-dict numel (parameters + persistent buffers), comparable with the official listings."""
        return sum(t.numel() for t in self.state_dict().values())

    def embed_frame(self, start_frame: torch.Tensor) -> torch.Tensor:
        """start_frame (B, H, W, 3) in [-1, 1] -> DINO tokens (B, L_img, d_cross)."""
        if self.img_embedder is None:
            raise ValueError(
                "this VAE shares its image encoder with a planner (with_image_encoder=False): pass start_emb"
            )
        return self.img_embedder(start_frame)

    def _start_emb(self, start_frame: torch.Tensor | None, start_emb: torch.Tensor | None) -> torch.Tensor:
        if start_emb is not None:
            return start_emb
        if start_frame is None:
            raise ValueError("pass start_frame (B, H, W, 3) in [-1, 1] or precomputed start_emb")
        return self.embed_frame(start_frame)

    def encode(
        self,
        tracks: torch.Tensor,
        start_frame: torch.Tensor | None = None,
        start_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tracks (B, N, T, 2) -> posterior (mean, logvar) (B, G*G, C) and latent positions (B, G*G, 3)."""
        return self.encoder(tracks, self._start_emb(start_frame, start_emb))

    def latent_pos(self, batch: int) -> torch.Tensor:
        return self.encoder.query_pos.expand(batch, -1, -1)

    def decode(
        self,
        latents: torch.Tensor,
        query_pos: torch.Tensor,
        points_per_track: int,
        start_frame: torch.Tensor | None = None,
        start_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """latents (B, G*G, C) (un-normalised), query_pos (B, Nq, 2) yx -> tracks (B, Nq, T, 2)."""
        emb = self._start_emb(start_frame, start_emb)
        return self.decoder.decode_tracks(
            latents, query_pos, points_per_track, emb, self.latent_pos(latents.shape[0])
        )

    def decode_dense(
        self,
        latents: torch.Tensor,
        points_per_track: int,
        start_frame: torch.Tensor | None = None,
        start_emb: torch.Tensor | None = None,
        grid_size: int = 64,
        chunk_size: int = 8,
    ) -> torch.Tensor:
        """Tracks of a dense `grid_size^2` query grid -> (B, grid, grid, T, 2).

        The grid is decoded in `s^2` strided chunks of `chunk_size^2` queries (`s = grid // chunk`), each a
        separate batch element, as the official `decode_dense` does (§0.G): chunk (oh, ow) holds rows
        oh, oh+s, ... and columns ow, ow+s, ...
        """
        if grid_size % chunk_size:
            raise ValueError(f"grid_size={grid_size} must be a multiple of chunk_size={chunk_size}")
        B = latents.shape[0]
        s, c = grid_size // chunk_size, chunk_size
        emb = self._start_emb(start_frame, start_emb)
        grid = make_axial_pos_2d(grid_size, grid_size, latents.dtype, latents.device)
        grid = grid.view(c, s, c, s, 2)  # [r, oh, q, ow]: row r*s+oh, column q*s+ow
        queries = grid.permute(1, 3, 0, 2, 4).reshape(s * s, c * c, 2)  # chunk oh*s+ow, row-major inside
        queries = queries[None].expand(B, -1, -1, -1).reshape(B * s * s, c * c, 2)
        lat = latents.repeat_interleave(s * s, dim=0)
        emb = emb.repeat_interleave(s * s, dim=0)
        out = self.decoder.decode_tracks(lat, queries, points_per_track, emb, self.latent_pos(B * s * s))
        T = points_per_track
        out = out.view(B, s, s, c, c, T, 2).permute(0, 3, 1, 4, 2, 5, 6)  # (B, r, oh, q, ow, T, 2)
        return out.reshape(B, grid_size, grid_size, T, 2)

    def forward(
        self,
        tracks_enc: torch.Tensor,
        tracks_dec: torch.Tensor,
        start_frame: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """β-VAE loss: L1 of `tracks_dec (B, Nq, T, 2)` decoded from a posterior sample given
        `tracks_enc (B, N, T, 2)`, plus `kl_weight * KL`. The decode targets hold the encoded tracks and
        held-out ones (the masked term). `eps` (B, G*G, C) overrides the reparameterisation noise.

        Returns `(loss, metrics)`; metrics hold the two loss terms and posterior statistics (§0.H).
        """
        start_emb = self.embed_frame(start_frame)
        mean, logvar, latent_pos = self.encoder(tracks_enc, start_emb)
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        z = mean + eps * std
        recon = self.decoder(z, tracks_dec, latent_pos, start_emb)
        kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=-1)
        kl = self.cfg.kl_weight * kl.mean()
        loss = recon + kl
        with torch.no_grad():
            metrics = {
                "loss": loss.detach(),
                "reconstruction_loss": recon.detach(),
                "kl_loss": kl.detach(),
                "logvar_mean": logvar.mean(),
                "logvar_std": logvar.std(),
                "std_mean": std.mean(),
                "std_std": std.std(),
                "mean_mean": mean.mean(),
                "mean_std": mean.std(),
            }
        return loss, metrics
