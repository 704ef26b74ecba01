"""The two paste-back masks of `FaceRestoreHelper.paste_faces_to_input_image`, on the device.

Parse masks (`use_parse=True`, GFPGANer's setting). The ParseNet class map
(19 classes, at 512 x 512) goes through MASK_COLORMAP: classes 1-13 and 15 are
face (255), the others 0. It is blurred twice with `cv2.GaussianBlur(m,
(101, 101), 11)` in float64 with BORDER_REFLECT_101, a 10-pixel border is
zeroed, it is divided by 255, and it is resized to the face size with
INTER_LINEAR. `parse_soft_masks` does all of this. The later warp to the
canvas is in `faces.paste`.

Square masks (`use_parse=False`). A float32 ones square is warped to the
canvas. `cv2.erode` with a (2 s) x (2 s) kernel (s the upscale) gives
`inv_mask_erosion`. Then `w_edge = int(sqrt(sum)) // 20`, a second erosion
with a (2 w_edge)^2 kernel, and `cv2.GaussianBlur(.., (2 w_edge + 1)^2, 0)`
give the soft mask. w_edge depends on the data, so the erosion and the blur
take their size at run time. The loops run to a static bound, and the taps
outside the current size get weight 0 (blur) or are skipped (erosion). That
leaves the sums unchanged, so one compilation serves every face size up to
the bound.

Both blurs follow OpenCV's separable filter. The row pass accumulates the taps
left to right as FMAs. The column pass is the symmetric one: centre tap first,
then `k[i] * (up + down)`. Both match cv2 bit for bit in the tests (float64 at
101 taps; float32 at 9, 21 and 41 taps).
"""

import functools

import cv2
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax.faces import numerics
from gfpgan_jax.faces import resize

Array = jax.Array

# facexlib's class -> mask value table (ParseNet's 19 classes).
MASK_COLORMAP = (0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 0, 0, 0)
PARSE_BLUR_KSIZE = 101
PARSE_BLUR_SIGMA = 11
PARSE_BORDER = 10


@functools.lru_cache(maxsize=8)
def gaussian_kernel(ksize: int, sigma: float, float64: bool) -> np.ndarray:
  """`cv2.getGaussianKernel(ksize, sigma)` as GaussianBlur builds it (float32 for float32 images)."""
  return cv2.getGaussianKernel(ksize, sigma, cv2.CV_64F if float64 else cv2.CV_32F).ravel()


def _shift(x: Array, start, size: int, axis: int) -> Array:
  return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def blur_reflect101(x: Array, taps: Array, radius: int, hp, *, float32: bool) -> Array:
  """Separable blur of x [..., H, W] with the symmetric kernel `taps` [2 radius + 1], BORDER_REFLECT_101.

  Taps may be zero beyond a smaller run-time radius; that changes nothing (see the module doc).

  Args:
    x: [..., H, W], float32 (when `float32`) or hp.
    taps: the kernel, length 2 radius + 1, float32 or hp.
    radius: static half width.
    hp: the wide dtype.
    float32: round every operation to float32 as OpenCV's float32 filter does.

  Returns:
    [..., H, W] in x's dtype.
  """
  h, w = x.shape[-2:]
  nd = x.ndim
  pad = [(0, 0)] * nd
  if float32:
    fma = lambda k, v, acc: numerics.fma32(k, v, acc, hp)
    mul = lambda k, v: numerics.mul32(k, v, hp)
    col = lambda k, a, b, acc: numerics.fma32(k, numerics.add32(a, b, hp), acc, hp)
  else:  # every result pinned (numerics.rounded) so XLA keeps OpenCV's order of operations
    r = numerics.rounded
    fma = lambda k, v, acc: r(acc + k * v)  # the product fuses into an FMA, as in OpenCV's row loop
    mul = lambda k, v: r(k * v)
    col = lambda k, a, b, acc: r(acc + r(k * r(a + b)))

  pad[-1] = (radius, radius)
  xp = jnp.pad(x, pad, mode='reflect')  # numpy's 'reflect' is OpenCV's REFLECT_101
  acc = mul(taps[0], _shift(xp, 0, w, nd - 1))
  acc = lax.fori_loop(1, 2 * radius + 1, lambda i, a: fma(taps[i], _shift(xp, i, w, nd - 1), a), acc)

  pad[-1] = (0, 0)
  pad[-2] = (radius, radius)
  yp = jnp.pad(acc, pad, mode='reflect')
  out = mul(taps[radius], _shift(yp, radius, h, nd - 2))

  def col_step(i, t):
    return col(taps[radius + i], _shift(yp, radius - i, h, nd - 2), _shift(yp, radius + i, h, nd - 2), t)

  return lax.fori_loop(1, radius + 1, col_step, out)


def erode_rect(x: Array, lo, hi, bound: int) -> Array:
  """`cv2.erode` with a rectangular kernel covering offsets [lo, hi] in both axes (run-time lo, hi).

  Pixels outside the image are ignored (OpenCV's default erode border). `bound`
  is a static limit: -bound <= lo <= hi <= bound.

  Args:
    x: [H, W] float.
    lo, hi: int32 scalars (or ints).
    bound: static.

  Returns:
    [H, W], the minimum over the window.
  """
  h, w = x.shape
  big = jnp.asarray(jnp.inf, x.dtype)
  for axis, n in ((1, w), (0, h)):
    pad = [(0, 0), (0, 0)]
    pad[axis] = (bound, bound)
    xp = jnp.pad(x, pad, constant_values=big)

    def step(i, acc, xp=xp, n=n, axis=axis):
      off = i - bound
      v = _shift(xp, i, n, axis)
      return jnp.where((off >= lo) & (off <= hi), jnp.minimum(acc, v), acc)

    x = lax.fori_loop(0, 2 * bound + 1, step, jnp.full_like(x, big))
  return x


def kernel_window(k) -> tuple:
  """Offsets [lo, hi] that a k x k `np.ones` erosion kernel covers (anchor k // 2); an empty kernel is 3 x 3."""
  if isinstance(k, (int, np.integer)):
    return (-1, 1) if k <= 0 else (-(k // 2), k - 1 - k // 2)
  lo = jnp.where(k <= 0, -1, -(k // 2))
  hi = jnp.where(k <= 0, 1, k - 1 - k // 2)
  return lo, hi


@functools.lru_cache(maxsize=16)
def edge_blur_table(bound: int) -> np.ndarray:
  """float32 [bound + 1, 2 bound + 1]: row w holds `getGaussianKernel(2 w + 1, 0)` centred, zeros elsewhere."""
  table = np.zeros((bound + 1, 2 * bound + 1), np.float32)
  for w in range(bound + 1):
    table[w, bound - w:bound + w + 1] = gaussian_kernel(2 * w + 1, 0, False)
  return table


def class_to_mask(class_maps: Array, hp) -> Array:
  """[N, P, P] int class maps -> hp [N, P, P] in {0, 255} (MASK_COLORMAP; unknown classes -> 0)."""
  lut = jnp.asarray(MASK_COLORMAP, hp)
  c = class_maps.astype(jnp.int32)
  ok = (c >= 0) & (c < len(MASK_COLORMAP))
  return jnp.where(ok, lut[jnp.clip(c, 0, len(MASK_COLORMAP) - 1)], 0)


@functools.partial(jax.jit, static_argnames=('face_size', 'exact'))
def parse_soft_masks(class_maps: Array, *, face_size: int, exact: bool) -> Array:
  """The official soft parse masks, before the warp to the canvas.

  Args:
    class_maps: int [N, P, P], ParseNet argmax (P = 512 in the official pipeline).
    face_size: S, the restored face's side.
    exact: float64 (the official dtype) or float32.

  Returns:
    hp [N, S, S] in [0, 1].
  """
  hp = numerics.hp_dtype(exact)
  m = class_to_mask(class_maps, hp)
  taps = jnp.asarray(gaussian_kernel(PARSE_BLUR_KSIZE, PARSE_BLUR_SIGMA, True), hp)
  r = PARSE_BLUR_KSIZE // 2
  float32 = not exact
  m = blur_reflect101(m, taps, r, hp, float32=float32)
  m = blur_reflect101(m, taps, r, hp, float32=float32)
  p, q = m.shape[-2:]
  t = PARSE_BORDER
  rows = jnp.arange(p)[:, None]
  cols = jnp.arange(q)[None, :]
  keep = (rows >= t) & (rows < p - t) & (cols >= t) & (cols < q - t)
  m = numerics.div_small_int(jnp.where(keep, m, 0), 255, hp)
  return resize.resize_linear_hp(m, (face_size, face_size), hp)
