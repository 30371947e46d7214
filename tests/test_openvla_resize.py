"""`envs/openvla_resize.py` against TensorFlow's own outputs of OpenVLA's policy-image pipeline.

The reference is `tests/data/openvla_resize_tf.npz`, written by `benchmarks/openvla_resize_fixture.py` with
TensorFlow 2.21.0 (tf.image.encode_jpeg -> decode_image -> resize lanczos3 antialias -> round/clip/uint8, as
OpenVLA-OFT's `resize_image_for_policy`). Tolerance is zero at every stage: the JPEG round trip, the lanczos3
span weights, the float32 resize and the final uint8 image; a failure message gives the max |diff| and the
share of differing pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from zipmo_robot.envs.openvla_resize import jpeg_round_trip, lanczos3_resize, lanczos3_spans, openvla_resize

FIXTURE = Path(__file__).parent / "data" / "openvla_resize_tf.npz"


def _frames(png: np.ndarray, n: int) -> list[np.ndarray]:
    """The fixture's frame stacks are PNGs with n frames side by side."""
    from PIL import Image

    return np.split(np.asarray(Image.open(io.BytesIO(png.tobytes())).convert("RGB")), n, axis=1)


@pytest.fixture(scope="module")
def tf_ref() -> dict:
    z = np.load(FIXTURE)
    n = int(z["n_frames"])
    ref = {k: z[k] for k in z.files}
    for key in ("inputs", "tf_jpeg", "tf_policy"):
        ref[key] = _frames(z[key], n)
    return ref


def _diff(mine: np.ndarray, ref: np.ndarray) -> str:
    assert mine.shape == ref.shape and mine.dtype == ref.dtype, (mine.shape, mine.dtype, ref.shape, ref.dtype)
    d = np.abs(mine.astype(np.float64) - ref.astype(np.float64))
    return f"max |diff| {d.max()}, {100 * (d > 0).mean():.3f} % of values differ"


def test_fixture_is_the_documented_one(tf_ref) -> None:
    assert str(tf_ref["tf_version"]) == "2.21.0"
    assert [f.shape for f in tf_ref["inputs"]] == [(256, 256, 3)] * 3
    assert [f.shape for f in tf_ref["tf_policy"]] == [(224, 224, 3)] * 3


def test_jpeg_round_trip_equals_tensorflow(tf_ref) -> None:
    pairs = list(zip(tf_ref["inputs"], tf_ref["tf_jpeg"])) + [(tf_ref["odd_input"], tf_ref["odd_tf_jpeg"])]
    for i, (image, ref) in enumerate(pairs):
        mine = jpeg_round_trip(image)
        assert np.array_equal(mine, ref), f"input {i}: {_diff(mine, ref)}"
        assert not np.array_equal(mine, image)  # the round trip is lossy: the check is not vacuous


def test_lanczos3_weights_equal_tensorflow(tf_ref) -> None:
    starts, weights = lanczos3_spans(256, 224)
    dense = np.zeros((224, 256), dtype=np.float32)
    for i in range(224):
        n = min(weights.shape[1], 256 - starts[i])
        dense[i, starts[i] : starts[i] + n] = weights[i, :n]
    assert np.array_equal(dense, tf_ref["tf_weights_256_224"]), _diff(dense, tf_ref["tf_weights_256_224"])


def test_resize_alone_on_tensorflows_jpeg_equals_tensorflow(tf_ref) -> None:
    """The resize stage by itself, fed TF's decoded JPEG: float32 output and the rounded uint8 image."""
    odd = lanczos3_resize(tf_ref["odd_tf_jpeg"], 20, 90)  # rows shrink 48 -> 20, columns grow 61 -> 90
    assert np.array_equal(odd, tf_ref["odd_tf_resized"]), _diff(odd, tf_ref["odd_tf_resized"])
    for i, (decoded, ref) in enumerate(zip(tf_ref["tf_jpeg"], tf_ref["tf_policy"])):
        mine = np.clip(np.round(lanczos3_resize(decoded, 224, 224)), 0, 255).astype(np.uint8)
        assert np.array_equal(mine, ref), f"frame {i}: {_diff(mine, ref)}"


def test_openvla_resize_equals_tensorflow_pipeline(tf_ref) -> None:
    for i, (image, ref) in enumerate(zip(tf_ref["inputs"], tf_ref["tf_policy"])):
        mine = openvla_resize(image, 224)
        assert np.array_equal(mine, ref), f"frame {i}: {_diff(mine, ref)}"


def test_env_resize_knob_selects_the_pipeline(tf_ref) -> None:
    """`LiberoEnv` observations go through `resize_image(image, size, cfg.policy_image_resize)`."""
    from zipmo_robot.envs.libero import resize_image
    from zipmo_robot.envs.spec import EnvConfig

    image, ref = tf_ref["inputs"][0], tf_ref["tf_policy"][0]
    assert np.array_equal(resize_image(image, 224, "openvla"), ref)
    bilinear = resize_image(image, 224, "pil_bilinear")
    assert bilinear.shape == ref.shape and not np.array_equal(bilinear, ref)
    assert resize_image(image, 256) is image  # PIL path: no-op at the render size
    assert not np.array_equal(resize_image(image, 256, "openvla"), image)  # OpenVLA's: always applied
    assert EnvConfig().policy_image_resize == "pil_bilinear"
    with pytest.raises(ValueError, match="policy_image_resize"):
        EnvConfig(policy_image_resize="bicubic")


def test_bad_images_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        openvla_resize(np.zeros((8, 8, 3), dtype=np.float32), 4)
    with pytest.raises(ValueError, match="uint8"):
        openvla_resize(np.zeros((8, 8), dtype=np.uint8), 4)
