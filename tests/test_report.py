"""Reports from JSONL alone: statistics against hand-computed values, the Table 2 layout, merging of rank files
(duplicates, missing cells), the paired comparison, CSV/PNG outputs and the failures page's links."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from zipmo_robot.eval import reports, tables


def test_wilson_interval_matches_the_hand_computed_formula() -> None:
    # 7/10, z = 1.959964: centre (0.7 + z^2/20) / (1 + z^2/10) = 0.64449, half-width 0.24772
    lo, hi = tables.wilson(7, 10)
    assert lo == pytest.approx(0.39677, abs=1e-4) and hi == pytest.approx(0.89222, abs=1e-4)
    lo, hi = tables.wilson(0, 20)  # 0/20: [0, z^2 / (n + z^2)] = [0, 0.16113]
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.16113, abs=1e-4)
    assert tables.wilson(0, 0) is None


def test_mcnemar_exact_and_seed_statistics() -> None:
    assert tables.mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 128)  # 2 P(X <= 1), X ~ Bin(7, 1/2)
    assert tables.mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert tables.mcnemar_exact(0, 0) == 1.0
    m, sd = tables.mean_std([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7) and sd == pytest.approx(0.2)  # ddof = 1
    assert tables.mean_std([0.4]) == (0.4, None)


def _rec(suite: str, task: int, seed: int, ep: int, status: str, **extra) -> dict:
    return {
        "suite": suite, "task_id": task, "run_seed": seed, "episode_index": ep, "status": status,
        "success": status == "success", "steps": 3, "seed": seed * 7 + ep, "task_language": f"task {task}",
        "settings_hash": "h", "protocol": "atm", "protocol_preset": "atm", "policy": "zero",
        "errors_as_failures": False, "errors": [{"message": "worker died"}] if status == "error" else [],
        **extra,
    }  # fmt: skip


def _records() -> list[dict]:
    # libero_goal task 0: seed 0 -> 2/2, seed 1 -> 1/2; task 1: seed 0 -> 0/2, seed 1 -> 1/2 (+1 error)
    # libero_10 task 4: seed 0 -> 1/2, seed 1 -> 2/2
    out = []
    for seed, outcomes in ((0, "SS"), (1, "SF")):
        out += [
            _rec("libero_goal", 0, seed, e, "success" if o == "S" else "failure")
            for e, o in enumerate(outcomes)
        ]
    for seed, outcomes in ((0, "FF"), (1, "SF")):
        out += [
            _rec("libero_goal", 1, seed, e, "success" if o == "S" else "failure")
            for e, o in enumerate(outcomes)
        ]
    out.append(_rec("libero_goal", 1, 1, 2, "error"))
    for seed, outcomes in ((0, "SF"), (1, "SS")):
        out += [
            _rec("libero_10", 4, seed, e, "success" if o == "S" else "failure")
            for e, o in enumerate(outcomes)
        ]
    return out


def _write(path: Path, records: list[dict]) -> None:
    with reports.ResultsWriter(path) as w:
        for r in records:
            w.append(r)


def test_table_from_jsonl_matches_hand_computed_rates(tmp_path: Path) -> None:
    _write(tmp_path / "results.jsonl", _records())
    run = tables.load_run([tmp_path])
    s = tables.summarize_run(run, errors_as_failures=False)
    goal, long = s["suites"]["libero_goal"], s["suites"]["libero_10"]
    # goal per seed: seed 0 = mean(1.0, 0.0) = 0.5, seed 1 = mean(0.5, 0.5) = 0.5
    assert goal["per_seed"] == {0: 0.5, 1: 0.5} and goal["std"] == pytest.approx(0.0)
    assert (goal["successes"], goal["episodes"], goal["errors"]) == (4, 8, 1)
    assert long["per_seed"] == {0: 0.5, 1: 1.0}
    assert long["mean"] == pytest.approx(0.75) and long["std"] == pytest.approx(0.353553, abs=1e-6)
    # average per seed over suites: seed 0 = 0.5, seed 1 = 0.75
    assert s["avg"]["mean"] == pytest.approx(0.625) and s["avg"]["std"] == pytest.approx(0.176777, abs=1e-6)
    assert s["avg"]["wilson"] == pytest.approx(tables.wilson(7, 12))
    with_errors = tables.summarize_run(run, errors_as_failures=True)
    assert with_errors["suites"]["libero_goal"]["episodes"] == 9  # the error counts as a failure
    md = tables.table2_markdown("atm", s, tables.PUBLISHED["atm"])
    header = md.splitlines()[0]
    assert header == "| Model | 10 | 90 | Spatial | Goal | Object | Avg. |"
    ours = md.splitlines()[2].split("|")
    # 1 of libero_10's 10 tasks and 2 of libero_goal's: the cells say they are not the suites' rates
    assert ours[2].strip() == "75.0 ± 35.4 (1 of 10 tasks)" and ours[3].strip() == "–"
    assert (
        ours[5].strip() == "50.0 ± 0.0 (2 of 10 tasks)" and ours[7].strip() == "62.5 ± 17.7 (partial suites)"
    )
    full = [_rec("libero_object", t, 0, 0, "success" if t < 3 else "failure") for t in range(10)]
    _write(tmp_path / "full" / "results.jsonl", full)
    s_full = tables.summarize_run(tables.load_run([tmp_path / "full"]), errors_as_failures=False)
    row = tables.table2_markdown("atm", s_full, []).splitlines()[2].split("|")
    assert row[6].strip() == "30.0" and row[7].strip() == "30.0"  # all 10 tasks: a plain suite rate
    assert "| ATM (ZipMo Table 2) | 39.3 | 48.4 | 68.5 | 77.8 | 68.0 | 60.4 |" in md


def test_report_writes_files_and_every_failure_link_resolves(tmp_path: Path) -> None:
    records = _records()
    (tmp_path / "videos").mkdir()
    for r in records[:4]:
        name = f"videos/{r['suite']}_{r['task_id']}_{r['episode_index']}_{r['run_seed']}.mp4"
        (tmp_path / name).write_bytes(b"\x00\x00\x00\x18ftypmp42")
        r["video"] = name
    records[5]["video"] = "videos/deleted.mp4"  # recorded, then lost: must not become a dead link
    _write(tmp_path / "results.jsonl", records)
    proc = subprocess.run(
        [sys.executable, "-m", "zipmo_robot", "report", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "| **ours** (atm)" in proc.stdout
    for name in ("report.md", "report.csv", "report.png", "failures.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "failures.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links, "the failed episode with a video must be linked"
    for link in links:
        assert (tmp_path / link).is_file(), link
    n_not_success = sum(r["status"] != "success" for r in records)
    assert page.count("<tr><td>") == n_not_success
    rows = list(__import__("csv").DictReader((tmp_path / "report.csv").open()))
    assert {r["level"] for r in rows} == {"task", "suite", "average"}


def test_rank_files_merge_to_the_single_file_table_and_gaps_are_reported(tmp_path: Path) -> None:
    records = [r for r in _records() if r["status"] != "error"]
    one, two = tmp_path / "one", tmp_path / "two"
    _write(one / "results.jsonl", records)
    _write(two / "results.rank0-of-2.jsonl", records[0::2])
    _write(two / "results.rank1-of-2.jsonl", records[1::2])
    cells = [list(reports.episode_key(r)) for r in records]
    for d in (one, two):
        (d / "cells.json").write_text(json.dumps({"cells": cells}))
    a = tables.summarize_run(tables.load_run([one]), False)
    merged = tables.load_run([two])
    assert tables.summarize_run(merged, False) == a
    assert merged.duplicates == [] and merged.missing == []
    # a cell recorded by both ranks, and a planned cell nobody ran
    _write(two / "results.rank1-of-2.jsonl", [records[0]])
    (two / "cells.json").write_text(json.dumps({"cells": cells + [["libero_goal", 0, 5, 0]]}))
    merged = tables.load_run([two])
    assert merged.duplicates == [reports.episode_key(records[0])]
    assert merged.missing == [("libero_goal", 0, 5, 0)]
    report = tables.write_report([two])
    assert "1 duplicate cell(s)" in report["markdown"] and "1 missing cell(s)" in report["markdown"]


def test_paired_comparison_on_identical_cells(tmp_path: Path) -> None:
    a = [r for r in _records() if r["status"] != "error"]
    b = [dict(r, status="failure", success=False) if r["status"] == "success" else r for r in a]
    _write(tmp_path / "a" / "results.jsonl", a)
    _write(tmp_path / "b" / "results.jsonl", b + [_rec("libero_goal", 9, 0, 0, "success")])  # unpaired
    report = tables.write_report([tmp_path / "a", tmp_path / "b"], merge=False)
    (cmp,) = report["comparisons"]
    n_success = sum(r["status"] == "success" for r in a)
    assert (cmp["cells"], cmp["only_a"], cmp["only_b"]) == (len(a), n_success, 0)
    assert cmp["p_value"] == pytest.approx(2 * 0.5**n_success)
