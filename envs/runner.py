"""Vectorised LIBERO runner: K worker processes, one batched policy call per step, faults contained.

Design (STYLE.md §4, after Gymnasium's `_async_worker`): each worker owns at most one `LiberoEnv`, built
lazily inside the worker (no GL context crosses a fork) and kept across episodes of the same `EnvConfig`
(soft reset); commands travel over a `Pipe` and every reply is `(payload, ok)`, errors returned as values.
The parent keeps a state per slot, a deadline on every wait, and never dies with a worker: a worker that
raises, dies or hangs marks only its episode `error`, is replaced by a fresh process, and the episode is retried
(`retries` times) before it is reported as `error` (never as a success or a failure).

Work items are episodes `(EnvConfig, episode_index, init_state_id, seed)`, plus the env seed and the place of
the episode in its official worker (`reset_index`, `seeded_at`), which fix the scene (envs/libero.py, "Scenes"):
an episode's first observation never depends on which worker runs it or what that worker ran before. An episode
ends at its first success (the env is frozen: no further steps) or after `EnvConfig.max_steps` policy steps.
"""

from __future__ import annotations

import enum
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
from zipmo_robot.envs.spec import EnvConfig
from zipmo_robot.policy.base import Policy, RowInfo

FAULT_KINDS: tuple[str, ...] = ("raise", "exit", "hang")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------------------------------------------------
# Work items and results
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """Fault injection for tests: the worker really raises, exits (`os._exit`) or hangs at a step.

    Args:
        kind: "raise" (an exception inside `step`), "exit" (the process dies), "hang" (sleeps past the timeout).
        at_step: the policy step (0-based) at which the fault fires; -1 fires inside `reset`.
        attempts: fire only on the first `attempts` attempts of the episode (None: on every attempt).
    """

    kind: str
    at_step: int = 0
    attempts: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; valid: {', '.join(FAULT_KINDS)}")


@dataclass(frozen=True)
class Episode:
    """One work item: which task, which init state, which seed."""

    env: EnvConfig
    episode_index: int
    init_state_id: int
    seed: int  # the policy's per-row seed (RowInfo.seed)
    fault: Fault | None = None  # tests only
    env_seed: int | None = None  # seed of `LiberoEnv.reset` (scene layout); None: same as `seed`
    reset_index: int = 0  # resets the protocol's official worker did before this episode (scene layout)
    seeded_at: int = 0  # that worker's reset before which it called env.seed (0: once, after construction)

    @property
    def reset_seed(self) -> int:
        return self.seed if self.env_seed is None else self.env_seed

    @property
    def scene_options(self) -> dict[str, int]:
        """The `LiberoEnv.reset` options that place the official worker's scene."""
        return {"reset_index": self.reset_index, "seeded_at": self.seeded_at}

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.env.suite, self.env.task_id, self.episode_index)


@dataclass
class EpisodeResult:
    """What the runner reports per finished episode; `record` is the JSON-ready part."""

    episode: Episode
    record: dict[str, Any]
    frames: list[tuple[np.ndarray, ...]] | None = None  # per step, one (H, W, 3) uint8 image per camera


class SlotState(enum.Enum):
    """What a slot's worker is doing (the parent's view)."""

    IDLE = "idle"  # no episode
    WAITING_RESET = "waiting_reset"
    READY = "ready"  # has an observation, waits for an action
    WAITING_STEP = "waiting_step"


class WorkerError(RuntimeError):
    """A worker failed: raised, died or timed out (carried as a value, never raised out of `run`)."""


# ---------------------------------------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _same_env(a: EnvConfig, b: EnvConfig) -> bool:
    """Whether two configs build the same env (they may differ in `max_steps`, which only the loop reads)."""
    return replace(a, max_steps=1) == replace(b, max_steps=1)


def _fire(fault: dict | None, step: int) -> None:
    """Carry out an injected fault if it is due at `step`."""
    if fault is None or fault["at_step"] != step:
        return
    if fault["kind"] == "raise":
        raise RuntimeError(f"injected fault at step {step}")
    if fault["kind"] == "exit":
        os._exit(17)
    if fault["kind"] == "hang":
        time.sleep(10**6)


def _worker(index: int, pipe: Connection, parent_pipe: Connection, assets: str | None) -> None:
    """Worker loop: `(command, data)` in, `(payload, ok)` out; the env is closed in `finally`.

    Commands: "reset" (EnvConfig, init_state_id, seed, scene options, fault) -> (obs, seconds, env_rebuilt,
    rss_bytes);
    "step" action (7,) -> (obs, reward, success, step_seconds, rss_bytes); "ping" -> rss_bytes;
    "close" -> None. Ctrl-C is left to the parent, which closes or kills its workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_pipe.close()
    env = None
    env_cfg: EnvConfig | None = None
    fault: dict | None = None
    step = 0
    try:
        while True:
            try:
                command, data = pipe.recv()
            except (EOFError, KeyboardInterrupt):
                break
            try:
                if command == "reset":
                    cfg, init_state_id, seed, scene, fault = data
                    t0 = time.perf_counter()
                    if env is not None and cfg != env_cfg:
                        if _same_env(cfg, env_cfg):  # only the step cap differs: keep the built env
                            env.cfg = env_cfg = cfg
                        else:
                            env.close()
                            env = None
                    rebuilt = env is None
                    if env is None:
                        from zipmo_robot.envs.libero import LiberoEnv

                        env = LiberoEnv(cfg, assets=assets)
                        env_cfg = cfg
                    _fire(fault, -1)
                    obs, _info = env.reset(seed=seed, options={"init_state_id": init_state_id, **scene})
                    step = 0
                    pipe.send(((obs, time.perf_counter() - t0, rebuilt, _rss_bytes()), True))
                elif command == "step":
                    _fire(fault, step)
                    t0 = time.perf_counter()
                    obs, reward, _terminated, _truncated, info = env.step(data)
                    dt = time.perf_counter() - t0
                    step += 1
                    success = bool(info.get("success", _terminated))
                    pipe.send(((obs, float(reward), success, dt, _rss_bytes()), True))
                elif command == "ping":
                    pipe.send((_rss_bytes(), True))
                elif command == "close":
                    pipe.send((None, True))
                    break
                else:
                    raise ValueError(f"unknown command {command!r}; valid: reset, step, ping, close")
            except Exception as exc:  # returned as a value: the parent records the episode as `error`
                pipe.send(
                    (
                        {
                            "worker": index,
                            "type": type(exc).__name__,
                            "message": str(exc),
                            "traceback": traceback.format_exc(),
                        },
                        False,
                    )
                )
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:
                pass
        pipe.close()


# ---------------------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Active:
    """Book-keeping of the episode running in a slot."""

    episode: Episode
    attempt: int
    language: str = ""
    obs: dict[str, Any] | None = None
    step: int = 0
    success: bool = False
    reward: float = 0.0
    t_start: float = field(default_factory=time.perf_counter)
    t_first_step: float | None = None
    first_step_at: float | None = None  # wall clock (time.time) of the first policy step
    reset_s: float = 0.0
    env_step_s: float = 0.0
    policy_s: float = 0.0
    rebuilt: bool = False
    frames: list[tuple[np.ndarray, ...]] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


class _Worker:
    """One worker process and its pipe; started lazily, replaced after a failure or when recycled."""

    def __init__(self, ctx: Any, index: int, assets: str | None) -> None:
        self.index = index
        self.pipe, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker, args=(index, child, self.pipe, assets), name=f"zipmo-env-{index}", daemon=True
        )
        self.process.start()
        child.close()
        self.episodes = 0
        self.rss = 0

    def close(self, terminate: bool = False, timeout: float = 10.0) -> None:
        """Ask the worker to close its env and exit; kill it if it does not within `timeout` (or at once)."""
        if not terminate and self.process.is_alive():
            try:
                self.pipe.send(("close", None))
                if self.pipe.poll(timeout):
                    self.pipe.recv()
            except (OSError, EOFError, BrokenPipeError):
                pass
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.pipe.close()


class VectorRunner:
    """Run episodes over `num_envs` worker processes with one batched `policy.act` per step.

    Args:
        policy: a `policy.base.Policy`; `act(obs, rows)` receives only the active slots' rows.
        num_envs: worker processes (each holds one env, 2-3 GB).
        retries: how often an `error` episode is retried (in a fresh worker) before it is reported as `error`.
        start_method: "forkserver" or "spawn" (never "fork": MuJoCo/GL state must not cross a fork).
        reset_timeout: seconds a reset may take (it may construct an env: 4-20 s here).
        step_timeout: seconds one env step may take.
        recycle_episodes: replace a worker after this many episodes (None: never).
        recycle_rss_gb: replace a worker whose resident memory exceeds this (None: never).
        lockstep: wait for resetting slots before acting, so every active slot is in every batch (bigger
            batches for a GPU policy; slots stall while one builds its env). Default: act on whatever is ready.
        capture_frames: keep every observation's camera images for videos.
        progress: show a tqdm bar with the running success rate and ETA.
        assets: LIBERO asset folder, passed to `LiberoEnv` (hence `envs.setup.ensure_libero`) in each worker.
        cameras_for_video: cameras captured for videos (default: the episode's `EnvConfig.cameras`).
    """

    def __init__(
        self,
        policy: Any,
        num_envs: int = 1,
        *,
        retries: int = 2,
        start_method: str = "forkserver",
        reset_timeout: float = 300.0,
        step_timeout: float = 60.0,
        recycle_episodes: int | None = 100,
        recycle_rss_gb: float | None = 4.0,
        lockstep: bool = False,
        capture_frames: bool = False,
        progress: bool = True,
        assets: str | None = None,
        cameras_for_video: Sequence[str] | None = None,
    ) -> None:
        if num_envs <= 0:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(
                f"start_method must be 'forkserver' or 'spawn' (never 'fork'), got {start_method!r}"
            )
        if not isinstance(policy, Policy):
            raise TypeError(
                f"{type(policy).__name__} does not implement the Policy protocol (policy/base.py): subclass "
                "Policy and define reset(seed) and act(obs, rows); the hooks overlay_views and episode_info "
                "have defaults"
            )
        self.policy = policy
        self.num_envs = num_envs
        self.retries = retries
        self.reset_timeout = reset_timeout
        self.step_timeout = step_timeout
        self.recycle_episodes = recycle_episodes
        self.recycle_rss = None if recycle_rss_gb is None else recycle_rss_gb * 2**30
        self.capture_frames = capture_frames
        self.lockstep = lockstep
        self.progress = progress
        self.assets = assets
        self.cameras_for_video = cameras_for_video
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker | None] = [None] * num_envs
        self._states = [SlotState.IDLE] * num_envs
        self._deadlines = [float("inf")] * num_envs
        self.n_worker_starts = 0
        self._closed = False

    # -- worker management -------------------------------------------------------------------------------

    def _get_worker(self, slot: int) -> _Worker:
        w = self._workers[slot]
        if w is None or not w.process.is_alive():
            if w is not None:
                w.close(terminate=True)
            w = _Worker(self._ctx, slot, self.assets)
            self._workers[slot] = w
            self.n_worker_starts += 1
        return w

    def _restart(self, slot: int) -> None:
        """Kill the slot's worker (after an error); a fresh one starts at the slot's next episode."""
        w = self._workers[slot]
        if w is not None:
            w.close(terminate=True)
        self._workers[slot] = None
        self._states[slot] = SlotState.IDLE

    def _maybe_recycle(self, slot: int) -> None:
        w = self._workers[slot]
        if w is None:
            return
        too_many = self.recycle_episodes is not None and w.episodes >= self.recycle_episodes
        too_big = self.recycle_rss is not None and w.rss > self.recycle_rss
        if too_many or too_big:
            w.close()
            self._workers[slot] = None

    def close(self, terminate: bool = False) -> None:
        """Close every worker (cleanly, or kill at once with `terminate=True`)."""
        for slot, w in enumerate(self._workers):
            if w is not None:
                w.close(terminate=terminate)
            self._workers[slot] = None
        self._closed = True

    def __enter__(self) -> VectorRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(terminate=exc[0] is not None)

    # -- the run loop -------------------------------------------------------------------------------------

    def _send(self, slot: int, command: str, data: Any, state: SlotState, timeout: float) -> None:
        w = self._get_worker(slot)
        self._states[slot] = state
        self._deadlines[slot] = time.monotonic() + timeout
        w.pipe.send((command, data))

    def _receive(self, slot: int) -> tuple[Any, bool]:
        """A reply, or an error dict (`ok=False`) when the worker died or its pipe broke."""
        w = self._workers[slot]
        try:
            return w.pipe.recv()
        except (EOFError, OSError) as exc:
            w.process.join(1.0)
            code = w.process.exitcode
            return (
                {
                    "worker": slot,
                    "type": "WorkerDied",
                    "message": f"worker process exited (exit code {code}) while {self._states[slot].value}",
                    "traceback": repr(exc),
                },
                False,
            )

    def run(
        self,
        episodes: Sequence[Episode],
        on_result: Callable[[EpisodeResult], None] | None = None,
    ) -> list[EpisodeResult]:
        """Run every episode; `on_result` is called as each one finishes (after its retries).

        Returns the results in completion order. A policy exception ends the run (workers killed); results
        already passed to `on_result` stay written.
        """
        if self._closed:
            raise RuntimeError("this VectorRunner is closed; create a new one")
        from tqdm.auto import tqdm

        self._queue = deque((ep, 0, []) for ep in episodes)
        self._active = [None] * self.num_envs
        self._retry = [None] * self.num_envs
        self._results = []
        self._counts = {"success": 0, "failure": 0, "error": 0}
        self._on_result = on_result
        # The bar counts env steps against the step budget (sum of caps) so it moves inside long episodes;
        # an episode that ends early adds its unused budget, so the ETA is an upper bound.
        self._n_episodes = len(episodes)
        self._bar = tqdm(
            total=sum(ep.env.max_steps for ep in episodes),
            desc="env steps",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            self.policy.reset(seed=None)
            while self._queue or any(a is not None for a in self._active + self._retry):
                self._start_episodes()
                self._gather()
                self._act()
        except BaseException:
            self.close(terminate=True)
            raise
        finally:
            self._bar.close()
        return self._results

    # 1. idle slots take the next episode and start resetting.
    def _start_episodes(self) -> None:
        for slot in range(self.num_envs):
            if self._active[slot] is not None:
                continue
            if self._retry[slot] is not None:  # a retry runs in the fresh worker of the slot that failed
                ep, attempt, errors = self._retry[slot]
                self._retry[slot] = None
            elif self._queue:
                ep, attempt, errors = self._queue.popleft()
            else:
                continue
            a = _Active(ep, attempt, errors=list(errors))
            a.frames = [] if self.capture_frames else None
            self._active[slot] = a
            fault = None
            if ep.fault is not None and (ep.fault.attempts is None or attempt < ep.fault.attempts):
                fault = {"kind": ep.fault.kind, "at_step": ep.fault.at_step}
            try:
                self._send(
                    slot,
                    "reset",
                    (ep.env, ep.init_state_id, ep.reset_seed, ep.scene_options, fault),
                    SlotState.WAITING_RESET,
                    self.reset_timeout,
                )
            except (OSError, BrokenPipeError) as exc:
                self._fail(
                    slot, {"type": "WorkerDied", "message": f"could not send reset: {exc}", "traceback": ""}
                )

    # 2. gather replies: every pending step, and whichever resets are done (block on resets only when
    #    no slot is stepping and none can act).
    def _gather(self) -> None:
        while True:
            stepping = self._slots(SlotState.WAITING_STEP)
            pending = stepping + self._slots(SlotState.WAITING_RESET)
            if not pending:
                return
            can_act = bool(self._slots(SlotState.READY))
            if not stepping and can_act and not self.lockstep:
                timeout = 0.0
            else:
                timeout = max(0.0, min(self._deadlines[s] for s in pending) - time.monotonic())
            waitables: dict[Any, int] = {}
            for s in pending:
                w = self._workers[s]
                waitables[w.pipe] = s
                waitables[w.process.sentinel] = s
            got = wait(list(waitables), timeout)
            handled: set[int] = set()
            for obj in got:
                slot = waitables[obj]
                if slot in handled:
                    continue
                handled.add(slot)
                payload, ok = self._receive(slot)
                self._on_reply(slot, payload, ok)
            now = time.monotonic()
            for s in pending:
                if s not in handled and now >= self._deadlines[s]:
                    what = "reset" if self._states[s] is SlotState.WAITING_RESET else "step"
                    limit = self.reset_timeout if what == "reset" else self.step_timeout
                    msg = f"worker did not answer {what} within {limit:.1f} s; killed and restarted"
                    self._fail(s, {"type": "Timeout", "message": msg, "traceback": ""})
            if timeout == 0.0 and not got:
                return
            if not self._slots(SlotState.WAITING_STEP) and self._slots(SlotState.READY):
                if not (self.lockstep and self._slots(SlotState.WAITING_RESET)):
                    return

    # 3. one batched policy call over the slots that have an observation.
    def _act(self) -> None:
        ready = self._slots(SlotState.READY)
        if not ready:
            return
        rows = [self._row(s) for s in ready]
        batch = stack_observations([self._active[s].obs for s in ready])
        t0 = time.perf_counter()
        actions = np.asarray(self.policy.act(batch, rows))
        dt = time.perf_counter() - t0
        if actions.shape != (len(ready), 7):
            raise ValueError(
                f"policy.act returned actions of shape {actions.shape}; expected ({len(ready)}, 7)"
            )
        if self.capture_frames:
            views = self.policy.overlay_views(batch, rows)  # per row: annotated camera images, or None
            for i, s in enumerate(ready):
                if views[i] is not None:
                    self._active[s].frames[-1] = tuple(views[i])
        for i, s in enumerate(ready):
            a = self._active[s]
            a.policy_s += dt / len(ready)
            if a.t_first_step is None:
                a.t_first_step = t0
                a.first_step_at = time.time()
            try:
                self._send(s, "step", actions[i], SlotState.WAITING_STEP, self.step_timeout)
            except (OSError, BrokenPipeError) as exc:
                self._fail(
                    s, {"type": "WorkerDied", "message": f"could not send step: {exc}", "traceback": ""}
                )

    def _slots(self, state: SlotState) -> list[int]:
        return [s for s in range(self.num_envs) if self._states[s] is state]

    def _row(self, slot: int) -> RowInfo:
        a = self._active[slot]
        ep = a.episode
        return RowInfo(
            slot=slot,
            suite=ep.env.suite,
            task_id=ep.env.task_id,
            task_language=a.language,
            episode_index=ep.episode_index,
            init_state_id=ep.init_state_id,
            seed=ep.seed,
            step=a.step,
            env_seed=ep.reset_seed,
            scene_options=ep.scene_options,
        )

    def _capture(self, a: _Active, obs: dict[str, Any]) -> None:
        if a.frames is None:
            return
        cams = self.cameras_for_video or a.episode.env.cameras
        views = tuple(np.asarray(obs[f"{c}_image"]) for c in cams if f"{c}_image" in obs)
        if views:
            a.frames.append(views)

    def _on_reply(self, slot: int, payload: Any, ok: bool) -> None:
        a = self._active[slot]
        if not ok:
            self._fail(slot, dict(payload))
            return
        w = self._workers[slot]
        if self._states[slot] is SlotState.WAITING_RESET:
            obs, reset_s, rebuilt, rss = payload
            w.rss = rss
            a.obs, a.reset_s, a.rebuilt = obs, reset_s, rebuilt
            a.language = str(obs.get("task_language", ""))
            self._capture(a, obs)
            self._states[slot] = SlotState.READY
            return
        obs, reward, success, dt, rss = payload
        w.rss = rss
        a.obs = obs
        a.step += 1
        a.reward += reward
        a.env_step_s += dt
        a.success = a.success or success
        self._bar.update(1)
        self._capture(a, obs)
        if a.success:
            self._finish(slot, "success")  # frozen: this env is not stepped again for the episode
        elif a.step >= a.episode.env.max_steps:
            self._finish(slot, "failure")
        else:
            self._states[slot] = SlotState.READY

    def _fail(self, slot: int, error: dict[str, Any]) -> None:
        a = self._active[slot]
        error.update(
            worker=slot,
            suite=a.episode.env.suite,
            task_id=a.episode.env.task_id,
            init_state_id=a.episode.init_state_id,
            episode_index=a.episode.episode_index,
            attempt=a.attempt,
            step=a.step,
        )
        self._finish(slot, "error", error)

    def _finish(self, slot: int, status: str, error: dict[str, Any] | None = None) -> None:
        a = self._active[slot]
        self._active[slot] = None
        ep = a.episode
        if status == "error":
            a.errors.append(error)
            self._restart(slot)
            if a.attempt < self.retries:
                self._retry[slot] = (ep, a.attempt + 1, a.errors)
                self._bar.total += a.step  # the retry steps again
                return
        else:
            self._states[slot] = SlotState.IDLE
            w = self._workers[slot]
            w.episodes += 1
            self._maybe_recycle(slot)
        now = time.perf_counter()
        record = {
            "suite": ep.env.suite,
            "task_id": ep.env.task_id,
            "task_language": a.language,
            "episode_index": ep.episode_index,
            "init_state_id": ep.init_state_id,
            "seed": ep.seed,
            "env_seed": ep.reset_seed,
            "reset_index": ep.reset_index,
            "seeded_at": ep.seeded_at,
            "status": status,
            "success": status == "success",
            "steps": a.step,
            "max_steps": ep.env.max_steps,
            "reward": a.reward,
            "attempts": a.attempt + 1,
            "errors": a.errors,
            "timing": {
                "wall_s": now - a.t_start,
                "reset_s": a.reset_s,
                "env_step_s": a.env_step_s,
                "policy_s": a.policy_s,
                "stepping_wall_s": (now - a.t_first_step) if a.t_first_step is not None else 0.0,
                "env_rebuilt": a.rebuilt,
                "first_step_at": a.first_step_at,
                "end_at": time.time(),
            },
            "worker": slot,
        }
        info = self.policy.episode_info(slot)  # e.g. per-stage policy timing
        if info:
            record["policy_info"] = info
        result = EpisodeResult(ep, record, a.frames)
        self._results.append(result)
        self._counts[status] += 1
        c = self._counts
        done = c["success"] + c["failure"]
        rate = f"{100.0 * c['success'] / done:.1f}%" if done else "-"
        self._bar.set_postfix_str(
            f"episodes {done + c['error']}/{self._n_episodes} success {c['success']}/{done} ({rate}) "
            f"errors {c['error']}"
        )
        self._bar.update(max(0, ep.env.max_steps - a.step))  # unused budget of this episode
        if self._on_result is not None:
            self._on_result(result)


def stack_observations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-env observation dicts into the batched format of `policy/base.py`.

    Arrays of equal shape are stacked on a new axis 0 (B, ...); strings and anything of unequal shape become
    lists of length B (so rows of different tasks can share a batch).
    """
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        first = values[0]
        if isinstance(first, np.ndarray | np.generic | int | float | bool) and not isinstance(first, str):
            arrays = [np.asarray(v) for v in values]
            if all(x.shape == arrays[0].shape for x in arrays):
                out[key] = np.stack(arrays)
                continue
        out[key] = values
    return out
