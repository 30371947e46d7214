"""Flow-matching motion planner over VAE motion latents (ZIPMO_REFERENCE.md §5, quirks §11).

`MotionPlanner` is the open-domain planner conditioned on pokes (variants `sparse`, `dense`);
`LiberoMotionPlanner` is the LIBERO planner conditioned on a text token and two camera views (variants
`libero_atm`, `libero_tramoe`; Tra-MoE adds the episode-step token). Parameter names follow the official
`ZipMoPlanner*` state dicts (`vae.*`, `img_embedder.model.*`, `backbone.*`, `in_proj.*`, ...).

Flow convention (official, quirk Q7): `x_t = (1 - t) x_0 + t ε`, t = 1 is noise, the network predicts
`ε - x_0`, the Euler sampler walks t = 1 -> 1/S with `x <- x - v/S`. Latents inside the planner are
normalised (`normalize_latents`); the VAE works on un-normalised ones.

Where the official quirks (§11) live, and which are switchable (`PlannerConfig`; a converted official
checkpoint turns them all on, our checkpoints store their choice in config.json):
  Q5/Q6 int64 episode step truncates the Fourier frequencies: `blocks.InputMLP.features`, used by
        `LiberoMotionPlanner.step_token`; switch `int_truncated_step_embedding`.
  Q7    reversed flow time (t = 1 noise) and logit-normal training times: here; switches
        `paper_time_convention`, `time_sampling`.
  Q8    3D RoPE with t = 0 for latents, "3d_10" = 10.0*3.14, LIBERO image tokens at t = -1:
        `rope.make_rope`, `_rope_modes`, `_image_t` (architecture: fixed by the weights).
  Q9/Q10 RoPE angles, time features, AdaRMSNorm's +1 in the activation dtype: `rope`, `blocks`; they only
        differ from fp32 under bf16 autocast, which the caller chooses (the agent's `--precision`).
  Q14   float64 latent (de)normalisation: `normalize_latents`/`denormalize_latents`; switch
        `float64_latent_norm`.
  Q16   LIBERO: the official code embeds the dummy pokes and discards the result; skipped here (no effect on
        any output). Text token encoded by a 1-token transformer, CFG token `ca_mask_token`.
  Q17   sparse pokes: zero padding to n_cond (eval), last-Poisson(2.5) dropping (train): `poke_tokens`.
  Q19   DINO squash-resize: `dino.better_resize`. Q20 two DINO copies: `checkpoints` (shared if identical).

The one sampler (used by `sample`, the LIBERO agent `policy.agent.RollingReplanner`, `zipmo-robot bench` and
behavioural-cloning plan generation for the policy head):

    z, dummy = planner.draw_noise(generators, device)   # LIBERO: one torch.Generator per row
    with torch.inference_mode(), sampling_autocast(precision, device):   # precision "bf16" (official) | "fp32"
        guidance = planner.prepare_sampling(frames, track_conds=dummy, txt_emb=txt, start_t=step, cfg_scale=1.0)
        latents = planner.euler(z, guidance, steps)       # normalised latents (B, L, C), fp32

  frames (B, V, H, W, 3) float in [-1, 1] (uint8 / 127.5 - 1; open-domain: (B, H, W, 3)), view 0 = agentview;
  txt (B, 1, E) or (B, E) task embeddings (E = `dino.embed_dim`, BERT's 768 at release); step (B,) int64
  episode steps (Tra-MoE only; int64 keeps quirk Q5); z (B, L, C) fp32 with L = V*G*G, C = latent_dim
  (`latent_shape`); dummy (B, 1, 5) the official dummy pokes (LIBERO ignores their values; pass them as
  the official code does: they consume the generator and set the text token's dtype). `draw_noise` draws, per row and in this order, the noise then the dummy from
  that row's generator (the official stream at batch 1; rows independent of each other); it advances each
  generator by one call, so seed a generator once per episode (agent) or per sample (plan generation). Steps:
  `policy.config.PolicyConfig.nfe` (10 released). The head takes `latents` as they are (never decoded).
  `prepare_sampling` computes the conditioning once (DINO on every view, text/step token, the image-token
  projection, every layer's cross-attention k/v; the unconditional branch only when cfg_scale > 1); `euler`
  runs the loop in the caller's autocast and grad mode: t and dt in z's dtype (fp32), so the Euler update
  promotes the bf16 velocity back to fp32 and the trajectory stays fp32 (official). Outputs made under
  `inference_mode` are inference tensors: `.clone()` them outside it before they enter an autograd graph (or
  generate plans under `torch.no_grad()` instead). `sample(z, frames, ..., sample_steps, cfg_scale)` is the
  official API (prepare + euler under inference mode, optional decode); its step default is the official 50.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from zipmo_robot.errors import UserError
from zipmo_robot.models.blocks import (
    FourierFeatures,
    InputMLP,
    Level,
    MappingNetwork,
    TransformerLayer,
    _linear_out_dtype,
    weights_in_dtype,
)
from zipmo_robot.models.dino import DinoConfig, ImageEncoder
from zipmo_robot.models.rope import centers, make_axial_pos_2d
from zipmo_robot.models.sizes import VARIANTS
from zipmo_robot.models.vae import TrajectoryVAE, VAEConfig

# The official `sample(..., sample_steps=50)` default (open-domain scripts). The LIBERO agent's count is the
# policy's knob, `policy.config.PolicyConfig.nfe` (10 released); sampling settings are not model config.
OFFICIAL_SAMPLE_STEPS = 50
# Planner numerics of the agent and of plan generation: "bf16" = bf16 autocast over fp32 weights (the official
# `act`, on CPU too), "fp32" = no autocast.
PRECISIONS = ("bf16", "fp32")

# Per-variant defaults of the official partials (§5.2, §5.3).
_N_COND = {"sparse": 16, "dense": 40, "libero_atm": 1, "libero_tramoe": 1}
_POISSON = {"sparse": 2.5, "dense": None, "libero_atm": None, "libero_tramoe": None}

# ----------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class PlannerConfig:
    """Planner sizes, conditioning and quirk switches (defaults: the release, §5, §8.1).

    Args:
        variant: "sparse" | "dense" (open-domain pokes) | "libero_atm" | "libero_tramoe" (text + 2 views;
            Tra-MoE adds the episode-step token).
        width / depth / d_head: backbone width (1024), layers (24), head size (64; hard-coded officially).
        d_cond_norm: width of the time conditioning feeding every AdaRMSNorm (256; also the Fourier
            time-feature count and the mapping width, which the official code hard-codes to 256).
        mapping_depth / mapping_d_ff: time-mapping FFN blocks (2) and hidden width (None -> 3*d_cond_norm).
        ff_expand: SwiGLU hidden width / width (3).
        text_enc_depth: layers of the LIBERO text-token encoder (6); its width is `dino.embed_dim`.
        n_cond: number of cross-attention poke tokens (None -> 16 sparse, 40 dense, 1 LIBERO).
        poisson_rate: training poke-drop rate (None -> the variant's: 2.5 for sparse, none otherwise); with a rate the
            evaluation pads the pokes to `n_cond` with zero tokens (quirk Q17).
        num_views: camera views of the LIBERO planner (2: agentview, eye-in-hand).
        c_dropout / c_dropout_start_frame: LIBERO training-time probabilities of replacing the encoded text
            token / all start-frame tokens by `ca_mask_token` (0.1 / 0.0).
        poke_fourier_theta / step_fourier_theta: Fourier scales of the poke and episode-step embeddings
            (10.0*3.14 and 10π, as in the official code).
        vae_shift / vae_scale / latent_target_var: latent normalisation `(z - shift) * sqrt(target/scale)`
            (-0.175, 11.6, 0.5; hard-coded officially, not stored in checkpoints).
        latent_norm: "scalar" (official: one shift for every latent) | "per_token" (LIBERO planners trained
            here: the buffer `latent_token_mean` (V, G*G, C), the mean VAE latent of each view, token and
            channel, is the shift, and `vae_scale` is the variance left around it). A small VAE trained on a
            CPU puts ~99 % of its latents' variance in a per-token constant that no sample differs in; a
            scalar normalisation then leaves the motion a few percent of the noise scale.
        time_sampling: training flow-time distribution, "logit_normal" (official: sigmoid(N(0, 1))) or
            "uniform".
        vae / dino: the embedded VAE's sizes and the planner's own image encoder; the cross-attention and
            text width equal `dino.embed_dim`.
        share_vae_dino: build one DINO module for the planner and its VAE (set by the converter when the
            two copies in a checkpoint are identical, quirk Q20); the state dict then has no
            `vae.img_embedder.*`.
        official_quirks: master switch for the behaviours of the official code that its released numbers
            depend on; each sub-flag below left at None follows it:
        int_truncated_step_embedding: Q5 — an int64 episode step casts the Fourier coefficients of
            `start_t_mapping` to int64 (truncation toward zero). False: the step is cast to float first.
        float64_latent_norm: Q14 — latent (de)normalisation promoted to float64 by a float64 shift, then
            cast back. False: computed in the latent dtype.
        paper_time_convention: False (official, Q7): t = 1 is noise. True: the network sees the paper's time
            `1 - t` and predicts `x_0 - ε` (only for checkpoints trained that way; sampler and loss adapt).
    """

    variant: str = "libero_atm"
    width: int = 1024
    depth: int = 24
    d_head: int = 64
    d_cond_norm: int = 256
    mapping_depth: int = 2
    mapping_d_ff: int | None = None
    ff_expand: int = 3
    text_enc_depth: int = 6
    n_cond: int | None = None
    poisson_rate: float | None = None
    num_views: int = 2
    c_dropout: float = 0.1
    c_dropout_start_frame: float = 0.0
    poke_fourier_theta: float = 10.0 * 3.14
    step_fourier_theta: float = 10 * math.pi
    vae_shift: float = -0.175
    vae_scale: float = 11.6
    latent_target_var: float = 0.5
    latent_norm: str = "scalar"
    time_sampling: str = "logit_normal"
    vae: VAEConfig = field(default_factory=VAEConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    share_vae_dino: bool = False
    official_quirks: bool = True
    int_truncated_step_embedding: bool | None = None
    float64_latent_norm: bool | None = None
    paper_time_convention: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.vae, dict):
            self.vae = VAEConfig(**self.vae)
        if isinstance(self.dino, dict):
            self.dino = DinoConfig(**self.dino)
        if self.variant not in VARIANTS:
            raise ValueError(f"PlannerConfig.variant={self.variant!r}; expected one of {VARIANTS}")
        if self.n_cond is None:
            self.n_cond = _N_COND[self.variant]
        if self.poisson_rate is None:
            self.poisson_rate = _POISSON[self.variant]
        if self.mapping_d_ff is None:
            self.mapping_d_ff = 3 * self.d_cond_norm
        for name in ("int_truncated_step_embedding", "float64_latent_norm"):
            if getattr(self, name) is None:
                setattr(self, name, self.official_quirks)
        if self.width % self.d_head:
            raise ValueError(f"PlannerConfig.width={self.width} is not a multiple of d_head={self.d_head}")
        if self.dino.embed_dim != self.vae.dino.embed_dim:
            raise ValueError(
                f"planner DINO width {self.dino.embed_dim} != VAE DINO width {self.vae.dino.embed_dim}; "
                "both copies must have the same architecture"
            )
        if self.latent_norm not in ("scalar", "per_token"):
            raise ValueError(f"PlannerConfig.latent_norm={self.latent_norm!r}; use scalar or per_token")
        if self.latent_norm == "per_token" and not self.is_libero:
            raise ValueError("latent_norm=per_token is for the LIBERO planners (a fixed number of views)")
        if self.time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(
                f"PlannerConfig.time_sampling={self.time_sampling!r}; use logit_normal or uniform"
            )
        if self.is_libero and self.vae.n_latents != self.dino.grid**2:
            raise ValueError(
                f"the LIBERO planner adds its grid embedding to as many latent tokens as there are image "
                f"tokens: latent grid {self.vae.latent_grid}^2 != image grid {self.dino.grid}^2"
            )

    @property
    def is_libero(self) -> bool:
        return self.variant.startswith("libero")

    @property
    def use_step_token(self) -> bool:
        return self.variant == "libero_tramoe"

    @property
    def d_cross(self) -> int:
        return self.dino.embed_dim


def planner_config_fields() -> list[str]:
    return [f.name for f in fields(PlannerConfig) if not f.name.startswith("_")]


# ----------------------------------------------------------------------------------------------------------
# Small modules (official names: CondTokenConcatMerge / CondTokenConcatSplit)


class CondTokenConcatMerge(nn.Module):
    """Project latents (`proj`) and image tokens (`cond_proj`) to the width; the image tokens are appended."""

    def __init__(self, d_latent: int, width: int, d_cross: int):
        super().__init__()
        self.proj = nn.Linear(d_latent, width, bias=False)
        self.cond_proj = nn.Linear(d_cross, width, bias=False)


class CondTokenConcatSplit(nn.Module):
    """Drop the trailing image tokens and project to the latent channels (`proj`)."""

    def __init__(self, width: int, d_latent: int):
        super().__init__()
        self.proj = nn.Linear(width, d_latent, bias=False)


@dataclass
class Conditioning:
    """Static conditioning of one `sample` call (one branch: conditional or unconditional).

    extra_tokens: (B, L_img, d_cross) image tokens before `cond_proj`; extra_pos: (B, L_img, 3);
    x_cross: (B, L_c, d_cross) cross-attention context; pos_cross: (B, L_c, 3);
    frame_feats: raw DINO tokens ((B*V), L, d_cross) of the start frame(s), reused for VAE decoding when the
    DINO copy is shared; img_h / contexts / rotaries / grid_emb: per-call caches filled by
    `MotionPlanner.prepare` (image-token projection, cross-attention k/v, rotary tables, LIBERO grid embedding).
    """

    extra_tokens: torch.Tensor
    extra_pos: torch.Tensor
    x_cross: torch.Tensor
    pos_cross: torch.Tensor
    frame_feats: torch.Tensor | None = None
    img_h: torch.Tensor | None = None
    contexts: list | None = None
    rotaries: list | None = None
    grid_emb: torch.Tensor | None = None


@dataclass
class Guidance:
    """What the Euler loop needs besides the noise: the prepared conditional branch, the prepared
    unconditional branch (None when `scale <= 1`: no unconditional pass) and the guidance scale."""

    cond: Conditioning
    uncond: Conditioning | None
    scale: float


def sampling_autocast(
    precision: str, device: torch.device | str, module: nn.Module | None = None
) -> contextlib.AbstractContextManager:
    """The autocast context of a planner precision (`PRECISIONS`) on `device`: bf16 autocast for "bf16"
    (on every device type, as the official `act`), nothing for "fp32"; anything else raises ValueError.

    With `module` (the planner) under "bf16", its matmul weights are also held as bf16 copies inside the
    context (`blocks.weights_in_dtype`): one cast per sampling call instead of one per Euler step, same bits.
    The returned context can be entered again after it exits (the agent reuses it for the overlay decode).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (bf16 = official)")
    if precision == "fp32":
        return contextlib.nullcontext()
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if module is None:
        return autocast
    return _Contexts(autocast, weights_in_dtype(module, torch.bfloat16))


class _Contexts:
    """Enter several reusable context managers in order, exit them in reverse."""

    def __init__(self, *contexts: contextlib.AbstractContextManager) -> None:
        self.contexts = contexts

    def __enter__(self) -> _Contexts:
        for c in self.contexts:
            c.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for c in reversed(self.contexts):
            c.__exit__(*exc)


VelocityFn = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]  # (x_t, t, cond) -> v

COMPILE_HINT = "run without --compile (policy_options.compile=false: the exact path, same actions, slower)"


class CompiledVelocity:
    """`planner.predict_velocity` through `torch.compile` (inductor, `dynamic=False`, one graph): the opt-in
    fast path of the agent (`PolicyConfig.compile`), passed to `MotionPlanner.euler` as `velocity`.

    Compiled lazily: the first call with a new (batch, autocast dtype) compiles a graph for it (seconds to
    minutes; one more for the unconditional branch when cfg_scale > 1), later calls reuse it. Inductor fuses the elementwise work (norms, RoPE, cosine
    factors) and may reorder reductions, so the result differs from the exact path in the last bits
    (README "fast path" gives the measured distance of the actions). A missing C++ compiler or any other
    compile failure raises `UserError` saying how to run without compiling.
    """

    MAX_GRAPHS = 64  # graphs kept per planner (dynamo's default of 8 is below batch sizes x precisions)

    def __init__(self, planner: MotionPlanner) -> None:
        self.planner = planner
        self.keys: set[tuple] = set()  # (batch, autocast dtype or None, context shape, context strides)
        self.compile_seconds: dict[tuple, float] = {}
        self._fullgraph = True
        self._fn = self._compile(fullgraph=True)

    @staticmethod
    def check_compiler() -> None:
        """Raise `UserError` now when inductor has no C++ compiler (it would fail at the first control step)."""
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # another torch layout: the first call reports any failure
            return
        try:
            get_cpp_compiler()
        except Exception as exc:
            raise UserError(
                f"--compile needs a C++ compiler for torch.compile (inductor) and found none ({exc!r}; it "
                f"looks for $CXX, else g++): install one (e.g. apt-get install g++) or {COMPILE_HINT}"
            ) from None

    def _compile(self, fullgraph: bool) -> VelocityFn:
        return torch.compile(
            self.planner.predict_velocity, backend="inductor", dynamic=False, fullgraph=fullgraph
        )

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        dev = x_t.device.type
        autocast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        # the CFG branches differ in their context's layout (an expanded mask token): one graph each
        key = (x_t.shape[0], autocast, tuple(cond.x_cross.shape), cond.x_cross.stride())
        if key in self.keys:
            return self._fn(x_t, t, cond)
        return self._first_call(key, x_t, t, cond)

    def _first_call(self, key: tuple, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Compile for a new key (a failure becomes `UserError`); graph breaks fall back to several graphs."""
        import time

        import torch._dynamo

        start = time.perf_counter()
        with torch._dynamo.config.patch(recompile_limit=self.MAX_GRAPHS):
            try:
                try:
                    out = self._fn(x_t, t, cond)
                except torch._dynamo.exc.Unsupported:
                    if not self._fullgraph:
                        raise
                    self._fullgraph, self._fn = False, self._compile(fullgraph=False)
                    out = self._fn(x_t, t, cond)
            except Exception as exc:
                raise self._failure(exc) from exc
        self.keys.add(key)
        self.compile_seconds[key] = time.perf_counter() - start
        return out

    @staticmethod
    def _failure(exc: Exception) -> UserError:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return UserError(
            f"torch.compile (inductor) could not compile the planner: {type(exc).__name__}: {first}. "
            f"Inductor needs a working C++ compiler ($CXX or g++) and the Python headers; {COMPILE_HINT}"
        )


# ----------------------------------------------------------------------------------------------------------
# Model


class MotionPlanner(nn.Module):
    """Open-domain planner (variants sparse/dense): poke tokens in cross-attention, one start frame."""

    def __init__(self, cfg: PlannerConfig):
        super().__init__()
        self.cfg = cfg
        E, W, C = cfg.d_cross, cfg.width, cfg.vae.latent_dim
        self.learnable_emb_dino = nn.Parameter(self._dino_emb_init())
        vae_cfg = cfg.vae
        if cfg.share_vae_dino:
            vae_cfg = replace(cfg.vae, with_image_encoder=False)
        self.vae = TrajectoryVAE(vae_cfg)
        self.img_embedder = ImageEncoder(cfg.dino)
        self.track_cond_emb = InputMLP(3, E, theta=cfg.poke_fourier_theta, ff_expand=cfg.ff_expand)
        self.time_emb = FourierFeatures(1, cfg.d_cond_norm)
        self.time_in_proj = nn.Linear(cfg.d_cond_norm, cfg.d_cond_norm, bias=False)
        self.mapping = MappingNetwork(cfg.mapping_depth, cfg.d_cond_norm, cfg.mapping_d_ff)
        self.in_proj = CondTokenConcatMerge(C, W, E)
        self.backbone = Level(
            [
                TransformerLayer(W, E, cfg.d_cond_norm, cfg.d_head, cfg.ff_expand, *self._rope_modes())
                for _ in range(cfg.depth)
            ]
        )
        self.out_proj = CondTokenConcatSplit(W, C)
        if cfg.latent_norm == "per_token":
            self.register_buffer("latent_token_mean", torch.zeros(cfg.num_views, cfg.vae.n_latents, C))
        for name, value in self.nonpersistent_buffers().items():
            self.register_buffer(name, value, persistent=False)

    def nonpersistent_buffers(self) -> dict[str, torch.Tensor]:
        """Token positions (not stored in checkpoints; also used to finish a model built on the meta
        device): `_latent_pos` (G*G, 3) = (t = 0, y, x) of one view's latent grid, `_image_pos` (g*g, 3) of
        the image tokens."""
        G, g = self.cfg.vae.latent_grid, self.cfg.dino.grid
        t0 = centers(-1.0, 1.0, 1, device="cpu")[0].item()
        cpu = torch.device("cpu")
        return {
            "_latent_pos": torch.cat(
                [torch.full((G * G, 1), t0, device=cpu), make_axial_pos_2d(G, G, device=cpu)], dim=-1
            ),
            "_image_pos": torch.cat(
                [torch.full((g * g, 1), self._image_t(), device=cpu), make_axial_pos_2d(g, g, device=cpu)],
                dim=-1,
            ),
        }

    # -- variant hooks ---------------------------------------------------------------------------------
    def _dino_emb_init(self) -> torch.Tensor:
        return torch.randn(self.cfg.d_cross) * 0.02

    def _rope_modes(self) -> tuple[str, str]:
        return "3d_10", "3d_10"  # quirk Q8: "2D RoPE" of the paper is 3D RoPE with t = 0, 10.0*3.14

    def _image_t(self) -> float:
        return centers(-1.0, 1.0, 1, device="cpu")[0].item()  # open-domain: image tokens at t = 0

    @property
    def n_views(self) -> int:
        return 1

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(L, C) of the planner's latents: L = n_views * G*G tokens (view 0 first), C channels."""
        return self.n_views * self.cfg.vae.n_latents, self.cfg.vae.latent_dim

    # -- bookkeeping -----------------------------------------------------------------------------------
    def num_params(self) -> int:
        """State-dict numel (parameters + persistent buffers); a shared DINO counts once."""
        return sum(t.numel() for t in self.state_dict().values())

    def param_groups(self, base_lr: float, weight_decay: float = 0.01) -> list[dict]:
        """Optimiser groups: every trainable parameter, decayed (the official VAE recipe decays all)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": base_lr, "weight_decay": weight_decay}]

    @property
    def vae_image_encoder(self) -> ImageEncoder:
        """The DINO copy the VAE decodes with (the planner's own when shared)."""
        return self.img_embedder if self.vae.img_embedder is None else self.vae.img_embedder

    # -- latent normalisation (quirk Q14) --------------------------------------------------------------
    def _token_mean(self, z: torch.Tensor) -> torch.Tensor:
        """`latent_token_mean` laid out like z: ((B V), L, C) per-view latents or (B, V*L, C) planner
        latents (view 0 first) both view as (B, V, L, C)."""
        m = self.latent_token_mean.to(z.dtype)
        V, L, C = m.shape
        return m.expand(z.numel() // (V * L * C), V, L, C).reshape(z.shape)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> planner space: `(z - shift) * sqrt(target_var) / sqrt(scale)`, same dtype out."""
        cfg = self.cfg
        if cfg.latent_norm == "per_token":
            z = z - self._token_mean(z)
            return z * (math.sqrt(cfg.latent_target_var) / math.sqrt(cfg.vae_scale))
        if cfg.float64_latent_norm:
            shift = torch.tensor(cfg.vae_shift, dtype=torch.float64, device=z.device).view(1, 1, 1)
            scale = torch.tensor(cfg.vae_scale, dtype=torch.float64, device=z.device)
            return ((z - shift) * (math.sqrt(cfg.latent_target_var) / scale.sqrt())).to(z.dtype)
        return (z - cfg.vae_shift) * (math.sqrt(cfg.latent_target_var) / math.sqrt(cfg.vae_scale))

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Planner space -> VAE latents. Official dtypes: the scale multiply in z's dtype (0-dim float64
        scale), the shift add promoted to float64 by a (1, 1, 1) float64 shift, then cast back."""
        cfg = self.cfg
        if cfg.latent_norm == "per_token":
            z = z * (math.sqrt(cfg.vae_scale) / math.sqrt(cfg.latent_target_var))
            return z + self._token_mean(z)
        if cfg.float64_latent_norm:
            shift = torch.tensor(cfg.vae_shift, dtype=torch.float64, device=z.device).view(1, 1, 1)
            scale = torch.tensor(cfg.vae_scale, dtype=torch.float64, device=z.device)
            return (z * (scale.sqrt() / math.sqrt(cfg.latent_target_var)) + shift).to(z.dtype)
        return z * (math.sqrt(cfg.vae_scale) / math.sqrt(cfg.latent_target_var)) + cfg.vae_shift

    # -- conditioning ----------------------------------------------------------------------------------
    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """Flow time t (B,) -> AdaRMSNorm conditioning (B, d_cond_norm)."""
        if self.cfg.paper_time_convention:
            t = 1 - t
        return self.mapping(self.time_in_proj(self.time_emb(t[:, None])))

    def latent_pos(self, batch: int) -> torch.Tensor:
        """(B, n_views*G*G, 3) positions of the latent tokens (every view gets the same grid)."""
        return self._latent_pos.repeat(self.n_views, 1)[None].expand(batch, -1, -1)

    def start_frame_embed(self, start_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """start_frame (B, H, W, 3) in [-1, 1] -> image tokens (B, L, E) (+ learnable_emb_dino), their
        positions (B, L, 3) and the raw DINO tokens (B, L, E)."""
        B = start_frame.shape[0]
        feats = self.img_embedder(start_frame)
        return feats + self.learnable_emb_dino, self._image_pos[None].expand(B, -1, -1), feats

    def poke_tokens(
        self, track_conds: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pokes (B, n, 5) = (y0, x0, y_end, x_end, t_end) -> context (B, n_cond, E) and positions
        (B, n_cond, 3) = (0, y0, x0). Sparse (poisson_rate set): training zeroes the last Poisson(rate) pokes,
        evaluation pads with zero tokens up to n_cond; dense: exactly n_cond pokes (quirk Q17)."""
        cfg = self.cfg
        B, n, _ = track_conds.shape
        if n > cfg.n_cond or (cfg.poisson_rate is None and n != cfg.n_cond):
            need = f"exactly {cfg.n_cond}" if cfg.poisson_rate is None else f"at most {cfg.n_cond}"
            raise ValueError(
                f"the {cfg.variant} planner takes {need} pokes, got track_conds of shape {(B, n, 5)}"
            )
        x_cross = self.track_cond_emb(track_conds[..., 2:])
        t0 = torch.zeros_like(track_conds[..., :1]) + centers(-1.0, 1.0, 1, device="cpu")[0].item()
        pos_cross = torch.cat([t0, track_conds[..., :2]], dim=-1)
        if self.training and cfg.poisson_rate is not None:
            rate = torch.full((B,), float(cfg.poisson_rate), device=track_conds.device)
            n_drop = torch.poisson(rate, generator=generator).clamp(0, n)
            keep = (torch.arange(n, device=track_conds.device)[None] < (n - n_drop)[:, None]).to(
                x_cross.dtype
            )
            x_cross, pos_cross = x_cross * keep[..., None], pos_cross * keep[..., None].to(pos_cross.dtype)
        if n < cfg.n_cond:
            x_cross = torch.cat([x_cross, x_cross.new_zeros(B, cfg.n_cond - n, x_cross.shape[-1])], dim=1)
            pos_cross = torch.cat([pos_cross, pos_cross.new_zeros(B, cfg.n_cond - n, 3)], dim=1)
        return x_cross, pos_cross

    def conditioning(
        self,
        start_frame: torch.Tensor,
        track_conds: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **unused,
    ) -> Conditioning:
        """Conditional branch: start frame (B, H, W, 3) and pokes (B, n, 5)."""
        if track_conds is None:
            raise ValueError(f"the {self.cfg.variant} planner needs track_conds (B, n, 5) pokes")
        extra, extra_pos, feats = self.start_frame_embed(start_frame)
        x_cross, pos_cross = self.poke_tokens(track_conds, generator)
        return Conditioning(extra, extra_pos, x_cross, pos_cross, feats)

    def unconditioning(self, cond: Conditioning, **unused) -> Conditioning:
        """Unconditional branch (CFG): same image tokens, all-zero pokes and positions."""
        B, E = cond.extra_tokens.shape[0], cond.x_cross.shape[-1]
        dtype, device = cond.extra_tokens.dtype, cond.extra_tokens.device
        x_cross = torch.zeros(B, self.cfg.n_cond, E, dtype=dtype, device=device)
        pos_cross = torch.zeros(B, self.cfg.n_cond, 3, dtype=cond.extra_pos.dtype, device=device)
        return Conditioning(cond.extra_tokens, cond.extra_pos, x_cross, pos_cross, cond.frame_feats)

    def prepare(self, cond: Conditioning) -> Conditioning:
        """Fill the per-call caches: image-token projection, every layer's cross-attention k/v and rotary
        tables (the token positions do not change between Euler steps)."""
        cond.img_h = self.in_proj.cond_proj(cond.extra_tokens)
        cond.contexts = self.backbone.contexts(cond.x_cross, cond.pos_cross)
        cond.rotaries = self.backbone.rotaries(self._token_pos(cond, rows_alike=True))
        return cond

    # -- velocity --------------------------------------------------------------------------------------
    def _token_pos(self, cond: Conditioning, rows_alike: bool = False) -> torch.Tensor:
        """(B, L + L_img, 3) positions of the latent then image tokens; with `rows_alike`, (1, ., 3) when the
        image positions are one row broadcast over the batch (always, unless a caller built its own), so
        cached rotary tables do not grow with the batch."""
        B = cond.extra_pos.shape[0]
        if rows_alike and cond.extra_pos.stride(0) == 0:
            B = 1
        return torch.cat([self.latent_pos(B), cond.extra_pos[:B]], dim=1)

    def _latent_tokens(self, x_t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Latents (B, L, C) projected to the width (B, L, W)."""
        return self.in_proj.proj(x_t)

    def predict_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """x_t (B, L, C) normalised latents, t (B,) -> velocity (B, L, C) in the official convention.

        Uses the caches of `prepare(cond)` when present.
        """
        L = x_t.shape[1]
        t_cond = self.time_condition(t.to(x_t.dtype))
        img_h = cond.img_h if cond.img_h is not None else self.in_proj.cond_proj(cond.extra_tokens)
        h = torch.cat([self._latent_tokens(x_t, cond), img_h], dim=1)  # (B, L + L_img, W)
        pos = self._token_pos(cond) if cond.rotaries is None else None  # positions only feed rope
        h = self.backbone(h, pos, cond.x_cross, cond.pos_cross, t_cond, cond.contexts, cond.rotaries)
        v = self.out_proj.proj(h[:, :L])
        return -v if self.cfg.paper_time_convention else v

    # -- sampling (the one Euler/CFG sampler: `sample`, the agent, `bench`, behavioural-cloning plans) -----
    def prepare_sampling(self, start_frame: torch.Tensor, cfg_scale: float = 1.0, **inputs: Any) -> Guidance:
        """Static conditioning of one sampling call, computed once: image features, text/poke (and step)
        tokens, the image-token projection and every layer's cross-attention k/v; the unconditional branch
        only when `cfg_scale > 1`. `inputs`: the keywords of `conditioning` (`track_conds`, LIBERO `txt_emb`,
        Tra-MoE `start_t`), shapes as in the module docstring. Runs in the caller's grad/autocast mode."""
        cond = self.prepare(self.conditioning(start_frame, **inputs))
        s = float(cfg_scale)
        uncond = self.prepare(self.unconditioning(cond, start_t=inputs.get("start_t"))) if s > 1.0 else None
        return Guidance(cond, uncond, s)

    def euler(
        self, z: torch.Tensor, guidance: Guidance, steps: int, velocity: VelocityFn | None = None
    ) -> torch.Tensor:
        """Euler-integrate from noise `z (B, L, C)` to normalised latents (B, L, C) in `steps` velocity
        evaluations (per branch), official convention (quirk Q7): t = k/S for k = S..1 and `x <- x - v/S`,
        t and dt in z's dtype, CFG `v_u + s (v_c - v_u)`. Runs in the caller's grad/autocast mode.
        `velocity`: the network call `(x, t, cond) -> v` (default `predict_velocity`, exact); the agent's
        opt-in fast path passes a `CompiledVelocity` of this planner."""
        if steps < 1:
            raise ValueError(f"the Euler sampler needs steps >= 1, got {steps}")
        predict = self.predict_velocity if velocity is None else velocity
        B = z.shape[0]
        x = z
        dt = torch.full((B, 1, 1), 1 / steps, dtype=z.dtype, device=z.device)
        for step in range(steps, 0, -1):
            t = torch.full((B,), step / steps, dtype=z.dtype, device=z.device)
            v = predict(x, t, guidance.cond)
            if guidance.uncond is not None:
                v_u = predict(x, t, guidance.uncond)
                v = v_u + guidance.scale * (v - v_u)
            x = x - dt * v
        return x

    @torch.inference_mode()
    def sample(
        self,
        z: torch.Tensor,
        start_frame: torch.Tensor,
        track_conds: torch.Tensor | None = None,
        txt_emb: torch.Tensor | None = None,
        start_t: torch.Tensor | None = None,
        sample_steps: int = OFFICIAL_SAMPLE_STEPS,
        cfg_scale: float = 1.0,
        query_pos: torch.Tensor | None = None,
        points_per_track: int | None = None,
    ) -> torch.Tensor:
        """`prepare_sampling` + `euler` under `torch.inference_mode`: normalised latents (B, L, C) from z.

        With `query_pos` and `points_per_track` the latents are denormalised and decoded instead
        (open-domain: query_pos (B, Nq, 2) -> (B, Nq, T, 2); LIBERO: (B, V, Nq, 2) -> (B, V, Nq, T, 2)).
        """
        guidance = self.prepare_sampling(
            start_frame, cfg_scale, track_conds=track_conds, txt_emb=txt_emb, start_t=start_t
        )
        x = self.euler(z, guidance, sample_steps)
        if query_pos is None:
            return x
        if points_per_track is None:
            raise ValueError("decoding needs points_per_track (frames per decoded track)")
        return self._decode(x, query_pos, points_per_track, start_frame, guidance.cond.frame_feats)

    @torch.inference_mode()
    def decode(
        self, latents: torch.Tensor, query_pos: torch.Tensor, points_per_track: int, start_frame: torch.Tensor
    ) -> torch.Tensor:
        """Normalised planner latents -> tracks at the query points (see `sample`)."""
        return self._decode(latents, query_pos, points_per_track, start_frame, None)

    def _vae_feats(self, frames: torch.Tensor, shared_feats: torch.Tensor | None) -> torch.Tensor:
        if self.vae.img_embedder is None and shared_feats is not None:
            return shared_feats  # shared DINO: the planner's features of the same frames
        return self.vae_image_encoder(frames)

    def _decode(self, latents, query_pos, points_per_track, start_frame, feats) -> torch.Tensor:
        z = self.denormalize_latents(latents)
        emb = self._vae_feats(start_frame, feats)
        return self.vae.decode(z, query_pos, points_per_track, start_emb=emb)

    # -- training --------------------------------------------------------------------------------------
    def sample_time(self, batch: int, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
        """Training flow times (B,): logit-normal `sigmoid(N(0, 1))` (official) or uniform."""
        if self.cfg.time_sampling == "uniform":
            return torch.rand(batch, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device, dtype=dtype))

    def flow_loss(
        self, x0: torch.Tensor, cond: Conditioning, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-sample flow-matching loss (B,) for normalised data latents x0 (B, L, C)."""
        B = x0.shape[0]
        t = self.sample_time(B, generator, x0.device, x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        tt = t[:, None, None]
        x_t = (1 - tt) * x0 + tt * noise
        v = self.predict_velocity(x_t, t, cond)
        return ((noise - x0 - v) ** 2).mean(dim=(1, 2))

    def encode_targets(self, tracks: torch.Tensor, frames: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Normalised VAE posterior means (B, G*G, C) of tracks (B, N, T, 2) (no gradient)."""
        with torch.no_grad():
            mean, _, _ = self.vae.encode(tracks, start_emb=self._vae_feats(frames, feats))
            return self.normalize_latents(mean)

    def poke_targets(self, tracks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training pokes from ground-truth tracks (B, N, T, 2): n_cond distinct random tracks, poke =
        (start, last point, t_end = 1)."""
        B, N, T, _ = tracks.shape
        if N < self.cfg.n_cond:
            raise ValueError(f"need at least n_cond={self.cfg.n_cond} tracks per sample, got {N}")
        idx = torch.stack([torch.randperm(N, generator=generator)[: self.cfg.n_cond] for _ in range(B)])
        sel = torch.gather(tracks, 1, idx.to(tracks.device)[:, :, None, None].expand(-1, -1, T, 2))
        t_end = torch.ones_like(sel[:, :, 0, :1])
        return torch.cat([sel[:, :, 0], sel[:, :, -1], t_end], dim=-1)

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss. batch: `tracks (B, N, T, 2)`, `start_frame (B, H, W, 3)` (+ optional
        `track_conds (B, n, 5)`). Returns `(loss, metrics)`."""
        tracks, frames = batch["tracks"], batch["start_frame"]
        track_conds = batch.get("track_conds")
        if track_conds is None:
            track_conds = self.poke_targets(tracks, generator)
        cond = self.conditioning(frames, track_conds=track_conds, generator=generator)
        x0 = self.encode_targets(tracks, frames, cond.frame_feats)
        loss = self.flow_loss(x0, cond, generator).mean()
        return loss, {"loss": loss.detach()}


class LiberoMotionPlanner(MotionPlanner):
    """LIBERO planner: two camera views, the task's text token (and, Tra-MoE, the episode step) in
    cross-attention (§5.3). Latents are (B, V*G*G, C), view 0 first."""

    def __init__(self, cfg: PlannerConfig):
        super().__init__(cfg)
        E, W, V = cfg.d_cross, cfg.width, cfg.num_views
        self.learnable_emb_grid_tokens = nn.Parameter(torch.randn(V, W) * 0.02)
        self.ca_mask_token = nn.Parameter(torch.randn(E) * 0.02)
        self.text_encoder = Level(
            [
                TransformerLayer(
                    E, d_head=cfg.d_head, ff_expand=cfg.ff_expand, self_rope_mode="1d", use_ca=False
                )
                for _ in range(cfg.text_enc_depth)
            ]
        )
        if cfg.use_step_token:
            self.start_t_mapping = InputMLP(1, E, theta=cfg.step_fourier_theta, ff_expand=cfg.ff_expand)

    def _dino_emb_init(self) -> torch.Tensor:
        return torch.randn(self.cfg.num_views, self.cfg.d_cross) * 0.02

    def _rope_modes(self) -> tuple[str, str]:
        return "3d_40", "none"

    def _image_t(self) -> float:
        return -1.0  # LIBERO: image tokens at t = -1, latents at t = 0 (quirk Q8)

    @property
    def n_views(self) -> int:
        return self.cfg.num_views

    def start_frame_embed(self, start_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """start_frame (B, V, H, W, 3) -> tokens (B, V*L, E) (+ learnable_emb_dino[v]), positions
        (B, V*L, 3) and raw DINO tokens ((B*V), L, E)."""
        B, V = start_frame.shape[:2]
        if V != self.cfg.num_views or start_frame.ndim != 5:
            raise ValueError(
                f"the LIBERO planner expects start_frame (B, {self.cfg.num_views}, H, W, 3), got {tuple(start_frame.shape)}"
            )
        feats = self.img_embedder(start_frame.clamp(-1, 1).flatten(0, 1))  # ((B V), L, E)
        L, E = feats.shape[1:]
        extra = (feats.view(B, V, L, E) + self.learnable_emb_dino[None, :, None, :]).reshape(B, V * L, E)
        pos = self._image_pos.repeat(V, 1)[None].expand(B, -1, -1)
        return extra, pos, feats

    def text_token(self, txt_emb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Task embedding (B, E) or (B, 1, E) -> encoded text token (B, 1, E)."""
        if txt_emb.ndim == 2:
            txt_emb = txt_emb[:, None]
        pos = torch.arange(txt_emb.shape[1], device=txt_emb.device)[:, None]
        return self.text_encoder(txt_emb.to(dtype), pos)

    def step_token(self, start_t: torch.Tensor) -> torch.Tensor:
        """Episode step (B,) -> (B, 1, E). int64 steps truncate the Fourier coefficients (quirk Q5) unless
        `int_truncated_step_embedding` is off."""
        return self.start_t_mapping(
            start_t[:, None, None], official_int_cast=self.cfg.int_truncated_step_embedding
        )

    def draw_noise(
        self, generators: Sequence[torch.Generator], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial noise of one sampling call, one generator per row, drawn in the official order: per row
        `randn(1, L, C)` then the dummy pokes `randn(1, n_cond, 5)` (official `act`; the dummy only feeds
        `track_conds`, quirk Q16) -> z (B, L, C) fp32 and dummy (B, n_cond, 5) fp32 on `device`.

        A row's stream depends only on its own generator, so at batch 1 it is exactly the official one and
        a row's plan never depends on the other rows of the batch. Each generator advances by one call."""
        noise, dummy = [], []
        for g in generators:
            noise.append(torch.randn((1, *self.latent_shape), generator=g, device=device))
            dummy.append(torch.randn((1, self.cfg.n_cond, 5), generator=g, device=device))
        return torch.cat(noise), torch.cat(dummy)

    def _with_step(self, x_cross: torch.Tensor, start_t: torch.Tensor | None) -> torch.Tensor:
        if not self.cfg.use_step_token:
            return x_cross
        if start_t is None:
            raise ValueError("the Tra-MoE planner needs start_t (B,), the episode step of each row")
        return torch.cat([x_cross, self.step_token(start_t.to(x_cross.device))], dim=1)

    def _pos_cross(self, track_conds: torch.Tensor | None, B: int, like: torch.Tensor) -> torch.Tensor:
        # Unused by the model (no cross RoPE); kept as the official code builds it from the dummy pokes.
        if track_conds is None:
            return like.new_zeros(B, self.cfg.n_cond, 3)
        t0 = torch.zeros_like(track_conds[..., :1]) + centers(-1.0, 1.0, 1, device="cpu")[0].item()
        return torch.cat([t0, track_conds[..., :2]], dim=-1)

    def conditioning(
        self,
        start_frame: torch.Tensor,
        track_conds: torch.Tensor | None = None,
        txt_emb: torch.Tensor | None = None,
        start_t: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **unused,
    ) -> Conditioning:
        """Conditional branch: frames (B, V, H, W, 3), task embedding (B, [1,] E), episode step (B,)."""
        if txt_emb is None:
            raise ValueError("the LIBERO planner needs txt_emb (B, 1, E), the task's text embedding")
        extra, extra_pos, feats = self.start_frame_embed(start_frame)
        B = extra.shape[0]
        # The official code casts the text token to the dtype of the (discarded) poke embedding: fp32 for
        # float inputs up to fp32, because its fp32 zero padding promotes it.
        poke_dtype = (
            torch.promote_types(track_conds.dtype, torch.float32)
            if track_conds is not None
            else torch.float32
        )
        txt = self.text_token(txt_emb, poke_dtype)
        if self.training:
            if self.cfg.c_dropout > 0:
                drop = torch.rand(B, generator=generator, device=txt.device) < self.cfg.c_dropout
                txt = torch.where(drop[:, None, None], self.ca_mask_token.to(txt.dtype).expand_as(txt), txt)
            if self.cfg.c_dropout_start_frame > 0:
                drop = (
                    torch.rand(B, generator=generator, device=extra.device) < self.cfg.c_dropout_start_frame
                )
                extra = torch.where(
                    drop[:, None, None], self.ca_mask_token.to(extra.dtype).expand_as(extra), extra
                )
        x_cross = self._with_step(txt, start_t)
        return Conditioning(extra, extra_pos, x_cross, self._pos_cross(track_conds, B, extra_pos), feats)

    def unconditioning(
        self, cond: Conditioning, start_t: torch.Tensor | None = None, **unused
    ) -> Conditioning:
        """Unconditional branch: `ca_mask_token` as the text token (the step token is kept, quirk Q4)."""
        B = cond.extra_tokens.shape[0]
        x_cross = self._with_step(self.ca_mask_token[None, None].expand(B, 1, -1), start_t)
        pos_cross = cond.extra_pos.new_zeros(B, self.cfg.n_cond, 3)
        return Conditioning(cond.extra_tokens, cond.extra_pos, x_cross, pos_cross, cond.frame_feats)

    def prepare(self, cond: Conditioning) -> Conditioning:
        cond.img_h = self.in_proj.cond_proj(cond.extra_tokens)
        cond.contexts = self.backbone.contexts(cond.x_cross, None)
        cond.rotaries = self.backbone.rotaries(self._token_pos(cond, rows_alike=True))
        cond.grid_emb = self._grid_emb(_linear_out_dtype(self.in_proj.proj.weight))
        return cond

    def _grid_emb(self, dtype: torch.dtype) -> torch.Tensor:
        """(V*G*G, W) per-view grid embedding of the latent tokens, view-major, in the activation dtype."""
        n = self.cfg.vae.latent_grid**2
        return self.learnable_emb_grid_tokens.repeat_interleave(n, dim=0).to(dtype)

    def _latent_tokens(self, x_t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        # Per-view grid embedding on the latent tokens (officially added to the first n_img tokens of the
        # concatenated sequence, which are the latents: n_img == V*G*G), out of place (§0.A).
        h = self.in_proj.proj(x_t)
        emb = cond.grid_emb if cond.grid_emb is not None and cond.grid_emb.dtype == h.dtype else None
        return h + (emb if emb is not None else self._grid_emb(h.dtype))

    def _decode(self, latents, query_pos, points_per_track, start_frame, feats) -> torch.Tensor:
        """latents (B, V*L, C), query_pos (B, V, Nq, 2) -> (B, V, Nq, T, 2), each view decoded on its own."""
        B, V = start_frame.shape[:2]
        z = self.denormalize_latents(latents).reshape(B * V, -1, latents.shape[-1])  # ((B V), L, C)
        emb = self._vae_feats(start_frame.flatten(0, 1), feats)
        out = self.vae.decode(z, query_pos.flatten(0, 1), points_per_track, start_emb=emb)
        return out.view(B, V, *out.shape[1:])

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss. batch: `tracks (B, V, N, T, 2)`, `start_frame (B, V, H, W, 3)`, `txt_emb (B, E)`,
        Tra-MoE: `start_t (B,)`. Returns `(loss, metrics)`."""
        tracks, frames = batch["tracks"], batch["start_frame"]
        B, V = tracks.shape[:2]
        cond = self.conditioning(
            frames, txt_emb=batch["txt_emb"], start_t=batch.get("start_t"), generator=generator
        )
        x0 = self.encode_targets(tracks.flatten(0, 1), frames.flatten(0, 1), cond.frame_feats)
        x0 = x0.reshape(B, V * x0.shape[1], -1)  # (B, V*L, C), view 0 first
        loss = self.flow_loss(x0, cond, generator).mean()
        return loss, {"loss": loss.detach()}


def build_planner(cfg: PlannerConfig) -> MotionPlanner:
    """The planner class for `cfg.variant`."""
    return LiberoMotionPlanner(cfg) if cfg.is_libero else MotionPlanner(cfg)
