"""The lazy loader (`convert.SafetensorsFile`: names and shapes from the header, tensors one at a time) loads
released-layout files bit-identically to the eager state-dict path, and a damaged file or a file with wrong
keys or shapes is still one `UserError`. Tiny sizes; the files are written by `bench load`'s writer (the
released key layout with seeded values, both DINO copies equal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zipmo_robot.bench.load import release_layout, write_synthetic
from zipmo_robot.checkpoints import convert, loader, trained
from zipmo_robot.errors import UserError
from zipmo_robot.models.sizes import load_sizes

PREFIX = "track_predictor."
HEADS = load_sizes("tiny").dino.num_heads


def _file(tmp_path: Path, kind: str, name: str | None = None) -> Path:
    path = tmp_path / (name or f"{kind}.safetensors")
    write_synthetic(path, release_layout(kind, "tiny"), seed=3)
    return path


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind", ["policy_head_atm", "policy_head_tramoe"])
def test_lazy_policy_load_equals_the_eager_path_and_the_file(tmp_path: Path, kind: str) -> None:
    path = _file(tmp_path, kind)
    lazy = loader.load_policy(path, dino_heads=HEADS)
    file = loader.read_safetensors(path)
    planner, head, eager_kind = loader.policy_from_state_dict(dict(file), dino_heads=HEADS)
    assert lazy.kind == eager_kind == kind
    assert lazy.planner.cfg == planner.cfg and lazy.planner.cfg.share_vae_dino  # equal copies: one DINO
    _same_state(lazy.planner, planner)
    _same_state(lazy.head, head)
    for key, value in file.items():  # every stored tensor landed bit for bit
        if key.startswith(PREFIX + "vae.img_embedder."):
            ours = lazy.planner.vae_image_encoder.state_dict()[key[len(PREFIX + "vae.img_embedder.") :]]
        elif key.startswith(PREFIX):
            ours = lazy.planner.state_dict()[key[len(PREFIX) :]]
        else:
            ours = lazy.head.state_dict()[key]
        assert torch.equal(ours, value), key
    # the buffers checkpoints do not store are rebuilt, not left on the meta device
    assert not any(t.is_meta for m in (lazy.planner, lazy.head) for t in [*m.parameters(), *m.buffers()])


def test_different_dino_copies_are_both_kept(tmp_path: Path) -> None:
    path = _file(tmp_path, "planner_libero_atm")
    sd = loader.read_safetensors(path)
    key = next(k for k in sd if k.startswith("vae.img_embedder.model.blocks."))
    sd[key] = sd[key] + 1.0
    changed = tmp_path / "changed.safetensors"
    save_file(sd, str(changed))
    model = loader.load_model(changed, dino_heads=HEADS)
    assert not model.cfg.share_vae_dino
    assert torch.equal(model.state_dict()[key], sd[key])
    _same_state(model, loader.model_from_state_dict("planner_libero_atm", sd, dino_heads=HEADS))


def test_damaged_files_are_user_errors(tmp_path: Path) -> None:
    path = _file(tmp_path, "policy_head_atm")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match="truncated.safetensors"):
        loader.load_policy(truncated, dino_heads=HEADS)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{not a header" + bytes(100))
    with pytest.raises(UserError, match="garbage.safetensors"):
        loader.load_model(garbage)
    with pytest.raises(UserError, match="garbage.safetensors"):
        convert.SafetensorsFile(garbage)


def test_wrong_keys_and_shapes_are_user_errors(tmp_path: Path) -> None:
    head_file = _file(tmp_path, "policy_head_atm")
    sd = loader.read_safetensors(head_file)
    sd["learnable_modality_embs"] = sd.pop("learnable_modality_emb")  # a typo'd head key
    wrong = tmp_path / "wrong_key.safetensors"
    save_file(sd, str(wrong))
    with pytest.raises(UserError, match=r"1 missing key\(s\)") as info:
        loader.load_policy(wrong, dino_heads=HEADS)
    assert "learnable_modality_embs" in str(info.value) and "1 unexpected key(s)" in str(info.value)
    assert isinstance(info.value, convert.CheckpointError)
    sd = loader.read_safetensors(head_file)
    sd["policy_out_proj.proj.weights"] = sd.pop("policy_out_proj.proj.weight")  # a key the sizes come from
    save_file(sd, str(wrong))
    with pytest.raises(UserError, match="its sizes cannot be read from the head keys"):
        loader.load_policy(wrong, dino_heads=HEADS)

    sd = loader.read_safetensors(_file(tmp_path, "planner_libero_atm"))
    sd["ca_mask_token"] = torch.zeros(7)
    bad_shape = tmp_path / "bad_shape.safetensors"
    save_file(sd, str(bad_shape))
    tiny = load_sizes("tiny").config_for("planner_libero_atm")
    with pytest.raises(UserError, match=r"ca_mask_token: expected \[\d+\], got \[7\]"):
        loader.load_model(bad_shape, config=tiny)


def test_our_checkpoint_folders_load_lazily(tmp_path: Path) -> None:
    """`convert.load_checkpoint` (built on the meta device) and `trained.read_weights(lazy=True)` give the
    tensors that were saved."""
    source = loader.load_model(_file(tmp_path, "planner_libero_tramoe"), dino_heads=HEADS)
    convert.save_checkpoint(source, "planner_libero_tramoe", tmp_path / "ckpt")
    kind, again = convert.load_checkpoint(tmp_path / "ckpt")
    assert kind == "planner_libero_tramoe"
    _same_state(again, source)

    sd = {k: v.contiguous() for k, v in source.state_dict().items()}
    folder = trained.save(tmp_path / "run", stage="planner", kind="planner_libero_tramoe", model=sd, meta={})
    lazy = trained.read_weights(folder, lazy=True)
    assert set(lazy.keys()) == set(sd) and lazy.shapes == {k: tuple(v.shape) for k, v in sd.items()}
    target = convert.build_model("planner_libero_tramoe", source.cfg)
    convert.load_strict(target, lazy, "lazy trained weights")
    _same_state(target, source)


def test_bench_load_cli_measures_and_cleans_up(tmp_path: Path) -> None:
    """`zipmo-robot bench load` at the tiny size through the real CLI: a fresh subprocess loads the synthetic
    file, reports the model's own bytes and peak RSS, and deletes its files; a `--baseline-tree` that is
    not a source tree is a UserError."""
    import json
    import subprocess
    import sys

    out, work = tmp_path / "load.json", tmp_path / "work"
    tree = str(Path(__file__).resolve().parents[1])
    args = [sys.executable, "-m", "zipmo_robot", "bench", "load", "--size", "tiny", "--threads", "1"]
    result = subprocess.run(
        [*args, "--dir", str(work), "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "load peak" in result.stdout and f"report written to {out}" in result.stdout
    report = json.loads(out.read_text())
    layout = release_layout("policy_head_atm", "tiny")
    assert report["settings"]["tensors"] == len(layout)
    assert [r["tree"] for r in report["results"]] == ["this"]
    for r in report["results"]:
        # the shared DINO is stored once in the model, twice in the file
        assert 0 < r["model_bytes"] < report["settings"]["file_bytes"]
        assert r["peak_rss"] >= r["start_rss"] > 0 and r["zipmo_robot"] == str(Path(tree) / "zipmo_robot")
    assert list(work.iterdir()) == []
    bad = subprocess.run([*args, "--baseline-tree", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a zipmo-robot source tree" in bad.stderr
