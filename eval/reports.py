"""Rollout results as data: a JSONL of per-episode records written as episodes finish, resume, `summary.json`
and a per-task table.

`results.jsonl` holds one JSON object per finished episode, flushed and fsynced line by line; a torn last line
(a run killed mid-write) is ignored on read and cut off before the next append. Every record carries the
`settings_hash` of the settings that decide outcomes, so a resumed run skips exactly the episodes it already has.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import warnings
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from zipmo_robot.files import atomic_write_text

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
STATUSES: tuple[str, ...] = ("success", "failure", "error")
# distribution name -> key in summary["versions"]
VERSIONED: dict[str, str] = {
    "zipmo-robot": "zipmo_robot",
    "torch": "torch",
    "robosuite": "robosuite",
    "mujoco": "mujoco",
    "rlinf-libero": "libero",
    "numpy": "numpy",
    "bddl": "bddl",
}


def settings_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of the settings that decide episode outcomes (JSON with sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def episode_key(record: dict[str, Any]) -> tuple[str, int, int | None, int]:
    """(suite, task_id, run seed, episode_index): the cell an episode record belongs to (engine.Cell.key)."""
    seed = record.get("run_seed")
    return (
        record["suite"],
        int(record["task_id"]),
        None if seed is None else int(seed),
        int(record["episode_index"]),
    )


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages results depend on (None when not installed), plus Python."""
    out: dict[str, str | None] = {}
    for dist, key in VERSIONED.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out


# ---------------------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------------------


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL file ([] if it does not exist). A torn last line is ignored; a bad line
    elsewhere raises `ValueError` naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:  # no trailing newline: the write was cut short
                warnings.warn(f"{path}: ignoring a torn last line ({len(line)} bytes)", stacklevel=2)
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON record ({exc}); fix or remove that line") from exc
    return records


class ResultsWriter:
    """Append-only JSONL writer: one line per record, flushed and fsynced before `append` returns."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._f = open(self.path, "a")

    def _repair(self) -> None:
        """Cut a torn last line (no trailing newline) so the next record starts on its own line; a complete
        record that only lacks its newline is kept."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            try:
                json.loads(data[keep:])
                complete = True  # killed between the record and its newline: keep the record
            except ValueError:
                complete = False
            with open(self.path, "r+b") as f:
                if complete:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                else:
                    f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=False, default=_json_default)
        self._f.write(line + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _hashes(settings: str | Iterable[str]) -> set[str]:
    return {settings} if isinstance(settings, str) else set(settings)


def latest_records(
    records: Iterable[dict[str, Any]], settings: str | Iterable[str] | None = None
) -> dict[tuple, dict]:
    """The last record per cell (a rerun after an `error` replaces it), optionally of some settings hashes."""
    keep = None if settings is None else _hashes(settings)
    out: dict[tuple, dict] = {}
    for r in records:
        if keep is None or r.get("settings_hash") in keep:
            out[episode_key(r)] = r
    return out


def completed_keys(path: str | os.PathLike, settings: str | Iterable[str]) -> set[tuple]:
    """Cells of `path` with these settings that ended in success or failure (errors are run again)."""
    return {k for k, r in latest_records(read_results(path), settings).items() if r["status"] != "error"}


def foreign_settings(path: str | os.PathLike, settings: str | Iterable[str]) -> set[str]:
    """Settings hashes in `path` other than `settings` (a resume into a folder of a different run)."""
    return {r.get("settings_hash", "?") for r in read_results(path)} - _hashes(settings)


# ---------------------------------------------------------------------------------------------------------
# Summary and table
# ---------------------------------------------------------------------------------------------------------


def _rate(success: int, failure: int) -> float | None:
    n = success + failure
    return success / n if n else None


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and overall counts and success rates; errors are counted apart (not in the rate).

    The suite average is the plain mean over tasks, as ATM/ZipMo report it; `overall.pooled_success_rate`
    pools all episodes.
    """
    per_task: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        key = (r["suite"], int(r["task_id"]))
        t = per_task.setdefault(
            key,
            {
                "suite": r["suite"],
                "task_id": int(r["task_id"]),
                "task_language": r.get("task_language", ""),
                "success": 0,
                "failure": 0,
                "error": 0,
                "steps_success": [],
                "env_step_s": 0.0,
                "policy_s": 0.0,
                "env_steps": 0,
                "policy_stage_s": {},  # summed `policy_info.timing` of the policy's records, if any
            },
        )
        if r.get("task_language"):
            t["task_language"] = r["task_language"]
        t[r["status"]] += 1
        if r["status"] == "success":
            t["steps_success"].append(int(r["steps"]))
        timing = r.get("timing", {})
        t["env_step_s"] += float(timing.get("env_step_s", 0.0))
        t["policy_s"] += float(timing.get("policy_s", 0.0))
        t["env_steps"] += int(r.get("steps", 0))
        stages = (r.get("policy_info") or {}).get("timing") or {}
        for stage, seconds in stages.items():
            if isinstance(seconds, int | float):
                t["policy_stage_s"][stage] = t["policy_stage_s"].get(stage, 0.0) + float(seconds)
    tasks = []
    for key in sorted(per_task):
        t = per_task.pop(key)
        steps = t.pop("steps_success")
        t["episodes"] = t["success"] + t["failure"] + t["error"]
        t["success_rate"] = _rate(t["success"], t["failure"])
        t["mean_steps_to_success"] = sum(steps) / len(steps) if steps else None
        tasks.append(t)
    tot = {s: sum(t[s] for t in tasks) for s in STATUSES}
    rates = [t["success_rate"] for t in tasks if t["success_rate"] is not None]
    env_steps = sum(t["env_steps"] for t in tasks)
    env_s = sum(t["env_step_s"] for t in tasks)
    stage_totals: dict[str, float] = {}
    for t in tasks:
        for stage, seconds in t["policy_stage_s"].items():
            stage_totals[stage] = stage_totals.get(stage, 0.0) + seconds
    overall = {
        **tot,
        "episodes": sum(tot.values()),
        "success_rate": sum(rates) / len(rates) if rates else None,
        "pooled_success_rate": _rate(tot["success"], tot["failure"]),
        "env_steps": env_steps,
        "env_step_s": env_s,
        "policy_s": sum(t["policy_s"] for t in tasks),
        "env_steps_per_s": env_steps / env_s if env_s > 0 else None,
        "policy_stage_s": stage_totals,
    }
    return {"tasks": tasks, "overall": overall}


def write_summary(
    out_dir: str | os.PathLike,
    records: Iterable[dict[str, Any]],
    settings: dict[str, Any],
    *,
    settings_hash: str,
    complete: bool,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `summary.json` atomically: every setting, package versions, per-task and overall results."""
    summary = {
        "complete": complete,
        "settings": settings,
        "settings_hash": settings_hash,
        "versions": package_versions(),
        "command": sys.argv,
        **summarize(records),
        **(extra or {}),
    }
    path = Path(out_dir) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary, indent=2, default=_json_default) + "\n")
    return path


def format_table(summary: dict[str, Any]) -> str:
    """The per-task table: successes, failures, errors, success rate; then the suite mean."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    header = f"{'suite':<15} {'task':>4}  {'succ':>4} {'fail':>4} {'err':>4} {'rate':>7}  instruction"
    lines = [header, "-" * len(header)]
    for t in summary["tasks"]:
        lang = t.get("task_language", "")
        lang = lang if len(lang) <= 60 else lang[:57] + "..."
        lines.append(
            f"{t['suite']:<15} {t['task_id']:>4}  {t['success']:>4} {t['failure']:>4} {t['error']:>4} "
            f"{pct(t['success_rate']):>7}  {lang}"
        )
    o = summary["overall"]
    lines.append("-" * len(header))
    lines.append(
        f"{'mean over tasks':<20}  {o['success']:>4} {o['failure']:>4} {o['error']:>4} {pct(o['success_rate']):>7}"
        f"  (pooled {pct(o['pooled_success_rate'])}; errors not counted)"
    )
    return "\n".join(lines)


def print_table(summary: dict[str, Any], file: Any = None) -> None:
    print(format_table(summary), file=file or sys.stdout)
