"""How far the task sentence and the start frames move a trained planner's plan, against how far the noise does.

    python benchmarks/planner_conditioning.py RUN/planner [--data DIR] [--demos 10] [--nfe 5] [--cfg-scale 1]

For the first window of each held-out (`val`) demo, samples normalised latents (B, L, C) with the agent's
sampler (`stages.plan`, fp32) under the demo's own sentence and frames with two noise seeds; with the first
seed under every other task's sentence (own frames); and with every other task's first frames (own sentence).
Prints the mean RMS between seeds, between sentences and between frames. A planner whose plan tells the head
the task moves it between tasks (by sentence or by frames) clearly more than between seeds. `--cfg-scale`:
sample with classifier-free guidance on the sentence (the agent's `cfg_scale`, BC's `policy.cfg_scale`), which
multiplies whatever the sentence does to the velocity.
`zipmo-robot validate RUN/planner` (`val/loss_text` vs `val/loss_other_text`) asks it of the flow loss.

`--targets`: also the planner's *targets* (normalised VAE posterior means) of 24 val windows encoded from two
independent draws of their tracks, at the run's `data.n_tracks` (half encoded) and at each `--targets` count:
the RMS between draws of one window against the RMS between windows. When the draw decides most of a target,
the planner cannot predict it from frames and sentence and learns the marginal (README, round 5).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from zipmo_robot.training import trainer
from zipmo_robot.training.stages import frames_to_float, plan
from zipmo_robot.training.validation import load_trained_planner_stage

KEYS = ("between_seeds", "between_sentences", "between_frames")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("planner", help="planner training run folder")
    p.add_argument("--data", help="preprocessed demos (default: the run's data.root)")
    p.add_argument("--demos", type=int, default=10, help="val demos to use (their first windows)")
    p.add_argument("--nfe", type=int, default=5, help="Euler steps per plan")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    p.add_argument("--targets", type=int, nargs="*", help="also the targets' draw spread at these n_tracks")
    p.add_argument("--no-plans", action="store_true", help="only the targets")
    args = p.parse_args()
    torch.set_num_threads(1)
    stage, cfg = load_trained_planner_stage(args.planner, args.data)
    val = trainer.stage_data(cfg, stage, "val")
    first: dict[int, int] = {}  # demo -> its first window
    for i, (d, start) in enumerate(val.windows.index):
        if d not in first or start < val.windows.index[first[d]][1]:
            first[d] = i
    language = {i: val.refs[val.windows.index[i][0]].language for i in first.values()}
    task_frames: dict[str, np.ndarray] = {}  # one first frame per task of the split
    for i in first.values():
        task_frames.setdefault(language[i], val.frame_inputs(i)[0])
    codes = {lang: torch.from_numpy(e) for lang, e in val.embeddings.items()}

    def sample(frames: np.ndarray, txt: np.ndarray | torch.Tensor, t: int, seed: int) -> torch.Tensor:
        f = frames_to_float(torch.from_numpy(frames)[None])
        txt = torch.as_tensor(txt)[None, None]
        return plan(stage.planner, f, txt, torch.tensor([t]), [seed], args.nfe, "fp32", args.cfg_scale)

    def rms(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x - y).pow(2).mean().sqrt())

    if args.targets is not None:
        target_spread(stage.planner, val, [int(cfg.data.n_tracks), *args.targets])
    if args.no_plans:
        return
    rows = []
    for i in list(first.values())[: args.demos]:
        frames, own, t = val.frame_inputs(i)
        a, b = sample(frames, own, t, 1), sample(frames, own, t, 2)
        by_text = [rms(a, sample(frames, e, t, 1)) for k, e in codes.items() if k != language[i]]
        by_frame = [rms(a, sample(f, own, t, 1)) for k, f in task_frames.items() if k != language[i]]
        row = dict(zip(KEYS, (rms(a, b), float(np.mean(by_text)), float(np.mean(by_frame))), strict=True))
        rows.append(row)
        print(json.dumps({"window": i, **{k: round(v, 4) for k, v in row.items()}}))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
    print(
        f"{len(rows)} val demos, RMS of normalised plans: "
        + ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
    )


def target_spread(planner: torch.nn.Module, val: object, counts: list[int], n_windows: int = 24) -> None:
    """RMS of the planner's targets between two track draws of one window and between windows."""
    idx = np.random.default_rng(0).choice(len(val), n_windows, replace=False)
    n_tracks = val.windows.n_tracks
    for n in counts:
        val.windows.n_tracks = n

        def target(i: int, seed: int, n: int = n) -> torch.Tensor:
            s = val.windows.get(int(i), np.random.default_rng(seed))
            tracks = torch.from_numpy(s["tracks"])  # (V, n, T, 2)
            frames = frames_to_float(torch.from_numpy(s["start_frames"]))
            return planner.encode_targets(tracks[:, : n // 2], frames, None)  # (V, L, C)

        a = torch.stack([target(i, 1) for i in idx])
        b = torch.stack([target(i, 2) for i in idx])
        same = float((a - b).pow(2).mean().sqrt())
        other = float((a - a.roll(1, 0)).pow(2).mean().sqrt())
        print(
            json.dumps(
                {
                    "encoded_tracks": n // 2,
                    "between_draws": round(same, 3),
                    "between_windows": round(other, 3),
                }
            )
        )
    val.windows.n_tracks = n_tracks


if __name__ == "__main__":
    main()
