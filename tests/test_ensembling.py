"""Temporal ensembling: the official index rule and the textbook one on hand-made chunk sequences."""

from __future__ import annotations

import pytest
import torch
from zipmo_robot.policy.ensembling import TemporalEnsembler, ensemble_indices, ensemble_weights

T = 16


def _chunk(k: int, batch: int = 1) -> torch.Tensor:
    """Chunk predicted at step k: action j is 100*k + j in every dim, so a value names (chunk, index)."""
    vals = 100.0 * k + torch.arange(T, dtype=torch.float32)
    return vals[None, :, None].expand(batch, T, 7).clone()


def _expected(step: int, mode: str) -> float:
    """Plain-Python float64 blend at episode step `step` (0-based) after chunks 0..step."""
    num = min(step + 1, T)
    first = step + 1 - num
    raw = [0.99 ** (num - 1 - h) for h in range(num)]
    total = sum(raw)
    out = 0.0
    for h in range(num):
        idx = (-h) % T if mode == "official" else num - 1 - h
        out += raw[h] / total * (100.0 * (first + h) + idx)
    return out


@pytest.mark.parametrize("mode", ["official", "textbook"])
def test_documented_actions_on_hand_made_sequence(mode: str) -> None:
    ens = TemporalEnsembler(horizon=T, mode=mode)
    for step in range(40):
        action = ens.update(_chunk(step, batch=2))
        assert action.shape == (2, 7) and action.dtype == torch.float32
        assert action[0, 0].item() == pytest.approx(_expected(step, mode), rel=1e-6, abs=1e-4)
        assert torch.equal(action[0], action[1])


def test_first_two_steps_spelled_out() -> None:
    off = TemporalEnsembler(mode="official")
    tb = TemporalEnsembler(mode="textbook")
    assert off.update(_chunk(0))[0, 0].item() == 0.0  # one chunk: its action 0 in both modes
    assert tb.update(_chunk(0))[0, 0].item() == 0.0
    # step 1: official takes chunk0[0] and chunk1[15]; textbook takes chunk0[1] and chunk1[0]
    assert off.update(_chunk(1))[0, 0].item() == pytest.approx((0.99 * 0 + 115) / 1.99, rel=1e-6)
    assert tb.update(_chunk(1))[0, 0].item() == pytest.approx((0.99 * 1 + 100) / 1.99, rel=1e-6)


def test_indices_and_weights() -> None:
    assert ensemble_indices(1, T, "official").tolist() == [0]
    assert ensemble_indices(4, T, "official").tolist() == [0, 15, 14, 13]
    assert ensemble_indices(16, T, "official").tolist() == [0] + list(range(15, 0, -1))
    assert ensemble_indices(4, T, "textbook").tolist() == [3, 2, 1, 0]
    w = ensemble_weights(16, 0.99)
    assert w.dtype == torch.float64
    assert w.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert w[-1] > w[0]  # newest heaviest
    assert w[0].item() == pytest.approx(0.0579, abs=1e-4) and w[-1].item() == pytest.approx(0.0673, abs=1e-4)
    with pytest.raises(ValueError, match="unknown ensembling mode"):
        ensemble_indices(2, T, "bogus")


def test_textbook_recovers_a_consistent_trajectory_and_official_does_not() -> None:
    """If every chunk predicts the same trajectory (chunk k's action j = traj[k + j]), the textbook rule
    returns exactly traj[step]; the official rule mixes other steps in."""
    traj = torch.linspace(-1.0, 1.0, 80, dtype=torch.float32) ** 3
    tb, off = TemporalEnsembler(mode="textbook"), TemporalEnsembler(mode="official")
    max_off = 0.0
    for k in range(40):
        chunk = traj[k : k + T][None, :, None].expand(1, T, 7)
        assert tb.update(chunk)[0, 0].item() == pytest.approx(traj[k].item(), abs=1e-6)
        max_off = max(max_off, abs(off.update(chunk)[0, 0].item() - traj[k].item()))
    assert max_off > 1e-2


def test_reset_forgets_history() -> None:
    ens = TemporalEnsembler()
    for k in range(5):
        ens.update(_chunk(k))
    ens.reset()
    assert ens.num_updates == 0
    assert ens.update(_chunk(7))[0, 0].item() == 700.0
    with pytest.raises(ValueError, match="chunk shape changed"):
        ens.update(_chunk(8, batch=3))
