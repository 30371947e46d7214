"""Parity with the official ZipMo code: for every kind and output tensor that the fixture folder's
`manifest.json` lists, rebuild the model from the manifest's sizes, load the weights through the same
converter as a released checkpoint, and reproduce the output.

Tolerances: fp32 outputs 1e-4, decoded tracks 1e-3. Each test prints its max abs error.
The `blocks` cases are evaluated from the manifest itself (constructor string and call expression of each
output), the model kinds by the official output names; an output this file cannot compute fails loudly.
"""

from __future__ import annotations

import ast
import re
from functools import cache

import parity as P
import pytest
import torch

from zipmo_robot.checkpoints import convert as checkpoints
from zipmo_robot.models import blocks, rope

FP32_TOL = 1e-4
TRACKS_TOL = 1e-3
# The bf16-autocast rollout latents: fixtures come from another CPU (bf16 GEMMs accumulate in a
# platform-dependent order), so this only checks that the autocast path follows the official dtypes
# roughly; the fp32 record of the same rollout is checked at FP32_TOL. See `test_policy_planner_part`.
AMP_TOL = 5e-2
POLICY_KINDS = checkpoints.POLICY_KINDS
# every kind the shared fixture set holds: one per model and policy-head kind the converter knows, plus blocks
EXPECTED_KINDS = ("blocks", *checkpoints.MODEL_KINDS, *POLICY_KINDS)


def _tolerance(name: str) -> float:
    return TRACKS_TOL if "tracks" in name else FP32_TOL


def _cases() -> list[tuple[str, str]]:
    out = []
    for kind in P.kinds():
        if kind in POLICY_KINDS:
            continue
        out += [(kind, name) for name in P.outputs(kind)]
    return out


# ----------------------------------------------------------------------------------------------------------
# blocks: modules built from the manifest's constructor strings, outputs from its call expressions

_CLASSES = {
    "zipmo.rope.AxialRoPE3D": rope.AxialRoPE3D,
    "zipmo.rope.AxialRoPE2D": rope.AxialRoPE2D,
    "zipmo.rope.AxialRoPE1D": rope.AxialRoPE1D,
    "zipmo.blocks.SelfAttentionBlock": blocks.SelfAttentionBlock,
    "zipmo.blocks.CrossAttentionBlock": blocks.CrossAttentionBlock,
    "zipmo.blocks.RMSNorm": blocks.RMSNorm,
    "zipmo.blocks.AdaRMSNorm": blocks.AdaRMSNorm,
    "zipmo.blocks.FeedForwardBlock": blocks.FeedForwardBlock,
    "zipmo.blocks.TransformerLayer": blocks.TransformerLayer,
    "zipmo.blocks.InputMLP": blocks.InputMLP,
    "zipmo.blocks.OutputMLP": blocks.OutputMLP,
    "zipmo.planner.MappingNetwork": blocks.MappingNetwork,
    "zipmo.planner.FourierFeatures": blocks.FourierFeatures,
}
_FUNCTIONS = {"zipmo.rope.make_axial_pos_2d": rope.make_axial_pos_2d, "zipmo.rope.centers": rope.centers}


def _first_call(text: str, start: int) -> str:
    """The call expression starting at `start`, up to its matching parenthesis."""
    depth = 0
    for i in range(text.index("(", start), len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start : i + 1]
    raise ValueError(f"unbalanced parentheses in {text!r}")


def _literal(node: ast.AST):
    """Evaluate a constant expression (numbers, strings, None, + - * /)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, ast.BinOp):
        ops = {
            ast.Add: float.__add__,
            ast.Sub: float.__sub__,
            ast.Mult: float.__mul__,
            ast.Div: float.__truediv__,
        }
        return ops[type(node.op)](float(_literal(node.left)), float(_literal(node.right)))
    raise ValueError(f"not a constant: {ast.dump(node)}")


def _build(ctor: str):
    """Our module for an official constructor string such as `zipmo.blocks.RMSNorm(48)`."""
    call = _first_call(ctor, 0)
    name = call[: call.index("(")]
    if name not in _CLASSES:
        raise KeyError(f"no equivalent of official class {name!r} (constructor {ctor!r})")
    node = ast.parse(call, mode="eval").body
    args = [_literal(a) for a in node.args]
    kwargs = {k.arg: _literal(k.value) for k in node.keywords}
    if "random_fourier" in kwargs and not kwargs.pop("random_fourier"):
        raise ValueError(f"only the random-Fourier InputMLP exists (the one the release uses): {ctor!r}")
    return _CLASSES[name](*args, **kwargs)


class _CaseModule:
    """A case's module: callable, plus the official `apply_emb` of the rope modules."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @staticmethod
    def apply_emb(x, theta):
        return rope.apply_rotary_emb(x, theta)


_KEYWORDS = {"in", "is", "as", "if", "or", "and", "not", "for", "def", "del", "from", "with"}


def _safe(name: str) -> str:
    return name + "_" if name in _KEYWORDS else name


@cache
def _blocks_outputs() -> dict[str, torch.Tensor]:
    info = P.kind_info("blocks")
    io, weights = P.io("blocks"), P.weights("blocks")
    modules = {}
    for case, spec in info["cases"].items():
        module = _build(spec["ctor"])
        prefix = spec["weight_prefix"]
        sd = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        checkpoints.load_strict(module, sd, f"blocks case {case}")
        modules[case] = _CaseModule(module.eval())
    results: dict[str, torch.Tensor] = {}
    for name in P.outputs("blocks"):
        desc = info["tensors"][name]["desc"]
        case = name.split(".")[0] if "." in name else None
        match = None
        for fn in _FUNCTIONS:
            if fn + "(" in desc:
                match = (desc.index(fn + "("), fn)
        if match is None and case is not None:
            m = re.search(rf"\b{re.escape(case)}(\.apply_emb)?\(", desc)
            match = (m.start(), None) if m else None
        if match is None:
            raise KeyError(f"cannot find the call that produced blocks output {name!r} in {desc!r}")
        expr = _first_call(desc, match[0])
        if match[1] is not None:
            expr = expr.replace(match[1], match[1].rsplit(".", 1)[1])
        namespace: dict[str, object] = {k.rsplit(".", 1)[1]: v for k, v in _FUNCTIONS.items()}
        namespace.update({_safe(k): v for k, v in io.items() if "." not in k})
        namespace.update(results)
        if case is not None:
            namespace[case] = modules[case]
            for k, v in {**io, **results}.items():
                if k.startswith(case + "."):
                    namespace[_safe(k[len(case) + 1 :])] = v
        expr = re.sub(r"\b(" + "|".join(_KEYWORDS) + r")\b", r"\1_", expr)
        with torch.no_grad():
            results[name] = eval(compile(expr, "<manifest>", "eval"), {"__builtins__": {}}, namespace)
    return results


# ----------------------------------------------------------------------------------------------------------
# model kinds


@cache
def _model(kind: str):
    """Our model of a fixture kind, loaded through the official-checkpoint converter."""
    cfg = P.vae_config() if kind == "vae" else P.planner_config(kind)
    return checkpoints.model_from_official(kind, P.weights(kind), cfg).eval()


def _vae_outputs(kind: str) -> dict[str, torch.Tensor]:
    m, io, info = _model(kind), P.io(kind), P.kind_info(kind)
    frame = P.frame(io["start_frame_u8"])
    out = {}
    with torch.no_grad():
        out["start_emb"] = m.embed_frame(frame)
        mean, logvar, pos = m.encode(io["tracks_enc_yx"], frame)
        out.update(enc_mean=mean, enc_logvar=logvar, enc_latent_pos=pos)
        if "decoded_tracks" in info["tensors"]:
            T = info["tensors"]["decoded_tracks"]["shape"][2]
            out["decoded_tracks"] = m.decode(io["enc_mean"], io["query_pos"], T, frame)
        out["recon_l1_from_mean"] = m.decoder(
            io["enc_mean"], io["tracks_dec_yx"], io["enc_latent_pos"], io["start_emb"]
        )
        _, metrics = m(io["tracks_enc_yx"], io["tracks_dec_yx"], frame, eps=io["loss_eps"])
        out["loss_reconstruction"], out["loss_kl"] = metrics["reconstruction_loss"], metrics["kl_loss"]
        for key in ("logvar_mean", "logvar_std", "std_mean", "std_std", "mean_mean", "mean_std"):
            out["metric_" + key] = metrics[key]
        for i, case in enumerate(info.get("dense_cases", [])):
            out[f"dense{i}_tracks"] = m.decode_dense(
                io["enc_mean"][:1],
                case["points_per_track"],
                frame[:1],
                grid_size=case["grid_size"],
                chunk_size=case["chunk_size"],
            )
    return out


def _planner_outputs(kind: str) -> dict[str, torch.Tensor]:
    m, io, info = _model(kind), P.io(kind), P.kind_info(kind)
    frame = P.frame(io["start_frame_u8"])
    kw = {"track_conds": io["track_conds"]}
    if "txt_emb" in io:
        kw["txt_emb"] = io["txt_emb"]
    if "start_t" in io:
        kw["start_t"] = io["start_t"]
    sampler = info["sampler"]
    steps = sampler.get("used_sample_steps", sampler["default_sample_steps"])
    out = {}
    with torch.no_grad():
        cond = m.conditioning(frame, **kw)
        uncond = m.unconditioning(cond, start_t=kw.get("start_t"))
        for prefix, c in (("cond", cond), ("uncond", uncond)):
            out[f"{prefix}_extra_tokens"], out[f"{prefix}_extra_pos"] = c.extra_tokens, c.extra_pos
            out[f"{prefix}_x_cross"], out[f"{prefix}_pos_cross"] = c.x_cross, c.pos_cross
        out["time_cond"] = m.time_condition(io["t"])
        out["velocity_cond"] = m.predict_velocity(io["z"], io["t"], cond)
        out["velocity_uncond"] = m.predict_velocity(io["z"], io["t"], uncond)
        if "start_t_probe_int" in io:
            out["start_t_emb_int"] = m.step_token(io["start_t_probe_int"])
            out["start_t_emb_float"] = m.step_token(io["start_t_probe_float"])
            float_kw = {**kw, "start_t": kw["start_t"].float()}
            out["cond_x_cross_float_start_t"] = m.conditioning(frame, **float_kw).x_cross
    out["sample_latents"] = m.sample(io["z"], frame, sample_steps=steps, **kw)
    if "sample_tracks" in info["tensors"]:
        T = info["tensors"]["sample_tracks"]["shape"][-2]
        out["sample_tracks"] = m.sample(
            io["z"], frame, sample_steps=steps, query_pos=io["query_pos"], points_per_track=T, **kw
        )
    if "denorm_sample_latents_head" in io:
        n = info["tensors"]["denorm_sample_latents_head"]["shape"][1]
        out["denorm_sample_latents_head"] = m.denormalize_latents(io["sample_latents"][:, :n])
    cfg = sampler.get("cfg_sample")
    if cfg is None or "sample_latents_cfg" not in info["tensors"]:
        return out
    out["sample_latents_cfg"] = m.sample(
        io["z"], frame, sample_steps=cfg["sample_steps"], cfg_scale=cfg["cfg_scale"], **kw
    )
    return out


@cache
def _outputs(kind: str) -> dict[str, torch.Tensor]:
    if kind == "blocks":
        return _blocks_outputs()
    if kind == "vae":
        return _vae_outputs(kind)
    if kind.startswith("planner_"):
        return _planner_outputs(kind)
    raise KeyError(f"no parity runner for fixture kind {kind!r}")


# ----------------------------------------------------------------------------------------------------------
# tests


def test_manifest_has_every_kind():
    """A kind missing from the fixture set is a failure, not a silently shorter parametrization."""
    assert P.manifest(), f"no manifest.json in {P.fixture_dir()}; set ZIPMO_PARITY_FIXTURES"
    missing = [k for k in EXPECTED_KINDS if k not in P.kinds()]
    assert not missing, f"the parity manifest in {P.fixture_dir()} lacks kinds {missing}"
    for kind in EXPECTED_KINDS:
        assert P.outputs(kind), f"{kind}: the manifest lists no output tensor"


@pytest.mark.parametrize(("kind", "name"), _cases(), ids=[f"{k}-{n}" for k, n in _cases()])
def test_output(kind: str, name: str, one_thread):
    got = _outputs(kind)
    if name not in got:
        pytest.fail(f"{kind}: no runner produces output {name!r}; the parity test needs an entry for it")
    want = P.io(kind)[name]
    err = P.max_abs_err(got[name], want)
    tol = _tolerance(name)
    print(f"PARITY {kind:24s} {name:34s} max_abs_err={err:.3e} tol={tol:.0e}")
    assert err <= tol, f"{kind}.{name}: max abs error {err:.3e} > {tol:.0e}"


# The policy-head kinds' action chunks and actions are checked in tests/test_policy_parity.py; here, the planner
# part of their recorded rollout.
@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_policy_planner_part(kind: str, one_thread):
    """The planner bundled in a policy-head file (`track_predictor.*`), loaded through the converter,
    reproduces the planner latents of the recorded rollout: fp32 record and bf16-autocast record."""
    io, info = P.io(kind), P.kind_info(kind)
    sd = checkpoints.convert_official_state_dict(kind, P.weights(kind))
    prefix = "track_predictor."
    variant = (
        "planner_libero_tramoe"
        if any(k.startswith(prefix + "start_t_mapping") for k in sd)
        else "planner_libero_atm"
    )
    cfg = P.planner_config(variant)
    cfg.share_vae_dino = checkpoints.shares_vae_dino(kind, sd)
    planner = checkpoints.build_model(variant, cfg).eval()
    checkpoints.load_strict(planner, {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})
    frame = P.frame(io["roll_obs_u8"])
    nfe = info["sampler"]["track_pred_nfe"]
    records = [r for r in ("fp32", "amp") if f"roll_{r}_latents" in io]
    assert records, f"{kind}: no roll_*_latents records"
    for step in range(io["roll_noise"].shape[0]):
        kw = {
            "track_conds": io["roll_track_conds"][step],
            "txt_emb": io["roll_task_emb"][:, None, :],
            "start_t": io["roll_start_t"][step],
            "sample_steps": nfe,
        }
        for record in records:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=record == "amp"):
                latents = planner.sample(io["roll_noise"][step], frame, **kw)
            err = P.max_abs_err(latents, io[f"roll_{record}_latents"][step])
            tol = AMP_TOL if record == "amp" else FP32_TOL
            print(
                f"PARITY {kind:24s} roll_{record}_latents[{step}]{'':15s} max_abs_err={err:.3e} tol={tol:.0e}"
            )
            assert err <= tol, f"{kind} step {step} {record}: max abs error {err:.3e} > {tol:.0e}"
