"""Training data: preprocessed demos -> deterministic global batches, split over DDP processes.

Sampling is a pure function of `(seed, global position)`: position `p = step * G + j` (global batch `G`)
takes dataset index `perm_e[p mod N]` of epoch `e = p // N` (a seeded permutation per epoch), and every
random choice of that sample (which tracks, VAE noise, flow time and noise, dropout, plan noise) comes from
`numpy.random.default_rng([seed, p])`. Rank `r` of `W` processes builds positions `j` in
`[r*G/W, (r+1)*G/W)`. Hence a resumed run and a run with another process count see exactly the same samples
and random numbers, and the sampler's whole state is the step counter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zipmo_robot.errors import UserError

SPLITS = ("train", "val", "bc_train_10", "demos")


@dataclass(frozen=True)
class DemoRef:
    """One preprocessed demo file and its task."""

    path: Path
    suite: str
    task_id: int
    language: str


def find_demos(
    root: str | Path,
    suites: Sequence[str],
    split: str,
    tasks: Sequence[int] | None = None,
    max_per_task: int | None = None,
) -> list[DemoRef]:
    """Demo files of `split` (a list in each task's `task.json`) under `root/<suite>/<task>/`, task-major."""
    if split not in SPLITS:
        raise UserError(f"data split {split!r} is not one of {', '.join(SPLITS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(
            f"data root {root} does not exist; pass the folder written by `zipmo-robot preprocess --dst DIR`"
        )
    out: list[DemoRef] = []
    for suite in suites:
        index_files = sorted((root / suite).glob("*/task.json"))
        if not index_files:
            raise UserError(f"no preprocessed tasks of {suite} under {root / suite} (no */task.json)")
        entries = []
        for f in index_files:
            try:
                entries.append(json.loads(f.read_text()) | {"_dir": f.parent})
            except (OSError, ValueError) as exc:
                raise UserError(f"{f} is damaged ({exc}); run `zipmo-robot preprocess` again") from exc
        entries.sort(key=lambda e: int(e["task_id"]))
        for e in entries:
            if tasks is not None and int(e["task_id"]) not in set(tasks):
                continue
            names = list(e.get(split, []))
            if max_per_task is not None:
                names = names[:max_per_task]
            for name in names:
                path = e["_dir"] / f"{name}.hdf5"
                if path.is_file():
                    out.append(DemoRef(path, suite, int(e["task_id"]), str(e["language"])))
    if not out:
        raise UserError(
            f"no {split} demos found under {root} for suites {list(suites)}"
            + (f" tasks {list(tasks)}" if tasks is not None else "")
            + "; check data.root / data.split (preprocessing may still be running)"
        )
    return out


class TextTable:
    """Task embedding per language: BERT vectors (stored in the demo files or from the shared cache) or the
    offline sentence code (`models.text.SentenceCodeEmbedder`). `choice` is what the checkpoint records."""

    def __init__(self, mode: str, dim: int, text_model: str = "bert-base-cased", log: Callable = print):
        self.dim = dim
        self.text_model = text_model
        self.mode = mode
        self.log = log

    def resolve(self, demos: Sequence[dict[str, Any]], refs: Sequence[DemoRef]) -> dict[str, np.ndarray]:
        """Embeddings per language for these demos; resolves `auto` (BERT when the width is 768 and BERT
        vectors are available, else the sentence code)."""
        from zipmo_robot.models.text import SentenceCodeEmbedder, TaskEmbeddingCache

        languages = sorted({r.language for r in refs})
        suite_of = {r.language: r.suite for r in refs}
        if self.mode in ("auto", "bert"):
            stored = {r.language: d["task_emb"] for r, d in zip(refs, demos, strict=True) if "task_emb" in d}
            table: dict[str, np.ndarray] = {}
            problem = None
            if self.dim != 768 and self.mode == "auto":
                problem = f"the model's text width is {self.dim}, BERT's is 768"
            else:
                for lang in languages:
                    if lang in stored:
                        table[lang] = np.asarray(stored[lang], np.float32)
                        continue
                    try:
                        table[lang] = TaskEmbeddingCache(model=self.text_model).get_one(suite_of[lang], lang)
                    except UserError as exc:
                        problem = str(exc).splitlines()[0]
                        break
            if problem is None:
                dims = {v.shape[-1] for v in table.values()}
                if dims != {self.dim}:
                    problem = f"BERT vectors have width {sorted(dims)}, the model's text width is {self.dim}"
            if problem is None:
                self.mode = "bert"
                return table
            if self.mode == "bert":
                raise UserError(f"text_encoder=bert but {problem}; use text_encoder=sentence_code or auto")
            self.log(f"text encoder: sentence_code ({problem})")
        self.mode = "sentence_code"
        vectors = SentenceCodeEmbedder(self.dim).encode(languages)
        return {lang: vectors[i] for i, lang in enumerate(languages)}

    @property
    def choice(self) -> dict[str, Any]:
        if self.mode == "bert":
            return {"kind": "bert", "model": self.text_model, "dim": self.dim}
        return {"kind": "sentence_code", "dim": self.dim}


class TrainData:
    """Windows of preprocessed demos (`data.windows.WindowDataset`) plus task embeddings, batched
    deterministically (module doc).

    Args:
        refs: the demos; cameras / n_tracks: as `WindowDataset`.
        text: a `TextTable` (None: no task embeddings, e.g. the VAE stage).
        stride: window starts every `stride` frames (`data.window_stride`).
        moving_fraction: share of each view's tracks drawn from moving ones (`data.moving_fraction`).
        pick: "random" or "grid" (`data.track_pick`, `WindowDataset`).
        extras: `(rng, sample) -> dict of arrays`: a stage's per-sample random numbers.
    """

    def __init__(
        self,
        refs: Sequence[DemoRef],
        cameras: Sequence[str],
        n_tracks: int,
        text: TextTable | None = None,
        extras: Callable[[np.random.Generator, dict], dict[str, np.ndarray]] | None = None,
        stride: int = 1,
        moving_fraction: float = 0.0,
        pick: str = "random",
    ) -> None:
        from zipmo_robot.data.windows import WindowDataset

        self.refs = list(refs)
        self.windows = WindowDataset(
            [str(r.path) for r in self.refs], tuple(cameras), n_tracks, stride, moving_fraction, pick=pick
        )
        if len(self.windows) == 0:
            raise UserError(
                f"no training windows: no frame of the {len(self.refs)} demos has {n_tracks} visible tracks "
                "in every view; lower data.n_tracks or preprocess with more query points"
            )
        self.extras = extras
        self.text = text
        self.embeddings = text.resolve(self.windows.demos, self.refs) if text is not None else None
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def key(self) -> list[str]:
        """What the dataset index depends on (files and window index), for caches keyed by index."""
        return [f"{r.path.name}:{r.language}" for r in self.refs] + [f"n={len(self)}"]

    def index_at(self, seed: int, position: int) -> int:
        n = len(self)
        epoch = position // n
        perm = self._perms.get((seed, epoch))
        if perm is None:
            perm = np.random.default_rng([seed, epoch, 7]).permutation(n)
            self._perms = {(seed, epoch): perm}  # one epoch at a time is enough
        return int(perm[position % n])

    def frame_inputs(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """What the planner sees for window `index`: start frames (V, H, W, 3) uint8, task embedding (E,),
        episode step."""
        from zipmo_robot.data.preprocess import CAMERA_KEY

        d, start = self.windows.index[index]
        demo = self.windows.demos[d]
        frames = np.stack([demo[CAMERA_KEY[c]][start] for c in self.windows.cameras])
        if self.embeddings is None:
            raise UserError("this dataset has no task embeddings (built without a text table)")
        return frames, self.embeddings[self.refs[d].language], int(start)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        s = self.windows.get(index, rng)
        d, _ = self.windows.index[index]
        if self.embeddings is not None:
            s["txt_emb"] = self.embeddings[self.refs[d].language]
        s["index"] = np.array(index, np.int64)
        if self.extras is not None:
            s.update(self.extras(rng, s))
        return s

    def positions(self, step: int, global_batch: int, rank: int = 0, world: int = 1) -> range:
        if global_batch % world:
            raise UserError(f"batch_size={global_batch} is not divisible by the {world} processes")
        per = global_batch // world
        start = step * global_batch + rank * per
        return range(start, start + per)

    def batch(self, seed: int, step: int, global_batch: int, rank: int = 0, world: int = 1) -> dict:
        """This rank's part of global batch `step` as torch tensors (uint8 frames, float32 the rest)."""
        samples = []
        for p in self.positions(step, global_batch, rank, world):
            rng = np.random.default_rng([seed, p])
            samples.append(self.sample(self.index_at(seed, p), rng))
        return collate(samples)


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    import torch

    out = {}
    for key in samples[0]:
        out[key] = torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples]))
    return out
