"""Structured-config schema of `configs/train/*.yaml` (registered with hydra's ConfigStore) and composition.

One schema serves the three stages; each stage reads its own section (`vae`, `planner`, `policy`) and the
shared ones (`optim`, `ema`, `data`, `eval`). `compose_train(stage, overrides)` composes
`configs/train/<stage>.yaml` (which picks a model size from `configs/model/` and an optimiser preset from
`configs/train/optim/`) and validates the values the schema's types cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from zipmo_robot.errors import UserError
from zipmo_robot.policy.config import PolicyConfig

STAGES: tuple[str, ...] = ("vae", "planner", "policy")
IMAGE_ENCODERS: tuple[str, ...] = ("pretrained", "scratch")
TEXT_ENCODERS: tuple[str, ...] = ("auto", "bert", "sentence_code")
SCHEDULES: tuple[str, ...] = ("wsd", "constant", "cosine")


@dataclass
class OptimSchema:
    """AdamW and its learning-rate schedule. Presets: `paper` (Tab. G: betas (0.9, 0.95), 300 warm-up steps,
    constant LR with a WSD decay) and `released` (the released VAE script, Q11: betas (0.9, 0.99), 1000
    warm-up steps from 1e-8·lr, cosine to 1e-8)."""

    preset: str = "paper"
    lr: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    weight_decay: float = 0.01
    schedule: str = "wsd"
    warmup_steps: int = 300
    warmup_start_factor: float = 0.0
    decay_fraction: float = 0.1  # WSD: the last fraction of the steps decays linearly
    min_lr: float = 0.0  # WSD / cosine end value (absolute)
    grad_clip: float = 1.0  # max global grad norm; <= 0: off
    fused: bool = False  # fused AdamW (CUDA)


@dataclass
class EmaSchema:
    """EMA of the trained weights (torch.optim.swa_utils.AveragedModel + get_ema_multi_avg_fn)."""

    enabled: bool = True
    decay: float = 0.999
    start_step: int = 0  # before it the EMA copies the weights


@dataclass
class DataSchema:
    """Which preprocessed demos (`zipmo-robot preprocess` output) train and validate.

    `split` / `val_split` name a list of each task's `task.json`: train (45 of 50), val (5), bc_train_10
    (ATM's 10 BC demos), demos (all)."""

    root: str | None = None
    suites: list[str] = field(default_factory=lambda: ["libero_spatial"])
    tasks: list[int] | None = None
    split: str = "train"
    val_split: str | None = "val"
    max_demos_per_task: int | None = None
    n_tracks: int = 80  # per view and sample: the first half is encoded, all are decoded (VAE)
    window_stride: int = 1  # window starts every `window_stride` frames of a demo (BC on a CPU: 2-4)
    # share of each view's tracks drawn from those moving > 2 px in the window (0: uniform, the release); a
    # small VAE trained on uniform draws (agentview: ~6 % movers) decodes moving tracks no better than "no
    # motion"
    moving_fraction: float = 0.0
    # which tracks of a window: "random" (the release, a new draw each time) or "grid" (the same evenly spread
    # tracks of the latest query grid every time: the planner's targets become a function of the window)
    track_pick: str = "random"
    cameras: list[str] = field(default_factory=lambda: ["agentview", "robot0_eye_in_hand"])


@dataclass
class VaeStageSchema:
    """`init`: null (from scratch), `official` (the released VAE, converted) or a VAE checkpoint folder."""

    init: str | None = None
    logvar_init: float | None = None  # fresh VAE: to_logvar bias (null: the module's init, logvar ~ 0)
    pck_thresholds: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])


@dataclass
class PlannerStageSchema:
    """Flow-matching planner. `vae`: a trained VAE checkpoint folder or `official` (required);
    `init`: null or a planner checkpoint folder. Start-frame noise and dropout are off by default (the
    release uses none, Q16; magnitudes unknown, U2)."""

    variant: str = "libero_atm"
    vae: str | None = None
    init: str | None = None
    c_dropout: float = 0.1
    start_frame_dropout: float = 0.0
    start_frame_noise: float = 0.0  # std of Gaussian noise added to the start frames in [-1, 1]
    time_sampling: str = "logit_normal"
    # latent normalisation: auto = the released constants with the official VAE, measured (`latent_stats`)
    # for a VAE trained here; official | measure force one; per_token: a mean per view/token/channel and
    # the variance around it (PlannerConfig.latent_norm; what a small CPU-trained VAE needs)
    latent_stats: str = "auto"


@dataclass
class PlanCacheSchema:
    """K planner samples per training frame, made once and reused by every epoch."""

    enabled: bool = True
    plans_per_frame: int = 4
    dir: str | None = None  # null: <out>/plan_cache
    chunk_frames: int = 64
    batch: int = 32
    dtype: str = "float16"
    seed: int = 0


@dataclass
class PolicyStageSchema:
    """Behavioural cloning of the head. `planner`: a trained planner checkpoint folder (frozen);
    `init`: null or a policy checkpoint folder. `nfe` Euler steps per plan (10, as the paper trains);
    `plan_precision` bf16 (the agent's default) or fp32; `cfg_scale` the plans' guidance scale."""

    planner: str | None = None
    init: str | None = None
    # where the head's latents come from: `planner` (its samples, §6.3) or `vae`: the frozen VAE's posterior
    # means of each window's true tracks, normalised as the planner's targets (what a perfect planner would
    # give; a diagnostic: a head that gains nothing from them says the VAE's latents hold no action information)
    plans: str = "planner"
    nfe: int = PolicyConfig.nfe
    plan_precision: str = PolicyConfig.precision
    # classifier-free guidance on the sentence for the plans BC trains on (1.0: off, the release); the trained
    # policy records it as its agent default so evaluation samples plans the same way
    cfg_scale: float = PolicyConfig.cfg_scale
    plan_cache: PlanCacheSchema = field(default_factory=PlanCacheSchema)


@dataclass
class EvalSchema:
    """Short rollouts during policy training (every `every` steps; 0: off) on fixed init states."""

    every: int = 0
    suite: str = "libero_spatial"
    tasks: list[int] = field(default_factory=lambda: [0])
    episodes: int = 2
    max_steps: int = 300
    num_envs: int = 1
    video: bool = True
    protocol: str = "atm"


@dataclass
class TrainSchema:
    """One training run (see `configs/train/<stage>.yaml`)."""

    stage: str = MISSING
    out: str | None = None
    seed: int = 0
    steps: int = 1000
    stop_after: int | None = None  # end this invocation at this step (checkpoint written); the LR schedule
    # still follows `steps`, so `--resume` later continues exactly (time-boxed sessions)
    batch_size: int = 8  # global batch (split over DDP processes)
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32
    compile: bool = False
    threads: int | None = None  # torch intra-op threads per process (null: torch's default)
    log_every: int = 10
    save_every: int = 200
    val_every: int = 0
    val_batches: int = 4
    progress: bool = True
    tensorboard: bool = True
    image_encoder: str = "scratch"
    dino_source: str = "facebook/dinov2-with-registers-base"
    text_encoder: str = "auto"
    text_model: str = "bert-base-cased"
    model: Any = None
    optim: OptimSchema = field(default_factory=OptimSchema)
    ema: EmaSchema = field(default_factory=EmaSchema)
    data: DataSchema = field(default_factory=DataSchema)
    vae: VaeStageSchema = field(default_factory=VaeStageSchema)
    planner: PlannerStageSchema = field(default_factory=PlannerStageSchema)
    policy: PolicyStageSchema = field(default_factory=PolicyStageSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)


def register_schemas(cs: Any) -> None:
    """Store the schema as `train_schema` (the first defaults entry of every `configs/train/<stage>.yaml`)."""
    cs.store(name="train_schema", node=TrainSchema)


def compose_train(stage: str, overrides: list[str] | None = None) -> Any:
    """Compose `configs/train/<stage>.yaml` with hydra overrides and check it; returns a DictConfig."""
    from zipmo_robot.configs import compose

    if stage not in STAGES:
        raise UserError(f"unknown training stage {stage!r}; stages: {', '.join(STAGES)}")
    cfg = compose(f"train/{stage}", list(overrides or []))
    check(cfg)
    return cfg


def check(cfg: Any) -> None:
    """Refuse values the schema's types allow but the trainer does not (one `UserError` naming the key)."""
    problems = []
    if cfg.stage not in STAGES:
        problems.append(f"stage={cfg.stage!r} is not one of {STAGES}")
    if cfg.image_encoder not in IMAGE_ENCODERS:
        problems.append(f"image_encoder={cfg.image_encoder!r} is not one of {IMAGE_ENCODERS}")
    if cfg.text_encoder not in TEXT_ENCODERS:
        problems.append(f"text_encoder={cfg.text_encoder!r} is not one of {TEXT_ENCODERS}")
    if cfg.optim.schedule not in SCHEDULES:
        problems.append(f"optim.schedule={cfg.optim.schedule!r} is not one of {SCHEDULES}")
    from zipmo_robot.models.planner import PRECISIONS

    if cfg.precision not in ("auto", *PRECISIONS):
        problems.append(f"precision={cfg.precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    if cfg.policy.plan_precision not in PRECISIONS:
        problems.append(
            f"policy.plan_precision={cfg.policy.plan_precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    for key in ("steps", "batch_size", "log_every", "save_every"):
        if int(cfg[key]) < 1:
            problems.append(f"{key}={cfg[key]} must be >= 1")
    if cfg.data.n_tracks < 2 or cfg.data.n_tracks % 2:
        problems.append(
            f"data.n_tracks={cfg.data.n_tracks} must be even and >= 2 (half encoded, half held out)"
        )
    from zipmo_robot.data.windows import TRACK_PICKS

    if cfg.data.track_pick not in TRACK_PICKS:
        problems.append(f"data.track_pick={cfg.data.track_pick!r} must be 'random' or 'grid'")
    elif cfg.data.track_pick == "grid" and cfg.data.moving_fraction > 0:
        problems.append(
            f"data.track_pick=grid takes fixed grid tracks, so data.moving_fraction={cfg.data.moving_fraction} "
            "would be ignored: give data.moving_fraction=0 with it (or keep data.track_pick=random)"
        )
    if not 0.0 <= cfg.data.moving_fraction <= 1.0:
        problems.append(f"data.moving_fraction={cfg.data.moving_fraction} must be in [0, 1]")
    if cfg.data.window_stride < 1:
        problems.append(f"data.window_stride={cfg.data.window_stride} must be >= 1")
    if cfg.model is None:
        problems.append("no model size: add model=tiny|small|release")
    if problems:
        raise UserError("bad training config:\n  " + "\n  ".join(problems))
