"""`zipmo-robot bench env` and `bench runner` end to end with tiny settings: real LIBERO processes, the JSON
report's structure and the printed table (figures are benchmarks: checked for sanity, never against a speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.libero, pytest.mark.slow]


def _bench(*args: str, out: Path) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_bench_env_measures_each_part_in_its_own_process(tmp_path: Path) -> None:
    report, text = _bench(
        "env", "--steps", "2", "--warmup", "0", "--resets", "1", "--sizes", "32", "--skip-jit",
        out=tmp_path / "env.json",
    )  # fmt: skip
    assert report["machine"]["cpu_count"] >= 1 and "MUJOCO_GL" in report["machine"]
    assert [(r["measure"], r.get("size")) for r in report["results"]] == [
        ("construct", None),
        ("steps", 32),
        ("steps", 0),
    ]
    construct = report["results"][0]
    assert 0 < construct["reset_soft_s"] < construct["process_wall_s"]
    assert construct["after_one_env_peak_rss_mb"] >= construct["after_one_env_rss_mb"] > 0
    assert all(r["steps_per_s_median"] > 0 for r in report["results"][1:])
    assert (
        "reset+init+5 settle, soft / hard" in text and "32x32 both cameras" in text and "no rendering" in text
    )


def test_bench_runner_compares_raw_and_runner_steps(tmp_path: Path) -> None:
    report, text = _bench(
        "runner", "--steps", "2", "--warmup", "1", "--sizes", "32", out=tmp_path / "runner.json"
    )
    (row,) = report["results"]
    assert row["image_size"] == 32
    for name in ("raw_1", "runner_1", "raw_2", "runner_2", "paired_raw", "paired_runner"):
        assert row[name] > 0, name
    assert row["runner_overhead_pct"] == pytest.approx(100 * (row["raw_1"] / row["runner_1"] - 1))
    assert report["settings"] == {
        "suite": "libero_spatial",
        "task": 0,
        "steps": 2,
        "warmup": 1,
        "sizes": [32],
    }
    assert "libero_spatial task 0" in text and "paired: raw / runner - 1" in text
