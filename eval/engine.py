"""The evaluation engine behind `zipmo-robot eval` and `zipmo-robot rollout`: cells (suite, task, seed, episode)
under one protocol, run by one `VectorRunner`, recorded as they finish, resumable, shardable by rank.

A *cell* is one episode: `(suite, task_id, seed, episode_index)`, where `seed` is the seed axis (the protocol's
seed: init-state draw, env seed and policy noise; or, with several checkpoints, the training seed each
checkpoint stands for). Cells are served by *policy groups*: one policy instance per group, one batched
`act` call over every active env of its group, across tasks and suites (`shared` protocols put everything in
one group; `per_suite` protocols such as Tra-MoE build one group per suite; several checkpoints build one
group per checkpoint). Groups run one after another on the same worker processes.

Files: `results.jsonl` (or `results.rank<r>-of-<w>.jsonl` under a launcher that sets RANK/WORLD_SIZE: cells are
split by rank), `cells.json` (every planned cell: what the report checks for missing and duplicate cells),
`config.yaml`, `summary.json` and `videos/`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zipmo_robot.eval import reports
from zipmo_robot.eval.protocols import ProtocolConfig, env_seed, episode_seed, init_state_for, official_reset

from zipmo_robot.errors import UserError

CELLS_FILE = "cells.json"


@dataclass(frozen=True, order=True)
class Cell:
    """One episode of an evaluation: what a result is keyed by."""

    suite: str
    task_id: int
    seed: int
    episode_index: int

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.suite, self.task_id, self.seed, self.episode_index)


@dataclass
class PolicyGroup:
    """Cells served by one policy instance; `options` go to the policy builder (checkpoint, suite, ...)."""

    name: str
    cells: list[Cell]
    options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # what decides outcomes (hashed into records)

    @property
    def settings_hash(self) -> str:
        return reports.settings_hash(self.settings)


@dataclass
class Shard:
    """This process's share of the cells (RANK/WORLD_SIZE of torchrun or any launcher; 0/1 otherwise)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        try:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError as exc:
            raise UserError(f"RANK/WORLD_SIZE must be integers: {exc}") from None
        if world < 1 or not 0 <= rank < world:
            raise UserError(f"RANK={rank} WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
        return cls(rank, world)

    @property
    def results_name(self) -> str:
        if self.world_size == 1:
            return reports.RESULTS_FILE
        return f"results.rank{self.rank}-of-{self.world_size}.jsonl"

    def take(self, cells: list[Cell]) -> list[Cell]:
        """Round-robin split of the planned order: every rank gets tasks of every suite."""
        return cells[self.rank :: self.world_size]


def cell_episode(protocol: ProtocolConfig, cell: Cell) -> Any:
    """The runner work item of a cell: env config, init state, policy seed and env seed per the protocol."""
    from zipmo_robot.envs.runner import Episode

    reset_index, seeded_at = official_reset(protocol, cell.episode_index)  # the official worker's scene
    return Episode(
        env=protocol.env_config(cell.suite, cell.task_id),
        episode_index=cell.episode_index,
        init_state_id=init_state_for(protocol, cell.task_id, cell.episode_index, cell.seed),
        seed=episode_seed(protocol, cell.task_id, cell.episode_index, cell.seed),
        env_seed=env_seed(protocol, cell.task_id, cell.episode_index, cell.seed),
        reset_index=reset_index,
        seeded_at=seeded_at,
    )


def plan_cells(suites: list[str], tasks: dict[str, list[int]], seeds: list[int], episodes: int) -> list[Cell]:
    """Every cell, seed-major then suite, task, episode (so a partial run has whole seeds first)."""
    return [
        Cell(suite, task, seed, e)
        for seed in seeds
        for suite in suites
        for task in tasks[suite]
        for e in range(episodes)
    ]


@dataclass
class RunOptions:
    """How to run (never what the results are): workers, retries, timeouts, videos, output."""

    out: Path
    num_envs: int = 2
    retries: int = 2
    video: bool = True
    resume: bool = True
    assets: str | None = None
    runner: dict[str, Any] = field(default_factory=dict)
    shard: Shard = field(default_factory=Shard)
    quiet: bool = False

    @classmethod
    def from_config(cls, c: dict[str, Any], shard: Shard | None = None) -> RunOptions:
        """From a resolved rollout/eval config mapping (num_envs, retries, video, resume, assets, runner, out)."""
        return cls(
            out=Path(c["out"]),
            num_envs=int(c["num_envs"]),
            retries=int(c["retries"]),
            video=bool(c["video"]),
            resume=bool(c["resume"]),
            assets=c["assets"],
            runner=dict(c["runner"]),
            shard=shard or Shard(),
        )


def protocol_stamp(protocol: ProtocolConfig, policy: str, errors_as_failures: bool) -> dict[str, Any]:
    """What every record of a run says about its protocol: the label ("<preset>" or "<preset>+overrides"),
    the preset, the knob hash, the changed knobs, the policy and how errors are to be counted."""
    return {
        "protocol": protocol.label(),
        "protocol_preset": protocol.name,
        "protocol_hash": protocol.knob_hash(),
        "protocol_overrides": protocol.changed_knobs(),
        "policy": policy,
        "errors_as_failures": errors_as_failures,
    }


def _move_aside(paths: list[Path]) -> None:
    tag = time.strftime("%Y%m%d-%H%M%S")
    for p in paths:
        p.rename(p.with_name(f"{p.stem}.{tag}.old"))


def run_cells(
    protocol: ProtocolConfig,
    groups: list[PolicyGroup],
    build_policy: Callable[[PolicyGroup], Any],
    opts: RunOptions,
    stamp: dict[str, Any],
    *,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    episodes_override: dict[Cell, Any] | None = None,
    close_policies: bool = True,
) -> list[dict[str, Any]]:
    """Run this rank's unfinished cells of every group; returns the records of the planned cells (latest per
    cell, this rank's file only).

    `stamp` is written into every record (protocol label, knob hash, policy name, ...). A results file holding
    records of other settings is refused (or moved aside with `resume=False`). `episodes_override` replaces
    the work item of some cells (tests inject worker faults with it). `close_policies=False` leaves closing
    the built policies to the caller.
    """
    from zipmo_robot.envs.runner import VectorRunner
    from zipmo_robot.envs.setup import ensure_libero
    from zipmo_robot.envs.video import write_episode_video

    from zipmo_robot.files import atomic_write_text

    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / opts.shard.results_name
    hashes = {g.settings_hash for g in groups}
    if not opts.resume:
        old = [p for p in out.glob("results*.jsonl") if p.exists()]
        if old:
            _move_aside(old)
    foreign = set().union(*(reports.foreign_settings(p, hashes) for p in out.glob("results*.jsonl")))
    if foreign:
        raise UserError(
            f"{out} holds episodes run with other settings (hash {', '.join(sorted(foreign))}; this run is "
            f"{', '.join(sorted(hashes))}: protocol knobs, policy or its options differ). Use another --out, "
            "or add resume=false to start over (the old results are kept beside them)."
        )
    all_cells = sorted({c for g in groups for c in g.cells})
    atomic_write_text(
        out / CELLS_FILE,
        json.dumps({"cells": [list(c.key) for c in all_cells], "stamp": stamp}, default=str) + "\n",
    )

    mine = set(opts.shard.take([c for g in groups for c in g.cells]))
    done: dict[tuple, dict] = {}
    for p in sorted(out.glob("results*.jsonl")):  # any rank's finished cells count (a re-sharded rerun)
        for key, rec in reports.latest_records(reports.read_results(p)).items():
            if rec.get("settings_hash") in hashes and rec["status"] != "error":
                done[key] = rec
    n_mine = len(mine)
    todo_total = sum(1 for c in mine if c.key not in done)
    if todo_total < n_mine and not opts.quiet:
        print(f"resuming in {out}: {n_mine - todo_total} of {n_mine} episodes already recorded")
    if todo_total:
        ensure_libero(opts.assets)  # fail fast (missing assets) before any worker starts

    writer = reports.ResultsWriter(results_path)
    r = opts.runner
    runner = None
    try:
        for group in groups:
            todo = [c for c in group.cells if c in mine and c.key not in done]
            if not todo:
                continue
            episodes = {}
            for c in todo:
                ep = (episodes_override or {}).get(c) or cell_episode(protocol, c)
                episodes[id(ep)] = (c, ep)
            policy = build_policy(group)
            try:
                if runner is None:
                    runner = VectorRunner(
                        policy,
                        num_envs=min(int(opts.num_envs), todo_total),
                        retries=int(opts.retries),
                        start_method=r.get("start_method", "forkserver"),
                        reset_timeout=float(r.get("reset_timeout", 300.0)),
                        step_timeout=float(r.get("step_timeout", 60.0)),
                        recycle_episodes=r.get("recycle_episodes", 100),
                        recycle_rss_gb=r.get("recycle_rss_gb", 4.0),
                        lockstep=bool(r.get("lockstep", False)),
                        capture_frames=bool(opts.video),
                        progress=bool(r.get("progress", True)),
                        assets=opts.assets,
                    )
                runner.policy = policy  # the workers (and their built envs) carry over to the next group

                def on_result(result: Any, group: PolicyGroup = group, episodes: dict = episodes) -> None:
                    cell, _ = episodes[id(result.episode)]
                    record = {
                        **result.record,
                        "run_seed": cell.seed,
                        "policy_seed": result.record["seed"],
                        **stamp,
                        "policy_group": group.name,
                        "checkpoint": group.options.get("checkpoint"),
                        "settings_hash": group.settings_hash,
                        "rank": opts.shard.rank,
                        "world_size": opts.shard.world_size,
                    }
                    if result.frames:
                        path = write_episode_video(
                            out / "videos",
                            result.frames,
                            suite=record["suite"],
                            task_id=record["task_id"],
                            episode_index=record["episode_index"],
                            seed=record["seed"],
                            outcome=record["status"],
                        )
                        record["video"] = str(path.relative_to(out))
                    writer.append(record)
                    if on_record is not None:
                        on_record(record)

                runner.run([ep for _, ep in episodes.values()], on_result=on_result)
            finally:
                close = getattr(policy, "close", None)
                if close_policies and callable(close):
                    close()
    except BaseException:
        if runner is not None:
            runner.close(terminate=True)
        raise
    finally:
        writer.close()
    if runner is not None:
        runner.close()
    latest = reports.latest_records(reports.read_results(results_path), hashes)
    keys = {c.key for c in mine}
    return [rec for k, rec in latest.items() if k in keys]
