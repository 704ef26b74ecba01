"""`cv2.warpAffine` (bilinear, constant border) on the device, matching the kernel OpenCV picks.

`cv2.warpAffine(src, M, (W, H))` maps every destination pixel (x, y) to the
source point `Minv @ (x, y, 1)`, where `Minv` is M inverted in double
precision (`inverse_maps`; WARP_INVERSE_MAP is never used here). It then
interpolates bilinearly. A source neighbour outside the image reads the border
value, and a destination pixel whose 2x2 neighbourhood lies entirely outside
gets the border value. Which kernel does the arithmetic depends on the dtype.
The rules below were measured against opencv-python 5.x on x86-64 (IPP on, the
default), and the tests check them:

* uint8, float32 (`warp_ipp`): the Intel IPP kernel. Coordinates are computed
  in double. For uint8, an interior pixel (all four neighbours inside) takes
  its fraction from the float32-rounded coordinate and an edge pixel from the
  double one. For float32, every pixel takes it from the double one. The lerp goes along y first and then along x, each step a float32 FMA.
  uint8 rounds half-to-even. uint8 matches bit for bit. float32 is within 1
  ulp (about 1e-3 of pixels differ, by 6e-8). With IPP off, OpenCV's own
  float kernel would differ from this by 1 in a few uint8 pixels.
* float64 (`warp_fixed`): OpenCV's generic remap path. Coordinates are fixed
  point with 1/32-pixel resolution (INTER_BITS=5, AB_BITS=10), the weights are
  products of k/32, and the sum of the four taps is taken in double.
  `flags=INTER_AREA` (3) falls back to this same bilinear warp. This matches
  bit for bit.

Every function works on one image and one matrix. Callers vmap or scan over
faces.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax.faces import numerics

Array = jax.Array


def inverse_maps(affines: np.ndarray) -> np.ndarray:
  """The destination-to-source maps `cv2.warpAffine` computes from forward affines.

  Args:
    affines: float [..., 2, 3], the matrices given to warpAffine.

  Returns:
    float64 [..., 6]: (a, b, c, d, e, f), with source x = a x + b y + c and
    source y = d x + e y + f. OpenCV's formula and rounding; a singular matrix
    gives zeros, as in OpenCV.
  """
  m = np.asarray(affines, np.float64).reshape(*np.shape(affines)[:-2], 6)
  det = m[..., 0] * m[..., 4] - m[..., 1] * m[..., 3]
  d = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
  a11, a22 = m[..., 4] * d, m[..., 0] * d
  a12, a21 = m[..., 1] * -d, m[..., 3] * -d
  b1 = -a11 * m[..., 2] - a12 * m[..., 5]
  b2 = -a21 * m[..., 2] - a22 * m[..., 5]
  return np.stack([a11, a12, b1, a21, a22, b2], axis=-1)


def _gather4(src: Array, ix: Array, iy: Array, border: Array) -> tuple[Array, Array, Array, Array]:
  """The 2x2 neighbours (ix..ix+1, iy..iy+1) of every point; outside ones read `border`.

  Args:
    src: [h, w, C].
    ix, iy: int32 [H, W], the top-left neighbour.
    border: [C], in src's dtype (or one it promotes to).

  Returns:
    p00, p01, p10, p11: [H, W, C] (row offset, column offset).
  """
  h, w, c = src.shape
  flat = src.reshape(h * w, c)
  out = []
  for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
    yy, xx = iy + dy, ix + dx
    ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
    idx = jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)
    v = jnp.take(flat, idx.reshape(-1), axis=0).reshape(*idx.shape, c)
    out.append(jnp.where(ok[..., None], v, border.astype(v.dtype)))
  return tuple(out)


def _floor_index(v: Array, limit: int) -> tuple[Array, Array]:
  """floor(v) as hp and as int32 (clamped to [-2, limit + 1]; that keeps the border tests right)."""
  fv = jnp.floor(v)
  return fv, jnp.clip(fv, -2, limit + 1).astype(jnp.int32)


def _dest_coords(out_hw: tuple[int, int], origin, hp) -> tuple[Array, Array]:
  """Destination rows [H] and columns [W] as hp: `origin + arange` (exact integers)."""
  out_h, out_w = out_hw
  ys, xs = jnp.arange(out_h, dtype=hp), jnp.arange(out_w, dtype=hp)
  if origin is not None:
    ys, xs = ys + jnp.asarray(origin[0]).astype(hp), xs + jnp.asarray(origin[1]).astype(hp)
  return ys, xs


def warp_ipp(src: Array, minv: Array, out_hw: tuple[int, int], border, hp, origin=None) -> Array:
  """cv2.warpAffine INTER_LINEAR / BORDER_CONSTANT for uint8 or float32 images (IPP kernel).

  Args:
    src: uint8 or float32 [h, w, C].
    minv: hp [6], from `inverse_maps`.
    out_hw: static (H, W).
    border: C numbers, the border value (in the channel order of src).
    hp: the wide dtype (`numerics.hp_dtype`).
    origin: None, or the (row, col) of the output's top-left pixel in the
      destination (int scalars, may be traced): the output is that [H, W]
      window of the full warp, computed with the same arithmetic.

  Returns:
    [H, W, C] in src's dtype.
  """
  h, w, c = src.shape
  integer = src.dtype == jnp.uint8
  ys, xs = _dest_coords(out_hw, origin, hp)
  ys, xs = ys[:, None], xs[None, :]
  r = numerics.rounded
  sx = r(r(r(minv[0] * xs) + r(minv[1] * ys)) + minv[2])
  sy = r(r(r(minv[3] * xs) + r(minv[4] * ys)) + minv[5])
  fx, ix = _floor_index(sx, w)
  fy, iy = _floor_index(sy, h)
  a_edge = (sx - fx).astype(jnp.float32)
  b_edge = (sy - fy).astype(jnp.float32)
  if integer:
    inner = (ix >= 0) & (ix < w - 1) & (iy >= 0) & (iy < h - 1)
    a = jnp.where(inner, sx.astype(jnp.float32) - fx.astype(jnp.float32), a_edge)
    b = jnp.where(inner, sy.astype(jnp.float32) - fy.astype(jnp.float32), b_edge)
  else:
    a, b = a_edge, b_edge
  bval = jnp.asarray(border, jnp.float32)
  p00, p01, p10, p11 = (p.astype(jnp.float32) for p in _gather4(src, ix, iy, bval))
  a, b = a[..., None], b[..., None]
  c0 = numerics.fma32(b, p10 - p00, p00, hp)
  c1 = numerics.fma32(b, p11 - p01, p01, hp)
  v = numerics.fma32(a, c1 - c0, c0, hp)
  outside = (ix < -1) | (ix >= w) | (iy < -1) | (iy >= h)
  v = jnp.where(outside[..., None], bval, v)
  if integer:
    return jnp.clip(jnp.rint(v), 0, 255).astype(jnp.uint8)
  return v


_AB_SCALE = 1024  # 1 << AB_BITS
_ROUND_DELTA = 16  # AB_SCALE / INTER_TAB_SIZE / 2


def warp_fixed(src: Array, minv: Array, out_hw: tuple[int, int], border, hp, origin=None) -> Array:
  """cv2.warpAffine INTER_LINEAR / BORDER_CONSTANT for float64 images (OpenCV's fixed-point remap).

  Args:
    src: hp [h, w, C].
    minv: hp [6], from `inverse_maps`.
    out_hw: static (H, W).
    border: C numbers.
    hp: the wide dtype.
    origin: None, or the (row, col) of the output window in the destination (see `warp_ipp`).

  Returns:
    hp [H, W, C].
  """
  h, w, c = src.shape
  lim = float(2**30)

  def fixed(v):  # saturate_cast<int>: round half to even, then saturate.
    return jnp.clip(jnp.rint(v), -lim, lim).astype(jnp.int32)

  ys, xs = _dest_coords(out_hw, origin, hp)
  adelta = fixed(minv[0] * xs * _AB_SCALE)[None, :]
  bdelta = fixed(minv[3] * xs * _AB_SCALE)[None, :]
  r = numerics.rounded
  x0 = (fixed(r(r(minv[1] * ys) + minv[2]) * _AB_SCALE) + _ROUND_DELTA)[:, None]
  y0 = (fixed(r(r(minv[4] * ys) + minv[5]) * _AB_SCALE) + _ROUND_DELTA)[:, None]
  xq = jnp.right_shift(x0 + adelta, 5)
  yq = jnp.right_shift(y0 + bdelta, 5)
  ix = jnp.clip(jnp.right_shift(xq, 5), -2, w + 1)
  iy = jnp.clip(jnp.right_shift(yq, 5), -2, h + 1)
  fx = (xq & 31).astype(hp) / 32
  fy = (yq & 31).astype(hp) / 32
  w00 = ((1 - fy) * (1 - fx))[..., None]
  w01 = ((1 - fy) * fx)[..., None]
  w10 = (fy * (1 - fx))[..., None]
  w11 = (fy * fx)[..., None]
  bval = jnp.asarray(border, hp)
  p00, p01, p10, p11 = _gather4(src.astype(hp), ix, iy, bval)
  v = r(r(r(r(p00 * w00) + r(p01 * w01)) + r(p10 * w10)) + r(p11 * w11))  # left to right, every step rounded
  outside = (ix < -1) | (ix >= w) | (iy < -1) | (iy >= h)
  return jnp.where(outside[..., None], bval, v)
