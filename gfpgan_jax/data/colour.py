"""Colour degradations of the LQ image (gfpgan.md 3.1 steps 8, 9, 11 and 12).

All functions take RGB float images in [0, 1]. The official code applies the
first two on BGR numpy arrays and the jitter on RGB torch tensors; the per
channel shift and the grayscale weights are mapped to RGB here.

torchvision semantics of the jitter ops (its `_functional_tensor`, float input):

* brightness f: `clamp(f * x, 0, 1)`.
* contrast f: `clamp(f * x + (1 - f) * mean(gray(x)), 0, 1)`, the mean over
  the whole grayscale image, gray = 0.2989 R + 0.587 G + 0.114 B.
* saturation f: `clamp(f * x + (1 - f) * gray(x), 0, 1)`.
* hue h: RGB -> HSV, H = (H + h) mod 1, HSV -> RGB (no clamp).

dm-pix's `adjust_brightness` (additive), `adjust_contrast` (per-channel mean)
and `adjust_saturation` (HSV scaling) follow TensorFlow instead, so they are
written here. dm-pix's `adjust_hue` has torchvision's semantics, but it picks
the hue sector with exact float comparisons that XLA fusion can break (see
`adjust_hue`), and its `rgb_to_grayscale` is a `tensordot` that GPUs may run
in TF32; both are therefore written here too, as explicit elementwise code.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

# Order of the jitter ops in `jitter`'s `order` argument, as in the official
# `color_jitter_pt` (fn_id 0..3).
JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')


def color_shift(images: Array, shift: Array, apply: Array) -> Array:
  """Adds a per-channel offset and clips, where `apply` (official `color_jitter`).

  Args:
    images: float32 [N, H, W, 3] RGB.
    shift: float32 [N, 3] offsets (RGB order) on the [0, 1] scale.
    apply: bool [N].

  Returns:
    float32 [N, H, W, 3].
  """
  shifted = jnp.clip(images + shift[:, None, None, :], 0.0, 1.0)
  return jnp.where(apply[:, None, None, None], shifted, images)


def to_gray(images: Array, apply: Array) -> Array:
  """`cv2.cvtColor(BGR2GRAY)` tiled to 3 channels, where `apply`.

  Args:
    images: float32 [N, H, W, 3] RGB.
    apply: bool [N].

  Returns:
    float32 [N, H, W, 3].
  """
  r, g, b = images[..., 0], images[..., 1], images[..., 2]
  gray = (0.299 * r + 0.587 * g + 0.114 * b)[..., None]
  return jnp.where(apply[:, None, None, None], jnp.broadcast_to(gray, images.shape), images)


def _tv_gray(image: Array) -> Array:
  """torchvision's `rgb_to_grayscale` of one [H, W, 3] image -> [H, W, 1]."""
  return (0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2])[..., None]


def adjust_brightness(image: Array, factor: Array) -> Array:
  """torchvision `adjust_brightness` of one [H, W, 3] image, scalar factor."""
  return jnp.clip(factor * image, 0.0, 1.0)


def adjust_contrast(image: Array, factor: Array) -> Array:
  """torchvision `adjust_contrast` of one [H, W, 3] image, scalar factor."""
  mean = jnp.mean(_tv_gray(image))
  return jnp.clip(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: Array, factor: Array) -> Array:
  """torchvision `adjust_saturation` of one [H, W, 3] image, scalar factor."""
  return jnp.clip(factor * image + (1.0 - factor) * _tv_gray(image), 0.0, 1.0)


def adjust_hue(image: Array, factor: Array) -> Array:
  """torchvision `adjust_hue` of one [H, W, 3] image, factor in [-0.5, 0.5].

  RGB -> HSV (torchvision's `_rgb2hsv`), H = (H + factor) mod 1, HSV -> RGB.
  The hue sector is chosen with `argmax` over the channels (first maximum
  wins: R, then G, then B, as torchvision's `maxc == r` / `maxc == g` tests)
  rather than with exact comparisons of recomputed values: XLA may duplicate
  the producer of `image` into several fusions with different rounding (e.g.
  one with fused multiply-adds), after which tests like `max(r, g, b) == r`
  can all fail and the pixel gets a wrong hue (this happened under
  `jit(vmap(degrade))`; dm-pix's `adjust_hue` is written that way).
  """
  maxc = jnp.max(image, axis=-1)
  minc = jnp.min(image, axis=-1)
  sector = jnp.argmax(image, axis=-1)
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  delta = maxc - minc
  safe = jnp.where(delta > 0, delta, 1.0)
  h = jnp.where(sector == 0, (g - b) / safe,
                jnp.where(sector == 1, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  h = jnp.where(delta > 0, h, 0.0)
  h = jnp.mod(h / 6.0 + 1.0, 1.0)
  s = delta / jnp.where(maxc > 0, maxc, 1.0)
  v = maxc
  return _hsv_to_rgb(jnp.mod(h + factor, 1.0), s, v)


def _hsv_to_rgb(h: Array, s: Array, v: Array) -> Array:
  """torchvision's `_hsv2rgb` on [H, W] planes -> [H, W, 3]."""
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  r = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [v, q, p, p, t], v)
  g = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [t, v, v, q, p], p)
  b = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [p, p, t, v, v], q)
  return jnp.stack([r, g, b], axis=-1)


def _blend_slot(image: Array, op: Array, factor: Array, active: Array) -> Array:
  """One of brightness (op 0), contrast (1), saturation (2), or nothing.

  All three are torchvision's `_blend(img, target, f)` with target 0, the mean
  gray level or the gray image; an inactive slot uses f = 1, which returns
  `image` exactly (1 * x + 0 * t = x, already in [0, 1]).
  """
  gray = _tv_gray(image)
  target = jnp.where(op == 2, gray, jnp.where(op == 1, jnp.mean(gray), 0.0))
  f = jnp.where(active, factor, 1.0)
  return jnp.clip(f * image + (1.0 - f) * target, 0.0, 1.0)


def _jitter_one(image, order, factors, enabled):
  """One image: the enabled ops in the sample's order (see `jitter`)."""
  hue_pos = jnp.argmax(order == 3)
  # The three blend ops in their order: stable sort that moves hue last.
  blend_ops = order[jnp.argsort(jnp.where(order == 3, 4, jnp.arange(4)))[:3]]
  on = jnp.asarray(enabled)
  for j in range(3):  # blend ops before the hue
    op = blend_ops[j]
    image = _blend_slot(image, op, factors[op], (j < hue_pos) & on[op])
  if enabled[3]:
    image = adjust_hue(image, factors[3])
  for j in range(3):  # blend ops after the hue
    op = blend_ops[j]
    image = _blend_slot(image, op, factors[op], (j >= hue_pos) & on[op])
  return image


def jitter(images: Array, order: Array, factors: Array, apply: Array,
           enabled: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> Array:
  """torchvision colour jitter with a random op order per sample (`color_jitter_pt`).

  Vectorised over the batch with a fixed op sequence, so that it shards over
  the batch like everything else (a per-sample `lax.map`/`cond` would run the
  batch axis sequentially): three blend slots, the hue, three blend slots.
  Each of brightness, contrast and saturation is active in exactly one slot,
  before or after the hue as the sample's order says; inactive slots are
  exact identities. The hue, the costly op, is computed once.

  Args:
    images: float32 [N, H, W, 3] RGB in [0, 1].
    order: int32 [N, 4], a permutation of 0..3 per sample (indices into
      `JITTER_OPS`), applied first to last.
    factors: float32 [N, 4], the brightness, contrast, saturation and hue
      factors.
    apply: bool [N]: samples left untouched where False.
    enabled: static; an op whose range is None in the config is skipped.

  Returns:
    float32 [N, H, W, 3].
  """
  enabled = tuple(bool(e) for e in enabled)
  out = jax.vmap(lambda x, o, f: _jitter_one(x, o, f, enabled))(images, order, factors)
  return jnp.where(apply[:, None, None, None], out, images)


def quantize(images: Array) -> Array:
  """`clamp(round(x * 255), 0, 255) / 255` (round half to even, like torch)."""
  return jnp.clip(jnp.round(images * 255.0), 0.0, 255.0) / 255.0
