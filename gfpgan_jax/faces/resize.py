"""`cv2.resize` on the device: INTER_LANCZOS4 (the background) and INTER_LINEAR on float64 (the parse mask).

OpenCV's generic separable resize maps output index d to the source coordinate
`fx = float32((d + 0.5) * (in / out) - 0.5)`, with `sx = floor(fx)` and the
fraction `fx - sx`. The tap weights come from that float32 fraction. Taps
beyond the image repeat the edge pixel (clamped indices, i.e. BORDER_REPLICATE,
not REFLECT_101). Rows are filtered horizontally first, then vertically. The
coefficients are 1-D (one set per output column or row) and are computed on
the host exactly as OpenCV computes them (`lanczos4_taps`). The filtering runs
on the device.

LANCZOS4 (8 taps, `interpolateLanczos4`):
* uint8: fixed point. The weights are `saturate_cast<short>(w * 2048)`
  (INTER_RESIZE_COEF_BITS = 11). The horizontal pass sums in int32, the
  vertical pass sums int32 * short, and the result is
  `(v + (1 << 21)) >> 22`, saturated. This is bit-exact.
* uint16: float32 weights and float32 sums (`+=` in tap order, each product
  rounded), then cvRound. float64: float32 weights, float64 sums. Interior
  pixels match OpenCV; at the image border OpenCV's float path differs from
  this by a few ulps of a weight (about 1e-4 on a 0..255 value).

INTER_LINEAR on float64 (`resize_linear_hp`): see there.

Equal input and output sizes copy the image, as `cv2.resize` does.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax.faces import numerics

Array = jax.Array

_S45 = 0.70710678118654752440084436210485
_CS = ((1, 0), (-_S45, -_S45), (0, 1), (_S45, -_S45), (-1, 0), (_S45, _S45), (0, -1), (-_S45, _S45))


def _lanczos4_coeffs(x: np.float32) -> np.ndarray:
  """OpenCV's `interpolateLanczos4(x)` with its float32 / double mix of roundings; float32 [8]."""
  f32 = np.float32
  y0 = -float(f32(x + f32(3))) * math.pi * 0.25
  s0, c0 = math.sin(y0), math.cos(y0)
  coeffs = np.zeros(8, f32)
  total = f32(0)
  for i in range(8):
    y0_ = f32(x + f32(3 - i))
    if abs(y0_) >= f32(1e-6):
      y = -float(y0_) * math.pi * 0.25
      coeffs[i] = f32((_CS[i][0] * s0 + _CS[i][1] * c0) / (y * y))
    else:
      coeffs[i] = f32(1e30)
    total = f32(total + coeffs[i])
  return coeffs * f32(f32(1) / total)


def _source_coords(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(sx int64 [out], fx float32 [out]) as OpenCV's resize computes them."""
  scale = 1.0 / (out_len / in_len)
  sx = np.zeros(out_len, np.int64)
  fx = np.zeros(out_len, np.float32)
  for d in range(out_len):
    f = np.float32((d + 0.5) * scale - 0.5)
    s = math.floor(f)
    sx[d], fx[d] = s, np.float32(f - np.float32(s))
  return sx, fx


@functools.lru_cache(maxsize=64)
def lanczos4_taps(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Source indices and weights of INTER_LANCZOS4 along one axis.

  Returns:
    idx: int32 [out_len, 8], clamped to [0, in_len - 1].
    coeffs: float32 [out_len, 8].
  """
  sx, fx = _source_coords(in_len, out_len)
  idx = np.clip(sx[:, None] + np.arange(-3, 5)[None, :], 0, in_len - 1).astype(np.int32)
  coeffs = np.stack([_lanczos4_coeffs(f) for f in fx])
  return idx, coeffs


@functools.lru_cache(maxsize=64)
def linear_taps(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
  """INTER_LINEAR for float64 images, as the IPP kernel OpenCV uses computes it (double coordinates).

  Returns:
    idx: int32 [out_len, 2], the two neighbours (clamped).
    frac: float64 [out_len], the weight of the second neighbour (0 where clamped).
  """
  s = (np.arange(out_len) + 0.5) * (in_len / out_len) - 0.5
  i0 = np.floor(s).astype(np.int64)
  frac = s - i0
  frac[s < 0], i0[s < 0] = 0, 0
  high = i0 >= in_len - 1
  frac[high], i0[high] = 0, in_len - 1
  idx = np.stack([i0, np.minimum(i0 + 1, in_len - 1)], axis=1).astype(np.int32)
  return idx, frac


def _filter_axis(x: Array, idx: Array, coeffs: Array, axis: int, mul, add=jnp.add) -> Array:
  """add(... add(mul(x[idx[:, 0]], coeffs[:, 0]), mul(x[idx[:, 1]], ...)) ...) along `axis`, in tap order."""
  shape = [1] * x.ndim
  shape[axis] = -1
  acc = None
  for j in range(idx.shape[1]):
    term = mul(jnp.take(x, idx[:, j], axis=axis), coeffs[:, j].reshape(shape))
    acc = term if acc is None else add(acc, term)
  return acc


@functools.partial(jax.jit, static_argnames=('exact',))
def _lanczos4(image: Array, xi: Array, xc: Array, yi: Array, yc: Array, *, exact: bool) -> Array:
  """[h, w, C] -> [H, W, C] in the same dtype (uint8, uint16 or hp)."""
  hp = numerics.hp_dtype(exact)
  if image.dtype == jnp.uint8:
    xa = jnp.rint(xc * 2048).astype(jnp.int32)
    ya = jnp.rint(yc * 2048).astype(jnp.int32)
    rows = _filter_axis(image.astype(jnp.int32), xi, xa, 1, jnp.multiply)
    v = _filter_axis(rows, yi, ya, 0, jnp.multiply)
    return jnp.clip(jnp.right_shift(v + (1 << 21), 22), 0, 255).astype(jnp.uint8)
  if image.dtype == jnp.uint16:  # float32 products and sums, each rounded
    mul = lambda v, c: numerics.mul32(v, c, hp)
    add = lambda a, b: numerics.add32(a, b, hp)
    rows = _filter_axis(image.astype(jnp.float32), xi, xc, 1, mul, add)
    v = _filter_axis(rows, yi, yc, 0, mul, add)
    return jnp.clip(jnp.rint(v), 0, 65535).astype(jnp.uint16)
  mul = lambda v, c: numerics.rounded(v * c.astype(hp))
  add = lambda a, b: numerics.rounded(a + b)
  rows = _filter_axis(image.astype(hp), xi, xc, 1, mul, add)
  return _filter_axis(rows, yi, yc, 0, mul, add)


def resize_lanczos4(image: np.ndarray | Array, out_hw: tuple[int, int], exact: bool = True) -> Array:
  """`cv2.resize(image, (W, H), interpolation=cv2.INTER_LANCZOS4)` on the device.

  Args:
    image: [h, w, C] uint8, uint16 or float (float runs in hp).
    out_hw: (H, W).
    exact: float64 sums for float input (see `numerics`).

  Returns:
    [H, W, C] in the input's dtype (hp for float input); the input itself when sizes match.
  """
  h, w = image.shape[:2]
  out_h, out_w = out_hw
  with numerics.precision_scope(exact):
    x = jnp.asarray(image)
    if x.dtype not in (jnp.uint8, jnp.uint16):
      x = x.astype(numerics.hp_dtype(exact))
    if (out_h, out_w) == (h, w):
      return x
    xi, xc = lanczos4_taps(w, out_w)
    yi, yc = lanczos4_taps(h, out_h)
    return _lanczos4(x, xi, xc, yi, yc, exact=exact)


def resize_linear_hp(x: Array, out_hw: tuple[int, int], hp) -> Array:
  """`cv2.resize(x, (W, H))` (INTER_LINEAR) of float64 data, jittable; x [..., h, w].

  This follows the IPP kernel that opencv-python uses for float64. The
  coordinates and weights are double, each output is `a + f * (b - a)`, rows go
  first, and the edges are clamped. It agrees with cv2 to about 1e-14.
  """
  h, w = x.shape[-2:]
  out_h, out_w = out_hw
  if (out_h, out_w) == (h, w):
    return x
  x = x.astype(hp)
  for axis, (n_in, n_out) in ((x.ndim - 1, (w, out_w)), (x.ndim - 2, (h, out_h))):
    idx, frac = linear_taps(n_in, n_out)
    shape = [1] * x.ndim
    shape[axis] = -1
    f = jnp.asarray(frac, hp).reshape(shape)
    a, b = jnp.take(x, jnp.asarray(idx[:, 0]), axis=axis), jnp.take(x, jnp.asarray(idx[:, 1]), axis=axis)
    r = numerics.rounded
    x = r(a + r(f * r(b - a)))
  return x
