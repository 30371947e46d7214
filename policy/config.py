"""`PolicyConfig`: the one definition of every policy knob (the `policy_options` block of a rollout or eval
config) and its default. The rollout CLI flags, `configs/rollout.yaml`, `make_policy`, the agent and
`zipmo-robot bench` all take their defaults from here; hydra validates the block against it
(`register_schemas`), and a run writes the values it actually used (`resolved`) beside its results.

`None` means "decided when the policy is built": `device` (cuda when torch sees a GPU, else cpu), `overlay`
(on with a GPU, off on CPU where the extra VAE decode per step is costly), `dino_heads` (from `model`, else
embed_dim // 64). `text_embedding` "auto" picks BERT for a 768-wide text token, the sentence code otherwise,
unless the checkpoint names its encoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zipmo_robot.errors import UserError

NOISE_MODES = ("fresh", "episode")  # see PolicyConfig.noise

# Knobs added after evaluation runs were first recorded, at the value those runs used: left out of the
# outcome-settings hash at that value (`hashed_options`), so runs started before a knob existed still resume.
LATE_KNOBS: dict[str, Any] = {"noise": "fresh"}


def hashed_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The policy options that tag a run's records: every set (non-None) option but the `LATE_KNOBS` at
    their old value."""
    return {
        k: v for k, v in options.items() if v is not None and not (k in LATE_KNOBS and v == LATE_KNOBS[k])
    }


@dataclass
class PolicyConfig:
    """Options of the built-in policies (`policy/factory.py`); ZipMo knobs first.

    Args:
        checkpoint: `official:atm` | `official:tramoe` (the suite's head) | `bundled:NAME` | a released-layout
            `.safetensors` file | a trained checkpoint folder (`checkpoints/loader.py`).
        nfe: Euler steps per replan (10 released, the official `track_pred_nfe`).
        cfg_scale: classifier-free guidance scale (1.0 released: no unconditional pass).
        precision: planner numerics, "bf16" (bf16 autocast, the official `act`, on CPU too) | "fp32".
        compile: the opt-in fast path: the planner's per-Euler-step network call runs through
            `torch.compile` (inductor; `models/planner.py::CompiledVelocity`), compiled once per batch size
            on first use (tens of seconds each). Its actions differ from the exact path (False, the default:
            bit-identical to the official code) in the last bits, within the parity tests' autocast
            tolerance; needs a C++ compiler.
        device: "cpu" | "cuda" | "cuda:N"; None = cuda when available.
        overlay: draw the plan on the videos (one VAE decode per step); None = on with a GPU.
        ensemble: temporal ensembling, "official" | "textbook" (`policy/ensembling.py`).
        replan_every: plan every k-th control step and run the chunk open loop in between (actions
            0..k-1 of the head's chunk, no ensembling); 1 (released) replans every step with ensembling. A
            CPU knob: the planner is ~98 % of a step, so k = 4 cuts policy time ~4x.
        noise: the planner's initial noise at each replan, "fresh" (released, quirk Q2: a new draw from the
            row's generator every replan) | "episode" (one draw at the episode's first plan, reused by every
            later replan, so successive plans follow one mode of the planner instead of switching between
            them; the first plan of an episode is the same in both modes).
        text_embedding: "auto" | "bert" | "sentence_code" (offline per-sentence code, `models/text.py`).
        dino_heads: DINO head count of a non-release-size file (not visible in its shapes).
        model: a size name of `configs/model/` (release | small | tiny) giving `dino_heads`.
        demo: `--policy replay`: the LIBERO demonstration HDF5 file to replay.
    """

    checkpoint: str = "official:atm"
    nfe: int = 10
    cfg_scale: float = 1.0
    precision: str = "bf16"
    compile: bool = False
    device: str | None = None
    overlay: bool | None = None
    ensemble: str = "official"
    replan_every: int = 1
    noise: str = "fresh"
    text_embedding: str = "auto"
    dino_heads: int | None = None
    model: str | None = None
    demo: str | None = None

    def __post_init__(self) -> None:
        """Check every knob (the one check of each); imports lazily so that reading the defaults is light."""
        from zipmo_robot.policy.ensembling import ENSEMBLE_MODES

        from zipmo_robot.models.planner import sampling_autocast
        from zipmo_robot.models.text import TEXT_ENCODERS

        text_embeddings = ("auto", *TEXT_ENCODERS, "hash")  # hash: the old name of sentence_code

        if self.nfe < 1:
            raise UserError(f"nfe must be >= 1 (Euler steps per replan), got {self.nfe}")
        try:
            sampling_autocast(self.precision, "cpu")
        except ValueError as exc:
            raise UserError(f"--precision: {exc}") from None
        if not 1 <= self.replan_every <= 16:
            raise UserError(
                f"replan_every={self.replan_every} must be in 1..16 (the head predicts 16-action chunks)"
            )
        if self.noise not in NOISE_MODES:
            raise UserError(f"noise={self.noise!r} is not one of {', '.join(NOISE_MODES)}")
        if self.ensemble not in ENSEMBLE_MODES:
            raise UserError(f"ensemble={self.ensemble!r} is not one of {', '.join(ENSEMBLE_MODES)}")
        if self.text_embedding not in text_embeddings:
            raise UserError(
                f"text_embedding={self.text_embedding!r} is not one of {', '.join(text_embeddings)}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> PolicyConfig:
        """The config of a `policy_options` mapping (a DictConfig or dict): keys of this schema are taken,
        None values mean the default; other keys (the run's suite, tasks, seed, ...) are left to the caller."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in dict(options or {}).items() if k in names and v is not None}
        return cls(**given)

    def resolved(self, **decided: Any) -> dict[str, Any]:
        """Every knob as a plain dict, with the values decided at build time (`decided`) filled in."""
        out = dataclasses.asdict(self)
        unknown = set(decided) - set(out)
        if unknown:
            raise ValueError(f"not PolicyConfig fields: {sorted(unknown)}")
        out.update(decided)
        return out


# Run settings `make_policy` receives beside the `policy_options` (from the rollout/eval config).
RUN_CONTEXT_KEYS = ("suite", "tasks", "seed", "image_size", "max_steps", "settle_steps", "orientation")


def register_schemas(cs: Any) -> None:
    """Store `PolicyConfig` in hydra's ConfigStore as `policy_options_schema` (the type of the rollout and
    eval configs' `policy_options` node; `configs/__init__.py::SCHEMA_MODULES` lists this module)."""
    cs.store(name="policy_options_schema", node=PolicyConfig)
