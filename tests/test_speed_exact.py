"""The speed work moves no bit: the agent's actions and plans equal those recorded with the code before it.

`tests/exact_record.py` holds the cases (seeded random weights at the small size and at release widths,
both precisions) and made the records in `tests/data/` with commit 8321ee5. GEMM results depend on the CPU's
instruction set and the torch build, so a record is exact only on its CPU kind: there the check is bit for
bit; on another kind the small cases are compared at the policy-parity tolerances instead (fp32 1e-4,
bf16 actions 1e-2), and the release-width case is skipped (make a record for the new kind with the old tree,
as `exact_record.py` says, to check it bit for bit there).
"""

from __future__ import annotations

import exact_record as R  # tests/exact_record.py (tests/ is on sys.path under pytest)
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}  # other CPU kinds only (see test_policy_parity.py for why)


def _record() -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors of the record for this CPU kind, or of any record, and whether it is this kind's)."""
    from safetensors.torch import load_file

    own = R.record_path()
    if own.exists():
        return load_file(own), True
    others = sorted(R.DATA.glob("exact_*.safetensors"))
    if not others:
        pytest.fail(f"no record in {R.DATA}; make one with tests/exact_record.py (see its docstring)")
    return load_file(others[0]), False


@pytest.mark.parametrize("precision", R.PRECISIONS)
@pytest.mark.parametrize("case", list(R.CASES))
def test_actions_and_plans_equal_the_record(case: str, precision: str) -> None:
    record, exact = _record()
    if not exact and not case.startswith("small"):
        pytest.skip(
            f"no record for this CPU kind ({R.cpu_kind()}): the {case} case is only checked bit for bit on a "
            "recorded kind; record one with `python tests/exact_record.py --tree <checkout of 8321ee5>`"
        )
    got = R.run_case(case, precision)
    for key, value in got.items():
        expected = record[key]
        err = (value.double() - expected.double()).abs().max().item()
        print(f"{key}: max abs diff {err:.3g} ({'bit-exact check' if exact else 'tolerance check'})")
        if exact:
            assert torch.equal(value, expected), f"{key} differs from the record by up to {err:.3g}"
        elif key.endswith("actions"):
            assert err <= TOLERANCE[precision], (key, err)


def test_bf16_step_leaves_the_planner_weights_as_they_were() -> None:
    """The bf16 agent casts the planner's matmul weights once per control step (not per Euler step) and puts
    the caller's fp32 tensors back afterwards, so a planner shared with fp32 users is unchanged."""
    agent, inputs = R.build_case("small_atm", "bf16")
    before = {k: v for k, v in agent.planner.state_dict(keep_vars=True).items()}
    values = {k: v.detach().clone() for k, v in before.items()}
    for i, seed in enumerate(inputs["seeds"]):
        agent.reset_row(i, seed, inputs["task_emb"][i])
    agent.step(inputs["images"][0], inputs["proprio"][0], list(range(len(inputs["seeds"]))))
    after = agent.planner.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert v is before[k] and v.dtype == values[k].dtype and torch.equal(v, values[k]), k
