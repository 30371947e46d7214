"""Reports rebuilt from the per-episode JSONL alone: per task, per suite and the average, laid out like ZipMo's
Table 2 (10 / 90 / Spatial / Goal / Object / Avg), with mean +- std (ddof = 1) over seeds, 95 % Wilson
intervals on pooled episodes (scipy), exact McNemar comparisons of two runs on identical cells, published
numbers (PROTOCOLS.md §6) beside ours when the protocol matches, markdown, CSV, a PNG chart and an HTML page
of the failed episodes with their videos.

Rates: a suite's rate is the plain mean over its tasks (ATM/ZipMo), per seed; the average is the plain mean
over suites. Episodes still in `error` are excluded (each rate says how many cells it covers) unless
`errors_as_failures`.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zipmo_robot.eval import reports
from zipmo_robot.eval.engine import CELLS_FILE

from zipmo_robot.files import atomic_write_text

COLUMNS: tuple[tuple[str, str], ...] = (
    ("libero_10", "10"),
    ("libero_90", "90"),
    ("libero_spatial", "Spatial"),
    ("libero_goal", "Goal"),
    ("libero_object", "Object"),
)

# tasks per suite in LIBERO's benchmark; a suite cell over fewer tasks says so (it is not the suite's rate)
SUITE_TASKS: dict[str, int] = {"libero_10": 10, "libero_90": 90, "libero_spatial": 10, "libero_goal": 10,
                               "libero_object": 10}  # fmt: skip

# PROTOCOLS.md §6.1/§6.2 (ZipMo Table 2 and supplement Table F), success rates in %: (mean, std or None);
# None = "-" (not evaluated). Shown beside runs of the matching preset only.
_ZIPMO_ATM = {"libero_10": (66.3, 4.0), "libero_90": (62.3, 0.4), "libero_spatial": (91.3, 0.6),
              "libero_goal": (69.7, 2.5), "libero_object": (98.0, 2.6), "avg": (77.5, 1.8)}  # fmt: skip
_ZIPMO_TRAMOE = {"libero_10": (61.0, 1.7), "libero_90": None, "libero_spatial": (85.7, 2.1),
                 "libero_goal": (82.3, 3.5), "libero_object": (92.0, 2.0), "avg": (80.3, 1.4)}  # fmt: skip
_ATM = {"libero_10": (39.3, None), "libero_90": (48.4, None), "libero_spatial": (68.5, None),
        "libero_goal": (77.8, None), "libero_object": (68.0, None), "avg": (60.4, None)}  # fmt: skip
_TRAMOE = {"libero_10": (28.5, None), "libero_90": None, "libero_spatial": (62.5, None),
           "libero_goal": (81.0, None), "libero_object": (73.5, None), "avg": (61.4, None)}  # fmt: skip
PUBLISHED: dict[str, list[tuple[str, dict]]] = {
    "zipmo_release": [("ZipMo, ATM setup (Table F)", _ZIPMO_ATM), ("ZipMo, Tra-MoE setup (Table F)", _ZIPMO_TRAMOE)],
    "atm": [("ATM (ZipMo Table 2)", _ATM), ("ZipMo (Table F)", _ZIPMO_ATM)],
    "tramoe": [("Tra-MoE (ZipMo Table 2)", _TRAMOE), ("ZipMo (Table F)", _ZIPMO_TRAMOE)],
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Statistics (scipy's maintained implementations)
# ---------------------------------------------------------------------------------------------------------


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """95 % Wilson score interval of a binomial proportion (scipy `binomtest(...).proportion_ci`)."""
    if n == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; None with fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A only) and c (B only): a binomial test
    of b against Binomial(b + c, 1/2); 1.0 when there is no discordant pair."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


# ---------------------------------------------------------------------------------------------------------
# Loading and merging
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The merged records of one run folder (all rank files) and what the merge found."""

    dirs: list[Path]
    records: dict[tuple, dict]  # cell key -> latest record (success, failure or error)
    planned: set[tuple] = field(default_factory=set)
    duplicates: list[tuple] = field(default_factory=list)  # cells with a finished record in several places
    missing: list[tuple] = field(default_factory=list)  # planned cells with no record
    stamp: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.stamp.get("protocol", "?"))


def load_run(dirs: list[Path]) -> Run:
    """Merge every `results*.jsonl` of `dirs`; finished records of one cell in two files (or twice in one)
    are duplicates (the later one is kept); planned cells (cells.json) without a record are missing."""
    from zipmo_robot.errors import UserError

    records: dict[tuple, dict] = {}
    finished_at: dict[tuple, list[str]] = defaultdict(list)
    planned: set[tuple] = set()
    stamp: dict[str, Any] = {}
    files = [p for d in dirs for p in sorted(Path(d).glob("results*.jsonl"))]
    if not files:
        raise UserError(f"no results*.jsonl in {', '.join(map(str, dirs))}: not an eval or rollout folder")
    for path in files:
        for r in reports.read_results(path):
            key = reports.episode_key(r)
            if r["status"] != "error":
                finished_at[key].append(path.name)
            prev = records.get(key)
            if prev is None or prev["status"] == "error" or r["status"] != "error":
                records[key] = r
            stamp = stamp or {k: r.get(k) for k in ("protocol", "protocol_preset", "protocol_hash", "policy",
                                                    "errors_as_failures", "protocol_overrides")}  # fmt: skip
    for d in dirs:
        cells_file = Path(d) / CELLS_FILE
        if cells_file.is_file():
            planned |= {tuple(k) for k in json.loads(cells_file.read_text())["cells"]}
    dup = sorted((k for k, where in finished_at.items() if len(where) > 1), key=str)
    missing = sorted(planned - set(records), key=str)
    return Run(list(map(Path, dirs)), records, planned, dup, missing, stamp)


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


def _outcome(r: dict, errors_as_failures: bool) -> int | None:
    if r["status"] == "error":
        return 0 if errors_as_failures else None
    return int(r["status"] == "success")


def summarize_run(run: Run, errors_as_failures: bool) -> dict[str, Any]:
    """Per task, per suite and average: per-seed rates, mean +- std over seeds, pooled Wilson intervals."""
    by_task: dict[tuple[str, int], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    errors: dict[tuple[str, int], int] = defaultdict(int)
    language: dict[tuple[str, int], str] = {}
    for (suite, task, seed, _), r in sorted(run.records.items(), key=lambda kv: str(kv[0])):
        o = _outcome(r, errors_as_failures)
        language[(suite, task)] = r.get("task_language", "")
        if o is None:
            errors[(suite, task)] += 1
            continue
        by_task[(suite, task)][seed].append(o)
    tasks = []
    for key in sorted(set(by_task) | set(errors)):
        seeds = by_task.get(key, {})
        pooled = [o for v in seeds.values() for o in v]
        per_seed = {s: statistics.fmean(v) for s, v in sorted(seeds.items()) if v}
        m, sd = mean_std(list(per_seed.values()))
        tasks.append({
            "suite": key[0], "task_id": key[1], "task_language": language.get(key, ""),
            "successes": sum(pooled), "episodes": len(pooled), "errors": errors.get(key, 0),
            "rate": sum(pooled) / len(pooled) if pooled else None, "per_seed": per_seed,
            "mean": m, "std": sd, "wilson": wilson(sum(pooled), len(pooled)),
        })  # fmt: skip
    suites = {}
    all_seeds = sorted({s for t in tasks for s in t["per_seed"]})
    for suite, _ in COLUMNS:
        ts = [t for t in tasks if t["suite"] == suite]
        if not ts:
            continue
        per_seed = {}
        for s in all_seeds:
            vals = [t["per_seed"][s] for t in ts if s in t["per_seed"]]
            if vals:
                per_seed[s] = statistics.fmean(vals)
        k, n = sum(t["successes"] for t in ts), sum(t["episodes"] for t in ts)
        m, sd = mean_std(list(per_seed.values()))
        suites[suite] = {"per_seed": per_seed, "mean": m, "std": sd, "successes": k, "episodes": n,
                         "errors": sum(t["errors"] for t in ts), "tasks": len(ts), "wilson": wilson(k, n)}  # fmt: skip
    avg_seed = {}
    for s in all_seeds:
        vals = [v["per_seed"][s] for v in suites.values() if s in v["per_seed"]]
        if vals:
            avg_seed[s] = statistics.fmean(vals)
    k, n = sum(v["successes"] for v in suites.values()), sum(v["episodes"] for v in suites.values())
    m, sd = mean_std(list(avg_seed.values()))
    avg = {"per_seed": avg_seed, "mean": m, "std": sd, "successes": k, "episodes": n,
           "errors": sum(v["errors"] for v in suites.values()), "wilson": wilson(k, n)}  # fmt: skip
    return {"tasks": tasks, "suites": suites, "avg": avg, "seeds": all_seeds}


def _pct(m: float | None, sd: float | None = None) -> str:
    if m is None:
        return "–"
    return f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _ci(w: tuple[float, float] | None) -> str:
    return "–" if w is None else f"[{100 * w[0]:.1f}, {100 * w[1]:.1f}]"


def table2_markdown(label: str, s: dict[str, Any], published: list[tuple[str, dict]]) -> str:
    """The Table 2 layout: one row per source, columns 10 / 90 / Spatial / Goal / Object / Avg."""
    head = "| Model | " + " | ".join(c for _, c in COLUMNS) + " | Avg. |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]

    partial = {k for k, v in s["suites"].items() if v["tasks"] < SUITE_TASKS.get(k, 0)}

    def cell(k: str) -> str:
        if k not in s["suites"]:
            return "–"
        v = s["suites"][k]
        part = f" ({v['tasks']} of {SUITE_TASKS[k]} tasks)" if k in partial else ""
        return _pct(v["mean"], v["std"]) + part

    cells = [cell(k) for k, _ in COLUMNS]
    avg = _pct(s["avg"]["mean"], s["avg"]["std"]) + (" (partial suites)" if partial else "")
    lines.append(f"| **ours** ({label}) | " + " | ".join(cells) + f" | {avg} |")
    ci = [_ci(s["suites"][k]["wilson"]) if k in s["suites"] else "–" for k, _ in COLUMNS]
    lines.append("| ours: 95 % Wilson, pooled | " + " | ".join(ci) + f" | {_ci(s['avg']['wilson'])} |")
    n = [f"{s['suites'][k]['episodes']} ({s['suites'][k]['errors']} err)" if k in s["suites"] else "–"
         for k, _ in COLUMNS]  # fmt: skip
    lines.append("| ours: episodes counted | " + " | ".join(n) + f" | {s['avg']['episodes']} |")
    for name, row in published:
        vals = []
        for key in [k for k, _ in COLUMNS] + ["avg"]:
            v = row.get(key)
            vals.append("–" if v is None else f"{v[0]:.1f}" + (f" ± {v[1]:.1f}" if v[1] is not None else ""))
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def tasks_markdown(s: dict[str, Any]) -> str:
    lines = ["| suite | task | success / episodes | rate % | mean ± std over seeds | 95 % Wilson | errors |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in s["tasks"]:
        lines.append(
            f"| {t['suite']} | {t['task_id']} | {t['successes']} / {t['episodes']} | {_pct(t['rate'])} | "
            f"{_pct(t['mean'], t['std'])} | {_ci(t['wilson'])} | {t['errors']} |"
        )
    return "\n".join(lines)


def tasks_csv(s: dict[str, Any], label: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["protocol", "level", "suite", "task_id", "successes", "episodes", "errors", "rate",
                "mean_over_seeds", "std_over_seeds", "wilson_low", "wilson_high", "seeds"])  # fmt: skip

    def row(level: str, suite: str, task: Any, d: dict) -> None:
        wl = d["wilson"] or (None, None)
        rate = d["successes"] / d["episodes"] if d["episodes"] else None
        w.writerow([label, level, suite, task, d["successes"], d["episodes"], d["errors"], rate, d["mean"],
                    d["std"], wl[0], wl[1], " ".join(map(str, sorted(d["per_seed"])))])  # fmt: skip

    for t in s["tasks"]:
        row("task", t["suite"], t["task_id"], t)
    for suite, d in s["suites"].items():
        row("suite", suite, "", d)
    row("average", "", "", s["avg"])
    return buf.getvalue()


def chart(s: dict[str, Any], path: Path, title: str) -> None:
    """PNG: per-task pooled success with 95 % Wilson intervals, grouped by suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = s["tasks"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(tasks) + 1.5), 3.2))
    xs = list(range(len(tasks)))
    rates = [100 * (t["rate"] or 0.0) for t in tasks]
    lo = [100 * ((t["rate"] or 0.0) - (t["wilson"] or (0.0, 0.0))[0]) for t in tasks]
    hi = [100 * ((t["wilson"] or (0.0, 0.0))[1] - (t["rate"] or 0.0)) for t in tasks]
    colours = {k: f"C{i}" for i, (k, _) in enumerate(COLUMNS)}
    ax.bar(xs, rates, color=[colours.get(t["suite"], "C7") for t in tasks], yerr=[lo, hi], capsize=2)
    ax.set_xticks(xs, [f"{dict(COLUMNS).get(t['suite'], t['suite'])}:{t['task_id']}" for t in tasks],
                  rotation=90, fontsize=6)  # fmt: skip
    ax.set_ylim(0, 100)
    ax.set_ylabel("success % (95 % Wilson)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def failures_html(run: Run, out_dir: Path, errors_as_failures: bool) -> str:
    """An HTML page listing failed and error episodes; a video is linked only if its file exists."""
    rows = []
    for key, r in sorted(run.records.items(), key=lambda kv: str(kv[0])):
        if r["status"] == "success":
            continue
        video = ""
        for d in run.dirs:
            if r.get("video") and (d / r["video"]).is_file():
                rel = os.path.relpath(d / r["video"], out_dir)
                video = f'<video src="{html.escape(rel)}" controls width="360"></video>'
                break
        err = "; ".join(e.get("message", "") for e in r.get("errors", []))
        rows.append(
            f"<tr><td>{html.escape(r['suite'])}</td><td>{r['task_id']}</td><td>{key[2]}</td>"
            f"<td>{r['episode_index']}</td><td>{r.get('init_state_id')}</td><td>{r['status']}</td>"
            f"<td>{r.get('steps')}</td><td>{html.escape(r.get('task_language', ''))}</td>"
            f"<td>{html.escape(err)}</td><td>{video or '(no video recorded)'}</td></tr>"
        )
    title = html.escape(f"{run.label}: failed episodes")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1><p>{len(rows)} episodes; errors {'counted as failures' if errors_as_failures else 'excluded from rates'}.</p>"
        "<table border='1'><tr><th>suite</th><th>task</th><th>seed</th><th>episode</th><th>init state</th>"
        "<th>status</th><th>steps</th><th>instruction</th><th>error</th><th>video</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )  # fmt: skip


def compare(a: Run, b: Run, errors_as_failures: bool) -> dict[str, Any]:
    """Paired comparison on the cells both runs finished: discordant counts and the exact McNemar p-value."""
    common = sorted(set(a.records) & set(b.records), key=str)
    pairs = [
        (_outcome(a.records[k], errors_as_failures), _outcome(b.records[k], errors_as_failures))
        for k in common
    ]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    only_a = sum(1 for x, y in pairs if x and not y)
    only_b = sum(1 for x, y in pairs if y and not x)
    return {
        "cells": len(pairs),
        "a_rate": sum(x for x, _ in pairs) / len(pairs) if pairs else None,
        "b_rate": sum(y for _, y in pairs) / len(pairs) if pairs else None,
        "only_a": only_a,
        "only_b": only_b,
        "p_value": mcnemar_exact(only_a, only_b),
    }  # fmt: skip


def write_report(
    dirs: list[Path], *, errors_as_failures: bool | None = None, out: Path | None = None, merge: bool = True
) -> dict[str, Any]:
    """Build the report of `dirs` (merged as one run, or one run each with `merge=False`, the first compared
    with the others) and write report.md, report.csv, report.png and failures.html into `out` (default: the
    first folder). Returns {"markdown", "out", "summary", ...}."""
    runs = [load_run([Path(d) for d in dirs])] if merge else [load_run([Path(d)]) for d in dirs]
    out = Path(out or dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    summaries = []
    for i, run in enumerate(runs):
        eaf = bool(run.stamp.get("errors_as_failures")) if errors_as_failures is None else errors_as_failures
        s = summarize_run(run, eaf)
        summaries.append(s)
        preset = run.stamp.get("protocol_preset") or run.label
        published = PUBLISHED.get(run.label, [])  # "<preset>+overrides" never matches a preset
        name = ", ".join(str(d) for d in run.dirs)
        parts.append(f"## {run.label} — {run.stamp.get('policy')} ({name})\n")
        parts.append(
            f"Seeds: {', '.join(map(str, s['seeds'])) or '–'}. Suite = mean over its tasks, Avg = mean over "
            f"suites; ± = std over seeds (ddof 1). Errors {'count as failures' if eaf else 'are excluded'} "
            f"({s['avg']['errors']} cells in error)."
        )
        overrides = run.stamp.get("protocol_overrides") or {}
        if overrides:
            parts.append(
                f"Protocol knobs changed from `{preset}`: "
                + ", ".join(f"`{k}={v}`" for k, v in overrides.items())
            )
        if run.duplicates or run.missing:
            parts.append(
                f"Merge: {len(run.duplicates)} duplicate cell(s) (kept the last) {run.duplicates[:5]}, "
                f"{len(run.missing)} missing cell(s) {run.missing[:5]}."
            )
        parts.append("\n" + table2_markdown(run.label, s, published) + "\n")
        parts.append(tasks_markdown(s) + "\n")
        if i == 0:
            atomic_write_text(out / "report.csv", tasks_csv(s, run.label))
            chart(s, out / "report.png", f"{run.label} — {run.stamp.get('policy')}")
            atomic_write_text(out / "failures.html", failures_html(run, out, eaf))
    comparisons = []
    eaf0 = bool(errors_as_failures)
    for other in runs[1:]:
        cmp = compare(runs[0], other, eaf0)
        comparisons.append(cmp)
        parts.append(
            f"## Paired comparison: {runs[0].dirs[0]} vs {other.dirs[0]}\n\n{cmp['cells']} identical cells; "
            f"success {_pct(cmp['a_rate'])} vs {_pct(cmp['b_rate'])} %; discordant: {cmp['only_a']} only in the "
            f"first, {cmp['only_b']} only in the second; exact McNemar p = {cmp['p_value']:.4g}.\n"
        )
    markdown = "\n".join(parts)
    atomic_write_text(out / "report.md", markdown + "\n")
    return {
        "markdown": markdown,
        "out": str(out),
        "summaries": summaries,
        "runs": runs,
        "comparisons": comparisons,
    }
