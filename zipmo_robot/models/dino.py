"""DINOv2 ViT-B/14 with 4 registers as the ZipMo models use it (ZIPMO_REFERENCE.md §2).

`ImageEncoder` takes channel-last frames in [-1, 1] and returns the patch tokens after the final LayerNorm.
The weights come from a ZipMo checkpoint (keys `<prefix>img_embedder.model.*`) or, for training from scratch,
from the transformers hub model converted by `zipmo_robot.checkpoints.hub`; nothing here downloads anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DinoConfig:
    """Sizes of the image encoder (release: DINOv2 ViT-B/14-reg).

    Args:
        embed_dim: token width (768 at release; the planner/VAE cross-attention width equals it).
        depth: number of ViT blocks (12).
        num_heads: attention heads (12).
        mlp_ratio: MLP hidden width / embed_dim (4).
        patch_size: conv patch size (14).
        img_size: model input side after resizing (224 -> 16x16 patches).
        num_register_tokens: register tokens between cls and patches (4).
        pos_embed_grid: side of the stored positional-embedding grid; the official module hard-codes the
            hub model's 37x37 (518 px) table, `pos_embed [1, 1 + 37*37, E]`, interpolated to 16x16 (§2.1).
        frozen: run without gradients in eval mode, as the released models do (`requires_grad=False`).
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    patch_size: int = 14
    img_size: int = 224
    num_register_tokens: int = 4
    pos_embed_grid: int = 37
    frozen: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"DinoConfig.embed_dim={self.embed_dim} is not a multiple of num_heads={self.num_heads}"
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"DinoConfig.img_size={self.img_size} is not a multiple of patch_size={self.patch_size}"
            )

    @property
    def grid(self) -> int:
        """Patch-grid side (16 at 224/14)."""
        return self.img_size // self.patch_size


# ----------------------------------------------------------------------------------------------------------
# ViT modules (key names as in the official/minDinoV2 state dict)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, H/p * W/p, E) row-major."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Softmax attention with biased qkv/proj; SDPA with the default 1/sqrt(d_head) scale."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, N, e)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma  # out of place: an in-place mul breaks the autocast record (§0.C)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """ViT with register tokens; returns the normalised patch tokens (cls and registers dropped)."""

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        E = cfg.embed_dim
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.patch_embed = PatchEmbed(cfg.patch_size, E)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_embed_grid**2, E))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, E))
        self.mask_token = nn.Parameter(torch.zeros(1, E))  # unused in forward; kept for the key layout
        self.blocks = nn.ModuleList([Block(E, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(E, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def interpolate_pos_encoding(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Positional embedding for an `h x w`-pixel input: bicubic+antialias resize of the stored grid,
        computed in fp32 and cast to the token dtype. x: (B, 1 + n_patches, E)."""
        n_patch = x.shape[1] - 1
        n_stored = self.pos_embed.shape[1] - 1
        if n_patch == n_stored and h == w:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, 0], pos_embed[:, 1:]
        E = x.shape[-1]
        M = int(math.sqrt(n_stored))
        size = (h // self.patch_size, w // self.patch_size)
        patch_pos = F.interpolate(
            patch_pos.reshape(1, M, M, E).permute(0, 3, 1, 2), size=size, mode="bicubic", antialias=True
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, E)
        return torch.cat((cls_pos[:, None], patch_pos), dim=1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised image -> patch tokens (B, H/p * W/p, E)."""
        B, _, H, W = x.shape
        t = self.patch_embed(x)
        # fp32 cls + bf16 patches promote the stream to fp32 under autocast (§0.C).
        t = torch.cat((self.cls_token.expand(B, -1, -1), t), dim=1)
        t = t + self.interpolate_pos_encoding(t, H, W)
        t = torch.cat((t[:, :1], self.register_tokens.expand(B, -1, -1), t[:, 1:]), dim=1)
        for block in self.blocks:
            t = block(t)
        t = self.norm(t)
        return t[:, 1 + self.num_register_tokens :]


# ----------------------------------------------------------------------------------------------------------
# Wrapper: preprocessing + patch tokens


def better_resize(imgs: torch.Tensor, size: int) -> torch.Tensor:
    """Official resize: integer-factor average pooling when the short side is >= 2*size, then bilinear
    (no antialias) straight to `size x size` (aspect ratio squashed, no crop; quirk Q19). imgs: (B,3,H,W)."""
    H, W = imgs.shape[-2:]
    if H == size and W == size:
        return imgs
    k = min(H, W) // size
    if k > 1:
        imgs = F.avg_pool2d(imgs, kernel_size=k)
    return F.interpolate(imgs, size=[size, size], mode="bilinear")


class ImageEncoder(nn.Module):
    """Frames (B, H, W, 3) RGB in [-1, 1] -> DINO patch tokens (B, grid*grid, E), row-major.

    Submodule `model` holds the ViT (official keys `img_embedder.model.*`).
    """

    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        self.cfg = cfg
        self.model = DinoVisionTransformer(cfg)
        if cfg.frozen:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode and not self.cfg.frozen)
        return self

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(
                f"ImageEncoder expects (B, H, W, 3) channel-last frames, got {tuple(imgs.shape)}"
            )
        lo, hi = imgs.min().item(), imgs.max().item()
        if lo < -1.01 or hi > 1.01:
            raise ValueError(f"ImageEncoder expects frames in [-1, 1], got values in [{lo:.3f}, {hi:.3f}]")
        if self.cfg.frozen:
            with torch.no_grad():
                return self._encode(imgs)
        return self._encode(imgs)

    def _encode(self, imgs: torch.Tensor) -> torch.Tensor:
        x = better_resize(imgs.movedim(-1, 1), self.cfg.img_size)
        x = (x + 1) / 2
        mean = torch.tensor(self._MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self._STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return self.model((x - mean) / std)
