"""Protocol presets: every documented knob, typed here from PROTOCOLS.md (§1 ATM, §2 Tra-MoE, §3 ZipMo, §4
OpenVLA-OFT / LeRobot), checked against what the YAML presets (validated by `ProtocolConfig`) yield."""

from __future__ import annotations

import pytest
from zipmo_robot.configs import compose
from zipmo_robot.eval.protocols import (
    env_seed,
    episode_seed,
    init_state_for,
    load_preset,
    preset_names,
    protocol_from_dict,
)
from zipmo_robot.eval.settings import compose_command

from zipmo_robot.errors import UserError

ALL = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]
DUMMY = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]

# (caps per suite, settle steps, render, policy input, orientation, episodes/task, default seed, suites)
DOCUMENTED = {
    "atm": (dict.fromkeys(ALL, 600), 5, 128, None, "flip_vertical", 20, 0, set(ALL)),
    "tramoe": (dict.fromkeys(ALL, 600), 5, 128, None, "flip_vertical", 20, 0, set(ALL) - {"libero_90"}),
    "zipmo_release": (dict.fromkeys(ALL, 600), 5, 128, None, "flip_vertical", 10, 42, set(ALL)),
    "literature": (
        {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400},
        10, 256, 224, "rotate_180", 50, 7, set(ALL),
    ),
    "lerobot": (
        {"libero_spatial": 280, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400},
        10, 360, None, "rotate_180", 10, 1000, set(ALL) - {"libero_90"},
    ),
}  # fmt: skip
# render -> policy resize: OpenVLA / OpenVLA-OFT's JPEG encode -> decode, tf.image.resize lanczos3 with antialias,
# round + clip (`resize_image_for_policy`, §4); the presets without a policy size never resize.
RESIZE = {"literature": "openvla"}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_preset_knobs_are_the_documented_ones(name: str) -> None:
    caps, settle, render, policy_px, orientation, episodes, seed, suites = DOCUMENTED[name]
    p = load_preset(name)
    assert p.max_steps == caps
    assert (p.settle_steps, p.settle_action) == (settle, DUMMY)
    assert (p.image_size, p.policy_image_size, p.orientation) == (render, policy_px, orientation)
    assert p.policy_image_resize == RESIZE.get(name, "pil_bilinear")
    assert (p.episodes_per_task, p.seed, set(p.suites)) == (episodes, seed, suites)
    for suite in ALL:  # the env config of each task carries the knobs
        env = p.env_config(suite, 3)
        assert (env.max_steps, env.settle_steps, env.orientation, env.image_size) == (
            caps[suite], settle, orientation, render,
        )  # fmt: skip
        assert (env.policy_image_size, env.policy_image_resize) == (policy_px, p.policy_image_resize)
    # hydra composition (the CLI's path) gives the same preset as the file
    assert protocol_from_dict(compose("eval", [f"protocol={name}"]).protocol) == p
    assert p.label() == name and p.changed_knobs() == {}


def test_atm_and_tramoe_init_states_and_seeds() -> None:
    blocks = [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 1, 6, 11, 16, 21, 26, 31, 36, 41, 46]
    for name in ("atm", "tramoe"):
        p = load_preset(name)
        for task in (0, 9, 57):
            for seed in (0, 1, 2):
                assert [init_state_for(p, task, e, seed) for e in range(20)] == blocks
                assert {env_seed(p, task, e, seed) for e in range(20)} == {0}
    assert load_preset("tramoe").heads == "per_suite" and load_preset("atm").heads == "shared"


def test_zipmo_release_init_states_and_seeds() -> None:
    p = load_preset("zipmo_release")
    table = {  # PROTOCOLS.md §3.2, seed 42, worker order
        0: [40, 7, 1, 17, 15, 14, 8, 6, 34, 5],
        4: [36, 2, 32, 44, 49, 41, 11, 10, 0, 45],
        9: [16, 18, 20, 36, 29, 1, 43, 37, 34, 2],
        89: [1, 38, 37, 33, 7, 16, 24, 26, 17, 9],
    }
    for task, states in table.items():
        assert [init_state_for(p, task, e, 42) for e in range(10)] == states
    assert [env_seed(p, 4, e, 42) for e in range(10)] == [42 + 4000 + i for i in range(10)]
    assert episode_seed(p, 4, 3, 42) == 42 + 400000 + 3


def test_literature_and_lerobot_init_states_and_seeds() -> None:
    lit = load_preset("literature")
    assert [init_state_for(lit, 5, e, 7) for e in range(50)] == list(range(50))  # initial_states[0..49]
    assert {env_seed(lit, t, e, 7) for t in (0, 5) for e in range(50)} == {0}  # env.seed(0)
    assert lit.errors_as_failures is True  # an exception counts as a failed trial
    lr = load_preset("lerobot")
    assert [init_state_for(lr, 2, e, 1000) for e in range(10)] == list(range(10))
    assert [env_seed(lr, 2, e, 1000) for e in range(10)] == list(range(1000, 1010))


def test_every_shipped_preset_is_covered() -> None:
    assert set(preset_names()) == set(DOCUMENTED) | {"default"}


def test_a_changed_knob_relabels_the_run_but_a_selection_does_not() -> None:
    cfg = compose_command("eval", ["protocol.settle_steps=10"], ["protocol=atm"])
    p = protocol_from_dict(cfg.protocol)
    assert p.label() == "atm+overrides" and p.changed_knobs() == {"settle_steps": 10}
    assert p.knob_hash() != load_preset("atm").knob_hash()
    cfg = compose_command("eval", ["protocol.max_steps.libero_10=50"], ["protocol=literature"])
    assert protocol_from_dict(cfg.protocol).changed_knobs() == {"max_steps.libero_10": 50}
    cfg = compose_command("eval", ["protocol.policy_image_resize=pil_bilinear"], ["protocol=literature"])
    assert protocol_from_dict(cfg.protocol).label() == "literature+overrides"  # the resize is a knob
    cfg = compose_command("eval", [], ["protocol=atm", "suites=[libero_goal]", "episodes=3", "seeds=[4]"])
    assert protocol_from_dict(cfg.protocol).label() == "atm"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["foo=1"], "unknown setting 'foo' in 'foo=1'"),
        (["+foo=1"], "unknown setting 'foo' in '+foo=1'"),
        (["protocol.horizon=3"], "unknown setting 'protocol.horizon'"),
        (["num_envs=many"], "bad setting in 'num_envs=many'"),
        (["protocol=openvla"], "known protocols: atm, default, lerobot, literature, tramoe, zipmo_release"),
    ],
)
def test_unknown_keys_are_refused_in_the_users_words(words: list[str], expected: str) -> None:
    with pytest.raises(UserError) as info:
        compose_command("rollout", words, ["suite=libero_goal", "policy=random"])
    assert expected in str(info.value)
    assert "suite=" not in str(info.value)  # never the command's own overrides


def test_schema_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="orientation"):
        protocol_from_dict({"name": "x", "orientation": "sideways"})
    with pytest.raises(ValueError, match="policy_image_resize"):
        protocol_from_dict({"name": "x", "policy_image_resize": "bicubic"})
    with pytest.raises(ValueError, match="max_steps has no cap"):
        protocol_from_dict({"name": "x", "max_steps": {"libero_10": 5}})
    with pytest.raises(ValueError, match="unknown protocol field"):
        protocol_from_dict({"name": "x", "horizon": 3})
    with pytest.raises(KeyError, match="zipmo_release"):
        load_preset("nope")
