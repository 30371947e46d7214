"""The three training stages: what is built, what is trained, the loss, and what a checkpoint holds.

Each stage exposes `trainable` (the module whose parameters the optimiser updates and the EMA averages),
`loss_module` (what DDP wraps: `forward(batch) -> (loss, metrics)`), `extras(rng, sample)` (the per-sample
random numbers, drawn by the data pipeline so they do not depend on the process count), `prepare(batch)`
(device transfer, plans for BC) and `checkpoint(ema_sd)` (kind, weights, meta).

Losses (ZIPMO_REFERENCE.md): VAE §4.3/§4.4 (L1 over the encoded + held-out decoded tracks, + 1e-7·KL);
planner §5.1/§5.3 (flow matching on normalised posterior means, t = 1 noise, logit-normal t, CFG text dropout);
policy §6.3 (0.99-discounted L2 on 16-step chunks from the frozen planner's 10-step samples).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from zipmo_robot.errors import UserError

# ----------------------------------------------------------------------------------------------------------
# Shared helpers


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float32 in [-1, 1] (the agent's `/127.5 - 1`)."""
    return frames.to(torch.float32) / 127.5 - 1.0


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def dino_config(sizes: Any, image_encoder: str) -> Any:
    """The DINO config of the sizes with the encoder choice: pretrained = frozen, scratch = trainable."""
    return replace(sizes.dino, frozen=image_encoder == "pretrained")


def pretrained_dino_weights(cfg: Any, dino_cfg: Any) -> dict[str, torch.Tensor]:
    """DINOv2-B/14-reg weights (official layout) from a local folder or the hub (`dino_source`)."""
    from zipmo_robot.checkpoints.hub import load_hub_dino

    if dino_cfg.embed_dim != 768 or dino_cfg.depth != 12:
        raise UserError(
            f"image_encoder=pretrained loads DINOv2 ViT-B/14 (width 768, 12 blocks), but model.dino has width "
            f"{dino_cfg.embed_dim} and {dino_cfg.depth} blocks; use model=release or image_encoder=scratch"
        )
    return load_hub_dino(cfg.dino_source)


def _load_into(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    from zipmo_robot.checkpoints.convert import CheckpointError, load_strict

    try:
        load_strict(module, sd, what)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc


def freeze_unused(module: nn.Module) -> None:
    """Freeze parameters no loss reaches (DDP requires every trainable parameter to get a gradient): the
    DINO `mask_token` (DINOv2's masked-image-modelling token, never used for plain features)."""
    for name, p in module.named_parameters():
        if name.endswith("img_embedder.model.mask_token"):
            p.requires_grad_(False)


@contextlib.contextmanager
def _no_builtin_dropout(planner: nn.Module):
    """Run `planner.conditioning` without its own (batch-size dependent) training dropout; the stage applies
    the same dropout from per-sample random numbers instead."""
    was = planner.training
    planner.training = False
    try:
        yield
    finally:
        planner.training = was


class Stage:
    name = ""
    trainable: nn.Module
    loss_module: nn.Module

    def __init__(self, cfg: Any, sizes: Any, device: torch.device, log: Any = print) -> None:
        self.cfg, self.sizes, self.device, self.log = cfg, sizes, device, log
        self.text = None  # a data.TextTable when the stage needs task embeddings
        self.sources: dict[str, Any] = {}

    def extras(self, rng: np.random.Generator, sample: dict) -> dict[str, np.ndarray]:
        return {}

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return to_device(batch, self.device)

    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        with torch.no_grad():
            _, metrics = self.loss_module(batch)
        return {k: float(v) for k, v in metrics.items()}

    def load_trained(self, sd: dict[str, torch.Tensor], what: str) -> None:
        _load_into(self.trainable, sd, what)

    def checkpoint(self, ema_sd: dict | None) -> tuple[str, dict, dict | None, dict]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------------
# VAE


class VAELoss(nn.Module):
    """β-VAE loss over both views: views are folded into the batch (each view is its own VAE sample)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tracks = batch["tracks"].flatten(0, 1)  # (B*V, n, T, 2)
        frames = frames_to_float(batch["start_frames"].flatten(0, 1))  # (B*V, H, W, 3)
        eps = batch["eps"].flatten(0, 1)  # (B*V, L, C)
        n_enc = tracks.shape[1] // 2
        loss, metrics = self.vae(tracks[:, :n_enc], tracks, frames, eps=eps)
        # mean |error| per coordinate in pixels of the 128-px frames ([-1, 1] spans 128 px)
        metrics["recon_px128"] = metrics["reconstruction_loss"] * 64
        return loss, metrics


class VAEStage(Stage):
    name = "vae"

    def __init__(self, cfg: Any, sizes: Any, device: torch.device, log: Any = print) -> None:
        super().__init__(cfg, sizes, device, log)
        from zipmo_robot.models.vae import TrajectoryVAE

        init = cfg.vae.init
        vcfg = replace(sizes.vae, dino=dino_config(sizes, cfg.image_encoder))
        if init == "official":
            from zipmo_robot.checkpoints.loader import load_model

            vae = load_model("official:vae", "vae", config=vcfg)
            self.sources["vae_init"] = {"spec": "official:vae"}
        else:
            vae = TrajectoryVAE(vcfg)
            if init is None and cfg.vae.logvar_init is not None:
                # short schedules: start near-deterministic (std = exp(logvar_init / 2)); at the release's
                # init (logvar ~ 0, std 1) the tiny KL weight (1e-7) takes far more steps than a CPU run has to
                # shrink the noise, and until then the decoder learns to ignore z
                with torch.no_grad():
                    vae.encoder.to_logvar.bias.fill_(float(cfg.vae.logvar_init))
            if cfg.image_encoder == "pretrained" and init is None:
                _load_into(vae.img_embedder.model, pretrained_dino_weights(cfg, vcfg.dino), "DINOv2 weights")
            if init is not None:
                from zipmo_robot.checkpoints import trained

                sd = trained.read_weights(init, trained._pick(trained.read_meta(init), "model"))
                _load_into(vae, sd, f"VAE checkpoint {init}")
                self.sources["vae_init"] = _source(init)
        freeze_unused(vae)
        self.vae = vae.to(device).train()
        self.trainable = self.vae
        self.loss_module = VAELoss(self.vae)

    def extras(self, rng: np.random.Generator, sample: dict) -> dict[str, np.ndarray]:
        V = sample["tracks"].shape[0]
        c = self.vae.cfg
        return {"eps": rng.standard_normal((V, c.n_latents, c.latent_dim), dtype=np.float32)}

    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms plus the reference's VAE metrics on the posterior mean (§4.6): endpoint error in px of
        the 128-px frame and PCK at `vae.pck_thresholds` px on the 256-px grid (`(p + 1)/2 * 255`); and, on
        the tracks that move > 2 px in the window, `epe_px128_moving` beside `epe_px128_moving_static`, the
        error of predicting no motion: a VAE whose latents carry motion beats it by far."""
        out = super().validate(batch)
        vae = self.vae
        with torch.no_grad():
            tracks = batch["tracks"].flatten(0, 1)
            frames = frames_to_float(batch["start_frames"].flatten(0, 1))
            n_enc = tracks.shape[1] // 2
            emb = vae.embed_frame(frames)
            mean, _, _ = vae.encode(tracks[:, :n_enc], start_emb=emb)
            pred = vae.decode(mean, tracks[:, :, 0], tracks.shape[2], start_emb=emb)
            err128 = torch.linalg.vector_norm((pred - tracks) * 64, dim=-1)
            err256 = torch.linalg.vector_norm((pred - tracks) / 2 * 255, dim=-1)
            out["epe_px128"] = float(err128.mean())
            out["epe_px128_heldout"] = float(err128[:, n_enc:].mean())
            still = torch.linalg.vector_norm((tracks[:, :, :1] - tracks) * 64, dim=-1)  # (BV, N, T)
            moving = still.amax(-1) > 2.0  # (BV, N)
            if bool(moving.any()):
                out["epe_px128_moving"] = float(err128[moving].mean())
                out["epe_px128_moving_static"] = float(still[moving].mean())
            pcks = []
            for thr in self.cfg.vae.pck_thresholds:
                pck = float((err256 < thr).float().mean())
                out[f"pck@{thr:g}px"] = pck
                pcks.append(pck)
            out["pck_mean"] = float(np.mean(pcks))
        return out

    def checkpoint(self, ema_sd: dict | None) -> tuple[str, dict, dict | None, dict]:
        meta = {"vae_config": self.vae.cfg, "image_encoder": self.cfg.image_encoder, "sources": self.sources}
        return "vae", self.vae.state_dict(), ema_sd, meta


# ----------------------------------------------------------------------------------------------------------
# Planner


def view_targets(
    planner: nn.Module, tracks: torch.Tensor, frames: torch.Tensor, feats: torch.Tensor | None = None
) -> torch.Tensor:
    """The planner's targets (B, V*L, C), view 0 first: each view's normalised VAE posterior means of its
    first half of tracks (B, V, n, T, 2) (the encoded half), from its start frames (B, V, H, W, 3) in [-1, 1]."""
    B, V, n = tracks.shape[:3]
    x0 = planner.encode_targets(tracks[:, :, : n // 2].flatten(0, 1), frames.flatten(0, 1), feats)
    return x0.reshape(B, V * x0.shape[1], -1)


class PlannerLoss(nn.Module):
    """Flow-matching loss of the LIBERO planner with per-sample random numbers from the batch."""

    def __init__(
        self, planner: nn.Module, c_dropout: float, frame_dropout: float, frame_noise: float
    ) -> None:
        super().__init__()
        self.planner = planner
        self.frame_noise = frame_noise

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.planner
        tracks = batch["tracks"]  # (B, V, n, T, 2)
        clean = frames_to_float(batch["start_frames"])  # (B, V, H, W, 3)
        frames = clean
        if self.frame_noise > 0:
            frames = (clean + self.frame_noise * batch["frame_noise"]).clamp(-1, 1)
        start_t = batch.get("start_t") if p.cfg.use_step_token else None
        with _no_builtin_dropout(p):
            cond = p.conditioning(frames, txt_emb=batch["txt_emb"], start_t=start_t)
        # CFG text dropout: the encoded text token (x_cross[:, 0], before any step token) -> ca_mask_token
        drop_t = batch["drop_text"].to(torch.bool)[:, None, None]
        txt = cond.x_cross[:, :1]
        txt = torch.where(drop_t, p.ca_mask_token.to(txt.dtype).expand_as(txt), txt)
        cond.x_cross = torch.cat([txt, cond.x_cross[:, 1:]], dim=1)
        drop_f = batch["drop_frame"].to(torch.bool)[:, None, None]
        ex = cond.extra_tokens
        cond.extra_tokens = torch.where(drop_f, p.ca_mask_token.to(ex.dtype).expand_as(ex), ex)
        feats = cond.frame_feats if self.frame_noise == 0 else None
        x0 = view_targets(p, tracks, clean, feats)
        t = batch["t"].to(x0.dtype)
        noise = batch["noise"].to(x0.dtype)
        tt = t[:, None, None]
        x_t = (1 - tt) * x0 + tt * noise
        v = p.predict_velocity(x_t, t, cond)
        per_sample = ((noise - x0 - v) ** 2).mean(dim=(1, 2))
        loss = per_sample.mean()
        return loss, {"loss": loss.detach(), "x0_std": x0.detach().std()}


def latent_stats(
    planner: nn.Module, cfg: Any, log: Any = print, n_windows: int = 256, per_token: bool = False
) -> dict[str, Any]:
    """`vae_shift` (mean) and `vae_scale` (variance) of the VAE's posterior means over `n_windows` training
    windows (both views; fixed seed, at most 4 demos per task), for the planner's latent normalisation.
    `per_token`: also `token_mean` (V, L, C), the mean of each view/token/channel, with `vae_shift` 0 and
    `vae_scale` the variance around that mean (`PlannerConfig.latent_norm`).

    The release hard-codes the released VAE's statistics (-0.175, 11.6); a VAE trained here has others (a
    short CPU run: std ~0.15), and normalising with the released ones shrinks the planner's targets to a few
    percent of the noise scale, so it learns next to nothing. Stored in the planner config (checkpoint meta)."""
    from zipmo_robot.data.windows import WindowDataset
    from zipmo_robot.training.data import find_demos

    d = cfg.data
    if d.root is None:
        raise UserError(
            "the planner measures its latent normalisation on the VAE's latents of the training demos: give "
            "--data (data.root), or planner.latent_stats=official to keep the released VAE's constants"
        )
    refs = find_demos(d.root, list(d.suites), d.split, d.tasks, 4)
    ds = WindowDataset([str(r.path) for r in refs], tuple(d.cameras), int(d.n_tracks), 4, pick=d.track_pick)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(ds), size=min(n_windows, len(ds)), replace=False)
    vae = planner.vae
    dev = next(planner.parameters()).device
    values = []
    with torch.no_grad():
        for chunk in np.array_split(picks, max(1, len(picks) // 16)):
            samples = [ds.get(int(i), np.random.default_rng([0, int(i)])) for i in chunk]
            tracks = torch.from_numpy(np.stack([s["tracks"] for s in samples])).to(dev)  # (b, V, n, T, 2)
            frames = frames_to_float(torch.from_numpy(np.stack([s["start_frames"] for s in samples])).to(dev))
            n_enc = tracks.shape[2] // 2
            emb = planner.vae_image_encoder(frames.flatten(0, 1))
            mean, _, _ = vae.encode(tracks[:, :, :n_enc].flatten(0, 1), start_emb=emb)
            values.append(mean.double().reshape(tracks.shape[0], tracks.shape[1], *mean.shape[1:]))
    z = torch.cat(values)  # (n, V, L, C)
    if per_token:
        token_mean = z.mean(0)
        resid = z - token_mean
        log(
            f"planner latent normalisation per token from {len(picks)} windows of {len(refs)} demos: variance "
            f"around the per-token mean {float(resid.var()):.4g} of a total {float(z.var()):.4g}"
        )
        return {"vae_shift": 0.0, "vae_scale": float(resid.var()), "token_mean": token_mean.float()}
    stats = {"vae_shift": float(z.mean()), "vae_scale": float(z.var())}
    log(
        f"planner latent normalisation from {len(picks)} windows of {len(refs)} demos: shift "
        f"{stats['vae_shift']:.4g}, scale (variance) {stats['vae_scale']:.4g} (released VAE: -0.175, 11.6)"
    )
    return stats


def _source(path: str) -> dict[str, Any]:
    """How a checkpoint refers to the checkpoint it was built from: path + content hash of its weights."""
    from zipmo_robot.checkpoints import trained

    meta = trained.read_meta(path)
    return {"path": meta["path"], "stage": meta["stage"], "sha256": meta["files"].get(trained.MODEL)}


class PlannerStage(Stage):
    name = "planner"

    def __init__(self, cfg: Any, sizes: Any, device: torch.device, log: Any = print) -> None:
        super().__init__(cfg, sizes, device, log)
        from zipmo_robot.models.planner import build_planner
        from zipmo_robot.training.data import TextTable

        pc = cfg.planner
        if pc.vae is None:
            raise UserError("the planner stage needs planner.vae=<VAE checkpoint folder> (or official)")
        if pc.vae == "official":
            from zipmo_robot.checkpoints.loader import load_model

            vae = load_model("official:vae", "vae", config=sizes.vae)
            self.sources["vae"] = {"spec": "official:vae"}
        else:
            from zipmo_robot.checkpoints import trained

            vae, vmeta = trained.load_vae(pc.vae)
            self.sources["vae"] = _source(pc.vae)
        share = cfg.image_encoder == "pretrained"
        pdino = dino_config(sizes, cfg.image_encoder)
        if not share and vae.cfg.dino.embed_dim != pdino.embed_dim:
            raise UserError(
                f"the VAE's image encoder width {vae.cfg.dino.embed_dim} != model.dino.embed_dim "
                f"{pdino.embed_dim}: train the planner at the VAE's size (model=...)"
            )
        pcfg = sizes.planner_config(
            pc.variant,
            c_dropout=pc.c_dropout,
            c_dropout_start_frame=pc.start_frame_dropout,
            time_sampling=pc.time_sampling,
            official_quirks=True,
        )
        pcfg = replace(
            pcfg,
            vae=replace(vae.cfg, with_image_encoder=True),
            dino=vae.cfg.dino if share else pdino,
            share_vae_dino=share,
            latent_norm="per_token" if pc.latent_stats == "per_token" else "scalar",
        )
        planner = build_planner(pcfg)
        vae_sd = vae.state_dict()
        if share:  # one frozen pretrained DINO (the VAE's) serves both
            dino_sd = {
                k[len("img_embedder.") :]: v for k, v in vae_sd.items() if k.startswith("img_embedder.")
            }
            _load_into(planner.img_embedder, dino_sd, "image encoder of the VAE")
            vae_sd = {k: v for k, v in vae_sd.items() if not k.startswith("img_embedder.")}
        _load_into(planner.vae, vae_sd, "VAE weights")
        del vae
        if pc.init is not None:
            from zipmo_robot.checkpoints import trained

            sd = trained.read_weights(pc.init, trained._pick(trained.read_meta(pc.init), "model"))
            _load_into(planner, sd, f"planner checkpoint {pc.init}")
            self.sources["planner_init"] = _source(pc.init)
        if pc.latent_stats == "per_token":
            stats = latent_stats(planner, cfg, log, per_token=True)
            with torch.no_grad():
                planner.latent_token_mean.copy_(stats.pop("token_mean"))
            planner.cfg = replace(planner.cfg, **stats)
        elif pc.latent_stats == "measure" or (pc.latent_stats == "auto" and pc.vae != "official"):
            planner.cfg = replace(planner.cfg, **latent_stats(planner, cfg, log))
        elif pc.latent_stats not in ("auto", "official"):
            raise UserError(
                f"planner.latent_stats={pc.latent_stats!r} is not one of auto, official, measure, per_token"
            )
        planner.vae.requires_grad_(False)  # targets come from the frozen VAE (no_grad)
        planner.track_cond_emb.requires_grad_(False)  # executed officially, output discarded (Q16)
        freeze_unused(planner)
        self.planner = planner.to(device).train()
        self.planner.vae.eval()
        self.trainable = self.planner
        self.loss_module = PlannerLoss(
            self.planner, pc.c_dropout, pc.start_frame_dropout, pc.start_frame_noise
        )
        self.text = TextTable(cfg.text_encoder, pcfg.d_cross, cfg.text_model, log)

    def extras(self, rng: np.random.Generator, sample: dict) -> dict[str, np.ndarray]:
        c, pc = self.planner.cfg, self.cfg.planner
        L, C = self.planner.latent_shape
        z = rng.standard_normal()
        t = 1 / (1 + np.exp(-z)) if c.time_sampling == "logit_normal" else rng.random()
        out = {
            "t": np.array(t, np.float32),
            "noise": rng.standard_normal((L, C), dtype=np.float32),
            "drop_text": np.array(rng.random() < pc.c_dropout),
            "drop_frame": np.array(rng.random() < pc.start_frame_dropout),
        }
        if pc.start_frame_noise > 0:
            out["frame_noise"] = rng.standard_normal(sample["start_frames"].shape, dtype=np.float32)
        return out

    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The flow loss, plus `loss_text` / `loss_other_text`: the loss of the same rows (same t, noise,
        frames) with every row's own task sentence and with the next row's (usually another task), no text
        dropout. Equal values mean the planner ignores the sentence, so its plans cannot tell the head which
        task it is doing (the head sees nothing else of the task)."""
        metrics = super().validate(batch)
        if batch["txt_emb"].shape[0] > 1:
            keep = dict(batch, drop_text=torch.zeros_like(batch["drop_text"]))
            other = dict(keep, txt_emb=batch["txt_emb"].roll(1, 0))
            with torch.no_grad():
                metrics["loss_text"] = float(self.loss_module(keep)[0])
                metrics["loss_other_text"] = float(self.loss_module(other)[0])
        return metrics

    def checkpoint(self, ema_sd: dict | None) -> tuple[str, dict, dict | None, dict]:
        c = self.planner.cfg
        meta = {
            "planner_config": c,
            "image_encoder": self.cfg.image_encoder,
            "text_encoder": self.text.choice,
            "sources": self.sources,
            "training": {
                "c_dropout": c.c_dropout,
                "start_frame_dropout": self.cfg.planner.start_frame_dropout,
                "start_frame_noise": self.cfg.planner.start_frame_noise,
            },
        }
        return f"planner_{c.variant}", self.planner.state_dict(), ema_sd, meta


# ----------------------------------------------------------------------------------------------------------
# Policy head (behavioural cloning)


class HeadLoss(nn.Module):
    """Discounted L2 of the head's chunk (§6.3): mean over (B, T, A) of (pred - a)² · 0.99^t."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = self.head.predict(batch["latents"], batch["proprio"])
        err = (pred - batch["actions"]) ** 2
        loss = (err * self.head.loss_weights[None, :, None]).mean()
        return loss, {"loss": loss.detach(), "mse": err.detach().mean()}


def plan(
    planner: nn.Module,
    frames: torch.Tensor,
    txt: torch.Tensor,
    start_t: torch.Tensor,
    seeds: list[int],
    nfe: int,
    precision: str,
    cfg_scale: float = 1.0,
) -> torch.Tensor:
    """Normalised latents (B, L, C) from the frozen planner with THE agent's sampler (`draw_noise` per row
    from a generator seeded with `seeds[i]`, `prepare_sampling`, `euler`), fp32 CPU-independent of batch.
    `cfg_scale` > 1: classifier-free guidance on the sentence, as the agent's `cfg_scale`."""
    from zipmo_robot.models.planner import sampling_autocast

    dev = frames.device
    gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
    z, dummy = planner.draw_noise(gens, dev)
    with torch.no_grad(), sampling_autocast(precision, dev):
        guidance = planner.prepare_sampling(
            frames, cfg_scale, track_conds=dummy, txt_emb=txt, start_t=start_t
        )
        latents = planner.euler(z, guidance, nfe)
    return latents.float()


class PolicyStage(Stage):
    name = "policy"

    def __init__(self, cfg: Any, sizes: Any, device: torch.device, log: Any = print) -> None:
        super().__init__(cfg, sizes, device, log)
        from zipmo_robot.checkpoints import trained
        from zipmo_robot.policy.head import InverseDynamicsHead
        from zipmo_robot.training.data import TextTable

        pc = cfg.policy
        if pc.planner is None:
            raise UserError("the policy stage needs policy.planner=<planner checkpoint folder>")
        if pc.plans not in ("planner", "vae"):
            raise UserError(
                f"policy.plans={pc.plans!r} is not one of planner (its samples), vae (true latents)"
            )
        planner, pmeta = trained.load_planner(pc.planner, weights="auto")
        if planner.cfg.use_step_token and len(cfg.data.suites) != 1:
            raise UserError(
                f"the planner {pc.planner} is a Tra-MoE (step-token) planner: the Tra-MoE setup trains one head "
                f"per suite, so give one suite (data.suites=[libero_spatial]), not {list(cfg.data.suites)}"
            )
        self.sources["planner"] = _source(pc.planner) | {"weights": trained._pick(pmeta, "auto")}
        planner.requires_grad_(False)
        self.planner = planner.to(device).eval()
        self.planner_meta = pmeta
        g = planner.cfg.vae.latent_grid
        hcfg = sizes.head_config(
            grid_size=g, num_views=planner.cfg.num_views, latent_dim=planner.cfg.vae.latent_dim
        )
        head = InverseDynamicsHead(hcfg)
        if pc.init is not None:
            sd = trained.read_weights(pc.init, trained._pick(trained.read_meta(pc.init), "model"))
            sd = {k: v for k, v in sd.items() if not k.startswith(trained.PLANNER_PREFIX)}
            _load_into(head, sd, f"head of policy checkpoint {pc.init}")
            self.sources["policy_init"] = _source(pc.init)
        self.head = head.to(device).train()
        self.trainable = self.head
        self.loss_module = HeadLoss(self.head)
        text = pmeta.get("text_encoder") or {}
        if text.get("kind") not in ("bert", "sentence_code"):
            raise UserError(f"planner checkpoint {pc.planner} does not record its text encoder")
        self.text = TextTable(text["kind"], planner.cfg.d_cross, text.get("model", cfg.text_model), log)
        self.cache = None  # a plan_cache.PlanCache, attached by the trainer

    def extras(self, rng: np.random.Generator, sample: dict) -> dict[str, np.ndarray]:
        K = self.cfg.policy.plan_cache.plans_per_frame
        # both numbers are always drawn, so cached and online runs consume the same stream
        return {
            "plan_k": np.array(rng.integers(K), np.int64),
            "plan_seed": np.array(rng.integers(2**62), np.int64),
        }

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {
            "actions": batch["actions"].to(self.device, torch.float32),
            "proprio": torch.cat([batch["joint_states"], batch["gripper_states"]], -1).to(
                self.device, torch.float32
            ),
        }
        if self.cfg.policy.plans == "vae":  # the planner's own targets of the true tracks
            frames = frames_to_float(batch["start_frames"].to(self.device))
            out["latents"] = view_targets(self.planner, batch["tracks"].to(self.device), frames).float()
        elif self.cache is not None:
            out["latents"] = self.cache.get(batch["index"], batch["plan_k"]).to(self.device, torch.float32)
        else:
            out["latents"] = plan(
                self.planner,
                frames_to_float(batch["start_frames"].to(self.device)),
                batch["txt_emb"].to(self.device)[:, None],
                batch["start_t"].to(self.device),
                batch["plan_seed"].tolist(),
                self.cfg.policy.nfe,
                self.cfg.policy.plan_precision,
                float(self.cfg.policy.cfg_scale),
            )
        return out

    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The BC loss/MSE, plus `mse_other_plan`: the MSE when every row gets the plan of the next row of
        the batch (another window, usually another task). It says how much the head uses the plan: equal to
        `mse` means the head acts from proprio alone and ignores where the planner says things move."""
        metrics = super().validate(batch)
        if batch["latents"].shape[0] > 1:
            with torch.no_grad():
                pred = self.head.predict(batch["latents"].roll(1, 0), batch["proprio"])
            metrics["mse_other_plan"] = float(((pred - batch["actions"]) ** 2).mean())
        return metrics

    def model_state(self) -> dict[str, torch.Tensor]:
        from zipmo_robot.checkpoints.trained import PLANNER_PREFIX

        sd = {PLANNER_PREFIX + k: v for k, v in self.planner.state_dict().items()}
        sd.update(self.head.state_dict())
        return sd

    def load_trained(self, sd: dict[str, torch.Tensor], what: str) -> None:
        from zipmo_robot.checkpoints.trained import PLANNER_PREFIX

        head_sd = {k: v for k, v in sd.items() if not k.startswith(PLANNER_PREFIX)}
        _load_into(self.head, head_sd, what)

    def checkpoint(self, ema_sd: dict | None) -> tuple[str, dict, dict | None, dict]:
        pcfg = self.planner.cfg
        meta = {
            "planner_config": pcfg,
            "head_config": self.head.config,
            "image_encoder": self.planner_meta.get("image_encoder"),
            "text_encoder": self.text.choice,
            "nfe": self.cfg.policy.nfe,
            "plan_precision": self.cfg.policy.plan_precision,
            "sources": self.sources,
            "data_split": self.cfg.data.split,
            "plans": self.cfg.policy.plans,
        }
        scale = float(self.cfg.policy.cfg_scale)
        if scale != 1.0:  # the agent must sample plans as BC saw them
            meta["cfg_scale"] = scale
            meta["agent_defaults"] = {"cfg_scale": scale}
        from zipmo_robot.checkpoints.convert import head_kind

        kind = head_kind(pcfg.variant)
        return kind, self.model_state(), ema_sd, meta


STAGE_CLASSES: dict[str, type[Stage]] = {"vae": VAEStage, "planner": PlannerStage, "policy": PolicyStage}
