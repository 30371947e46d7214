"""The opt-in fast path (`PolicyConfig.compile`, `--compile`): the planner's velocity network through
`torch.compile` (inductor). Its actions must stay within the parity tests' tolerances of the exact path's
(fp32 1e-4; bf16 autocast 1e-3 with AMX tiles, 1e-2 elsewhere: `test_policy_parity.py` says why); a missing
C++ compiler must be a `UserError` that says how to run without compiling.

The exact path (compile off, the default) is checked bit for bit against the records of the code before the
speed work by `test_speed_exact.py`; not repeated here. Compiling takes tens of seconds per precision.
"""

from __future__ import annotations

import os
import subprocess
import sys

import exact_record as R  # tests/exact_record.py (seeded random weights of any size)
import numpy as np
import pytest
import torch
from test_policy_parity import AMP_ACTION_TOL, FP32_TOL

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = {"fp32": FP32_TOL, "bf16": AMP_ACTION_TOL}
BATCH, STEPS, NFE = 2, 2, 2


def _tiny_agents(precision: str):
    """(exact agent, compiled agent) sharing one tiny ATM planner and head with seeded random weights."""
    from zipmo_robot.policy.agent import RollingReplanner
    from zipmo_robot.policy.head import InverseDynamicsHead

    from zipmo_robot.models.planner import build_planner
    from zipmo_robot.models.sizes import load_sizes

    sizes = load_sizes("tiny")
    cfg = sizes.planner_config("libero_atm", share_vae_dino=True)
    planner = build_planner(cfg)
    head = InverseDynamicsHead(
        sizes.head_config(
            grid_size=cfg.vae.latent_grid, num_views=cfg.num_views, latent_dim=cfg.vae.latent_dim
        )
    )
    for i, module in enumerate((planner, head)):
        shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        module.load_state_dict(R.random_weights(shapes, seed=i), strict=True)
    planner, head = planner.eval(), head.eval()
    exact = RollingReplanner(planner, head, nfe=NFE, precision=precision)
    fast = RollingReplanner(planner, head, nfe=NFE, precision=precision, compile=True)
    return exact, fast


def _actions(agent, inputs: dict) -> torch.Tensor:
    """(STEPS, B, 7) actions of the rows seeded 1000.. over the inputs' control steps."""
    for i, seed in enumerate(inputs["seeds"]):
        agent.reset_row(i, seed, inputs["task_emb"][i])
    return torch.stack(
        [
            agent.step(inputs["images"][s], inputs["proprio"][s], list(range(BATCH))).actions
            for s in range(STEPS)
        ]
    )


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_compiled_actions_are_within_the_parity_tolerance_of_the_exact_path(precision: str) -> None:
    exact, fast = _tiny_agents(precision)
    rng = np.random.default_rng(7)
    inputs = {
        "images": rng.integers(0, 256, (STEPS, BATCH, 2, 128, 128, 3), dtype=np.uint8),
        "proprio": rng.normal(size=(STEPS, BATCH, 9)).astype(np.float32),
        "task_emb": torch.from_numpy(rng.normal(size=(BATCH, exact.planner.cfg.d_cross)).astype(np.float32)),
        "seeds": [1000 + i for i in range(BATCH)],
    }
    want = _actions(exact, inputs)
    got = _actions(fast, inputs)
    dtype = torch.bfloat16 if precision == "bf16" else None
    # compiled once, for this batch and dtype (one CFG branch: cfg_scale 1)
    assert fast.velocity is not None and {k[:2] for k in fast.velocity.keys} == {(BATCH, dtype)}
    assert len(fast.velocity.keys) == 1
    assert exact.velocity is None and fast.resolved_options()["compile"] is True
    err = (got.double() - want.double()).abs().max().item()
    print(
        f"{precision}: compiled vs exact actions, max abs diff {err:.3g} (tolerance {TOLERANCE[precision]})"
    )
    assert torch.isfinite(got).all() and err <= TOLERANCE[precision], err


def test_compile_without_a_cxx_compiler_is_a_user_error(tmp_path) -> None:
    """`rollout --compile` with no usable C++ compiler ($CXX names a missing program) stops before any env
    starts, exit 2, saying that compiling needs one and how to run without `--compile`."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "OMP_NUM_THREADS": "1"}
    env.pop("TORCH_INDUCTOR_INSTALL_GXX", None)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "zipmo_robot", "rollout", "--checkpoint", "bundled:libero_spatial"]
    cmd += ["--compile", "--device", "cpu", "--episodes", "1", "--tasks", "0", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "C++ compiler" in text and "without --compile" in text, text[-3000:]
    assert not (out / "results.jsonl").exists()
