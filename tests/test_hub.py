"""Released-file table, checkpoint resolution (local path, drop folder, hub cache), the offline error, the
`download` command in a real subprocess, and the transformers → official DINOv2 conversion.

The offline tests make the real calls with offline mode forced (HF_HUB_OFFLINE=1) or the hub endpoint pointed at
a closed local port, so they end in our message on any machine, networked or not (from the offline flag or the
connection probe, never from the hub client's retry loop or a real download).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zipmo_robot.checkpoints import convert, hub, loader
from zipmo_robot.errors import UserError

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_state_dicts"


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every cache at a fresh temp folder."""
    monkeypatch.setenv("ZIPMO_CACHE", str(tmp_path / "zipmo"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path


def _listing(kind: str) -> list[tuple[str, list[int]]]:
    if not REF.is_dir():
        pytest.fail(f"{REF} is missing: these tests read the reference material; clone the repository with "
                    "../shared beside it")  # fmt: skip
    rows = []
    for line in (REF / f"{kind}.txt").read_text().splitlines():
        if line.strip():
            key, shape, _ = line.split("\t")
            rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()]))
    return rows


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# ---------------------------------------------------------------------------------------------------------
# Table and names


@pytest.mark.parametrize("name", list(hub.RELEASED))
def test_table_matches_the_official_listings(name: str) -> None:
    f = hub.RELEASED[name]
    rows = _listing(f.kind)
    assert len(rows) == f.n_tensors
    assert sum(_numel(s) for _, s in rows) == f.numel
    assert convert.detect_kind([k for k, _ in rows]) in (
        {f.kind, "planner_sparse"} if f.kind == "planner_dense" else {f.kind}
    )


def test_names_aliases_and_suites() -> None:
    assert hub.released_file("atm").filename == "policy_heads/atm_libero.safetensors"
    assert hub.released_file("tramoe", suite="libero_goal").name == "head_tramoe_goal"
    assert hub.released_file("tramoe_10").name == "head_tramoe_10"
    assert hub.released_file("zipmo_planner_libero_atm.safetensors").name == "planner_libero_atm"
    assert hub.released_file("policy_heads/tramoe_libero_object.safetensors").name == "head_tramoe_object"
    with pytest.raises(UserError, match="needs a suite"):
        hub.released_file("tramoe")
    with pytest.raises(UserError, match="official:atm"):
        hub.released_file("tramoe", suite="libero_90")
    with pytest.raises(UserError, match="known names: vae, planner_sparse"):
        hub.released_file("planner_libero")


# ---------------------------------------------------------------------------------------------------------
# Resolution: local paths, drop folder, hub cache


def _write_tiny_safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).view(2, 3)}, str(path))


def test_local_path_is_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "mine.safetensors"
    _write_tiny_safetensors(path)
    assert hub.resolve_checkpoint(path) == path
    assert hub.resolve_checkpoint(str(path)) == path
    assert torch.equal(loader.read_safetensors(path)["w"], torch.arange(6.0).view(2, 3))


def test_missing_local_path_is_named_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="does not exist; give an existing .safetensors"):
        hub.resolve_checkpoint(tmp_path / "nope.safetensors")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="did you mean official:atm"):
        hub.resolve_checkpoint("atm")


def test_damaged_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="broken.safetensors"):
        loader.read_safetensors(path)


def test_drop_folder_is_used_without_network(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    drop = isolated_cache / "zipmo" / "official" / "atm_libero.safetensors"
    _write_tiny_safetensors(drop)
    assert hub.local_drop_dir() == drop.parent
    assert hub.resolve_checkpoint("official:atm") == drop


def _fake_hf_cache_entry(cache: Path, filename: str) -> Path:
    """Lay out a file the way huggingface_hub's cache does (refs/main → snapshots/<commit>/<filename>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + hub.REPO_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit / filename
    _write_tiny_safetensors(path)
    return path


def test_hub_cache_hit_needs_no_network(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # default cache: $HF_HOME/hub, read at call time
    default = _fake_hf_cache_entry(
        isolated_cache / "hf" / "hub", "policy_heads/tramoe_libero_goal.safetensors"
    )
    assert hub.resolve_checkpoint("official:tramoe", suite="libero_goal") == default
    # an explicit cache folder
    explicit = _fake_hf_cache_entry(isolated_cache / "elsewhere", "zipmo_vae.safetensors")
    assert hub.resolve_checkpoint("official:vae", cache_dir=isolated_cache / "elsewhere") == explicit
    monkeypatch.setenv("HF_HUB_CACHE", str(isolated_cache / "elsewhere"))
    assert hub.resolve_checkpoint("official:vae") == explicit


# ---------------------------------------------------------------------------------------------------------
# Offline errors (real calls)


def _check_offline_message(message: str, f: hub.ReleasedFile, cache: Path) -> None:
    assert f.filename in message and hub.REPO_ID in message
    assert str(cache) in message  # the cache folder looked in
    assert f"zipmo-robot download {f.name}" in message  # the command to run elsewhere
    assert str(hub.local_drop_dir() / f.basename) in message  # where to put the file
    assert f"--checkpoint /path/to/{f.basename}" in message  # how to pass a path
    assert "--policy scripted" in message  # how to try the stack without the weights


def test_offline_flag_gives_the_full_message(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        hub.resolve_checkpoint("official:planner_libero_atm")
    _check_offline_message(str(info.value), hub.RELEASED["planner_libero_atm"], isolated_cache / "hf" / "hub")
    assert "HF_HUB_OFFLINE is set" in str(info.value)


def test_no_network_fails_at_the_probe(isolated_cache: Path, unreachable_hub: str) -> None:
    """Offline mode not set, but no route to the hub (the endpoint is a closed local port): the probe fails
    within seconds and the download never starts."""
    assert not hub.hub_reachable()[0]
    with pytest.raises(UserError) as info:
        hub.download("head_tramoe_spatial")
    _check_offline_message(
        str(info.value), hub.RELEASED["head_tramoe_spatial"], isolated_cache / "hf" / "hub"
    )
    assert "is unreachable" in str(info.value)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipmo_robot", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_download_command_offline_and_cached(isolated_cache: Path) -> None:
    env = {
        "ZIPMO_CACHE": str(isolated_cache / "zipmo"),
        "HF_HOME": str(isolated_cache / "hf"),
        "HF_HUB_OFFLINE": "1",  # the first call must fail offline, whatever this machine's network
    }
    out = _cli(["download", "planner_libero_tramoe"], env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "zipmo_planner_libero_tramoe.safetensors" in out.stderr and "--checkpoint" in out.stderr

    cache = isolated_cache / "custom"
    cached = _fake_hf_cache_entry(cache, "zipmo_planner_dense.safetensors")
    out = _cli(["download", "planner_dense", "--cache", str(cache)], env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"planner_dense: {cached}"

    out = _cli(["download", "--list", "--cache", str(cache)], env)
    assert out.returncode == 0, out.stderr
    dense = [line for line in out.stdout.splitlines() if line.strip().startswith("planner_dense ")]
    assert dense and f"cached at {cached}" in dense[0]
    assert sum("not downloaded" in line for line in out.stdout.splitlines()) == len(hub.RELEASED) - 1
    assert "bundled trained checkpoints (--checkpoint bundled:NAME" in out.stdout

    out = _cli(["download"], env)
    assert out.returncode == 2 and "--all" in out.stderr
    out = _cli(["download", "vae", "nonsense"], env)  # names are checked before anything is fetched
    assert out.returncode == 2 and "unknown released file 'nonsense'" in out.stderr


# ---------------------------------------------------------------------------------------------------------
# transformers DINOv2-with-registers → official layout


def _tiny_hf_dino(seed: int = 0):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        image_size=518,  # the hub model's 37x37 table: pos_embed [1, 1370, E] as in the official module
        patch_size=14,
        num_register_tokens=4,
    )
    torch.manual_seed(seed)
    model = Dinov2WithRegistersModel(config).eval()
    with torch.no_grad():  # random values everywhere (layer scales, tokens, norms), so no part is an identity
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 32 else 0.0)
            )
    return model


def test_dino_conversion_matches_transformers_patch_tokens() -> None:
    from zipmo_robot.models.dino import DinoConfig, ImageEncoder

    hf = _tiny_hf_dino()
    converted = hub.dinov2_from_transformers(hf.state_dict())
    encoder = ImageEncoder(DinoConfig(embed_dim=32, depth=2, num_heads=2, mlp_ratio=4)).eval()
    encoder.model.load_state_dict(converted, strict=True)

    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 224, 224, 3, generator=gen) * 2 - 1  # channel-last in [-1, 1]
    ours = encoder(frames)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = ((frames.permute(0, 3, 1, 2) + 1) / 2 - mean) / std
    with torch.no_grad():
        ref = hf(pixel_values=pixels).last_hidden_state[:, 5:]
    assert ours.shape == ref.shape == (2, 256, 32)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_dino_conversion_key_layout_and_both_transformers_namings() -> None:
    sd = _tiny_hf_dino().state_dict()
    converted = hub.dinov2_from_transformers(sd)
    expected = {"cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed.proj.weight"}
    expected |= {"patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(2):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
        expected |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    assert set(converted) == expected
    assert converted["pos_embed"].shape == (1, 1370, 32) and converted["mask_token"].shape == (1, 32)
    qkv = converted["blocks.1.attn.qkv.weight"]
    p = "encoder.layer.1.attention."
    assert torch.equal(
        qkv, torch.cat([sd[p + "q_proj.weight"], sd[p + "k_proj.weight"], sd[p + "v_proj.weight"]])
    )

    # the transformers 4.x names (and a wrapping-model prefix) give the same result
    old_names = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
    }
    old = {}
    for key, value in sd.items():
        for new, legacy in old_names.items():
            key = key.replace(new, legacy)
        old["dinov2_with_registers." + key] = value
    legacy = hub.dinov2_from_transformers(old)
    assert legacy.keys() == converted.keys()
    assert all(torch.equal(legacy[k], converted[k]) for k in converted)

    with pytest.raises(UserError, match="unconverted keys"):
        hub.dinov2_from_transformers({**sd, "pooler.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="not a transformers Dinov2WithRegistersModel"):
        hub.dinov2_from_transformers({"blocks.0.norm1.weight": torch.zeros(1)})


def test_hub_dino_offline_error(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="facebook/dinov2-with-registers-base.*HF_HUB_OFFLINE is set"):
        hub.load_hub_dino()


def test_hub_dino_from_a_local_folder(tmp_path: Path) -> None:
    hf = _tiny_hf_dino(seed=3)
    hf.save_pretrained(tmp_path / "dino")
    converted = hub.load_hub_dino(str(tmp_path / "dino"))
    with torch.device("meta"):  # transformers' side effect on torch's device context is undone
        assert torch.linspace(0, 1, 3).device.type == "meta"
    reference = hub.dinov2_from_transformers(hf.state_dict())
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)
