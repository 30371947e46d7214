"""One trainer for the three stages: AdamW + LR schedule, gradient clipping, bf16 autocast on CUDA, EMA,
optional torch.compile, DDP through torchrun (gloo on CPU; one process runs the same code), deterministic
sampling, tqdm, TensorBoard and a JSONL log, atomic checkpoints and exact resume.

Run folder (`out`): `checkpoint/` (see `checkpoints/trained.py`), `metrics.jsonl` (one record per logged
step, rewritten up to the resumed step on `--resume`), `tb/` (TensorBoard), `config.yaml` (resolved), and,
for the policy stage, `plan_cache/` and `eval/step_<n>/` (rollouts).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from zipmo_robot.errors import UserError

METRICS = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------------------
# Distributed set-up (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)


class Dist:
    def __init__(self) -> None:
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.dist = dist
        self._own = False
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            self._own = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            self.dist.barrier()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        self.dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def close(self) -> None:
        if self._own and self.dist.is_initialized():
            self.dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# Learning rate


def lr_factor(step: int, total: int, o: Any) -> float:
    """Multiplier of `optim.lr` at optimiser step `step` (0-based): linear warm-up from
    `warmup_start_factor`, then constant | WSD (linear decay over the last `decay_fraction`) | cosine."""
    w = int(o.warmup_steps)
    if w > 0 and step < w:
        s0 = float(o.warmup_start_factor)
        return s0 + (1.0 - s0) * step / w
    floor = float(o.min_lr) / float(o.lr) if o.lr else 0.0
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "wsd":
        n_decay = int(round(float(o.decay_fraction) * total))
        start = total - n_decay
        if n_decay <= 0 or step < start:
            return 1.0
        frac = (step - start + 1) / n_decay
        return max(floor, 1.0 - frac * (1.0 - floor))
    progress = min(1.0, (step - w) / max(1, total - w))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------------
# Logging


class Logger:
    """JSONL (append + fsync per record) and TensorBoard scalars, main process only."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None) -> None:
        self.enabled = enabled
        self.path = out / METRICS
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            keep = [r for r in _read_jsonl(self.path) if int(r.get("step", 0)) <= resume_step]
            from zipmo_robot.files import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step)
            except ImportError:
                print("note: tensorboard is not installed; scalars go to metrics.jsonl only")

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **record}) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text, step)

    def video_strip(self, step: int, tag: str, video: Path, frames: int = 8) -> None:
        """A row of `frames` evenly spaced frames of an mp4 as one TensorBoard image (no video codec needed
        in TensorBoard)."""
        if not (self.enabled and self.tb is not None and video.is_file()):
            return
        import imageio.v3 as iio
        import numpy as np

        clip = iio.imread(video)  # (T, H, W, 3) uint8
        pick = np.linspace(0, len(clip) - 1, min(frames, len(clip))).round().astype(int)
        self.tb.add_image(tag, np.concatenate(list(clip[pick]), axis=1), step, dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a record cut by a kill ends the file
    return out


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSONL records of a run folder."""
    path = Path(out) / METRICS
    return _read_jsonl(path) if path.exists() else []


# ----------------------------------------------------------------------------------------------------------
# The trainer


def _device(cfg: Any, dist: Dist) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={cfg.device} but torch sees no CUDA GPU; use device=cpu")
        if dist.enabled:
            return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def _autocast(cfg: Any, device: torch.device) -> Any:
    import contextlib

    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train(cfg: Any, out: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) one training stage described by a composed `configs/train/<stage>.yaml`.

    Returns a summary: steps, last metrics, samples/s, checkpoint path."""
    from omegaconf import OmegaConf
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from tqdm import tqdm

    from zipmo_robot.checkpoints import trained
    from zipmo_robot.configs import to_yaml

    out = Path(out).expanduser()
    dist = Dist()
    try:
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        device = _device(cfg, dist)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        ckpt_dir = out / trained.CHECKPOINT_DIR
        if resume and not trained.is_checkpoint_dir(ckpt_dir):
            raise UserError(f"--resume: {out} holds no checkpoint to resume from (no {ckpt_dir}/meta.json)")
        if not resume and trained.is_checkpoint_dir(ckpt_dir):
            raise UserError(
                f"{out} already holds a checkpoint; pass --resume to continue it, or another --out"
            )
        if cfg.data.root is None:
            raise UserError("no training data: pass --data DIR (the `zipmo-robot preprocess --dst` folder)")
        log = print if dist.main else (lambda *a, **k: None)
        stage, sizes = build_stage(cfg, device, log)
        data = stage_data(cfg, stage, cfg.data.split, cfg.data.max_demos_per_task)
        refs = data.refs
        val = None
        if cfg.val_every and cfg.data.val_split:
            val = stage_data(cfg, stage, cfg.data.val_split)
        log(
            f"{cfg.stage}: {len(refs)} demos, {len(data)} windows, global batch {cfg.batch_size} over "
            f"{dist.world} process(es) on {device}; text encoder {stage.text.choice if stage.text else '-'}"
        )

        if cfg.stage == "policy" and cfg.policy.plan_cache.enabled and cfg.policy.plans == "planner":
            _attach_plan_cache(cfg, stage, data, out, dist, log)

        params = [p for p in stage.trainable.parameters() if p.requires_grad]
        o = cfg.optim
        optimizer = torch.optim.AdamW(
            params,
            lr=float(o.lr),
            betas=tuple(float(b) for b in o.betas),
            eps=float(o.eps),
            weight_decay=float(o.weight_decay),
            fused=bool(o.fused) and device.type == "cuda",
        )
        total = int(cfg.steps)
        end = min(total, int(cfg.stop_after)) if cfg.stop_after else total
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, o))
        ema = None
        if cfg.ema.enabled:
            ema = AveragedModel(
                stage.trainable, multi_avg_fn=get_ema_multi_avg_fn(float(cfg.ema.decay)), use_buffers=True
            )

        start = 0
        if resume:
            state = trained.read_trainer_state(ckpt_dir)
            meta = trained.read_meta(ckpt_dir)
            if meta.get("stage") != cfg.stage:
                raise UserError(f"--resume: {ckpt_dir} is a {meta.get('stage')} checkpoint, not {cfg.stage}")
            if int(state["global_batch"]) != int(cfg.batch_size) or int(state["seed"]) != int(cfg.seed):
                raise UserError(
                    f"--resume: the checkpoint was trained with batch_size={state['global_batch']} "
                    f"seed={state['seed']}; resume with the same values (got {cfg.batch_size}, {cfg.seed})"
                )
            stage.load_trained(trained.read_weights(ckpt_dir, trained.MODEL), f"{ckpt_dir}/model.safetensors")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None and "ema" in state:
                ema.load_state_dict(state["ema"])
            torch.set_rng_state(state["torch_rng"])
            start = int(state["step"])
            log(f"resuming {cfg.stage} at step {start} from {ckpt_dir}")
        if start >= total:
            log(f"nothing to do: the checkpoint is at step {start} >= steps={total}")

        module: Any = stage.loss_module
        if cfg.compile:
            module = torch.compile(module)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)

        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            from zipmo_robot.configs import save_resolved

            save_resolved(cfg, out)
        logger = Logger(out, dist.main, bool(cfg.tensorboard), start if resume else None)
        config_yaml = to_yaml(cfg)

        def save(step: int) -> None:
            if dist.main:
                ema_sd = None
                if ema is not None:
                    ema_sd = ema.module.state_dict()
                kind, model_sd, ema_sd, meta = stage.checkpoint(ema_sd)
                state = {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "global_batch": int(cfg.batch_size),
                    "seed": int(cfg.seed),
                    "sampler": {"seed": int(cfg.seed), "next_position": step * int(cfg.batch_size)},
                    "world_size": dist.world,
                }
                if ema is not None:
                    state["ema"] = ema.state_dict()
                meta = {
                    **meta,
                    "step": step,
                    "model_size": sizes.name,
                    "config": OmegaConf.to_container(cfg, resolve=True),
                }
                trained.save(
                    ckpt_dir,
                    stage=cfg.stage,
                    kind=kind,
                    model=model_sd,
                    ema=ema_sd,
                    meta=meta,
                    config_yaml=config_yaml,
                    trainer_state=state,
                )
            dist.barrier()

        autocast = _autocast(cfg, device)
        G = int(cfg.batch_size)
        bar = tqdm(
            total=total,
            initial=start,
            desc=f"train {cfg.stage}",
            unit="step",
            disable=not (cfg.progress and dist.main),
            dynamic_ncols=True,
        )
        last: dict[str, float] = {}
        t_window, n_window = time.perf_counter(), 0
        rates: list[float] = []
        stage.trainable.train()
        for step in range(start, end):
            batch = stage.prepare(data.batch(int(cfg.seed), step, G, dist.rank, dist.world))
            with autocast:
                loss, metrics = module(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, float(o.grad_clip))
                if float(o.grad_clip) > 0
                else torch.zeros(())
            )
            optimizer.step()
            scheduler.step()
            if ema is not None:
                if step < int(cfg.ema.start_step):
                    ema.module.load_state_dict(stage.trainable.state_dict())
                else:
                    ema.update_parameters(stage.trainable)
            n_window += 1
            done = step + 1
            if done % int(cfg.log_every) == 0 or done == end:
                values = {f"train/{k}": float(v) for k, v in metrics.items()}
                values = dist.mean(values, device)
                now = time.perf_counter()
                rate = n_window * G / (now - t_window)
                rates.append(rate)
                t_window, n_window = now, 0
                record = {
                    **values,
                    "train/grad_norm": float(grad_norm),
                    "train/lr": float(scheduler.get_last_lr()[0]),
                    "train/samples_per_s": rate,
                }
                logger.log(done, record)
                last = record
                bar.set_postfix(loss=f"{values['train/loss']:.4g}", sps=f"{rate:.1f}")
            if val is not None and (done % int(cfg.val_every) == 0 or done == end):
                logger.log(done, validate(cfg, stage, val, dist, device, autocast))
            if done % int(cfg.save_every) == 0 or done == end:
                save(done)
            if cfg.stage == "policy" and cfg.eval.every and (done % int(cfg.eval.every) == 0 or done == end):
                if dist.main:
                    _evaluate(cfg, stage, ema, out, done, logger, log)
                dist.barrier()
            if n_window == 0:  # the rate window starts after any validation, checkpoint or evaluation
                t_window = time.perf_counter()
            bar.update(1)
        bar.close()
        logger.close()
        summary = {
            "stage": cfg.stage,
            "steps": total,
            "start_step": start,
            "end_step": end,
            "last": last,
            "samples_per_s": (sum(rates[1:]) / len(rates[1:]))
            if len(rates) > 1
            else (rates[0] if rates else 0.0),
            "checkpoint": str(ckpt_dir),
            "world_size": dist.world,
        }
        return summary
    finally:
        dist.close()


def build_stage(cfg: Any, device: torch.device, log: Any = print) -> tuple[Any, Any]:
    """(stage, model sizes) of a composed training config; the initial weights come from `cfg.seed` without
    touching the global RNG stream (the same on every process; DDP also broadcasts rank 0's)."""
    from zipmo_robot.models.sizes import model_sizes
    from zipmo_robot.training.stages import STAGE_CLASSES

    sizes = model_sizes(cfg.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        stage = STAGE_CLASSES[cfg.stage](cfg, sizes, device, log)
    return stage, sizes


def stage_data(cfg: Any, stage: Any, split: str, max_per_task: int | None = None) -> Any:
    """The `TrainData` of one split (`data.split`, `data.val_split`, ...) of `cfg.data` for `stage`."""
    from zipmo_robot.training.data import TrainData, find_demos

    d = cfg.data
    refs = find_demos(d.root, list(d.suites), split, d.tasks, max_per_task)
    return TrainData(
        refs,
        list(d.cameras),
        int(d.n_tracks),
        stage.text,
        stage.extras,
        d.window_stride,
        d.moving_fraction,
        d.track_pick,
    )


VAL_SEED = 12345  # the fixed batches of validation: the same samples and random numbers at every step


def validate(
    cfg: Any, stage: Any, val: Any, dist: Dist, device: torch.device, autocast: Any, progress: bool = False
) -> dict:
    """Mean validation metrics over `val_batches` fixed batches (seed `VAL_SEED`) of the val split."""
    from tqdm import tqdm

    sums: dict[str, float] = {}
    n = int(cfg.val_batches)
    stage.trainable.eval()
    # a policy's plan cache is indexed by *training* windows: validation windows plan online
    cache = getattr(stage, "cache", None)
    if cache is not None:
        stage.cache = None
    try:
        for b in tqdm(range(n), desc="validate", unit="batch", disable=not progress, dynamic_ncols=True):
            batch = stage.prepare(val.batch(VAL_SEED, b, int(cfg.batch_size), dist.rank, dist.world))
            with autocast:
                m = stage.validate(batch)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v / n
    finally:
        if cache is not None:
            stage.cache = cache
    stage.trainable.train()
    if cfg.stage == "planner":
        stage.planner.vae.eval()
    return {f"val/{k}": v for k, v in dist.mean(sums, device).items()}


def _attach_plan_cache(cfg: Any, stage: Any, data: Any, out: Path, dist: Dist, log: Any) -> None:
    from zipmo_robot.training.plan_cache import PlanCache

    pc = cfg.policy.plan_cache
    root = Path(pc.dir) if pc.dir else out / "plan_cache"
    cache = PlanCache(
        root,
        data,
        stage.planner,
        stage.sources["planner"].get("sha256"),
        plans_per_frame=int(pc.plans_per_frame),
        nfe=int(cfg.policy.nfe),
        precision=cfg.policy.plan_precision,
        chunk_frames=int(pc.chunk_frames),
        batch=int(pc.batch),
        dtype=pc.dtype,
        seed=int(pc.seed),
        cfg_scale=float(cfg.policy.cfg_scale),
    )
    missing = cache.missing()
    if missing:
        log(
            f"plan cache {cache.dir}: sampling {len(missing)} of {cache.n_chunks} chunks ({cache.K} plans/frame)"
        )
        timing = cache.build(dist.rank, dist.world, progress=bool(cfg.progress))
        log(
            f"plan cache: {timing['plans']} plans in {timing['seconds']:.1f} s ({timing['plans_per_s']:.2f} plans/s)"
        )
        dist.barrier()
    cache.load()
    stage.cache = cache


def _evaluate(cfg: Any, stage: Any, ema: Any, out: Path, step: int, logger: Logger, log: Any) -> None:
    """Short rollouts of the current policy (EMA head when kept) through the vector runner."""
    from zipmo_robot.training.evaluate import rollout_success

    head = ema.module if ema is not None else stage.head
    result = rollout_success(cfg, stage.planner, head, stage.text, out / "eval" / f"step_{step:07d}")
    logger.log(step, {"eval/success_rate": result["success_rate"], "eval/episodes": result["episodes"]})
    if result.get("videos"):
        folder = out / "eval" / f"step_{step:07d}"
        logger.text(step, "eval/videos", "\n".join(str(folder / v) for v in result["videos"]))
        for i, v in enumerate(result["videos"][:4]):
            logger.video_strip(step, f"eval/episode_{i}", folder / v)
    log(f"eval at step {step}: success {result['success_rate']:.2f} over {result['episodes']} episodes")
