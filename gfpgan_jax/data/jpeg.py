"""Baseline JPEG compression round trip in JAX, bit-compatible with libjpeg(-turbo).

`jpeg_compress` encodes and decodes a batch of images the way libjpeg-turbo does
with its default settings (the library behind PIL's and OpenCV's JPEG codecs):

* RGB -> YCbCr (JFIF) with libjpeg's 16-bit fixed-point tables.
* 4:2:0 chroma subsampling by 2x2 averaging with libjpeg's alternating 1,2
  rounding bias; edge replication to whole MCUs exactly as its prep controller
  and downsampler do.
* 8x8 forward DCT with libjpeg's `jpeg_fdct_islow` integer algorithm (LL&M,
  13-bit constants), quantisation rounding half away from zero with the IJG
  Annex K tables scaled by `jpeg_quality_scaling` (baseline: entries in
  [1, 255]).
* Dequantisation and libjpeg's `jpeg_idct_islow` integer inverse DCT with range
  limiting.
* libjpeg's default "fancy" (triangle-filter) h2v2 chroma upsampling with its
  ordered-dither rounding, and its fixed-point YCbCr -> RGB tables.

Everything is integer arithmetic on int32, so the result is the same on every
backend (no float DCT whose rounding depends on the device) and it matches a
libjpeg-turbo round trip at the same integer quality bit for bit (see
tests/jpeg_test.py). Entropy coding is lossless and is not modelled.

The quality is a float per sample. The official code hands the float
U(60, 100) draw to `cv2.imencode`; the OpenCV of the training era (<= 4.5.2)
converted it with `saturate_cast<int>`, i.e. `cvRound`: round to nearest,
half to even (`rounding='round'`, the default: qualities 60..100, half weight
at both ends). `rounding='floor'` truncates as `int(quality)` (60..99), the fix
for newer OpenCV, which rejects a float (gfpgan.md 3.1 step 6). The integer is
then clamped to [1, 100] as `jpeg_set_quality` does.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# IJG standard tables (ITU-T T.81 Annex K), natural (row-major) order.
_LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.int32).reshape(8, 8)
_CHROMA_TABLE = np.full((8, 8), 99, dtype=np.int32)
_CHROMA_TABLE[:4, :4] = np.array([
    17, 18, 24, 47,
    18, 21, 26, 66,
    24, 26, 56, 99,
    47, 66, 99, 99,
], dtype=np.int32).reshape(4, 4)

# Fixed-point colour conversion (jccolor.c / jdcolor.c): SCALEBITS = 16.
_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)


def _fix16(x: float) -> int:
  return int(x * (1 << _SCALEBITS) + 0.5)


# Integer DCT constants (jfdctint.c / jidctint.c): CONST_BITS = 13.
_CONST_BITS = 13
_PASS1_BITS = 2
_F_0_298 = 2446
_F_0_390 = 3196
_F_0_541 = 4433
_F_0_765 = 6270
_F_0_899 = 7373
_F_1_175 = 9633
_F_1_501 = 12299
_F_1_847 = 15137
_F_1_961 = 16069
_F_2_053 = 16819
_F_2_562 = 20995
_F_3_072 = 25172


QUALITY_ROUNDINGS = ('round', 'floor')


def quality_to_int(quality: Array, rounding: str = 'round') -> Array:
  """Integer JPEG quality as the official pipeline passes it to the codec.

  Args:
    quality: float array, any shape.
    rounding: 'round' (nearest, half to even: OpenCV <= 4.5.2's
      `saturate_cast<int>` of the float) or 'floor' (`int(quality)`; the same
      as truncation for the positive qualities used here).

  Returns:
    int32 array of the same shape, clamped to [1, 100] like
    `jpeg_set_quality`.

  Raises:
    ValueError: an unknown `rounding`.
  """
  if rounding not in QUALITY_ROUNDINGS:
    raise ValueError(f'JPEG quality rounding must be one of {QUALITY_ROUNDINGS}, got {rounding!r}')
  q = jnp.round(quality) if rounding == 'round' else jnp.floor(quality)
  return jnp.clip(q, 1, 100).astype(jnp.int32)


def quant_tables(quality: Array) -> tuple[Array, Array]:
  """libjpeg's baseline quantisation tables for integer qualities.

  Args:
    quality: int32 [N], each in [1, 100].

  Returns:
    (luma, chroma): int32 [N, 8, 8] each, natural order, entries in [1, 255].
  """
  quality = jnp.asarray(quality, jnp.int32)
  # jpeg_quality_scaling: integer arithmetic throughout.
  scale = jnp.where(quality < 50, 5000 // jnp.maximum(quality, 1), 200 - 2 * quality)

  def scaled(table):
    t = (jnp.asarray(table)[None] * scale[:, None, None] + 50) // 100
    return jnp.clip(t, 1, 255)  # force_baseline=TRUE

  return scaled(_LUMA_TABLE), scaled(_CHROMA_TABLE)


def _fdct_butterfly(d, first_pass: bool):
  """`jpeg_fdct_islow`'s 1-D pass up to its final DESCALEs.

  Args:
    d: the 8 inputs (anything supporting +, - and * by an int).
    first_pass: rows (pass 1) or columns (pass 2).

  Returns:
    (outputs, shifts): the 8 values before descaling and the right shift
    (with rounding) each output then gets (0 = none).
  """
  tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
  tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
  tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
  tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
  tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
  tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
  if first_pass:  # even outputs are scaled up by PASS1_BITS, exactly
    out0, out4 = (tmp10 + tmp11) * (1 << _PASS1_BITS), (tmp10 - tmp11) * (1 << _PASS1_BITS)
    dc_shift, shift = 0, _CONST_BITS - _PASS1_BITS
  else:
    out0, out4 = tmp10 + tmp11, tmp10 - tmp11
    dc_shift, shift = _PASS1_BITS, _CONST_BITS + _PASS1_BITS
  z1 = (tmp12 + tmp13) * _F_0_541
  out2 = z1 + tmp13 * _F_0_765
  out6 = z1 - tmp12 * _F_1_847
  z1, z2 = tmp4 + tmp7, tmp5 + tmp6
  z3, z4 = tmp4 + tmp6, tmp5 + tmp7
  z5 = (z3 + z4) * _F_1_175
  z1, z2 = z1 * -_F_0_899, z2 * -_F_2_562
  z3, z4 = z3 * -_F_1_961 + z5, z4 * -_F_0_390 + z5
  out7 = tmp4 * _F_0_298 + z1 + z3
  out5 = tmp5 * _F_2_053 + z2 + z4
  out3 = tmp6 * _F_3_072 + z2 + z3
  out1 = tmp7 * _F_1_501 + z1 + z4
  outs = [out0, out1, out2, out3, out4, out5, out6, out7]
  return outs, [dc_shift, shift, shift, shift, dc_shift, shift, shift, shift]


def _idct_butterfly(d, first_pass: bool):
  """`jpeg_idct_islow`'s 1-D pass up to its final DESCALEs (see `_fdct_butterfly`).

  Its shortcut for all-zero AC inputs gives the same values as the full formula.
  """
  z1 = (d[2] + d[6]) * _F_0_541
  tmp2 = z1 - d[6] * _F_1_847
  tmp3 = z1 + d[2] * _F_0_765
  tmp0 = (d[0] + d[4]) * (1 << _CONST_BITS)
  tmp1 = (d[0] - d[4]) * (1 << _CONST_BITS)
  tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
  tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
  tmp0, tmp1, tmp2, tmp3 = d[7], d[5], d[3], d[1]
  z1, z2 = tmp0 + tmp3, tmp1 + tmp2
  z3, z4 = tmp0 + tmp2, tmp1 + tmp3
  z5 = (z3 + z4) * _F_1_175
  z1, z2 = z1 * -_F_0_899, z2 * -_F_2_562
  z3, z4 = z3 * -_F_1_961 + z5, z4 * -_F_0_390 + z5
  tmp0 = tmp0 * _F_0_298 + z1 + z3
  tmp1 = tmp1 * _F_2_053 + z2 + z4
  tmp2 = tmp2 * _F_3_072 + z2 + z3
  tmp3 = tmp3 * _F_1_501 + z1 + z4
  outs = [tmp10 + tmp3, tmp11 + tmp2, tmp12 + tmp1, tmp13 + tmp0,
          tmp13 - tmp0, tmp12 - tmp1, tmp11 - tmp2, tmp10 - tmp3]
  shift = _CONST_BITS - _PASS1_BITS if first_pass else _CONST_BITS + _PASS1_BITS + 3
  return outs, [shift] * 8


def _pass_matrix(butterfly, first_pass: bool) -> tuple[np.ndarray, np.ndarray]:
  """A 1-D pass as an integer matrix plus per-output shifts.

  Everything before the final DESCALEs is an integer linear map, so running the
  butterfly on the unit vectors gives its exact matrix; integer sums are
  associative (XLA's int32 arithmetic wraps, and the final values fit), so
  `DESCALE(M @ d)` reproduces libjpeg's results bit for bit.
  """
  outs, shifts = butterfly(list(np.eye(8, dtype=np.int64)), first_pass)
  return np.stack(outs).astype(np.int32), np.asarray(shifts, np.int32)


_FDCT_PASSES = (_pass_matrix(_fdct_butterfly, True), _pass_matrix(_fdct_butterfly, False))
_IDCT_PASSES = (_pass_matrix(_idct_butterfly, True), _pass_matrix(_idct_butterfly, False))


def _apply_pass(x: Array, matrix: np.ndarray, shifts: np.ndarray, axis: int) -> Array:
  """`DESCALE(matrix @ x)` along `axis` (length 8) of an int32 array."""
  x = jnp.moveaxis(x, axis, -1)
  y = jnp.sum(x[..., None, :] * jnp.asarray(matrix), axis=-1)
  rounding = np.where(shifts > 0, np.left_shift(1, np.maximum(shifts - 1, 0)), 0).astype(np.int32)
  y = jnp.right_shift(y + rounding, jnp.asarray(shifts))  # arithmetic shift
  return jnp.moveaxis(y, -1, axis)


def _to_blocks(plane: Array) -> Array:
  """[..., H, W] (multiples of 8) -> [..., H/8 * W/8, 8, 8]."""
  *lead, h, w = plane.shape
  b = plane.reshape(*lead, h // 8, 8, w // 8, 8)
  return jnp.swapaxes(b, -3, -2).reshape(*lead, (h // 8) * (w // 8), 8, 8)


def _from_blocks(blocks: Array, h: int, w: int) -> Array:
  """Inverse of `_to_blocks` for a plane of size [h, w]."""
  *lead, _, _, _ = blocks.shape
  b = blocks.reshape(*lead, h // 8, w // 8, 8, 8)
  return jnp.swapaxes(b, -3, -2).reshape(*lead, h, w)


def _dct_roundtrip(blocks: Array, tables: Array) -> Array:
  """Level shift, FDCT, quantise, dequantise, IDCT, range limit.

  Args:
    blocks: int32 [B, 8, 8] samples in [0, 255].
    tables: int32 [B, 8, 8] quantisation table of each block.

  Returns:
    int32 [B, 8, 8] decoded samples in [0, 255].
  """
  (f1, s1), (f2, s2) = _FDCT_PASSES
  (i1, t1), (i2, t2) = _IDCT_PASSES
  x = blocks - 128
  coef = _apply_pass(x, f1, s1, axis=-1)     # rows
  coef = _apply_pass(coef, f2, s2, axis=-2)  # columns; scaled up by 8
  divisor = 8 * tables
  # libjpeg-turbo's reciprocal quantiser equals this rounding (half away from
  # zero) for every 8-bit divisor and coefficient range (checked exhaustively).
  q = jnp.sign(coef) * ((jnp.abs(coef) + divisor // 2) // divisor)
  x = _apply_pass(q * tables, i1, t1, axis=-2)  # columns
  x = _apply_pass(x, i2, t2, axis=-1)           # rows
  # range_limit[] is clamping for |x| < 512 (always the case for baseline data).
  return jnp.clip(x + 128, 0, 255)


def _rgb_to_ycc(rgb: Array) -> tuple[Array, Array, Array]:
  """jccolor.c fixed-point RGB -> YCbCr on int32 [..., 3] in [0, 255]."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  cbcr_offset = 128 << _SCALEBITS
  y = (_fix16(0.299) * r + _fix16(0.587) * g + _fix16(0.114) * b + _ONE_HALF) >> _SCALEBITS
  cb = (-_fix16(0.16874) * r - _fix16(0.33126) * g + _fix16(0.5) * b
        + cbcr_offset + _ONE_HALF - 1) >> _SCALEBITS
  cr = (_fix16(0.5) * r - _fix16(0.41869) * g - _fix16(0.08131) * b
        + cbcr_offset + _ONE_HALF - 1) >> _SCALEBITS
  return y, cb, cr


def _ycc_to_rgb(y: Array, cb: Array, cr: Array) -> Array:
  """jdcolor.c fixed-point YCbCr -> RGB; returns int32 [..., 3] in [0, 255]."""
  x_cb, x_cr = cb - 128, cr - 128
  r = y + jnp.right_shift(_fix16(1.402) * x_cr + _ONE_HALF, _SCALEBITS)
  g = y + jnp.right_shift(-_fix16(0.34414) * x_cb + _ONE_HALF - _fix16(0.71414) * x_cr,
                          _SCALEBITS)
  b = y + jnp.right_shift(_fix16(1.772) * x_cb + _ONE_HALF, _SCALEBITS)
  return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255)


def _downsample_h2v2(c: Array, valid_rows: Array) -> Array:
  """jcsample.c h2v2 averaging of a full-resolution chroma plane.

  Args:
    c: int32 [H, W] (even sizes), already edge-replicated beyond the image.
    valid_rows: ceil(h / 2) for the image height h: rows below it are
      replicated from the last one, as the prep controller pads its output.

  Returns:
    int32 [H/2, W/2].
  """
  h, w = c.shape
  s = c.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
  bias = 1 + (jnp.arange(w // 2) % 2)  # 1, 2, 1, 2, ... along each row
  out = jnp.right_shift(s + bias[None, :], 2)
  rows = jnp.minimum(jnp.arange(h // 2), valid_rows - 1)
  return jnp.take(out, rows, axis=0)


def _upsample_h2v2_fancy(c: Array, valid_rows: Array, valid_cols: Array) -> Array:
  """jdsample.c `h2v2_fancy_upsample` (triangle filter) with edge replication.

  Args:
    c: int32 [Hc, Wc] decoded chroma plane.
    valid_rows, valid_cols: the chroma plane's real size (ceil of half the
      image size); samples outside it are never read, the edges replicate.

  Returns:
    int32 [2 Hc, 2 Wc].
  """
  hc, wc = c.shape
  r = jnp.arange(2 * hc)
  i = jnp.minimum(r // 2, valid_rows - 1)
  nb = jnp.clip(jnp.where(r % 2 == 0, r // 2 - 1, r // 2 + 1), 0, valid_rows - 1)
  colsum = 3 * jnp.take(c, i, axis=0) + jnp.take(c, nb, axis=0)  # [2Hc, Wc]
  s = jnp.arange(2 * wc)
  j = jnp.minimum(s // 2, valid_cols - 1)
  nbj = jnp.clip(jnp.where(s % 2 == 0, s // 2 - 1, s // 2 + 1), 0, valid_cols - 1)
  bias = jnp.where(s % 2 == 0, 8, 7)
  out = 3 * jnp.take(colsum, j, axis=1) + jnp.take(colsum, nbj, axis=1) + bias[None, :]
  return jnp.right_shift(out, 4)


def _to_planes(image: Array, valid_h: Array, valid_w: Array):
  """Encoder front end for one image: padding, colour conversion, subsampling.

  Args:
    image: int32 [H, W, 3] in [0, 255].
    valid_h, valid_w: int32 scalars, the size of the picture (top-left).

  Returns:
    (y [Hp, Wp], cbcr [2, Hp/2, Wp/2], chroma_h, chroma_w) with Hp, Wp the
    sizes rounded up to whole 16x16 MCUs and chroma_h/w the real chroma size.
  """
  h, w, _ = image.shape
  hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
  # Edge replication beyond the valid region, to whole 16x16 MCUs.
  rows = jnp.minimum(jnp.arange(hp), valid_h - 1)
  cols = jnp.minimum(jnp.arange(wp), valid_w - 1)
  x = jnp.take(jnp.take(image, rows, axis=0), cols, axis=1)
  y, cb, cr = _rgb_to_ycc(x)

  chroma_h = (valid_h + 1) // 2
  chroma_w = (valid_w + 1) // 2
  cbcr = jnp.stack([cb, cr])
  cbcr = jax.vmap(_downsample_h2v2, in_axes=(0, None))(cbcr, chroma_h)
  return y, cbcr, chroma_h, chroma_w


def jpeg_compress(images: Array, quality: Array, valid_size: Array | None = None,
                  rounding: str = 'round') -> Array:
  """JPEG encode + decode, per sample quality, as libjpeg-turbo at its defaults.

  Args:
    images: float32 [N, H, W, 3] RGB in [0, 1]. They are rounded to 8 bits
      first (`round(x * 255)`, half to even like OpenCV's float -> uint8).
    quality: float32 [N] in [1, 100]; made an integer by `rounding`.
    valid_size: optional int32 [N, 2] (h, w): only the top-left h x w region of
      each image is the picture to compress (the rest is ignored and the
      output there is unspecified). Defaults to the full (H, W).
    rounding: 'round' or 'floor' (`quality_to_int`; see the module doc).

  Returns:
    float32 [N, H, W, 3] in [0, 1], multiples of 1/255: the decoded images.
  """
  n, h, w, c = images.shape
  if c != 3:
    raise ValueError(f'jpeg_compress expects RGB images, got {c} channels')
  if valid_size is None:
    valid_size = jnp.broadcast_to(jnp.array([h, w], jnp.int32), (n, 2))
  valid_size = jnp.asarray(valid_size, jnp.int32)
  luma_t, chroma_t = quant_tables(quality_to_int(jnp.asarray(quality, jnp.float32), rounding))
  x = jnp.clip(jnp.round(images * 255.0), 0, 255).astype(jnp.int32)

  hp, wp = -(-h // 16) * 16, -(-w // 16) * 16

  def one(img, lt, ct, vh, vw):
    y, cbcr, ch, cw = _to_planes(img, vh, vw)
    yb, cb = _to_blocks(y), _to_blocks(cbcr).reshape(-1, 8, 8)
    tables = jnp.concatenate([jnp.broadcast_to(lt, yb.shape), jnp.broadcast_to(ct, cb.shape)])
    blocks = _dct_roundtrip(jnp.concatenate([yb, cb]), tables)
    y = _from_blocks(blocks[:yb.shape[0]], hp, wp)
    cbcr = _from_blocks(blocks[yb.shape[0]:].reshape(2, -1, 8, 8), hp // 2, wp // 2)
    cbcr = jax.vmap(_upsample_h2v2_fancy, in_axes=(0, None, None))(cbcr, ch, cw)
    rgb = _ycc_to_rgb(y, cbcr[0], cbcr[1])
    return rgb[:h, :w]

  out = jax.vmap(one)(x, luma_t, chroma_t, valid_size[:, 0], valid_size[:, 1])
  return out.astype(jnp.float32) / 255.0
