"""How far the task sentence moves a trained planner's plan, against how far the noise does.

    python benchmarks/planner_text_effect.py RUN/planner [--data DIR] [--demos 10] [--nfe 5]

For the first window of each held-out (`val`) demo, samples normalised latents (B, L, C) with the agent's
sampler (`stages.plan`, fp32) under the demo's own sentence and two noise seeds, and under every other task
sentence of the split with the first seed. Prints the RMS between the two seeds and the mean RMS between
sentences: a planner that conditions on the task moves its plan between sentences at least as much as between
seeds; round 3 of the CPU recipe gave 0.040 vs 0.623 (it ignores the sentence; README "Train your own ZipMo").
`zipmo-robot validate RUN/planner` (`val/loss_text` vs `val/loss_other_text`) asks the same of the flow loss.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from zipmo_robot.checkpoints import trained
from zipmo_robot.training import trainer
from zipmo_robot.training.stages import frames_to_float, plan
from zipmo_robot.training.validation import load_run_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("planner", help="planner training run folder")
    p.add_argument("--data", help="preprocessed demos (default: the run's data.root)")
    p.add_argument("--demos", type=int, default=10, help="val demos to use (their first windows)")
    p.add_argument("--nfe", type=int, default=5, help="Euler steps per plan")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg, meta = load_run_config(args.planner)
    if cfg.stage != "planner":
        raise SystemExit(f"{args.planner} is a {cfg.stage} run; give a planner run")
    if args.data:
        cfg.data.root = args.data
    cfg.planner.init = None
    cfg.text_encoder = (meta.get("text_encoder") or {}).get("kind", cfg.text_encoder)
    stage, _ = trainer.build_stage(cfg, torch.device("cpu"), lambda *a, **k: None)
    stage.load_trained(trained.read_weights(meta["path"], trained._pick(meta, "auto")), str(meta["path"]))
    stage.planner.eval()
    val = trainer.stage_data(cfg, stage, "val")
    codes = {lang: torch.from_numpy(e) for lang, e in val.embeddings.items()}
    first: dict[int, int] = {}
    for i, (d, start) in enumerate(val.windows.index):
        if d not in first or start < val.windows.index[first[d]][1]:
            first[d] = i
    rows = []
    for i in list(first.values())[: args.demos]:
        frames, own, t = val.frame_inputs(i)
        f = frames_to_float(torch.from_numpy(frames)[None])
        step = torch.tensor([t])

        def sample(txt: np.ndarray | torch.Tensor, seed: int, f=f, step=step) -> torch.Tensor:
            return plan(stage.planner, f, torch.as_tensor(txt)[None, None], step, [seed], args.nfe, "fp32")

        a, b = sample(own, 1), sample(own, 2)
        others = [sample(e, 1) for e in codes.values() if not np.allclose(e.numpy(), own)]
        rms_seed = float((a - b).pow(2).mean().sqrt())
        rms_text = float(np.mean([float((a - o).pow(2).mean().sqrt()) for o in others]))
        rows.append((rms_seed, rms_text))
        print(
            json.dumps(
                {
                    "window": i,
                    "rms_between_seeds": round(rms_seed, 4),
                    "rms_between_sentences": round(rms_text, 4),
                }
            )
        )
    r = np.array(rows)
    print(
        f"{len(rows)} val demos: RMS between noise seeds {r[:, 0].mean():.3f}, between sentences {r[:, 1].mean():.3f}"
    )


if __name__ == "__main__":
    main()
