"""Preprocess LIBERO demonstration files into per-demo training files (`zipmo-robot preprocess`).

Per demo, one HDF5 file `<dst>/<suite>/<task name>/demo_<i>.hdf5` holding, in the protocol's orientation:
`agentview_rgb`, `eye_in_hand_rgb` (T, S, S, 3) uint8; `actions` (T, 7); `joint_states` (T, 7);
`gripper_states` (T, 2); `tracks/<camera>` (T, N, 2) float32 (y, x) in [-1, 1]; `visible/<camera>` (T, N)
bool; `query_frame/<camera>` (N,); `task_emb` (768,) when the BERT embedding is available; attributes
`language`, `suite`, `task_id`, `source`, `demo`, `settings` (JSON). Images come from the same renders as the
tracks (state replay, in the demo's own fixture layout when the file carries it), so frames and tracks agree
exactly; `collect` writes the same files in its own render pass. Per task, `<task name>/task.json` lists the demos
and the ATM split. Files appear atomically and are skipped when present with the same settings (idempotent,
resumable); demos run in parallel worker processes.
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zipmo_robot.data.hdf5 import DemoFileError, iter_demos, read_info, scan_files

CAMERA_KEY = {"agentview": "agentview_rgb", "robot0_eye_in_hand": "eye_in_hand_rgb"}


@dataclass(frozen=True)
class PreprocessSettings:
    """What a preprocessed file depends on (stored in it; a change re-processes)."""

    image_size: int = 128
    orientation: str = "flip_vertical"
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
    query_every: int = 16
    grid: int = 16
    n_random: int = 64
    seed: int = 0

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Job:
    """One demo to preprocess."""

    src: str
    demo: str
    dst: str
    suite: str
    task_id: int
    language: str
    task_emb: tuple[float, ...] | None
    settings: PreprocessSettings


def is_done(path: Path, settings: PreprocessSettings) -> bool:
    """Whether `path` is a complete preprocessed file made with `settings`."""
    import h5py

    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("settings") == settings.key() and all(
                f"tracks/{c}" in f for c in settings.cameras
            )
    except (OSError, ValueError):
        return False


_ENVS: dict[tuple, Any] = {}  # per worker process: one rendering env per task (closed at exit by LiberoEnv)
_DEFAULT_LAYOUT: dict[tuple, dict] = {}  # the env's own fixture layout, for demos that carry none


def _env_for(suite: str, task_id: int, settings: PreprocessSettings) -> Any:
    from zipmo_robot.data.collect import model_layout
    from zipmo_robot.envs.libero import LiberoEnv
    from zipmo_robot.envs.spec import EnvConfig

    key = (suite, task_id, settings.image_size, settings.cameras)
    if key not in _ENVS:
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
        _DEFAULT_LAYOUT.clear()
        cfg = EnvConfig(
            suite=suite,
            task_id=task_id,
            image_size=settings.image_size,
            cameras=settings.cameras,
            orientation="raw",
        )
        env = LiberoEnv(cfg)
        env.reset(options={"init_state_id": 0})
        _ENVS[key] = env
        _DEFAULT_LAYOUT[key] = model_layout(env.raw.env.sim)
    return _ENVS[key], _DEFAULT_LAYOUT[key]


def process_job(job: Job) -> tuple[str, str, int]:
    """Preprocess one demo; returns (demo, "ok"|"skipped"|error text, T). Never raises."""
    from zipmo_robot.data.collect import track_seed

    try:
        dst = Path(job.dst)
        if is_done(dst, job.settings):
            return job.demo, "skipped", 0
        demo = next(iter_demos(job.src, [job.demo], load_images=False))
        env, default_layout = _env_for(job.suite, job.task_id, job.settings)
        from zipmo_robot.data.replay import restore_layout
        from zipmo_robot.data.tracks import track_demo

        # the demo's own scene when it carries its fixture layout (collected here), else the env's
        restore_layout(env.raw.env.sim, demo.layout or default_layout)

        s = job.settings
        views = track_demo(
            env,
            demo.states,
            s.cameras,
            s.image_size,
            s.orientation,
            s.query_every,
            s.grid,
            s.n_random,
            seed=track_seed(s.seed, job.demo),
            keep_frames=True,
        )
        write_preprocessed(dst, job, demo, views)
        return job.demo, "ok", demo.length
    except Exception as exc:  # noqa: BLE001 - reported per demo, the run goes on
        detail = (
            str(exc)
            if isinstance(exc, DemoFileError)
            else "".join(traceback.format_exception_only(exc)).strip()
        )
        return job.demo, f"error: {detail}", 0


def write_preprocessed(dst: Path, job: Job, demo: Any, views: dict) -> None:
    """Write one training file (the format in the module docstring) atomically."""
    import h5py

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for cam, view in views.items():
                f.create_dataset(
                    CAMERA_KEY.get(cam, f"{cam}_rgb"),
                    data=view.frames,
                    chunks=(1, *view.frames.shape[1:]),
                    compression="gzip",
                    compression_opts=4,
                )
                f.create_dataset(f"tracks/{cam}", data=view.tracks.astype(np.float32), compression="gzip")
                f.create_dataset(f"visible/{cam}", data=view.visible, compression="gzip")
                f.create_dataset(f"query_frame/{cam}", data=view.query_frame)
            f.create_dataset("actions", data=demo.actions.astype(np.float32))
            for key in ("joint_states", "gripper_states"):
                if key in demo.obs:
                    f.create_dataset(key, data=demo.obs[key].astype(np.float32))
            if job.task_emb is not None:
                f.create_dataset("task_emb", data=np.asarray(job.task_emb, dtype=np.float32))
            f.attrs["language"] = job.language
            f.attrs["suite"] = job.suite
            f.attrs["task_id"] = job.task_id
            f.attrs["source"] = job.src
            f.attrs["demo"] = job.demo
            f.attrs["settings"] = job.settings.key()
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are shared
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_demo_files(src: Path) -> list[Path]:
    """All `*.hdf5` files under `src` (a folder) or `src` itself (a file), sorted."""
    if src.is_file():
        return [src]
    # hidden files and folders (partial writes, `collect`'s per-demo parts) are not inputs
    return sorted(
        p for p in src.rglob("*.hdf5") if not any(part.startswith(".") for part in p.relative_to(src).parts)
    )


def task_embedding(
    suite: str, language: str, text_model: str | None, embeddings_dir: str | None
) -> tuple[np.ndarray | None, str]:
    """BERT embedding of `language` via the shared cache, or (None, reason) when BERT is not available."""
    if text_model is None:
        return None, "skipped (--no-text)"
    from zipmo_robot.errors import UserError

    try:
        from zipmo_robot.models.text import TaskEmbeddingCache

        cache = TaskEmbeddingCache(embeddings_dir, model=text_model)
        return cache.get_one(suite, language), "ok"
    except UserError as exc:
        return None, str(exc).splitlines()[0]


def plan_jobs(
    files: list[Path],
    suite: str | None,
    dst: Path,
    settings: PreprocessSettings,
    text_model: str | None,
    embeddings_dir: str | None,
    log: Any = print,
) -> tuple[list[Job], list[tuple[Path, str]], dict[str, dict]]:
    """Validate files, resolve their tasks and embeddings; returns (jobs, bad files, per-task metadata)."""
    from zipmo_robot.data.collect import task_of_file
    from zipmo_robot.data.splits import split_demos
    from zipmo_robot.envs.suites import get_task

    good, bad = scan_files(files)
    jobs: list[Job] = []
    tasks: dict[str, dict] = {}
    embed_note_shown = False
    for info in good:
        try:
            file_suite, task_id = task_of_file(info)
        except Exception as exc:  # noqa: BLE001 - an unknown task is a bad file, not a crash
            bad.append((info.path, str(exc)))
            continue
        if suite is not None and file_suite != suite:
            continue
        task = get_task(file_suite, task_id)
        emb, status = task_embedding(file_suite, task.language, text_model, embeddings_dir)
        if emb is None and not embed_note_shown:
            log(
                f"note: task embeddings not stored ({status}); preprocess again with the BERT weights to add them"
            )
            embed_note_shown = True
        out_dir = dst / file_suite / task.name
        split = split_demos(info.demo_names, bc_demos=None)  # ATM: 45 train / 5 val of 50
        tasks[str(out_dir)] = {
            "suite": file_suite,
            "task_id": task_id,
            "task": task.name,
            "language": task.language,
            "source": str(info.path),
            "demos": info.demo_names,
            "train": list(split.train),
            "val": list(split.val),
            "bc_train_10": list(split.train[:10]),
            "task_emb": status,
            "settings": json.loads(settings.key()),
        }
        for name in info.demo_names:
            jobs.append(
                Job(
                    str(info.path),
                    name,
                    str(out_dir / f"{name}.hdf5"),
                    file_suite,
                    task_id,
                    task.language,
                    None if emb is None else tuple(float(v) for v in emb),
                    settings,
                )
            )
    return jobs, bad, tasks


def run_jobs(jobs: list[Job], workers: int, progress: Any = None) -> list[tuple[str, str, str, int]]:
    """Run jobs in `workers` spawned processes (1: in this process); returns (dst, demo, status, T) per job."""
    results = []
    if workers <= 1:
        for job in jobs:
            demo, status, length = process_job(job)
            results.append((job.dst, demo, status, length))
            if progress is not None:
                progress.update(1)
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Jobs of one task go to the same worker in sequence when possible: order by task.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, max_tasks_per_child=50) as pool:
        futures = {pool.submit(process_job, job): job for job in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                demo, status, length = fut.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker fails its demo only
                demo, status, length = job.demo, f"error: worker failed ({exc})", 0
            results.append((job.dst, demo, status, length))
            if progress is not None:
                progress.update(1)
    return results


def write_task_index(tasks: dict[str, dict]) -> None:
    """`task.json` per task folder: demos, ATM split, embedding status, settings."""
    from zipmo_robot.files import atomic_write_text

    for folder, meta in tasks.items():
        atomic_write_text(Path(folder) / "task.json", json.dumps(meta, indent=1))


def load_preprocessed(path: str | os.PathLike) -> dict[str, Any]:
    """Read one preprocessed demo file into memory (arrays and attributes)."""
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for key in (
            "actions",
            "joint_states",
            "gripper_states",
            "task_emb",
            "agentview_rgb",
            "eye_in_hand_rgb",
        ):
            if key in f:
                out[key] = f[key][()]
        for group in ("tracks", "visible", "query_frame"):
            out[group] = {k: f[group][k][()] for k in f[group]} if group in f else {}
        out["attrs"] = {k: f.attrs[k] for k in f.attrs}
    return out


def read_file_language(path: Path) -> str:
    return read_info(path).language
