"""Paste-back of restored faces (`FaceRestoreHelper.get_inverse_affine` + `paste_faces_to_input_image`).

The official steps (gfpgan.md 4, step 7):
1. The background is the given image (the Real-ESRGAN output) or the input,
   resized to (int(h s), int(w s)) with INTER_LANCZOS4. s is the upscale.
2. inverse = cv2.invertAffineTransform(M) * s, and the translation gets
   + 0.5 s when s > 1.
3. Each restored face is warped to the canvas (bilinear, border 0).
4. Its soft mask comes from the parse map (`masks.parse_soft_masks`, warped
   with flags=3, which is bilinear for warpAffine) or from the eroded square
   (`masks` doc). For the square mask the face is also multiplied by the
   eroded mask.
5. `out = mask * face + (1 - mask) * out`, face after face, in NumPy's
   dtypes. The parse path blends in float64. The square path blends in
   float32, or float64 when the background is float (16-bit input).
6. Then `astype(uint16)` if the max is > 256, else `astype(uint8)` (truncation).
An RGBA background keeps its resized alpha: the colour channels are blended and
the alpha is attached again.

The faces are processed by one `lax.scan` on the device with the canvas as the
carry. The number of faces is padded to a power of two, and the padded faces
leave the canvas unchanged. Each face works on a window of the canvas that
holds every pixel it can change (`face_windows`: the warped square plus the
reach of the erosions and the blur; one bucketed window shape per call), not
on the whole canvas: outside it the soft mask is 0 and the blend returns the
canvas value exactly, and inside it every value is computed from the same
absolute canvas coordinates with the same arithmetic, so the result equals
the whole-canvas computation (`windowed=False`).
"""

import functools
import math
import numbers

import cv2
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax.faces import align
from gfpgan_jax.faces import image_io
from gfpgan_jax.faces import masks
from gfpgan_jax.faces import numerics
from gfpgan_jax.faces import resize
from gfpgan_jax.faces import warp

Array = jax.Array
PARSE_CLASSES = 19


def output_size(h: int, w: int, upscale: float) -> tuple[int, int]:
  """(int(h * upscale), int(w * upscale)), the official canvas size."""
  return int(h * upscale), int(w * upscale)


def inverse_affines(affines, upscale: float) -> np.ndarray:
  """The official paste matrices: `invertAffineTransform(M) * s`, + 0.5 s on the translation when s > 1.

  Args:
    affines: [N, 2, 3] forward affines (image -> crop), as from `align_faces`.
    upscale: s.

  Returns:
    float64 [N, 2, 3], crop -> upscaled canvas.
  """
  if len(affines) == 0:
    return np.zeros((0, 2, 3))
  out = np.stack([cv2.invertAffineTransform(np.asarray(m, np.float64)) for m in affines]) * upscale
  if upscale > 1:
    out[:, :, 2] += 0.5 * upscale
  return out


def _check_inputs(faces, affines, parse_masks, upscale):
  if isinstance(upscale, bool) or not isinstance(upscale, numbers.Real) or not math.isfinite(upscale) or upscale <= 0:
    raise ValueError(f'upscale must be a positive finite number; got {upscale!r}')
  if not hasattr(faces, 'shape') or not hasattr(faces, 'dtype'):
    faces = np.asarray(faces)
  if faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2] or faces.dtype != np.uint8:
    raise ValueError(f'faces must be uint8 [N, S, S, 3] (RGB); got {faces.dtype} {tuple(faces.shape)}')
  try:
    aff = np.asarray(affines, np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError('affines must be a numeric array [N, 2, 3]') from e
  if aff.ndim != 3 or aff.shape[1:] != (2, 3) or aff.shape[0] != faces.shape[0]:
    raise ValueError(f'affines must be [N, 2, 3] with N = {faces.shape[0]} faces; got {aff.shape}')
  if not np.all(np.isfinite(aff)):
    raise ValueError('affines contain NaN or infinity')
  classes = None
  if parse_masks is not None:
    pm = parse_masks if hasattr(parse_masks, 'shape') else np.asarray(parse_masks)
    n = faces.shape[0]
    if pm.ndim == 4 and pm.shape[0] == n and pm.shape[1] == pm.shape[2] and pm.shape[3] == PARSE_CLASSES \
        and jnp.issubdtype(pm.dtype, jnp.floating):
      classes = jnp.argmax(jnp.asarray(pm), axis=-1).astype(jnp.int32)  # first maximum, as torch.argmax
    elif pm.ndim == 3 and pm.shape[0] == n and pm.shape[1] == pm.shape[2] and jnp.issubdtype(pm.dtype, jnp.integer):
      classes = jnp.asarray(pm).astype(jnp.int32)
    else:
      raise ValueError('parse_masks must be int class maps [N, P, P] or float logits [N, P, P, 19] for the N = '
                       f'{n} faces; got {pm.dtype} {tuple(pm.shape)}')
  return faces, aff, classes


def _edge_bound(inv: np.ndarray, face_size: int, out_hw: tuple[int, int]) -> int:
  """A static upper bound on w_edge (multiple of 8): from the warped square's area, capped by the canvas."""
  if inv.shape[0] == 0:
    return 8
  scale = np.sqrt(np.abs(inv[:, 0, 0] * inv[:, 1, 1] - inv[:, 0, 1] * inv[:, 1, 0])).max()
  area = min(float(out_hw[0]) * out_hw[1], (face_size * scale + 4) ** 2)
  w_max = int(area**0.5) // 20 + 1
  return 8 * max(1, -(-w_max // 8))


def window_bucket(n: int) -> int:
  """The static window side for n pixels: a multiple of 16 up to 128, then the next quarter of the octave.

  Above 128 the sides are 2^k (1, 1.25, 1.5, 1.75): at most 25% more than needed, and a
  handful of shapes (compilations) for all face sizes.
  """
  n = max(int(n), 1)
  if n <= 128:
    return -(-n // 16) * 16
  step = 1 << ((n - 1).bit_length() - 3)
  return -(-n // step) * step


def face_windows(inv: np.ndarray, face_size: int, out_hw: tuple[int, int], margin: int
                 ) -> tuple[tuple[int, int], np.ndarray]:
  """The canvas windows that hold every pixel a pasted face can change.

  A face warped with `inv` (crop -> canvas) is non-zero only where its source
  point lies in (-1, S) (see `warp`); the mask work around it (erosions, the
  blur) reaches `margin` pixels further. Outside that box the soft mask is 0
  and the blend leaves the canvas exactly as it was.

  Args:
    inv: [N, 2, 3] paste matrices (`inverse_affines`).
    face_size: S.
    out_hw: the canvas (H', W').
    margin: extra pixels on each side.

  Returns:
    (win_h, win_w): one static window shape for all faces (bucketed by
      `window_bucket`, at most the canvas).
    origins: int32 [N, 2], the (row, col) of each face's window, inside the canvas.
  """
  lo_s, hi_s = -2.0, face_size + 1.0
  corners = np.array([[lo_s, lo_s], [hi_s, lo_s], [lo_s, hi_s], [hi_s, hi_s]])
  pts = np.einsum('nij,kj->nki', inv[:, :, :2], corners) + inv[:, None, :, 2]  # [N, 4, (x, y)]
  lo = np.floor(pts.min(axis=1)) - 2 - margin
  hi = np.ceil(pts.max(axis=1)) + 3 + margin
  canvas = np.array([out_hw[1], out_hw[0]], np.float64)  # (x, y) order, like pts
  lo_c, hi_c = np.clip(lo, 0, canvas), np.clip(hi, 0, canvas)
  need = np.maximum(hi_c - lo_c, 1).max(axis=0) if len(inv) else np.ones(2)
  win = [min(window_bucket(int(need[a])), int(canvas[a])) for a in range(2)]  # (w, h)
  origin = np.clip(lo_c, 0, canvas - np.array(win, np.float64)).astype(np.int32)
  return (win[1], win[0]), np.ascontiguousarray(origin[:, ::-1])


@functools.partial(jax.jit, static_argnames=('out_hw', 'win_hw', 'first_window', 'edge_bound', 'exact'))
def _paste_square(canvas, faces, minv, valid, origins, *, out_hw, win_hw, first_window, edge_bound, exact):
  """Square-mask paste of [Nb] faces onto canvas [H', W', 3] (float32 or hp), each within its window."""
  del out_hw  # the canvas shape; the work is done in win_hw windows at `origins`
  hp = numerics.hp_dtype(exact)
  s = faces.shape[1]
  ones = jnp.ones((s, s, 1), jnp.float32)
  table = jnp.asarray(masks.edge_blur_table(edge_bound))
  lo1, hi1 = first_window
  bound1 = max(abs(lo1), abs(hi1))
  f32 = jnp.float32

  def paste_one(out, face, m, origin):
    inv_restored = warp.warp_ipp(face, m, win_hw, (0, 0, 0), hp, origin).astype(f32)
    inv_mask = warp.warp_ipp(ones, m, win_hw, (0,), hp, origin)[..., 0]
    erosion = masks.erode_rect(inv_mask, lo1, hi1, bound1)
    pasted = numerics.mul32(erosion[..., None], inv_restored, hp)
    area = jnp.sum(erosion.astype(hp)).astype(f32)
    w_edge = jnp.minimum(jnp.floor(jnp.sqrt(area)).astype(jnp.int32) // 20, edge_bound)
    lo, hi = masks.kernel_window(2 * w_edge)
    center = masks.erode_rect(erosion, lo, hi, edge_bound)
    soft = masks.blur_reflect101(center, table[w_edge], edge_bound, hp, float32=True)[..., None]
    fg = numerics.mul32(soft, pasted, hp)
    keep = numerics.sub32(jnp.ones((), f32), soft, hp)
    if out.dtype == f32:
      new = numerics.add32(fg, numerics.mul32(keep, out, hp), hp)
    else:
      new = numerics.rounded(fg.astype(hp) + numerics.rounded(keep.astype(hp) * out))
    return new

  def step(out, xs):
    face, m, ok, origin = xs

    def paste(o):
      start = (origin[0], origin[1], jnp.zeros((), origin.dtype))
      win = lax.dynamic_slice(o, start, (*win_hw, o.shape[2]))
      return lax.dynamic_update_slice(o, paste_one(win, face, m, origin).astype(o.dtype), start)

    return lax.cond(ok, paste, lambda o: o, out), None  # padded faces: no work

  out, _ = lax.scan(step, canvas, (faces, minv, valid, origins))
  return out


@functools.partial(jax.jit, static_argnames=('out_hw', 'win_hw', 'exact'))
def _paste_parse(canvas, faces, minv, valid, soft_masks, origins, *, out_hw, win_hw, exact):
  """Parse-mask paste of [Nb] faces onto canvas [H', W', 3] (hp), each within its window."""
  del out_hw
  hp = numerics.hp_dtype(exact)
  r = numerics.rounded

  def paste_one(out, face, m, sm, origin):
    inv_restored = warp.warp_ipp(face, m, win_hw, (0, 0, 0), hp, origin).astype(hp)
    if exact:
      mask = warp.warp_fixed(sm[..., None], m, win_hw, (0,), hp, origin)
    else:
      mask = warp.warp_ipp(sm[..., None].astype(jnp.float32), m, win_hw, (0,), hp, origin)
    return r(r(mask * inv_restored) + r(r(1 - mask) * out))

  def step(out, xs):
    face, m, ok, sm, origin = xs

    def paste(o):
      start = (origin[0], origin[1], jnp.zeros((), origin.dtype))
      win = lax.dynamic_slice(o, start, (*win_hw, o.shape[2]))
      return lax.dynamic_update_slice(o, paste_one(win, face, m, sm, origin).astype(o.dtype), start)

    return lax.cond(ok, paste, lambda o: o, out), None

  out, _ = lax.scan(step, canvas, (faces, minv, valid, soft_masks, origins))
  return out


def _windows(inv, face_size, out_hw, margin, nb, windowed):
  """(win_hw, origins int32 [nb, 2]) for the scan; the whole canvas at (0, 0) when not `windowed`."""
  origins = np.zeros((nb, 2), np.int32)
  if not windowed:
    return tuple(out_hw), jnp.asarray(origins)
  win_hw, origins[:len(inv)] = face_windows(inv, face_size, out_hw, margin)
  return win_hw, jnp.asarray(origins)


def _to_output(out: Array, alpha: Array | None) -> np.ndarray:
  """The official final cast: uint16 if the max exceeds 256, else uint8, with NumPy's cast semantics.

  NumPy's float -> uint8/uint16 `astype` truncates to int32 and keeps the low
  bits. So 256.0 -> 0 (uint8), -1.5 -> 255 / 65535, and values beyond int32
  become 0. XLA's convert saturates instead, so the wrap is done explicitly.
  Out-of-range values occur with float backgrounds (LANCZOS4 ringing on 16-bit
  input).
  """
  if alpha is not None:
    out = jnp.concatenate([out, alpha.astype(out.dtype)], axis=-1)
  if jnp.issubdtype(out.dtype, jnp.integer):
    big = bool(jnp.max(out) > 256) if out.size else False
    return np.asarray(out.astype(jnp.uint16 if big else jnp.uint8))
  big = bool(jnp.max(out) > 256) if out.size else False
  t = jnp.trunc(out)
  i = jnp.where(jnp.abs(t) < 2.0**31, t, -(2.0**31)).astype(jnp.int32)
  mask, dtype = (0xFFFF, jnp.uint16) if big else (0xFF, jnp.uint8)
  return np.asarray((i & mask).astype(dtype))


def paste_faces(image, faces, affines, upscale: float = 2, parse_masks=None, background=None, *,
                exact: bool = True, keep_alpha: bool = False, windowed: bool = True) -> np.ndarray:
  """Pastes restored faces back into the (upscaled) image, like `paste_faces_to_input_image`.

  Args:
    image: the original image, as for `align_faces` (uint8/uint16, RGB/RGBA/gray).
    faces: uint8 [N, S, S, 3] RGB restored faces (numpy or jax), in the order of `affines`.
    affines: [N, 2, 3] forward affines from `align_faces`.
    upscale: s; the output is [int(H s), int(W s)].
    parse_masks: None for the square erosion mask. For the official parse mask
      (GFPGANer's use_parse=True), either int class maps [N, P, P] (ParseNet's
      argmax, P = 512) or float logits [N, P, P, 19] (NHWC, argmax taken here,
      first maximum wins as in torch.argmax). ParseNet's input is the restored
      face resized to 512 and normalised to [-1, 1] (`parse_net_input`).
    background: None to use the image itself, or uint8/uint16 [h, w], [h, w, 3]
      RGB or [h, w, 4] RGBA (e.g. the Real-ESRGAN output). It is resized to the
      output size with INTER_LANCZOS4, as the official code does. An RGBA
      background's resized alpha is attached to the output.
    exact: OpenCV's float64 arithmetic on the device (see `numerics`).
    keep_alpha: attach the image's own alpha channel (resized with LANCZOS4) to
      the output when the background gives none. The official code drops it
      (`read_image`), so this is off by default.
    windowed: work on each face's window of the canvas only (`face_windows`),
      not on the whole canvas. The result is the same; False is the plain
      whole-canvas computation (kept for tests).

  Returns:
    np.ndarray [int(H s), int(W s), 3], or [.., 4] with alpha. Its dtype follows
    the official rule: uint16 if any value exceeds 256 (this happens only with
    a uint16 background, or with 16-bit input when LANCZOS4 ringing lifts the
    float background above 256), else uint8. The values are truncated, not
    rounded, and out-of-range values wrap as NumPy's `astype` wraps them.

  Raises:
    ValueError: on a bad shape or dtype of any argument.
  """
  rgb, alpha_in, _ = image_io.to_rgb8(image)
  faces, aff, classes = _check_inputs(faces, affines, parse_masks, upscale)
  h, w = rgb.shape[:2]
  out_hw = output_size(h, w, upscale)
  if min(out_hw) < 1:
    raise ValueError(f'upscale {upscale} gives an empty output for a {h} x {w} image')
  n, s = faces.shape[0], faces.shape[1]
  inv = inverse_affines(aff, upscale)
  hp = numerics.hp_dtype(exact)

  if background is None:
    bg, alpha = rgb, None
  else:
    bg, alpha = image_io.split_background(background)
  if alpha is None and keep_alpha and alpha_in is not None:
    alpha = alpha_in[..., None]

  with numerics.precision_scope(exact):
    up = resize.resize_lanczos4(bg, out_hw, exact)
    up_alpha = None if alpha is None else resize.resize_lanczos4(alpha, out_hw, exact)
    if n == 0:
      return _to_output(up, up_alpha)
    nb = align.bucket(n)
    minv = np.zeros((nb, 6))
    minv[:n] = warp.inverse_maps(inv)
    valid = np.arange(nb) < n
    faces_b = jnp.zeros((nb, s, s, 3), jnp.uint8).at[:n].set(jnp.asarray(faces))
    minv_d = jnp.asarray(minv, hp)
    if classes is not None:
      cm = jnp.zeros((nb,) + classes.shape[1:], jnp.int32).at[:n].set(classes)
      soft = masks.parse_soft_masks(cm, face_size=s, exact=exact)
      win_hw, origins = _windows(inv, s, out_hw, 0, nb, windowed)
      out = _paste_parse(up.astype(hp), faces_b, minv_d, jnp.asarray(valid), soft, origins, out_hw=out_hw,
                         win_hw=win_hw, exact=exact)
    else:
      k1 = int(2 * upscale)
      first = masks.kernel_window(k1)
      edge_bound = _edge_bound(inv, s, out_hw)
      win_hw, origins = _windows(inv, s, out_hw, max(abs(first[0]), abs(first[1])) + edge_bound, nb, windowed)
      canvas = up.astype(jnp.float32 if jnp.issubdtype(up.dtype, jnp.integer) else hp)
      out = _paste_square(canvas, faces_b, minv_d, jnp.asarray(valid), origins, out_hw=out_hw, win_hw=win_hw,
                          first_window=first, edge_bound=edge_bound, exact=exact)
    return _to_output(out, up_alpha)


def parse_net_input(faces) -> Array:
  """ParseNet's input for restored faces, as the official paste builds it.

  The official code computes `cv2.resize(face, (512, 512))`, then /255, RGB, and
  `normalize(0.5, 0.5)`. Faces of size 512 (GFPGAN's) are used as they are.
  Other sizes are resized bilinearly in float, which is not cv2's 8-bit
  fixed-point INTER_LINEAR and can differ by about 1/255.

  Args:
    faces: uint8 [N, S, S, 3] RGB.

  Returns:
    float32 [N, 512, 512, 3] in [-1, 1] (NHWC).
  """
  x = jnp.asarray(faces).astype(jnp.float32) / 255.0
  if x.shape[1:3] != (512, 512):
    x = jax.image.resize(x, (x.shape[0], 512, 512, 3), method='linear', antialias=False)
  return (x - 0.5) / 0.5
