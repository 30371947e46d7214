"""LIBERO task-language embeddings: BERT pooled vectors (ZIPMO_REFERENCE.md §3) and a per-suite cache.

`TextEncoder` runs `bert-base-cased` (or any BERT folder / hub id) exactly as the official preprocessing does:
tokenise with special tokens, `max_length=25`, `padding="max_length"`, truncation, all sentences in one batch,
fp32, eval mode, no grad, and return `pooler_output` (tanh(dense(CLS))), one `(768,)` float32 vector per
sentence. `TaskEmbeddingCache` stores `{task language: vector}` per suite in one safetensors file and encodes
only the sentences it is missing, loading BERT only then.

`SentenceCodeEmbedder` is the documented offline alternative to BERT: a fixed random code per sentence
(seeded by the sentence's SHA-256), of any width. It tells tasks apart but carries no meaning (no two
sentences are "close"), so a planner trained with it cannot generalise to unseen instructions; it is what a
machine without the BERT weights trains and rolls out with, and the choice is stored in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zipmo_robot.errors import UserError
from zipmo_robot.files import atomic_write_bytes

DEFAULT_TEXT_MODEL = "bert-base-cased"
MAX_LENGTH = 25  # official preprocessing (scripts/preproc_text_emb.py), ATM's setting


class TextEncoder:
    """BERT sentence embeddings as the official LIBERO preprocessing computes them.

    Args:
        model: hub id (default `bert-base-cased`) or a local folder holding a saved model and tokenizer.
        cache_dir: huggingface cache folder for hub ids (default: the huggingface default).
        modules: an already built `(model, tokenizer)` pair (tests, or a caller that has them); `model` is
            then only used as the encoder's identifier in cache keys.
        max_length: tokens per sentence, padded and truncated (25 in the release).
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_TEXT_MODEL,
        *,
        cache_dir: str | os.PathLike | None = None,
        modules: tuple[Any, Any] | None = None,
        max_length: int = MAX_LENGTH,
    ) -> None:
        if max_length <= 1:
            raise ValueError(f"max_length must be > 1 (CLS + SEP), got {max_length}")
        self.name = os.fspath(model)
        self.max_length = max_length
        if modules is not None:
            self.model, self.tokenizer = modules
        else:
            self.model, self.tokenizer = _load_bert(self.name, cache_dir)
        self.model.eval()
        config = self.model.config
        self.dim = int(config.hidden_size)

    @property
    def identifier(self) -> str:
        """A short string naming the encoder and its settings, used to key embedding caches."""
        return encoder_identifier(self.name, self.max_length)

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """Pooled BERT embeddings `(n, hidden)` float32 for `sentences`, encoded in one batch."""
        import torch

        if isinstance(sentences, str):
            raise TypeError("encode takes a list of sentences, got one str; wrap it in a list")
        if len(sentences) == 0:
            return np.zeros((0, self.dim), np.float32)
        tokens = self.tokenizer(
            list(sentences),
            add_special_tokens=True,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            out = self.model(
                input_ids=tokens["input_ids"].to(device),
                attention_mask=tokens["attention_mask"].to(device),
                token_type_ids=tokens["token_type_ids"].to(device) if "token_type_ids" in tokens else None,
            )
        return out.pooler_output.float().cpu().numpy().astype(np.float32)


def encoder_identifier(model: str, max_length: int = MAX_LENGTH) -> str:
    """Folder-safe identifier: hub ids as `bert-base-cased`; local folders as `<name>-<hash of the path>`."""
    local = Path(model).expanduser()
    if local.is_dir():
        digest = hashlib.sha1(str(local.resolve()).encode()).hexdigest()[:8]
        base = f"{local.name}-{digest}"
    else:
        base = model.replace("/", "--")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
    return base if max_length == MAX_LENGTH else f"{base}-len{max_length}"


def _load_bert(name: str, cache_dir: str | os.PathLike | None) -> tuple[Any, Any]:
    """`AutoModel` + `AutoTokenizer` from a local folder or the hub; unavailable → `UserError` within seconds."""
    from zipmo_robot.checkpoints import hub

    local = Path(name).expanduser()
    is_local = local.is_dir()
    only_local = is_local or hub.hub_offline()
    if not only_local and not _in_hf_cache(name, cache_dir):
        ok, reason = hub.hub_reachable()
        if not ok:
            raise UserError(
                _offline_text_message(
                    name, cache_dir, f"the hub {hub.hub_endpoint()} is unreachable: {reason}"
                )
            )
    from transformers import AutoModel, AutoTokenizer

    source = str(local) if is_local else name
    kwargs: dict[str, Any] = {"local_files_only": only_local or _in_hf_cache(name, cache_dir)}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        reason = (
            "HF_HUB_OFFLINE is set" if hub.hub_offline() and not is_local else f"{type(exc).__name__}: {exc}"
        )
        raise UserError(_offline_text_message(name, cache_dir, reason)) from exc
    finally:
        hub.restore_torch_device_context()
    return model.float().eval(), tokenizer


def _in_hf_cache(name: str, cache_dir: str | os.PathLike | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    from zipmo_robot.checkpoints import hub

    cache = str(cache_dir) if cache_dir is not None else str(hub.hf_cache_dir())
    hit = try_to_load_from_cache(name, "config.json", cache_dir=cache)
    return isinstance(hit, str)


def _offline_text_message(name: str, cache_dir: str | os.PathLike | None, reason: str) -> str:
    from zipmo_robot.checkpoints import hub

    cache = cache_dir if cache_dir is not None else hub.hf_cache_dir()
    return (
        f"cannot load the text encoder {name!r} ({reason}); looked in the huggingface cache {cache}.\n"
        f"  fix: on a machine with network run `hf download {name} --local-dir DIR` (or "
        f'`python -c "from transformers import AutoModel, AutoTokenizer; '
        f"AutoModel.from_pretrained('{name}').save_pretrained('DIR'); "
        f"AutoTokenizer.from_pretrained('{name}').save_pretrained('DIR')\"`), copy DIR here and pass the folder "
        f"as the text model; or copy cached task embeddings into {default_embedding_dir()}"
    )


# ---------------------------------------------------------------------------------------------------------
# Offline per-sentence code (no language model)

TEXT_ENCODERS = ("bert", "sentence_code")


class SentenceCodeEmbedder:
    """Per-sentence code: a deterministic N(0, 1) vector `(dim,)` float32 per task language, seeded by the
    first 8 bytes of the sentence's SHA-256 (numpy PCG64). Identity only, no meaning (see the module doc).

    Called like the agent's task embedders: `(suites, languages) -> (B, dim)` float32 (the suite is ignored).
    """

    name = "sentence_code"

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"SentenceCodeEmbedder dim must be >= 1, got {dim}")
        self.dim = int(dim)

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """`(len(sentences), dim)` float32 codes."""
        out = np.empty((len(sentences), self.dim), dtype=np.float32)
        for i, text in enumerate(sentences):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return out

    def __call__(self, suites: Sequence[str], languages: Sequence[str]) -> np.ndarray:
        return self.encode(list(languages))


# The name the agent and tests used while this was a test-only stand-in.
HashTaskEmbedder = SentenceCodeEmbedder


# ---------------------------------------------------------------------------------------------------------
# Per-suite embedding cache


def default_embedding_dir() -> Path:
    """`<zipmo cache>/text_embeddings` (`$ZIPMO_CACHE`, else `$ZIPMO_HOME`, else ~/.cache/zipmo-robot)."""
    from zipmo_robot.checkpoints.hub import zipmo_cache_dir

    return zipmo_cache_dir() / "text_embeddings"


class TaskEmbeddingCache:
    """`{task language: (dim,) float32}` per suite, in `<root>/<encoder id>/<suite>.safetensors`.

    Built lazily: `get` encodes only the languages not in the file yet, loading the encoder only then, and
    rewrites the file atomically. For a LIBERO suite a first miss encodes all the suite's task languages in
    that one batch (as the official preprocessing encodes every task at once), so later calls are hits. The file holds one `(n, dim)` tensor `embeddings`
    and the languages as JSON in its metadata, so any string is a valid key.

    Args:
        root: cache folder (default `default_embedding_dir()`).
        model: text model id or folder, as for `TextEncoder`; names the sub-folder.
        encoder_factory: builds the `TextEncoder` when one is needed (default: `TextEncoder(model)`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        model: str | os.PathLike = DEFAULT_TEXT_MODEL,
        max_length: int = MAX_LENGTH,
        encoder_factory: Callable[[], TextEncoder] | None = None,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_embedding_dir()
        self.model = os.fspath(model)
        self.max_length = max_length
        self._factory = encoder_factory or (lambda: TextEncoder(self.model, max_length=max_length))
        self._encoder: TextEncoder | None = None
        self.folder = self.root / encoder_identifier(self.model, max_length)

    def path(self, suite: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", suite):
            raise ValueError(f"suite name {suite!r} is not a safe file name (letters, digits, . _ -)")
        return self.folder / f"{suite}.safetensors"

    def load(self, suite: str) -> dict[str, np.ndarray]:
        """Everything cached for `suite` (empty when nothing is); a damaged file raises `UserError`."""
        from safetensors import SafetensorError, safe_open

        path = self.path(suite)
        if not path.exists():
            return {}
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                matrix = f.get_tensor("embeddings")
            languages = json.loads(meta["languages"])
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise UserError(
                f"task-embedding cache {path} is damaged ({exc}); delete it to rebuild it"
            ) from exc
        if len(languages) != matrix.shape[0]:
            raise UserError(f"task-embedding cache {path} is damaged (languages/rows mismatch); delete it")
        return {lang: matrix[i].astype(np.float32) for i, lang in enumerate(languages)}

    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = self._factory()
        return self._encoder

    def get(self, suite: str, languages: Sequence[str]) -> np.ndarray:
        """Embeddings `(len(languages), dim)` float32 in the order given, encoding and caching missing ones."""
        if isinstance(languages, str):
            raise TypeError("languages must be a list of task languages, got one str; wrap it in a list")
        table = self.load(suite)
        missing = {lang for lang in languages if lang not in table}
        if missing:  # encode the whole LIBERO suite in the same batch, as the official preprocessing does
            missing |= {lang for lang in suite_languages(suite) if lang not in table}
        missing = sorted(missing)
        if missing:
            vectors = self.encoder().encode(missing)
            table.update({lang: vectors[i] for i, lang in enumerate(missing)})
            self._write(suite, table)
        if not languages:
            dim = next(iter(table.values())).shape[0] if table else 0
            return np.zeros((0, dim), np.float32)
        return np.stack([table[lang] for lang in languages]).astype(np.float32)

    def build_suite(self, suite: str) -> dict[str, np.ndarray]:
        """Encode (if needed) and return every task language of a LIBERO suite."""
        languages = suite_languages(suite)
        if not languages:
            raise UserError(
                f"{suite!r} is not a LIBERO suite this installation knows; pass the languages to get()"
            )
        return dict(zip(languages, self.get(suite, languages), strict=True))

    def get_one(self, suite: str, language: str) -> np.ndarray:
        """One task's `(dim,)` float32 embedding."""
        return self.get(suite, [language])[0]

    def _write(self, suite: str, table: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save

        languages = sorted(table)
        matrix = np.stack([table[lang] for lang in languages]).astype(np.float32)
        meta = {"languages": json.dumps(languages), "model": self.model, "max_length": str(self.max_length)}
        atomic_write_bytes(self.path(suite), save({"embeddings": matrix}, metadata=meta))


def suite_languages(suite: str) -> list[str]:
    """Task languages of a LIBERO suite in benchmark order; empty for names that are not LIBERO suites."""
    from zipmo_robot.envs.spec import SUITES

    if suite not in SUITES:
        return []
    from zipmo_robot.envs.suites import list_tasks

    return [t.language for t in list_tasks(suite)]
