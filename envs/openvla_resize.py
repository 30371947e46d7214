"""OpenVLA's policy-input resize in numpy, bit-exact with the TensorFlow pipeline it copies.

OpenVLA (`resize_image`) and OpenVLA-OFT (`resize_image_for_policy`) give the policy
    tf.image.encode_jpeg(img)                      # quality 95, 4:2:0 chroma, libjpeg-turbo, JDCT_ISLOW
    tf.io.decode_image(..., dtype=tf.uint8)        # libjpeg-turbo, JDCT_IFAST, fancy upsampling
    tf.image.resize(..., "lanczos3", antialias=True)   # ScaleAndTranslate op, float32
    tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)   # round half to even
(PROTOCOLS.md §4), because their RLDS training images went through the same JPEG round trip. This module
redoes each stage's integer (libjpeg) and float32 (TensorFlow kernel) arithmetic step by step, so the policy
input equals TensorFlow's without TensorFlow. The JPEG round trip never needs the entropy coder: it is
colour conversion, chroma downsampling, forward DCT, quantisation, then dequantisation, inverse DCT, chroma
upsampling and colour conversion back. `tests/test_openvla_resize.py` checks it against stored TensorFlow
outputs (`tests/data/openvla_resize_tf.npz`, made by `benchmarks/openvla_resize_fixture.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

JPEG_QUALITY = 95  # tf.image.encode_jpeg default
LANCZOS_RADIUS = 3.0

# JPEG standard (ITU T.81 Annex K) quantisation tables, natural (row-major) order.
_LUMA_QUANT = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
)
_CHROMA_QUANT = np.full((8, 8), 99, dtype=np.int64)
_CHROMA_QUANT[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def openvla_resize(image: np.ndarray, size: int) -> np.ndarray:
    """OpenVLA's policy input: JPEG round trip, lanczos3 antialiased resize, round, clip.

    (H, W, 3) uint8 -> (size, size, 3) uint8. Always runs the whole pipeline, also when H = W = size (as
    OpenVLA does: the JPEG round trip and the lanczos filter change the pixels even then).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"openvla_resize needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    resized = lanczos3_resize(jpeg_round_trip(image), size, size)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


# JPEG round trip (libjpeg-turbo arithmetic)

_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


def quant_table(base: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """libjpeg's `jpeg_set_quality(quality, force_baseline=TRUE)` scaling of a base table (8, 8)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


def _rgb_to_ycc(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """libjpeg `rgb_ycc_convert`: 16-bit fixed point, (H, W, 3) uint8 -> three (H, W) int64 planes."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    center = (128 << _SCALEBITS) + _ONE_HALF - 1
    y = (_fix(0.29900) * r + _fix(0.58700) * g + _fix(0.11400) * b + _ONE_HALF) >> _SCALEBITS
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + center) >> _SCALEBITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + center) >> _SCALEBITS
    return y, cb, cr


def _ycc_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """libjpeg `ycc_rgb_convert`: three (H, W) int64 planes -> (H, W, 3) uint8."""
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix(1.40200) * cr + _ONE_HALF) >> _SCALEBITS)
    g = y + ((-_fix(0.34414) * cb + _ONE_HALF - _fix(0.71414) * cr) >> _SCALEBITS)
    b = y + ((_fix(1.77200) * cb + _ONE_HALF) >> _SCALEBITS)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def _downsample_h2v2(plane: np.ndarray) -> np.ndarray:
    """libjpeg `h2v2_downsample`: 2x2 mean with the alternating bias 1, 2, 1, 2, ... along each row.
    (2h, 2w) -> (h, w)."""
    s = plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]
    bias = np.where(np.arange(s.shape[1]) % 2 == 0, 1, 2)
    return (s + bias) >> 2


def _upsample_h2v2_fancy(plane: np.ndarray) -> np.ndarray:
    """libjpeg `h2v2_fancy_upsample` (triangle filter, 9/16 3/16 3/16 1/16), edges replicated.
    (h, w) -> (2h, 2w)."""
    p = np.pad(plane, 1, mode="edge")
    mid = p[1:-1]
    above = 3 * mid + p[:-2]  # column sums for the upper output row of each input row
    below = 3 * mid + p[2:]
    out = np.empty((2 * plane.shape[0], 2 * plane.shape[1]), dtype=np.int64)
    for r0, cs in ((0, above), (1, below)):
        this, left, right = cs[:, 1:-1], cs[:, :-2], cs[:, 2:]
        out[r0::2, 0::2] = (3 * this + left + 8) >> 4
        out[r0::2, 1::2] = (3 * this + right + 7) >> 4
    return out


def _blocks(plane: np.ndarray) -> np.ndarray:
    """(8a, 8b) -> (a, b, 8, 8) blocks."""
    a, b = plane.shape[0] // 8, plane.shape[1] // 8
    return plane.reshape(a, 8, b, 8).transpose(0, 2, 1, 3)


def _unblocks(blocks: np.ndarray) -> np.ndarray:
    a, b = blocks.shape[:2]
    return blocks.transpose(0, 2, 1, 3).reshape(8 * a, 8 * b)


def _fdct_islow_1d(d: list[np.ndarray], first_pass: bool) -> list[np.ndarray]:
    """One pass of libjpeg's `jpeg_fdct_islow` (13-bit constants, 2 extra bits between passes)."""
    const_bits, pass1_bits = 13, 2
    shift = const_bits - pass1_bits if first_pass else const_bits + pass1_bits

    def descale(x: np.ndarray, n: int) -> np.ndarray:
        return (x + (1 << (n - 1))) >> n

    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    out: list[np.ndarray] = [np.empty(0)] * 8
    if first_pass:
        out[0], out[4] = (tmp10 + tmp11) << pass1_bits, (tmp10 - tmp11) << pass1_bits
    else:
        out[0], out[4] = descale(tmp10 + tmp11, pass1_bits), descale(tmp10 - tmp11, pass1_bits)
    z1 = (tmp12 + tmp13) * 4433
    out[2] = descale(z1 + tmp13 * 6270, shift)
    out[6] = descale(z1 - tmp12 * 15137, shift)
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * 9633
    tmp4, tmp5, tmp6, tmp7 = tmp4 * 2446, tmp5 * 16819, tmp6 * 25172, tmp7 * 12299
    z1, z2, z3, z4 = z1 * -7373, z2 * -20995, z3 * -16069 + z5, z4 * -3196 + z5
    out[7] = descale(tmp4 + z1 + z3, shift)
    out[5] = descale(tmp5 + z2 + z4, shift)
    out[3] = descale(tmp6 + z2 + z3, shift)
    out[1] = descale(tmp7 + z1 + z4, shift)
    return out


def _pass(blocks: np.ndarray, fn, axis: int, **kw) -> np.ndarray:
    """Apply a 1-D 8-point transform `fn(list of 8 arrays)` along `axis` (-1 rows, -2 columns)."""
    moved = np.moveaxis(blocks, axis, 0)
    return np.moveaxis(np.stack(fn(list(moved), **kw)), 0, axis)


def _quantize(coef: np.ndarray, qtable: np.ndarray) -> np.ndarray:
    """libjpeg-turbo `quantize` with its reciprocal divisors (16-bit DCTELEM), divisor = 8 * qtable (the
    islow FDCT output is scaled by 8): round(|c| / divisor) with the sign put back."""
    divisor = qtable << 3
    b = np.floor(np.log2(divisor)).astype(np.int64)  # flss(divisor) - 1
    r = 16 + b
    fq, fr = (1 << r) // divisor, (1 << r) % divisor
    c = divisor // 2
    pow2 = fr == 0
    fq = np.where(pow2, fq >> 1, fq)
    r = np.where(pow2, r - 1, r)
    c = np.where(~pow2 & (fr <= divisor // 2), c + 1, c)
    fq = np.where(~pow2 & (fr > divisor // 2), fq + 1, fq)
    q = ((np.abs(coef) + c) * fq) >> r
    return np.where(coef < 0, -q, q)


# jddctmgr.c: the IFAST dequantisation multipliers are qtable * aanscale (14 bits) descaled to 2 bits.
_AAN = np.array([1.0] + [np.cos(k * np.pi / 16) * np.sqrt(2) for k in range(1, 8)])
_AANSCALES = np.round(np.outer(_AAN, _AAN) * (1 << 14)).astype(np.int64)


def _idct_ifast_1d(d: list[np.ndarray], last_pass: bool) -> list[np.ndarray]:
    """One pass of libjpeg's `jpeg_idct_ifast` (8-bit constants, truncating shifts)."""

    def mul(x: np.ndarray, k: int) -> np.ndarray:
        return (x * k) >> 8

    tmp10, tmp11 = d[0] + d[4], d[0] - d[4]
    tmp13 = d[2] + d[6]
    tmp12 = mul(d[2] - d[6], 362) - tmp13
    tmp0, tmp3, tmp1, tmp2 = tmp10 + tmp13, tmp10 - tmp13, tmp11 + tmp12, tmp11 - tmp12
    z13, z10, z11, z12 = d[5] + d[3], d[5] - d[3], d[1] + d[7], d[1] - d[7]
    tmp7 = z11 + z13
    tmp11 = mul(z11 - z13, 362)
    z5 = mul(z10 + z12, 473)
    tmp10 = mul(z12, 277) - z5
    tmp12 = mul(z10, -669) + z5
    tmp6 = tmp12 - tmp7
    tmp5 = tmp11 - tmp6
    tmp4 = tmp10 + tmp5
    out = [
        tmp0 + tmp7,
        tmp1 + tmp6,
        tmp2 + tmp5,
        tmp3 - tmp4,
        tmp3 + tmp4,
        tmp2 - tmp5,
        tmp1 - tmp6,
        tmp0 - tmp7,
    ]
    if last_pass:  # IDESCALE by PASS1_BITS + 3, then libjpeg's post-IDCT range-limit table
        out = [_range_limit(x >> 5) for x in out]
    return out


def _range_limit(x: np.ndarray) -> np.ndarray:
    """libjpeg's post-IDCT `range_limit[x & RANGE_MASK]`: x + 128 clamped to 0..255 for |x| < 512."""
    t = x & 1023
    return np.where(t < 128, t + 128, np.where(t < 512, 255, np.where(t < 896, 0, t - 896)))


def _code_plane(plane: np.ndarray, qtable: np.ndarray) -> np.ndarray:
    """Encode and decode one padded plane (8a, 8b) of samples: level shift, islow FDCT, quantise,
    IFAST dequantise + IDCT. Returns the decoded samples (8a, 8b) int64."""
    blocks = _blocks(plane - 128)
    coef = _pass(_pass(blocks, _fdct_islow_1d, -1, first_pass=True), _fdct_islow_1d, -2, first_pass=False)
    q = _quantize(coef, qtable)
    mult = (qtable * _AANSCALES + (1 << 11)) >> 12
    deq = q * mult
    ws = _pass(deq, _idct_ifast_1d, -2, last_pass=False)
    return _unblocks(_pass(ws, _idct_ifast_1d, -1, last_pass=True))


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """`tf.io.decode_image(tf.image.encode_jpeg(image, quality=quality))`: baseline 4:2:0 JPEG with the
    standard tables, decoded with the fast integer IDCT and fancy upsampling. (H, W, 3) uint8 -> same.

    Edges as libjpeg pads them: planes are extended by repeating the last column / row before
    downsampling (to whole 2x2 groups and whole chroma blocks) and the downsampled chroma by repeating
    its last row; the decoder replicates the last real chroma row / column for upsampling.
    """
    h, w = image.shape[:2]
    hc, wc = -(-h // 2), -(-w // 2)  # downsampled (chroma) size
    y, cb, cr = _rgb_to_ycc(image)
    y_pad = np.pad(y, ((0, _ceil_to(h, 8) - h), (0, _ceil_to(w, 8) - w)), mode="edge")
    luma_q, chroma_q = quant_table(_LUMA_QUANT, quality), quant_table(_CHROMA_QUANT, quality)
    y_out = _code_plane(y_pad, luma_q)[:h, :w]
    chroma = []
    for plane in (cb, cr):
        full = np.pad(plane, ((0, 2 * hc - h), (0, 2 * _ceil_to(wc, 8) - w)), mode="edge")
        small = np.pad(_downsample_h2v2(full), ((0, _ceil_to(hc, 8) - hc), (0, 0)), mode="edge")
        decoded = _code_plane(small, chroma_q)[:hc, :wc]
        chroma.append(_upsample_h2v2_fancy(decoded)[:h, :w])
    return _ycc_to_rgb(y_out, *chroma)


# lanczos3 antialiased resize (TensorFlow's ScaleAndTranslate kernel, float32)

_F32 = np.float32
_PI = _F32(3.14159265359)


@functools.cache
def _libm_sinf():
    """The C library's `sinf`, which TensorFlow's kernel calls (None where no libm can be loaded)."""
    name = ctypes.util.find_library("m")
    try:
        fn = ctypes.CDLL(name).sinf
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


def _sinf(x: np.float32) -> np.float32:
    """float32 sin as the TF kernel gets it from libm: glibc's `sinf` is not always the float32 nearest to
    sin(x), and 1-ulp weight differences show in the resized floats; without a libm, that nearest value."""
    fn = _libm_sinf()
    return _F32(fn(float(x))) if fn is not None else _F32(np.sin(np.float64(x)))


def _lanczos(x: np.float32, radius: np.float32) -> np.float32:
    """sampling_kernels.h `LanczosKernelFunc`, evaluated in float32."""
    x = abs(x)
    if x > radius:
        return _F32(0.0)
    if x <= 1e-3:
        return _F32(1.0)
    num = radius * _sinf(_PI * x) * _sinf(_PI * x / radius)
    return _F32(num / (_PI * _PI * x * x))


@functools.lru_cache(maxsize=16)
def lanczos3_spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: the first input index (out,) int64 and the span weights (out, span) float32, as
    `ComputeSpansCore` makes them (scale = out/in, no translation, antialias: kernel widened by in/out
    when shrinking; half-pixel centres; weights normalised to sum 1 in float32)."""
    radius = _F32(LANCZOS_RADIUS)
    scale = _F32(out_size) / _F32(in_size)
    inv_scale = _F32(1.0 / float(scale))
    kernel_scale = max(inv_scale, _F32(1.0))
    span = min(2 * int(np.ceil(radius * kernel_scale)) + 1, in_size)
    one_over_kernel_scale = _F32(1.0) / kernel_scale
    starts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, span), dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        for x in range(out_size):
            sample = _F32(_F32(x) + _F32(0.5)) * inv_scale
            if sample < 0 or sample > in_size:
                continue
            start = int(np.ceil(sample - radius * kernel_scale - _F32(0.5)))
            end = int(np.floor(sample + radius * kernel_scale - _F32(0.5)))
            start = min(max(start, 0), in_size - 1)
            end = min(max(end, 0), in_size - 1) + 1
            ws = []
            total = _F32(0.0)
            for source in range(start, end):
                pos = _F32(source) + _F32(0.5) - sample
                wt = _lanczos(_F32(pos * one_over_kernel_scale), radius)
                total = _F32(total + wt)
                ws.append(wt)
            if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
                inv_total = _F32(1.0) / total
                weights[x, : len(ws)] = [_F32(wt * inv_total) for wt in ws]
            starts[x] = start
    return starts, weights


def _gather(image: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sums along `axis` accumulated in span order in float32, as GatherRows / GatherColumns do.
    Span entries past the image end have weight 0 (TF skips them; adding 0 * x changes no sum)."""
    src = np.moveaxis(image, axis, 0).astype(np.float32)
    n_in = src.shape[0]
    out = np.zeros((len(starts), *src.shape[1:]), dtype=np.float32)
    shape = (-1,) + (1,) * (src.ndim - 1)
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(shape) * src[np.minimum(starts + k, n_in - 1)]
    return np.moveaxis(out, 0, axis)


def lanczos3_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """`tf.image.resize(image, (out_h, out_w), "lanczos3", antialias=True)`: (H, W, C) uint8 or float32 ->
    (out_h, out_w, C) float32 (rows first, then columns, as the TF kernel)."""
    h, w = image.shape[:2]
    rows = _gather(image, *lanczos3_spans(h, out_h), axis=0)
    return _gather(rows, *lanczos3_spans(w, out_w), axis=1)
