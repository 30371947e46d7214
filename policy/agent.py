"""`RollingReplanner`: the ZipMo LIBERO agent. Every control step it samples a fresh motion plan with the
planner (few Euler steps from new noise), turns it into a 16-step action chunk with the inverse-dynamics
head, and blends the overlapping chunks with temporal ensembling (ZIPMO_REFERENCE.md §6.4, appendix A).

One batched `act` serves rows of different suites, tasks and episodes. Each row (keyed by `RowInfo.slot`)
owns its noise generator, ensembler, episode step and task embedding, and an env that starts a new episode
resets only its own row.

Deviation from the official loop, on purpose: the official `act` draws the noise of all 10 parallel envs
from ONE generator (`randn(10, 512, 16)`, then a dummy `randn(10, 1, 5)`), so an env's noise depends on its
batch. Here every row has its own `torch.Generator` seeded with the episode seed and draws, in the official
order, `randn(1, L, C)` then the dummy `randn(1, 1, 5)`. An episode's actions therefore do not depend on
which other episodes share its batch, and at batch 1 the stream is exactly the official one (the parity
fixtures check this).

Sampling is the planner's one sampler (`models/planner.py`: `draw_noise`, `prepare_sampling`, `euler`), the same
code `MotionPlanner.sample`, `zipmo-robot bench` and plan generation for training run.

Numerics (appendix C): the planner runs under bf16 autocast by default on every device, as the official
`act` does (on CPU too); `precision="fp32"` turns autocast off. The head and the ensembling run outside
autocast (fp32; float64 ensembling). The official evaluation enables TF32 matmuls on GPU; this module leaves
that global switch alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from zipmo_robot.policy.base import Policy, RowInfo
from zipmo_robot.policy.config import PolicyConfig
from zipmo_robot.policy.ensembling import TemporalEnsembler
from zipmo_robot.policy.head import InverseDynamicsHead
from zipmo_robot.policy.overlay import draw_plan, overlay_query_grid

from zipmo_robot.models.planner import (  # noqa: F401 (PRECISIONS: re-export)
    PRECISIONS,
    CompiledVelocity,
    sampling_autocast,
)
from zipmo_robot.models.text import HashTaskEmbedder  # noqa: F401 (moved; re-exported for old imports)

STAGES = ("preprocess_s", "encode_s", "plan_s", "head_s", "overlay_s")
CAMERAS = ("agentview", "robot0_eye_in_hand")  # view order of the planner (view 0 = agentview)

TaskEmbedder = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # (suites, languages) -> (B, E)


@dataclass
class _Row:
    """Per-episode state of one runner slot."""

    seed: int
    generator: torch.Generator
    ensembler: TemporalEnsembler
    task_emb: torch.Tensor  # (E,) fp32 on the model device
    language: str
    step: int = 0  # act() calls since the episode started (the Tra-MoE episode-step token)
    timing: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    last_tracks: np.ndarray | None = None  # (V, N, T, 2) yx of the latest plan, when overlays are on
    chunk: np.ndarray | None = None  # (T, A) the latest chunk, run open loop when replan_every > 1
    noise: tuple[torch.Tensor, torch.Tensor] | None = None  # (1, L, C), (1, n_cond, 5): noise="episode"


@dataclass(frozen=True)
class OverlaySpec:
    """How a plan is drawn: a `grid`² grid of query points per view, decoded over `frames` frames and drawn
    every `stride`-th frame; the decoder sees `queries` points (its output depends on the other queries,
    Q12, so the grid is padded to the training query count)."""

    grid: int = 8
    frames: int = 64
    stride: int = 4
    queries: int = 80


@dataclass
class StepOutput:
    """Everything one batched step produced (for parity checks and visualisation)."""

    actions: torch.Tensor  # (B, A) fp32, ensembled
    chunks: torch.Tensor  # (B, T, A) fp32, the head's raw chunks
    latents: torch.Tensor  # (B, V*G*G, C) fp32, normalised planner output
    noise: torch.Tensor  # (B, V*G*G, C) initial noise
    dummy: torch.Tensor  # (B, 1, 5) the dummy draw that follows the noise
    start_t: torch.Tensor  # (B,) int64 episode steps passed to the planner


class BertTaskEmbedder:
    """The official task embedding: BERT pooled output of `task.language`, cached per suite (§3)."""

    def __init__(self, cache: Any = None) -> None:
        if cache is None:
            from zipmo_robot.models.text import TaskEmbeddingCache

            cache = TaskEmbeddingCache()
        self.cache = cache

    def __call__(self, suites: Sequence[str], languages: Sequence[str]) -> np.ndarray:
        out = [self.cache.get_one(s, lang) for s, lang in zip(suites, languages, strict=True)]
        return np.stack(out).astype(np.float32)


class RollingReplanner(Policy):
    """Planner + inverse-dynamics head with per-row state; implements the runner's `Policy` interface.

    Args:
        planner: a LIBERO `MotionPlanner` (its weights are the released head file's `track_predictor.*`).
        head: the `InverseDynamicsHead`.
        task_embedder: `(suites, languages) -> (B, E)` float32 task embeddings (BERT for real checkpoints).
        nfe, cfg_scale, precision, ensemble_mode, replan_every, noise: as `PolicyConfig` (policy/config.py),
            which holds the defaults (the released 10 Euler steps, guidance 1.0, bf16 planner autocast,
            official ensembling, a fresh noise draw per replan).
        compile: the opt-in fast path (`PolicyConfig.compile`): the planner's velocity network through
            `torch.compile`, compiled lazily per batch size and cached on this agent (`velocity`).
        overlay: decode each plan at a grid of points (one VAE decode per step, `overlay_spec`) and draw
            the tracks on the video frames.
        options: how the agent was built (checkpoint, text embedding, ...), reported by `resolved_options`
            with the agent's own settings.
    """

    def __init__(
        self,
        planner: torch.nn.Module,
        head: InverseDynamicsHead,
        *,
        task_embedder: TaskEmbedder | None = None,
        nfe: int = PolicyConfig.nfe,
        cfg_scale: float = PolicyConfig.cfg_scale,
        precision: str = PolicyConfig.precision,
        ensemble_mode: str = PolicyConfig.ensemble,
        replan_every: int = PolicyConfig.replan_every,
        noise: str = PolicyConfig.noise,
        compile: bool = PolicyConfig.compile,
        overlay: bool = False,
        overlay_spec: OverlaySpec = OverlaySpec(),
        options: dict[str, Any] | None = None,
    ) -> None:
        self.config = PolicyConfig(  # validated once, here
            nfe=nfe,
            cfg_scale=float(cfg_scale),
            precision=precision,
            ensemble=ensemble_mode,
            replan_every=replan_every,
            noise=noise,
            compile=bool(compile),
            overlay=overlay,
        )
        self.planner, self.head, self.task_embedder = planner.eval(), head.eval(), task_embedder
        self.overlay_spec = overlay_spec
        self.device = next(head.parameters()).device
        pcfg = planner.cfg
        self.num_views = pcfg.num_views
        self.latent_shape = planner.latent_shape
        self.uses_episode_step = bool(pcfg.use_step_token)
        self.horizon = head.config.chunk_len
        self.options = dict(options or {})
        self._rows: dict[int, _Row] = {}
        self._finished: dict[int, dict[str, Any]] = {}
        # the fast path's compiled velocity network (graphs per batch size inside); None on the exact path
        self.velocity: CompiledVelocity | None = None
        if self.config.compile:
            CompiledVelocity.check_compiler()  # fail now, not at the first control step
            self.velocity = CompiledVelocity(planner)

    # -- state -----------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Forget every row's state. Rows are (re)seeded with their own episode seed when they start;
        `seed` is accepted for the `Policy` interface and not used."""
        self._rows.clear()
        self._finished.clear()

    def reset_row(self, slot: int, seed: int, task_emb: torch.Tensor, language: str = "") -> None:
        """Start a new episode in `slot`: fresh generator seeded with `seed`, empty ensembler, step 0."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        self._rows[slot] = _Row(
            seed=int(seed),
            generator=gen,
            ensembler=TemporalEnsembler(horizon=self.horizon, mode=self.config.ensemble),
            task_emb=task_emb.to(self.device, torch.float32),
            language=language,
        )

    def episode_info(self, slot: int) -> dict[str, Any]:
        """Per-stage policy seconds of the episode that ran in `slot` (each batched stage's time is split
        evenly over the rows of that call), for the runner's JSONL record."""
        row = self._rows.get(slot)
        if row is None:
            return {}
        timing = {k: round(v, 6) for k, v in row.timing.items()}
        return {
            "timing": timing,
            "steps": row.step,
            "nfe": self.config.nfe,
            "precision": self.config.precision,
        }

    def resolved_options(self) -> dict[str, Any]:
        """The build options and the settings this agent runs with (for config.yaml / summary.json)."""
        c = self.config
        own = {
            "nfe": c.nfe,
            "cfg_scale": c.cfg_scale,
            "precision": c.precision,
            "ensemble": c.ensemble,
            "replan_every": c.replan_every,
            "noise": c.noise,
            "compile": c.compile,
        }
        return {**self.options, **own, "overlay": bool(c.overlay), "device": str(self.device)}

    # -- the Policy interface --------------------------------------------------------------------------
    def act(self, obs: dict[str, Any], rows: list[RowInfo]) -> np.ndarray:
        """Actions (B, 7) float32 for the rows of a batched observation (format of `policy/base.py`).

        A row whose `RowInfo.new_episode` is set (or whose slot is new) is reset: generator seeded with
        `RowInfo.seed`, empty ensembler, step 0, task embedding from `task_embedder` (or from an optional
        `obs["task_embedding"]` (B, E) array, which overrides it).
        """
        t0 = time.perf_counter()
        new = [(i, r) for i, r in enumerate(rows) if r.new_episode or r.slot not in self._rows]
        if new:
            if "task_embedding" in obs:
                embs = np.asarray(obs["task_embedding"], dtype=np.float32)[[i for i, _ in new]]
            else:
                if self.task_embedder is None:
                    raise ValueError("no task_embedder given and the observation has no 'task_embedding'")
                embs = self.task_embedder([r.suite for _, r in new], [r.task_language for _, r in new])
            for (_, r), e in zip(new, embs, strict=True):
                self.reset_row(r.slot, r.seed, torch.from_numpy(np.asarray(e)), r.task_language)
        images = np.stack([np.asarray(obs[f"{c}_image"]) for c in CAMERAS[: self.num_views]], axis=1)
        proprio = np.concatenate([obs["joint_states"], obs["gripper_states"]], axis=-1)
        slots = [r.slot for r in rows]
        for r in rows:
            if self._rows[r.slot].step != r.step:
                raise ValueError(
                    f"slot {r.slot}: the runner says episode step {r.step} but the agent counted "
                    f"{self._rows[r.slot].step}; every act() call of an episode must include its row"
                )
        pre = time.perf_counter() - t0
        k = self.config.replan_every
        if k == 1:
            out = self.step(images, proprio, slots, _pre_seconds=pre)
            return out.actions.cpu().numpy().astype(np.float32)
        return self._act_open_loop(images, proprio, slots, k, pre)

    def _act_open_loop(
        self, images: np.ndarray, proprio: np.ndarray, slots: list[int], k: int, pre: float
    ) -> np.ndarray:
        """`replan_every = k > 1`: rows at an episode step divisible by k plan (one batched `step`) and take
        action 0 of the new chunk; the others take action `step % k` of their last chunk."""
        due = [i for i, s in enumerate(slots) if self._rows[s].step % k == 0]
        actions = np.zeros((len(slots), self.head.config.action_dim), np.float32)
        if due:
            out = self.step(images[due], proprio[due], [slots[i] for i in due], _pre_seconds=pre)
            chunks = out.chunks.cpu().numpy().astype(np.float32)
            for j, i in enumerate(due):
                self._rows[slots[i]].chunk = chunks[j]
                actions[i] = chunks[j, 0]
        for i, s in enumerate(slots):
            if i in due:
                continue
            row = self._rows[s]
            actions[i] = row.chunk[row.step % k]
            row.step += 1
        return actions

    # -- one batched step on tensors -------------------------------------------------------------------
    @torch.inference_mode()
    def step(
        self,
        images: np.ndarray | torch.Tensor,
        proprio: np.ndarray | torch.Tensor,
        slots: Sequence[int],
        latents_override: torch.Tensor | None = None,
        _pre_seconds: float = 0.0,
    ) -> StepOutput:
        """One control step for the rows `slots` (already reset): images (B, V, H, W, 3) uint8-valued,
        proprio (B, 9) = joint positions (7) + gripper qpos (2). `latents_override` (B, V*G*G, C) replaces
        the planner output (the noise is still drawn), as the injected-latent parity records do."""
        t0 = time.perf_counter()
        dev = self.device
        planner = self.planner
        rows = [self._rows[s] for s in slots]
        b = len(rows)
        frames = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        frames = frames.to(dev, torch.float32) / 127.5 - 1.0  # (B, V, H, W, 3) in [-1, 1]
        prop = torch.as_tensor(np.asarray(proprio) if not torch.is_tensor(proprio) else proprio)
        prop = prop.to(dev, torch.float32)
        z, track_conds = self._noise(rows, dev)
        start_t = torch.tensor([row.step for row in rows], dtype=torch.int64, device=dev)
        txt = torch.stack([row.task_emb for row in rows])[:, None, :]  # (B, 1, E)
        t_pre = time.perf_counter()

        # bf16: the Euler-step weights (backbone) cast once per control step, not once per Euler step
        autocast = sampling_autocast(self.config.precision, dev, planner.backbone)
        with autocast:
            guidance = planner.prepare_sampling(
                frames, track_conds=track_conds, txt_emb=txt, start_t=start_t, cfg_scale=self.config.cfg_scale
            )
            t_enc = time.perf_counter()
            if latents_override is None:
                latents = planner.euler(z, guidance, self.config.nfe, velocity=self.velocity)
            else:
                latents = latents_override.to(dev, torch.float32)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_plan = time.perf_counter()

        chunks = self.head.predict(latents.float(), prop)  # (B, T, A) fp32, outside autocast
        actions = torch.cat([row.ensembler.update(chunks[i : i + 1]) for i, row in enumerate(rows)])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_head = time.perf_counter()

        t_ovl = t_head
        if self.config.overlay:
            tracks = self._decode_overlay(latents, frames, autocast)
            for i, row in enumerate(rows):
                row.last_tracks = tracks[i]
            t_ovl = time.perf_counter()

        spent = {
            "preprocess_s": _pre_seconds + (t_pre - t0),
            "encode_s": t_enc - t_pre,
            "plan_s": t_plan - t_enc,
            "head_s": t_head - t_plan,
            "overlay_s": t_ovl - t_head,
        }
        for row in rows:
            row.step += 1
            for k, v in spent.items():
                row.timing[k] += v / b
        return StepOutput(actions, chunks, latents.float(), z, track_conds, start_t)

    def _noise(self, rows: list[_Row], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial noise (B, L, C) and dummy pokes (B, n_cond, 5) of one replan: drawn from each row's
        generator in the official order ("fresh"), or drawn once per episode and reused ("episode")."""
        if self.config.noise == "fresh":
            return self.planner.draw_noise([row.generator for row in rows], dev)  # official order per row
        new = [row for row in rows if row.noise is None]
        if new:
            z, dummy = self.planner.draw_noise([row.generator for row in new], dev)
            for i, row in enumerate(new):
                row.noise = (z[i : i + 1], dummy[i : i + 1])
        return torch.cat([row.noise[0] for row in rows]), torch.cat([row.noise[1] for row in rows])

    # -- plan visualisation ----------------------------------------------------------------------------
    def _decode_overlay(self, latents: torch.Tensor, frames: torch.Tensor, autocast: Any) -> np.ndarray:
        """Decode the plan at a grid of query points per view → (B, V, grid², frames/stride, 2) yx.

        The decoder's output depends on the other queries (Q12), so the grid is padded to the training
        query count with fixed pseudo-random points (generator seed 0; not the rows' generators)."""
        b, v = frames.shape[:2]
        grid = torch.from_numpy(overlay_query_grid(self.overlay_spec.grid)).to(self.device)
        n_pad = max(self.overlay_spec.queries - grid.shape[0], 0)
        pad = torch.rand((n_pad, 2), generator=torch.Generator().manual_seed(0)) * 2 - 1
        queries = torch.cat([grid, pad.to(self.device)])[None, None].expand(b, v, -1, -1)
        with autocast:
            tracks = self.planner.decode(latents, queries, self.overlay_spec.frames, frames)
        tracks = tracks[:, :, : grid.shape[0], :: self.overlay_spec.stride].float()
        return tracks.cpu().numpy()

    def overlay_views(self, obs: dict[str, Any], rows: list[RowInfo]) -> list[tuple[np.ndarray, ...] | None]:
        """Runner hook: per row, the camera images with the latest plan drawn on (None when overlays are off)."""
        if not self.config.overlay:
            return [None] * len(rows)
        out: list[tuple[np.ndarray, ...] | None] = []
        for i, r in enumerate(rows):
            tracks = self._rows[r.slot].last_tracks
            if tracks is None:
                out.append(None)
                continue
            views = [np.asarray(obs[f"{c}_image"][i]) for c in CAMERAS[: self.num_views]]
            out.append(tuple(draw_plan(views, tracks)))
        return out
