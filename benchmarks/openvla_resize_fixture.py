"""Make tests/data/openvla_resize_tf.npz: TensorFlow's own outputs of OpenVLA's policy-image pipeline, the
reference `tests/test_openvla_resize.py` holds `envs/openvla_resize.py` to. Needs TensorFlow (not a project
dependency: install it in a throwaway venv, `pip install tensorflow-cpu pillow`); the project itself is
not imported, only numpy, PIL and the golden frames' npz, so any venv with TF runs it:

    python benchmarks/openvla_resize_fixture.py [--out tests/data/openvla_resize_tf.npz]

Inputs (256x256 uint8, the literature preset's render size): the package's golden LIBERO agentview frame
(libero_spatial task 0, init state 0, 128x128, PIL-bicubic upscaled to 256 and rotated 180 degrees as the preset
feeds it), a synthetic frame (gradients, a sine pattern, a Gaussian-noise patch, saturated 0/255 and colour
blocks with hard edges; numpy Generator seed 0) and a blocky frame with colour steps of up to 255 every 32 px
(seed 1); plus a 48x61 white-noise image (seed 2: odd sizes exercise libjpeg's edge padding, noise its clamping).
Stored (the three frame stacks as PNG bytes, frames side by side; the rest as arrays): the inputs, TF's JPEG
round trip (`decode_image(encode_jpeg(x))`), the whole pipeline at 224 (`resize_image_for_policy`), TF's
lanczos3 weight matrix for 256 -> 224, and TF's float32 resize of the odd image's round trip to 20x90 (a down-
and an up-scaled axis). At the end it prints how far `envs/openvla_resize.py` is from each stored output.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "zipmo_robot" / "resources" / "golden" / "libero_spatial_t0_init0.npz"
SIZE, POLICY_SIZE, ODD_SHAPE, ODD_OUT = 256, 224, (48, 61, 3), (20, 90)


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """The three (256, 256, 3) uint8 test frames and the odd-size (48, 61, 3) noise image."""
    from PIL import Image

    frames = []
    agentview = np.load(GOLDEN)["agentview"]  # stored upright (vertical flip of the raw render)
    up = np.asarray(Image.fromarray(agentview).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    frames.append(np.ascontiguousarray(up[:, ::-1]))  # upright -> raw is [::-1]; raw rotated 180 is [:, ::-1]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    img = np.stack([xx, yy, 128 + 100 * np.sin(xx / 7 + yy / 11)], -1)
    img[160:224, 96:160] += rng.normal(
        0, 20, (64, 64, 3)
    )  # a noisy patch (kept small: noise is incompressible)
    img[80:130, 50:180] = [250, 10, 30]
    img[140:, :40] = 0
    img[:40, 140:] = 255
    frames.append(np.clip(img, 0, 255).astype(np.uint8))
    blocks = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    frames.append(np.repeat(np.repeat(blocks, 32, 0), 32, 1))
    odd = np.random.default_rng(2).integers(0, 256, ODD_SHAPE, dtype=np.uint8)
    return np.stack(frames), odd


def png(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> the bytes (uint8 array) of one lossless PNG with the frames side by side (PNG's
    row filters store gradients in a fraction of what zlib alone needs)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.concatenate(list(frames), axis=1)).save(buf, format="PNG", optimize=True)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "openvla_resize_tf.npz")
    args = parser.parse_args()
    import tensorflow as tf

    def jpeg(x: np.ndarray) -> np.ndarray:
        return tf.io.decode_image(tf.image.encode_jpeg(x), expand_animations=False, dtype=tf.uint8).numpy()

    def policy(x: np.ndarray) -> np.ndarray:  # OpenVLA-OFT resize_image_for_policy, verbatim in behaviour
        img = tf.io.decode_image(tf.image.encode_jpeg(x), expand_animations=False, dtype=tf.uint8)
        img = tf.image.resize(img, (POLICY_SIZE, POLICY_SIZE), method="lanczos3", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8).numpy()

    frames, odd = inputs()
    # column j of the weight matrix = the resize of a unit impulse at row j (width 1 stays exact)
    eye = np.eye(SIZE, dtype=np.float32).reshape(SIZE, SIZE, 1, 1)
    weights = tf.image.resize(eye, (POLICY_SIZE, 1), method="lanczos3", antialias=True).numpy()[:, :, 0, 0].T
    odd_jpeg = jpeg(odd)
    data = {
        "inputs": frames,
        "tf_jpeg": np.stack([jpeg(f) for f in frames]),
        "tf_policy": np.stack([policy(f) for f in frames]),
        "n_frames": np.array(len(frames)),
        "tf_weights_256_224": weights.astype(np.float32),
        "odd_input": odd,
        "odd_tf_jpeg": odd_jpeg,
        "odd_tf_resized": tf.image.resize(odd_jpeg, ODD_OUT, method="lanczos3", antialias=True).numpy(),
        "tf_version": np.array(tf.__version__),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    stored = {k: png(v) if k in ("inputs", "tf_jpeg", "tf_policy") else v for k, v in data.items()}
    np.savez_compressed(args.out, **stored)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB), TensorFlow {tf.__version__}")

    spec = importlib.util.spec_from_file_location("openvla_resize", ROOT / "envs" / "openvla_resize.py")
    ours = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ours)
    for i, f in enumerate(frames):
        for name, mine, ref in (
            ("jpeg", ours.jpeg_round_trip(f), data["tf_jpeg"][i]),
            ("policy", ours.openvla_resize(f, POLICY_SIZE), data["tf_policy"][i]),
        ):
            d = np.abs(mine.astype(np.int64) - ref)
            print(f"frame {i} {name}: max |diff| {d.max()}, pixels differing {100 * (d > 0).mean():.3f} %")
    d = np.abs(ours.lanczos3_resize(odd_jpeg, *ODD_OUT) - data["odd_tf_resized"]).max()
    print(f"odd jpeg equal: {np.array_equal(ours.jpeg_round_trip(odd), odd_jpeg)}, odd resize max |diff| {d}")


if __name__ == "__main__":
    main()
