"""Key coverage of the released files (no download), the hydra model sizes, readable load errors, and the
round trip official layout → converter → our modules → file → the one loader (`checkpoints.loader`).

Key coverage: for every listing in ../shared/reference/official_state_dicts/*.txt (the keys and shapes of the
released files) the release-size models are built on the meta device, a state dict with exactly the listed
keys and shapes is converted, and every key and shape must land (`checkpoints.state_dict_diff` empty). The
listed tensors are zero-stride views of one scalar, so nothing of release size is allocated.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zipmo_robot.checkpoints import convert as checkpoints
from zipmo_robot.checkpoints import hub, loader
from zipmo_robot.errors import UserError
from zipmo_robot.models.sizes import HEAD_KINDS, KINDS, PLANNER_KINDS, SIZES, load_sizes, model_sizes

LISTINGS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_state_dicts"
DINO_NUMEL = 86_583_552  # one DINOv2-B/14-reg copy (ZIPMO_REFERENCE.md §2.1)
# state-dict numel per kind (ZIPMO_REFERENCE.md §8.2)
RELEASE_NUMEL = {
    "vae": 339_164_197,
    "planner_sparse": 872_580_645,
    "planner_dense": 872_580_645,
    "planner_libero_atm": 918_591_725,
    "planner_libero_tramoe": 929_210_477,
    "policy_head_atm": 979_407_485,
    "policy_head_tramoe": 990_026_237,
}
PREFIX = "track_predictor."


def _listing(kind: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (LISTINGS / f"{kind}.txt").read_text().splitlines():
        if line.strip():
            key, shape, dtype = line.split("\t")
            assert dtype == "torch.float32" or dtype == "float32", (key, dtype)
            out[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return out


def _official_like(listing: dict[str, tuple[int, ...]], vae_dino_value: float) -> dict[str, torch.Tensor]:
    """Zero-stride CPU tensors with the listed shapes; the VAE's DINO copy gets `vae_dino_value`."""
    zero, other = torch.zeros(()), torch.full((), vae_dino_value)
    return {k: (other if "vae.img_embedder." in k else zero).expand(shape) for k, shape in listing.items()}


def _meta_models(kind: str, share: bool) -> dict[str, torch.nn.Module]:
    """Release-size model(s) for `kind` on the meta device: {prefix: module}."""
    sizes = load_sizes("release")
    config = sizes.config_for(kind)
    hub.restore_torch_device_context()  # in case another test's from_pretrained broke the device context
    with torch.device("meta"):
        if kind in HEAD_KINDS:
            from zipmo_robot.policy.head import InverseDynamicsHead

            planner_cfg, head_cfg = config
            planner_kind = "planner_" + HEAD_KINDS[kind]
            return {
                PREFIX: checkpoints.build_model(planner_kind, replace(planner_cfg, share_vae_dino=share)),
                "": InverseDynamicsHead(head_cfg),
            }
        if kind != "vae":
            config = replace(config, share_vae_dino=share)
        return {"": checkpoints.build_model(kind, config)}


def _split(sd: dict[str, torch.Tensor], heads: bool) -> dict[str, dict[str, torch.Tensor]]:
    if not heads:
        return {"": sd}
    return {
        PREFIX: {k[len(PREFIX) :]: v for k, v in sd.items() if k.startswith(PREFIX)},
        "": {k: v for k, v in sd.items() if not k.startswith(PREFIX)},
    }


# the VAE file holds a single DINO copy; every planner/head file holds two (identical or not, quirk Q20)
COVERAGE_CASES = [
    (kind, copies)
    for kind in KINDS
    for copies in ("identical", "different")
    if kind != "vae" or copies == "identical"
]


@pytest.mark.parametrize(("kind", "copies"), COVERAGE_CASES)
def test_release_key_coverage(kind: str, copies: str) -> None:
    listing = _listing(kind)
    assert sum(torch.Size(s).numel() for s in listing.values()) == RELEASE_NUMEL[kind]
    sd = _official_like(listing, 0.0 if copies == "identical" else 1.0)
    converted = checkpoints.convert_official_state_dict(kind, sd)
    share = kind != "vae" and copies == "identical"
    dropped = len([k for k in listing if "vae.img_embedder." in k]) if share else 0
    assert len(converted) == len(listing) - dropped
    assert checkpoints.shares_vae_dino(kind, converted) is share

    models = _meta_models(kind, share)
    parts = _split(converted, kind in HEAD_KINDS)
    total = 0
    for prefix, model in models.items():
        missing, unexpected, mismatched = checkpoints.state_dict_diff(model, parts[prefix])
        assert not missing and not unexpected and not mismatched, (
            prefix,
            missing[:5],
            unexpected[:5],
            mismatched[:5],
        )
        total += sum(t.numel() for t in model.state_dict().values())
    assert total == RELEASE_NUMEL[kind] - (DINO_NUMEL if share else 0)


def test_sparse_and_dense_share_one_key_set() -> None:
    assert _listing("planner_sparse") == _listing("planner_dense")


def test_planner_num_params_matches_the_reference_split() -> None:
    """§8.2: planner own params (non-VAE, non-DINO) for the LIBERO Tra-MoE planner."""
    (model,) = _meta_models("planner_libero_tramoe", share=False).values()
    own = sum(t.numel() for k, t in model.state_dict().items() if not k.startswith(("vae.", "img_embedder.")))
    assert own == 503_462_728
    assert model.num_params() == 929_210_477


# ---------------------------------------------------------------------------------------------------------
# Model sizes from hydra


@pytest.mark.parametrize("size", SIZES)
def test_every_size_builds_every_kind_config(size: str) -> None:
    sizes = load_sizes(size)
    assert sizes.name == size
    for kind in KINDS:
        config = sizes.config_for(kind)
        if kind in PLANNER_KINDS:
            assert config.variant == PLANNER_KINDS[kind]
            assert config.d_cross == sizes.dino.embed_dim == config.vae.dino.embed_dim


def test_small_is_about_a_quarter_of_the_release() -> None:
    release, small = load_sizes("release"), load_sizes("small")
    assert small.planner["width"] * 4 == release.planner["width"]
    assert small.planner["depth"] * 4 == release.planner["depth"]
    assert small.vae.d_model * 4 == release.vae.d_model and small.vae.enc_depth * 4 == release.vae.enc_depth
    assert small.dino.embed_dim * 4 == release.dino.embed_dim and small.dino.depth * 4 == release.dino.depth
    hub.restore_torch_device_context()
    with torch.device("meta"):
        n_small = checkpoints.build_model(
            "planner_libero_atm", small.config_for("planner_libero_atm")
        ).num_params()
    # width/4 and depth/4 shrink the transformer parts ~64x; fixed-size parts (pos tables, coeffs) stay
    assert RELEASE_NUMEL["planner_libero_atm"] / 100 < n_small < RELEASE_NUMEL["planner_libero_atm"] / 30


def test_overrides_and_bad_sections() -> None:
    sizes = load_sizes("small", ["model.planner.depth=2", "model.dino.depth=1"])
    assert sizes.planner_config("libero_atm").depth == 2 and sizes.vae.dino.depth == 1
    with pytest.raises(UserError, match="unknown model size 'huge'"):
        load_sizes("huge")
    base = {"dino": {}, "vae": {}, "planner": {}, "head": {}}
    with pytest.raises(UserError, match=r"section 'planner' has unknown key\(s\) \['widht'\]; valid keys"):
        model_sizes({**base, "planner": {"widht": 3}})
    with pytest.raises(UserError, match="section 'vae' is invalid: .*d_head"):
        model_sizes({**base, "vae": {"d_model": 100, "d_head": 64}})
    with pytest.raises(UserError, match="variant comes from the model kind"):
        model_sizes({**base, "planner": {"variant": "sparse"}})
    with pytest.raises(UserError, match=r"lacks section\(s\) \['head'\]"):
        model_sizes({"dino": {}, "vae": {}, "planner": {}})
    with pytest.raises(UserError, match="unknown model kind"):
        load_sizes("tiny").config_for("planner_libero")


# ---------------------------------------------------------------------------------------------------------
# Readable errors and the round trip (tiny sizes)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + 0.5)
    return model.eval()


def _tiny(kind: str, share: bool = False, seed: int = 0) -> torch.nn.Module:
    config = load_sizes("tiny").config_for(kind)
    if kind != "vae":
        config = replace(config, share_vae_dino=share)
    return _randomize(checkpoints.build_model(kind, config), seed)


def test_wrong_key_and_wrong_shape_give_one_readable_error() -> None:
    model = _tiny("planner_libero_atm")
    sd = dict(model.state_dict())
    sd["backbone.0.ff.up_proj.weights"] = sd.pop("backbone.0.ff.up_proj.weight")  # typo'd key
    sd["ca_mask_token"] = torch.zeros(7)  # wrong shape
    del sd["out_proj.proj.weight"]  # missing
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.load_strict(model, sd)
    message = str(info.value)
    assert "2 missing key(s)" in message and "backbone.0.ff.up_proj.weight\n" in message
    assert "out_proj.proj.weight" in message
    assert "1 unexpected key(s)" in message and "backbone.0.ff.up_proj.weights" in message
    expected = list(model.state_dict()["ca_mask_token"].shape)
    assert f"ca_mask_token: expected {expected}, got [7]" in message


def test_release_file_into_tiny_model_is_refused_readably(tmp_path: Path) -> None:
    """A tiny file loaded with release sizes: one error listing shape mismatches (and no crash)."""
    model = _tiny("vae")
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    small = load_sizes("small").config_for("vae")
    with pytest.raises(checkpoints.CheckpointError, match=r"shape mismatch\(es\)") as info:
        loader.load_model(path, "vae", config=small)
    assert "encoder.query_token: expected [1, 1, 192], got [1, 1, 32]" in str(info.value)


def _velocity(planner: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    cfg = planner.cfg
    gen = torch.Generator().manual_seed(seed)
    B, V = 2, cfg.num_views
    frames = torch.rand(B, V, 64, 64, 3, generator=gen) * 2 - 1
    txt = torch.randn(B, cfg.d_cross, generator=gen)
    x = torch.randn(B, V * cfg.vae.n_latents, cfg.vae.latent_dim, generator=gen)
    with torch.inference_mode():
        cond = planner.prepare(planner.conditioning(frames, txt_emb=txt, start_t=torch.tensor([0, 7])))
        return planner.predict_velocity(x, torch.tensor([0.7, 0.2]), cond)


@pytest.mark.parametrize("kind", ["planner_libero_atm", "planner_libero_tramoe"])
@pytest.mark.parametrize("copies", ["identical", "different"])
def test_round_trip_through_an_official_layout_file(tmp_path: Path, kind: str, copies: str) -> None:
    source = _tiny(kind, share=False, seed=3)
    sd = {k: v.contiguous() for k, v in source.state_dict().items()}
    if copies == "identical":  # the release may carry two equal DINO copies: they must be kept once
        for k in [k for k in sd if k.startswith("img_embedder.")]:
            sd["vae." + k] = sd[k].clone()
        source.vae.img_embedder.load_state_dict(source.img_embedder.state_dict())
    path = tmp_path / f"{kind}.safetensors"
    save_file(sd, str(path))

    tiny = load_sizes("tiny").config_for(kind)
    loaded = loader.load_model(path, config=tiny)  # kind detected from the keys
    assert loaded.cfg.variant == kind.removeprefix("planner_")
    assert loaded.cfg.share_vae_dino is (copies == "identical")
    ours = loaded.state_dict()
    for key, value in sd.items():
        if key.startswith("vae.img_embedder.") and copies == "identical":
            assert key not in ours
            assert torch.equal(loaded.vae_image_encoder.state_dict()[key[len("vae.img_embedder.") :]], value)
        else:
            assert torch.equal(ours[key], value), key
    assert set(ours) <= set(sd)
    assert torch.equal(_velocity(loaded), _velocity(source))

    # and back: our state dict saved again loads to the same tensors
    again = tmp_path / "again.safetensors"
    save_file({k: v.contiguous() for k, v in ours.items()}, str(again))
    reloaded = loader.load_model(again, kind, config=tiny)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in ours.items())
    # without a config the sizes come from the shapes (+ the DINO head count): the same model
    inferred = loader.load_model(path, dino_heads=tiny.dino.num_heads)
    assert inferred.cfg == loaded.cfg


def test_round_trip_of_a_policy_head_file(tmp_path: Path) -> None:
    from zipmo_robot.policy.head import InverseDynamicsHead

    sizes = load_sizes("tiny")
    planner = _tiny("planner_libero_tramoe", seed=5)
    head = _randomize(InverseDynamicsHead(sizes.head_config()), 6)
    sd = {PREFIX + k: v.contiguous() for k, v in planner.state_dict().items()}
    sd.update({k: v.contiguous() for k, v in head.state_dict().items()})
    path = tmp_path / "tramoe_libero_goal.safetensors"
    save_file(sd, str(path))
    assert checkpoints.detect_kind(sd) == "policy_head_tramoe"
    bundle = loader.load_policy(path, dino_heads=sizes.dino.num_heads)
    assert bundle.kind == "policy_head_tramoe" and bundle.path == str(path) and bundle.source == str(path)
    got_planner, got_head = bundle.planner, bundle.head
    assert got_planner.cfg == replace(sizes.config_for("policy_head_tramoe")[0], share_vae_dino=False)
    assert got_head.config == sizes.head_config()
    assert all(
        torch.equal(got_planner.state_dict()[k[len(PREFIX) :]], v)
        for k, v in sd.items()
        if k.startswith(PREFIX)
    )
    assert all(torch.equal(got_head.state_dict()[k], v) for k, v in head.state_dict().items())
    assert torch.equal(_velocity(got_planner), _velocity(planner))


def test_official_spec_without_network_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZIPMO_CACHE", str(tmp_path / "zipmo"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="zipmo_planner_libero_atm.safetensors"):
        loader.load_model("official:planner_libero_atm")
    with pytest.raises(UserError, match="atm_libero.safetensors") as info:
        loader.load_policy("official:atm")
    assert "--policy scripted" in str(info.value)  # the weight-free way to try the stack


# ---------------------------------------------------------------------------------------------------------
# The one loader: specs it refuses, kinds it tells apart


def test_policy_loader_refuses_what_is_not_a_policy(tmp_path: Path) -> None:
    planner = _tiny("planner_libero_atm")
    path = tmp_path / "planner.safetensors"
    save_file({k: v.contiguous() for k, v in planner.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="is a planner_libero_atm file, not a policy head"):
        loader.load_policy(path, dino_heads=2)
    with pytest.raises(UserError, match="load it with load_policy"):
        loader.load_model(_head_file(tmp_path))
    with pytest.raises(UserError, match=r"no bundled checkpoint 'nope' \(bundled checkpoints: "):
        loader.load_policy("bundled:nope")
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "meta.json").write_text('{"format": "zipmo-robot-checkpoint/0"}')
    with pytest.raises(UserError, match="format 'zipmo-robot-checkpoint/0'"):
        loader.load_policy(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        loader.load_policy(folder)
    with pytest.raises(UserError, match="does not exist"):
        loader.load_policy(tmp_path / "missing.safetensors")


def _head_file(tmp_path: Path, variant: str = "libero_atm") -> Path:
    """A tiny released-layout policy-head file of `variant`."""
    from zipmo_robot.policy.head import InverseDynamicsHead

    sizes = load_sizes("tiny")
    planner = _tiny(f"planner_{variant}", seed=1)
    head = _randomize(InverseDynamicsHead(sizes.head_config()), 2)
    sd = {PREFIX + k: v.contiguous() for k, v in planner.state_dict().items()}
    sd.update({k: v.contiguous() for k, v in head.state_dict().items()})
    path = tmp_path / f"head_{variant}.safetensors"
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("variant", ["libero_atm", "libero_tramoe"])
def test_one_kind_detector_for_files_and_bundles(tmp_path: Path, variant: str) -> None:
    """ATM vs Tra-MoE is decided once (`convert.detect_kind`, the §7.3 rule), for the file and the bundle."""
    path = _head_file(tmp_path, variant)
    expected = checkpoints.head_kind(variant)
    assert checkpoints.planner_kind(expected) == f"planner_{variant}"
    keys = list(loader.read_safetensors(path))
    assert checkpoints.detect_kind(keys) == expected
    assert checkpoints.detect_kind([k[len(PREFIX) :] for k in keys if k.startswith(PREFIX)]) == (
        f"planner_{variant}"
    )
    bundle = loader.load_policy(str(path), dino_heads=2)
    assert bundle.kind == expected and bundle.planner.cfg.variant == variant
    assert bundle.planner.cfg.use_step_token is (variant == "libero_tramoe")


def test_trained_checkpoint_folder_loads_through_the_one_loader(tmp_path: Path) -> None:
    """A `zipmo-robot train` policy folder (meta.json "format": "zipmo-robot-checkpoint/1") is a policy spec
    like a released file: same bundle, kind from its planner, the stored text encoder and nfe."""
    from dataclasses import asdict

    from zipmo_robot.policy.head import InverseDynamicsHead

    from zipmo_robot.checkpoints import trained

    sizes = load_sizes("tiny")
    planner = _tiny("planner_libero_tramoe", share=True, seed=7)
    head = _randomize(InverseDynamicsHead(sizes.head_config()), 8)
    sd = {PREFIX + k: v for k, v in planner.state_dict().items()} | dict(head.state_dict())
    meta = {
        "planner_config": asdict(planner.cfg),
        "head_config": asdict(head.config),
        "text_encoder": {"kind": "sentence_code", "dim": planner.cfg.d_cross},
        "nfe": 4,
    }
    folder = trained.save(tmp_path / "ckpt", stage="policy", kind="policy_head_tramoe", model=sd, meta=meta)
    assert loader.TRAINED_FORMAT == trained.FORMAT
    bundle = loader.load_policy(str(folder))
    assert bundle.kind == "policy_head_tramoe" and bundle.path == str(folder) and bundle.nfe == 4
    assert bundle.text_encoder["kind"] == "sentence_code" and bundle.task_embedder is not None
    assert all(torch.equal(bundle.planner.state_dict()[k], v) for k, v in planner.state_dict().items())
    assert all(torch.equal(bundle.head.state_dict()[k], v) for k, v in head.state_dict().items())
    assert torch.equal(_velocity(bundle.planner), _velocity(planner))
