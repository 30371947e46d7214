"""Text encoder (BERT pooled vectors, §3) and the per-suite task-embedding cache, with a tiny random BERT.

Nothing is downloaded: the model is a random `BertConfig` saved to a temp folder with a tokenizer built from a
vocabulary file written here, so the local-folder loading path runs for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zipmo_robot.errors import UserError
from zipmo_robot.models.text import MAX_LENGTH, TaskEmbeddingCache, TextEncoder, encoder_identifier

WORDS = (
    "pick up the black bowl between plate and ramekin place it on put in basket open top drawer of cabinet "
    "turn on stove push to front alphabet soup cream cheese bottle wine rack"
).split()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random BERT (hidden 32) plus a WordPiece tokenizer over a small vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=False)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder(bert_dir: Path) -> TextEncoder:
    return TextEncoder(bert_dir)


def test_loading_leaves_torch_device_context_working(encoder: TextEncoder) -> None:
    """transformers' from_pretrained must not break `with torch.device("meta")` for later code."""
    with torch.device("meta"):
        assert torch.linspace(0, 1, 3).device.type == "meta"


def test_encode_is_the_pooled_output_of_a_25_token_batch(encoder: TextEncoder) -> None:
    sentences = ["pick up the black bowl", "open the top drawer of the cabinet"]
    emb = encoder.encode(sentences)
    assert emb.shape == (2, 32) and emb.dtype == np.float32

    tokens = encoder.tokenizer(
        sentences, max_length=MAX_LENGTH, padding="max_length", truncation=True, return_tensors="pt"
    )
    assert tokens["input_ids"].shape == (2, MAX_LENGTH)
    with torch.no_grad():
        hidden = encoder.model(**tokens).last_hidden_state
        pooled = torch.tanh(encoder.model.pooler.dense(hidden[:, 0]))  # pooler_output = tanh(dense(CLS))
    np.testing.assert_allclose(emb, pooled.numpy(), atol=1e-6)
    assert not np.allclose(emb[0], emb[1])


def test_padding_makes_each_sentence_independent_of_the_batch(encoder: TextEncoder) -> None:
    alone = encoder.encode(["put the bowl on the plate"])
    together = encoder.encode(["put the bowl on the plate", "turn on the stove"])
    np.testing.assert_allclose(alone[0], together[0], atol=1e-6)


def test_long_sentences_are_truncated_to_25_tokens(encoder: TextEncoder) -> None:
    long = " ".join(WORDS[:40])  # each vocabulary word is one token
    head = " ".join(WORDS[: MAX_LENGTH - 2])  # CLS + 23 words + SEP = 25 tokens
    a, b = encoder.encode([long, head])
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = encoder.encode([" ".join(WORDS[: MAX_LENGTH - 3])])[0]
    assert not np.allclose(a, c)


def test_encode_rejects_a_bare_string(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError, match="list of sentences"):
        encoder.encode("pick up the bowl")


def test_cache_is_built_lazily_and_only_encodes_missing_languages(tmp_path: Path, bert_dir: Path) -> None:
    calls: list[list[str]] = []

    class CountingEncoder(TextEncoder):
        def encode(self, sentences):  # type: ignore[override]
            calls.append(list(sentences))
            return super().encode(sentences)

    builds: list[int] = []

    def factory() -> TextEncoder:
        builds.append(1)
        return CountingEncoder(bert_dir)

    cache = TaskEmbeddingCache(tmp_path, model=bert_dir, encoder_factory=factory)
    langs = ["pick up the black bowl", "open the top drawer of the cabinet", "turn on the stove"]
    first = cache.get("my_tasks", langs)
    assert first.shape == (3, 32) and first.dtype == np.float32
    assert builds == [1] and calls == [sorted(langs)]  # one batch with every missing sentence
    assert cache.path("my_tasks").is_file()
    assert not list(cache.folder.glob(".*.tmp"))  # atomic write left no temp file

    # a fresh cache object reads the file and never builds the encoder
    def no_encoder() -> TextEncoder:
        raise AssertionError("the encoder must not be loaded when everything is cached")

    again = TaskEmbeddingCache(tmp_path, model=bert_dir, encoder_factory=no_encoder)
    np.testing.assert_array_equal(again.get("my_tasks", list(reversed(langs))), first[::-1])
    np.testing.assert_array_equal(again.get_one("my_tasks", langs[1]), first[1])

    # a new language encodes only itself; the old entries keep their stored values
    cache.get("my_tasks", [langs[0], "put the cream cheese in the basket"])
    assert calls[-1] == ["put the cream cheese in the basket"] and builds == [1]
    table = again.load("my_tasks")
    assert sorted(table) == sorted([*langs, "put the cream cheese in the basket"])
    np.testing.assert_array_equal(table[langs[2]], first[2])
    # suites are separate files
    assert again.load("other_tasks") == {}


def test_cache_values_equal_direct_encoding_and_survive_odd_keys(
    tmp_path: Path, encoder: TextEncoder
) -> None:
    odd = ['say "hi", then {push} the plate / to the front?', "ünïcode tâsk"]
    cache = TaskEmbeddingCache(tmp_path, model="tiny", encoder_factory=lambda: encoder)
    got = cache.get("odd_tasks", odd)
    np.testing.assert_allclose(got, encoder.encode(sorted(odd))[np.argsort(np.argsort(odd))], atol=1e-6)
    assert sorted(cache.load("odd_tasks")) == sorted(odd)


def test_a_libero_suite_is_encoded_in_one_batch(tmp_path: Path, encoder: TextEncoder) -> None:
    from zipmo_robot.envs.suites import list_tasks

    calls: list[list[str]] = []

    class Counting:
        def encode(self, sentences):
            calls.append(list(sentences))
            return encoder.encode(sentences)

    cache = TaskEmbeddingCache(tmp_path, model="tiny", encoder_factory=lambda: Counting())
    languages = [t.language for t in list_tasks("libero_goal")]
    first = cache.get_one("libero_goal", languages[3])
    assert calls == [sorted(languages)]  # the first miss encodes the whole suite at once
    table = cache.build_suite("libero_goal")
    assert list(table) == languages and len(calls) == 1
    np.testing.assert_array_equal(table[languages[3]], first)
    np.testing.assert_allclose(table[languages[0]], encoder.encode([languages[0]])[0], atol=1e-6)
    with pytest.raises(UserError, match="not a LIBERO suite"):
        cache.build_suite("my_tasks")


def test_damaged_cache_file_names_itself(tmp_path: Path, encoder: TextEncoder) -> None:
    cache = TaskEmbeddingCache(tmp_path, model="tiny", encoder_factory=lambda: encoder)
    cache.path("libero_10").parent.mkdir(parents=True)
    cache.path("libero_10").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="damaged"):
        cache.get("libero_10", ["pick up the bowl"])


def test_encoder_identifier_separates_models_and_lengths(tmp_path: Path) -> None:
    assert encoder_identifier("bert-base-cased") == "bert-base-cased"
    assert encoder_identifier("google/bert") == "google--bert"
    assert encoder_identifier("bert-base-cased", 32) == "bert-base-cased-len32"
    a, b = tmp_path / "a" / "bert", tmp_path / "b" / "bert"
    a.mkdir(parents=True), b.mkdir(parents=True)
    assert encoder_identifier(str(a)) != encoder_identifier(str(b))


@pytest.mark.parametrize("offline_flag", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_missing_bert_gives_a_clear_error_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreachable_hub: str, offline_flag: bool
) -> None:
    """Real calls, both paths forced whatever this machine's network: the offline flag, and a hub endpoint on a
    closed local port (a real refused connection). Both must end in our message, not in hub retries."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    if offline_flag:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        TextEncoder("bert-base-cased")
    message = str(info.value)
    assert "bert-base-cased" in message and str(tmp_path / "hf" / "hub") in message
    assert "--local-dir" in message and "text_embeddings" in message
    # the reason comes from our checks (env flag / connection probe), not from the hub client's retry loop
    assert ("HF_HUB_OFFLINE is set" if offline_flag else "is unreachable") in message


def test_saved_cache_metadata_is_json(tmp_path: Path, encoder: TextEncoder) -> None:
    from safetensors import safe_open

    cache = TaskEmbeddingCache(tmp_path, model="tiny", encoder_factory=lambda: encoder)
    cache.get("some_tasks", ["b task", "a task"])
    with safe_open(str(cache.path("some_tasks")), framework="np") as f:
        meta = f.metadata()
    assert json.loads(meta["languages"]) == ["a task", "b task"] and meta["max_length"] == "25"
