"""The GFP-GAN degradation model, per sample, on the accelerator (gfpgan.md 3.1).

`degrade(key, images, cfg)` turns a batch of HQ faces into their LQ inputs
with the steps of BasicSR's `FFHQDegradationDataset`, in its order:

1. blur with a random iso/aniso Gaussian kernel (`kernels.py`);
2. shrink by a random scale s ~ U(downsample_range) to
   (int(h // s), int(w // s)) with INTER_LINEAR (`resize.py`);
3. Gaussian noise, sigma ~ U(noise_range) / 255 per sample, i.i.d. per pixel
   and channel, clip to [0, 1];
4. JPEG at quality ~ U(jpeg_range), made an integer by
   `jpeg_quality_rounding` ('round', as the OpenCV of the official run, or
   'floor', as `int(quality)`; `jpeg.py`), on the shrunk picture;
5. resize back to (H, W) with INTER_LINEAR;
6. colour shift (p = color_jitter_prob), grayscale (p = gray_prob),
   torchvision colour jitter in a random order (p = color_jitter_pt_prob),
   then quantisation to 1/255 levels (`colour.py`).

`sample_params` draws every random quantity from explicit keys, `apply` runs
the ops with given parameters (deterministic), and `degrade` composes them.
Shapes are static: the shrunk picture of size (h', w') is kept in the
top-left of a fixed buffer (`buffer_shape`: [H, W], or larger when scales
below 1 enlarge) with edge-replicated padding. Scales outside the configured
range that would overflow the buffer are clamped to it.

Config (`config.data.degradation` in configs/ffhq.py): `blur_kernel_size`,
`kernel_list` (only 'iso' and 'aniso' are implemented, all the v1 recipe uses),
`kernel_prob`, `blur_sigma`, `blur_method` ('fft' or 'conv'),
`downsample_range`, `noise_range`, `jpeg_range`, `jpeg_quality_rounding`
('round' when absent), `color_jitter_prob`,
`color_jitter_shift` (0-255 scale), `gray_prob`, `gt_gray`,
`color_jitter_pt_prob`, `brightness`, `contrast`, `saturation`, `hue`.
A probability of 0 or None, or a range of None, disables its op: it is then
not traced at all, so it is an exact identity and costs nothing.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from gfpgan_jax.data import colour
from gfpgan_jax.data import jpeg
from gfpgan_jax.data import kernels
from gfpgan_jax.data import resize

Array = jax.Array
Params = dict[str, Array]

_KERNEL_TYPES = ('iso', 'aniso')
_ROTATION_RANGE = (-math.pi, math.pi)  # hard-coded in FFHQDegradationDataset


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  value = cfg.get(name, default)
  return default if value is None else value


def _prob(cfg: Any, name: str) -> float:
  """A probability field; None counts as 0 (op disabled)."""
  return float(_get(cfg, name, 0.0))


def _range(cfg: Any, name: str) -> tuple[float, float] | None:
  value = cfg.get(name, None)
  if value is None:
    return None
  lo, hi = value
  return float(lo), float(hi)


def _uniform(key: Array, shape: tuple[int, ...], bounds: tuple[float, float]) -> Array:
  return jax.random.uniform(key, shape, jnp.float32, bounds[0], bounds[1])


def sample_params(key: Array, n: int, cfg: Any) -> Params:
  """Draws the random degradation parameters of `n` samples.

  Args:
    key: a PRNG key.
    n: batch size (static).
    cfg: the degradation config.

  Returns:
    A dict of arrays with leading dimension n:
      kernel_iso (bool), sigma_x, sigma_y, theta (float32; iso kernels have
      sigma_y = sigma_x and theta = 0), scale (float32), noise_sigma (float32,
      0-255 scale; 0 when noise is off), noise_key (PRNG keys), jpeg_quality
      (float32; 100 when JPEG is off), shift_apply (bool), shift (float32
      [n, 3], RGB, [0, 1] scale), gray_apply (bool), jitter_apply (bool),
      jitter_factors (float32 [n, 4]: brightness, contrast, saturation, hue;
      the neutral value for an op whose range is None), jitter_order (int32
      [n, 4], a permutation of 0..3).
  """
  kernel_list = tuple(cfg.kernel_list)
  for kind in kernel_list:
    if kind not in _KERNEL_TYPES:
      raise ValueError(f'kernel type {kind!r} is not implemented; expected one of {_KERNEL_TYPES}')
  kernel_prob = jnp.asarray(cfg.kernel_prob, jnp.float32)
  ks = iter(jax.random.split(key, 16))

  kind = jax.random.choice(next(ks), len(kernel_list), (n,), p=kernel_prob / kernel_prob.sum())
  iso = jnp.asarray([k == 'iso' for k in kernel_list])[kind]
  sigma_range = _range(cfg, 'blur_sigma')
  sigma_x = _uniform(next(ks), (n,), sigma_range)
  sigma_y = jnp.where(iso, sigma_x, _uniform(next(ks), (n,), sigma_range))
  theta = jnp.where(iso, 0.0, _uniform(next(ks), (n,), _ROTATION_RANGE))

  scale = _uniform(next(ks), (n,), _range(cfg, 'downsample_range'))
  noise_range = _range(cfg, 'noise_range')
  sigma_key = next(ks)
  noise_sigma = (_uniform(sigma_key, (n,), noise_range) if noise_range is not None
                 else jnp.zeros((n,), jnp.float32))
  noise_keys = jax.random.split(next(ks), n)
  jpeg_range = _range(cfg, 'jpeg_range')
  jpeg_key = next(ks)
  quality = (_uniform(jpeg_key, (n,), jpeg_range) if jpeg_range is not None
             else jnp.full((n,), 100.0, jnp.float32))

  shift_max = float(_get(cfg, 'color_jitter_shift', 20)) / 255.0
  shift_apply = jax.random.uniform(next(ks), (n,)) < _prob(cfg, 'color_jitter_prob')
  shift = _uniform(next(ks), (n, 3), (-shift_max, shift_max))
  gray_apply = jax.random.uniform(next(ks), (n,)) < _prob(cfg, 'gray_prob')

  jitter_apply = jax.random.uniform(next(ks), (n,)) < _prob(cfg, 'color_jitter_pt_prob')
  factor_key = next(ks)
  factors = []
  for i, (name, neutral) in enumerate(zip(colour.JITTER_OPS, (1.0, 1.0, 1.0, 0.0))):
    bounds = _range(cfg, name)
    factors.append(jnp.full((n,), neutral, jnp.float32) if bounds is None
                   else _uniform(jax.random.fold_in(factor_key, i), (n,), bounds))
  order = jax.vmap(lambda k: jax.random.permutation(k, 4))(jax.random.split(next(ks), n))

  return {
      'kernel_iso': iso,
      'sigma_x': sigma_x,
      'sigma_y': sigma_y,
      'theta': theta,
      'scale': scale,
      'noise_sigma': noise_sigma,
      'noise_key': noise_keys,
      'jpeg_quality': quality,
      'shift_apply': shift_apply,
      'shift': shift,
      'gray_apply': gray_apply,
      'jitter_apply': jitter_apply,
      'jitter_factors': jnp.stack(factors, axis=1),
      'jitter_order': order.astype(jnp.int32),
  }


def _mul_exceeds(q: Array, s: Array, limit: Array) -> Array:
  """Exactly `q * s > limit` for float32 integers q < 2^12, s > 0 and limit.

  s is split into two halves of 12 significant bits, so both partial products
  are exact; their difference with `limit` is exact too (Sterbenz), and the
  sign of a correctly rounded sum is the sign of the exact sum.
  """
  bits = jax.lax.bitcast_convert_type(s, jnp.uint32)
  s_hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
  s_lo = s - s_hi
  return (q * s_hi - limit) + q * s_lo > 0


def shrunk_size(height: int, width: int, scale: Array) -> Array:
  """(int(h // s), int(w // s)) per sample, exactly as in float64, at least 1.

  A plain float32 `floor(h / s)` can be off by one when h / s is within an ulp
  of an integer (e.g. 128 / float32(0.8) rounds to 160.0, while Python's
  `128 // 0.800000011920929` is 159), so the float32 estimate is corrected with
  an exact test.

  Args:
    height, width: static image size (< 2^12).
    scale: float32 [N], positive.

  Returns:
    int32 [N, 2].
  """
  hw = jnp.asarray([height, width], jnp.float32)[None, :]
  s = jnp.broadcast_to(scale.astype(jnp.float32)[:, None], (scale.shape[0], 2))
  q = jnp.floor(hw / s)
  q = jnp.where(_mul_exceeds(q, s, hw), q - 1.0, q)
  q = jnp.where(_mul_exceeds(q + 1.0, s, hw), q, q + 1.0)
  return jnp.maximum(q, 1.0).astype(jnp.int32)


def buffer_shape(height: int, width: int, cfg: Any) -> tuple[int, int]:
  """Static size of the buffer that holds the shrunk picture.

  Scales below 1 enlarge (up to int(h // low) for the range's low end), so
  the buffer is the larger of the image and that size.
  """
  low = _range(cfg, 'downsample_range')[0]
  return max(height, int(height // low)), max(width, int(width // low))


def jpeg_quality_rounding(cfg: Any) -> str:
  """`cfg.jpeg_quality_rounding` ('round' when absent or None); raises ValueError naming the valid values."""
  rounding = _get(cfg, 'jpeg_quality_rounding', 'round')
  if rounding not in jpeg.QUALITY_ROUNDINGS:
    raise ValueError(f'config.data.degradation.jpeg_quality_rounding must be one of {jpeg.QUALITY_ROUNDINGS}, '
                     f'got {rounding!r}')
  return rounding


def codec_quality(quality: Array, cfg: Any) -> Array:
  """The integer JPEG quality the codec gets for float draws `quality` [N] (int32 [N], in [1, 100])."""
  return jpeg.quality_to_int(quality, jpeg_quality_rounding(cfg))


def noise_field(keys: Array, shape: tuple[int, ...]) -> Array:
  """The standard normal field of each sample, float32 [N, *shape]."""
  return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


def apply(images: Array, params: Params, cfg: Any) -> Array:
  """Runs the degradations with given per-sample parameters.

  Args:
    images: float32 [N, H, W, 3] RGB HQ images in [0, 1].
    params: as returned by `sample_params` (any values of the same shapes).
    cfg: the degradation config (static: sizes and which ops are on).

  Returns:
    float32 [N, H, W, 3] LQ images in [0, 1], multiples of 1/255.
  """
  n, h, w, _ = images.shape
  k = kernels.gaussian_kernels(params['sigma_x'], params['sigma_y'], params['theta'],
                               int(cfg.blur_kernel_size))
  x = kernels.blur(images, k, method=_get(cfg, 'blur_method', 'fft'))

  full = jnp.broadcast_to(jnp.asarray([h, w], jnp.int32), (n, 2))
  buf = buffer_shape(h, w, cfg)
  small = jnp.minimum(shrunk_size(h, w, params['scale']), jnp.asarray(buf, jnp.int32))
  x = resize.resize_linear(x, full, small, out_shape=buf)
  if _range(cfg, 'noise_range') is not None:
    sigma = params['noise_sigma'][:, None, None, None] / 255.0
    x = jnp.clip(x + sigma * noise_field(params['noise_key'], x.shape[1:]), 0.0, 1.0)
  if _range(cfg, 'jpeg_range') is not None:
    x = jpeg.jpeg_compress(x, codec_quality(params['jpeg_quality'], cfg).astype(jnp.float32), valid_size=small)
  x = resize.resize_linear(x, small, full, out_shape=(h, w))

  if _prob(cfg, 'color_jitter_prob') > 0:
    x = colour.color_shift(x, params['shift'], params['shift_apply'])
  if _prob(cfg, 'gray_prob') > 0:
    x = colour.to_gray(x, params['gray_apply'])
  if _prob(cfg, 'color_jitter_pt_prob') > 0:
    enabled = tuple(cfg.get(name, None) is not None for name in colour.JITTER_OPS)
    x = colour.jitter(x, params['jitter_order'], params['jitter_factors'],
                      params['jitter_apply'], enabled)
  return colour.quantize(x)


def degrade(key: Array, images: Array, cfg: Any) -> Array:
  """Makes the LQ copy of a batch of HQ faces, every sample with its own degradation.

  Args:
    key: a PRNG key.
    images: float32 [N, H, W, 3] RGB in [0, 1].
    cfg: the degradation config (static).

  Returns:
    float32 [N, H, W, 3] RGB LQ images in [0, 1], multiples of 1/255 (the
    caller normalises to [-1, 1]).
  """
  return apply(images, sample_params(key, images.shape[0], cfg), cfg)


def degrade_pair(key: Array, images: Array, cfg: Any) -> tuple[Array, Array]:
  """`degrade` plus the official `gt_gray` option.

  With `cfg.gt_gray`, the GT of every sample whose LQ was turned gray is turned
  gray too (the no-colourisation recipe).

  Args:
    key: a PRNG key.
    images: float32 [N, H, W, 3] RGB HQ images in [0, 1].
    cfg: the degradation config (static).

  Returns:
    (gt, lq), both float32 [N, H, W, 3] in [0, 1].
  """
  return pair_from_params(images, sample_params(key, images.shape[0], cfg), cfg)


def sample_params_per_key(keys: Array, cfg: Any) -> Params:
  """Parameters with one key per sample (e.g. fixed degradations of validation faces). keys: [N]."""
  params = jax.vmap(lambda k: sample_params(k, 1, cfg))(keys)
  return jax.tree.map(lambda v: v[:, 0], params)


def pair_from_params(images: Array, params: Params, cfg: Any) -> tuple[Array, Array]:
  """(gt, lq) of `images` [N, H, W, 3] in [0, 1] with given per-sample parameters (see `degrade_pair`)."""
  lq = apply(images, params, cfg)
  gt = images
  if _get(cfg, 'gt_gray', False) and _prob(cfg, 'gray_prob') > 0:
    gt = colour.to_gray(images, params['gray_apply'])
  return gt, lq
