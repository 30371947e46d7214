"""Trajectory-prediction evaluation on LIBERO (WHN protocol, ZipMo supplement Table E; PROTOCOLS.md §7).

Per preprocessed demo (`zipmo-robot preprocess` output, exact simulator tracks as ground truth) and view, the
demo is cut into 16-frame windows; in each, tracks visible at the window start whose temporal variance at
128×128 px (unbiased, summed over x and y) exceeds the threshold (10 px², ATM's `track_and_remove`) are the
non-static ones, and 32 of them are drawn at random (windows with none are skipped). The planner is
conditioned on the start frames of both views and the task text, samples k = 8 plans, and the VAE decodes each
at the 32 start positions: 64 samples per track, subsampled linearly to 16 (end points kept, the inverse of
the training interpolation, `data.windows.interpolate_time`). Metrics per window (pixels at 128×128, PROTOCOLS.md
§7.2): Single (first sample), Min (best of k), Mean (mean over samples), MeanT (error of the mean track);
`MSE = mean over tracks, steps and both coordinates of the squared difference`. Reported: the mean over windows,
per suite and view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from zipmo_robot.policy.config import PolicyConfig

from zipmo_robot.data.windows import FUTURE_FRAMES, TRACK_SAMPLES, interpolate_time
from zipmo_robot.errors import UserError

CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
VIEW_NAMES = {"agentview": "Side", "robot0_eye_in_hand": "Effector"}
RESOLUTION = 128
METRICS: tuple[str, ...] = ("single", "min", "mean", "mean_t", "static")

# ZipMo supplement Table E (PROTOCOLS.md §6.3): (suite, view) -> Single, Min, Mean.
PUBLISHED_ZIPMO = {
    ("libero_90", "agentview"): (8.83, 5.96, 9.18),
    ("libero_90", "robot0_eye_in_hand"): (45.23, 27.78, 45.71),
    ("libero_10", "agentview"): (10.73, 7.43, 9.05),
    ("libero_10", "robot0_eye_in_hand"): (46.27, 25.80, 46.55),
}


@dataclass(frozen=True)
class TrackEvalSettings:
    """Knobs of the protocol (defaults: WHN / ZipMo Table E)."""

    window: int = FUTURE_FRAMES  # frames per window (the baselines' prediction length)
    stride: int = FUTURE_FRAMES  # window starts every `stride` frames
    n_tracks: int = 32
    var_threshold: float = 10.0  # px² at 128×128, x- plus y-variance over the window
    k: int = 8
    nfe: int = PolicyConfig.nfe
    seed: int = 0


def to_pixels(yx: np.ndarray) -> np.ndarray:
    """[-1, 1] coordinates -> pixels at 128×128: (v + 1) / 2 * 128."""
    return (np.asarray(yx, np.float64) + 1.0) * 0.5 * RESOLUTION


def moving_tracks(window_px: np.ndarray, visible: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of non-static tracks: window (T, N, 2) px; variance over time (ddof 1) summed over the two
    coordinates > threshold, and visible at the window start (N,) bool."""
    var = window_px.var(axis=0, ddof=1).sum(axis=-1)
    return np.flatnonzero((var > threshold) & visible)


def window_metrics(pred_px: np.ndarray, gt_px: np.ndarray) -> dict[str, float]:
    """pred (k, N, T, 2), gt (N, T, 2), pixels -> Single, Min, Mean, MeanT (PROTOCOLS.md §7.2), and Static:
    the error of predicting no motion (every track stays at its start point), the floor a plan must beat."""
    per_sample = ((pred_px - gt_px[None]) ** 2).mean(axis=(1, 2, 3))  # (k,)
    mean_track = pred_px.mean(axis=0)
    return {
        "single": float(per_sample[0]),
        "min": float(per_sample.min()),
        "mean": float(per_sample.mean()),
        "mean_t": float(((mean_track - gt_px) ** 2).mean()),
        "static": float(((gt_px[:, :1] - gt_px) ** 2).mean()),
    }


@dataclass
class Window:
    """One evaluation window: inputs of both views and the selected tracks per view."""

    suite: str
    demo: str
    start: int
    frames: np.ndarray  # (V, H, W, 3) uint8 start frames
    language: str
    picked: dict[str, np.ndarray]  # camera -> track indices (<= n_tracks), empty when no moving track
    gt_px: dict[str, np.ndarray]  # camera -> (n, T, 2) pixels
    queries: dict[str, np.ndarray]  # camera -> (n, 2) yx in [-1, 1] at the start frame


def demo_windows(path: Path, s: TrackEvalSettings, rng: np.random.Generator) -> list[Window]:
    """The evaluation windows of one preprocessed demo file."""
    from zipmo_robot.data.preprocess import CAMERA_KEY, load_preprocessed

    d = load_preprocessed(path)
    missing = [c for c in CAMERAS if c not in d["tracks"] or CAMERA_KEY[c] not in d]
    if missing:
        raise UserError(f"{path}: no tracks/images for {missing}; preprocess it with both cameras")
    attrs = d["attrs"]
    T = d["actions"].shape[0]
    out = []
    for start in range(0, T - s.window + 1, s.stride):
        picked, gt, queries = {}, {}, {}
        for cam in CAMERAS:
            win = d["tracks"][cam][start : start + s.window].astype(np.float64)  # (T, N, 2) yx
            px = to_pixels(win)
            idx = moving_tracks(px, d["visible"][cam][start].astype(bool), s.var_threshold)
            if len(idx) > s.n_tracks:
                idx = np.sort(rng.choice(idx, s.n_tracks, replace=False))
            picked[cam] = idx
            gt[cam] = px[:, idx].transpose(1, 0, 2)
            queries[cam] = win[0, idx]
        if all(len(picked[c]) == 0 for c in CAMERAS):
            continue
        frames = np.stack([d[CAMERA_KEY[c]][start] for c in CAMERAS])
        out.append(
            Window(
                str(attrs.get("suite", "")),
                path.stem,
                start,
                frames,
                str(attrs.get("language", "")),
                picked,
                gt,
                queries,
            )  # fmt: skip
        )
    return out


def random_planner(size: str = "tiny", seed: int = 0) -> tuple[Any, Any]:
    """A seeded random LIBERO planner (with its VAE) at a size of configs/model, and a text embedder."""
    import torch

    from zipmo_robot.models.planner import build_planner
    from zipmo_robot.models.sizes import load_sizes
    from zipmo_robot.models.text import SentenceCodeEmbedder

    cfg = load_sizes(size).planner_config("libero_atm", share_vae_dino=True)
    planner = build_planner(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in planner.named_parameters():
            if p.ndim >= 2 and "pos_embed" not in name:
                p.normal_(0.0, 0.02, generator=gen)
    return planner.eval().requires_grad_(False), SentenceCodeEmbedder(cfg.d_cross)


def load_planner(spec: str) -> tuple[Any, Any]:
    """A trained checkpoint folder (`zipmo-robot train`) or a released-layout planner file, with the text
    embedder it was trained with (BERT for released files)."""
    from zipmo_robot.checkpoints import trained

    if trained.is_checkpoint_dir(spec):
        planner, meta = trained.load_planner(spec)
        text = meta.get("text_encoder") or {"kind": "bert"}  # what the planner was trained with
        return planner, trained.task_embedder(text, planner.cfg.d_cross)
    from zipmo_robot.checkpoints.loader import load_model

    planner = load_model(spec)
    return planner, trained.task_embedder({"kind": "bert"}, planner.cfg.d_cross)


def _stable_seed(*parts: Any) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "little")


def predict(planner: Any, embedder: Any, windows: list[Window], s: TrackEvalSettings, n_q: int) -> np.ndarray:
    """k plans per window decoded at each view's queries: (B, k, V, n_q, 16, 2) yx in [-1, 1].

    Each view's queries are padded to `n_q` by repeating its own (the decoder attends across queries).
    Sample i of window w uses a generator seeded `seed, w.start, i` (reproducible, batch-independent)."""
    import torch

    B, k, V = len(windows), s.k, len(CAMERAS)
    frames = torch.from_numpy(np.stack([w.frames for w in windows])).float() / 127.5 - 1.0  # (B, V, H, W, 3)
    frames = frames.repeat_interleave(k, dim=0)
    q = np.zeros((B, V, n_q, 2), np.float32)
    for b, w in enumerate(windows):
        for v, cam in enumerate(CAMERAS):
            src = w.queries[cam] if len(w.queries[cam]) else np.zeros((1, 2))
            q[b, v] = src[np.arange(n_q) % len(src)]
    queries = torch.from_numpy(q).repeat_interleave(k, dim=0)
    txt = torch.as_tensor(np.asarray(embedder([w.suite for w in windows], [w.language for w in windows])))
    txt = txt.float().repeat_interleave(k, dim=0)[:, None, :]
    gens = [
        torch.Generator().manual_seed(_stable_seed(s.seed, w.suite, w.demo, w.start, i))
        for w in windows
        for i in range(k)
    ]
    with torch.inference_mode():
        z, dummy = planner.draw_noise(gens)
        start_t = torch.tensor([w.start for w in windows], dtype=torch.int64).repeat_interleave(k)
        guidance = planner.prepare_sampling(frames, track_conds=dummy, txt_emb=txt, start_t=start_t)
        latents = planner.euler(z, guidance, s.nfe)
        tracks = (
            planner.decode(latents, queries, TRACK_SAMPLES, frames).float().numpy()
        )  # (Bk, V, n_q, 64, 2)
    tracks = tracks.reshape(B, k, V, n_q, TRACK_SAMPLES, 2)
    sub = interpolate_time(np.moveaxis(tracks, 4, 0), s.window)  # (16, B, k, V, n_q, 2)
    return np.moveaxis(sub, 0, 4)


def evaluate(
    files: list[Path],
    planner: Any,
    embedder: Any,
    s: TrackEvalSettings,
    batch: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Mean Single/Min/Mean/MeanT per (suite, view) over the windows of `files`, and the per-window rows."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(s.seed)
    windows = [w for f in files for w in demo_windows(Path(f), s, rng)]
    if not windows:
        raise UserError("no evaluation window with a moving track in the given demos")
    rows = []
    bar = tqdm(total=len(windows), desc="windows", unit="win", disable=not progress)
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        pred = predict(planner, embedder, chunk, s, s.n_tracks)
        for b, w in enumerate(chunk):
            for v, cam in enumerate(CAMERAS):
                n = len(w.picked[cam])
                if n == 0:
                    continue
                p_px = to_pixels(pred[b, :, v, :n])  # (k, n, 16, 2)
                rows.append({"suite": w.suite, "demo": w.demo, "start": w.start, "view": cam, "n_tracks": n,
                             **window_metrics(p_px, w.gt_px[cam])})  # fmt: skip
        bar.update(len(chunk))
    bar.close()
    table: dict[str, dict[str, Any]] = {}
    for key in sorted({(r["suite"], r["view"]) for r in rows}):
        sel = [r for r in rows if (r["suite"], r["view"]) == key]
        table[f"{key[0]}/{key[1]}"] = {
            "windows": len(sel),
            **{m: float(np.mean([r[m] for r in sel])) for m in METRICS},
        }
    return {"table": table, "rows": rows, "settings": s.__dict__}


def format_markdown(result: dict[str, Any], model: str) -> str:
    lines = ["| suite | view | windows | Single | Min | Mean | MeanT | Static (no motion) | ZipMo Table E (Single / Min / Mean) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, t in result["table"].items():
        suite, cam = key.split("/")
        pub = PUBLISHED_ZIPMO.get((suite, cam))
        ref = " / ".join(f"{v:.2f}" for v in pub) if pub else "–"
        lines.append(
            f"| {suite} | {VIEW_NAMES[cam]} | {t['windows']} | {t['single']:.2f} | {t['min']:.2f} | "
            f"{t['mean']:.2f} | {t['mean_t']:.2f} | {t.get('static', float('nan')):.2f} | {ref} |"
        )
    return f"Trajectory MSE (px² at 128×128, k = {result['settings']['k']}), model: {model}\n\n" + "\n".join(
        lines
    )


def write(result: dict[str, Any], out: Path, model: str) -> str:
    from zipmo_robot.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    md = format_markdown(result, model)
    atomic_write_text(out / "tracks_report.md", md + "\n")
    atomic_write_text(out / "tracks_metrics.json", json.dumps({**result, "model": model}, indent=1) + "\n")
    return md
