"""Resampling ops with the exact semantics of the official PyTorch code, in NHWC.

Two families are used by GFP-GAN (gfpgan.md section 1.1):

* FIR resampling (`upfirdn2d`) of the original StyleGAN2 ops in basicsr, used by
  `GFPGANv1`, the basicsr StyleGAN2 generator and both discriminators.
* PyTorch bilinear interpolation (`F.interpolate(mode='bilinear',
  align_corners=False)`: half-pixel centres, edge clamping and **no antialias**),
  used by the clean architectures, the image pyramid and the identity loss.
  `jax.image.resize` antialiases when downsampling, so it is not used here.
"""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Array = jax.Array


def make_resample_kernel_1d(k: Sequence[float]) -> np.ndarray:
  """The normalised 1-D factor of basicsr's separable 2-D resampling kernel.

  basicsr builds `outer(k, k) / sum(outer(k, k))`; that equals
  `outer(k1, k1)` with `k1 = k / sum(k)`.

  Args:
    k: 1-D taps, e.g. (1, 3, 3, 1).

  Returns:
    float64 array [len(k)] summing to one.
  """
  k = np.asarray(k, dtype=np.float64)
  if k.ndim != 1:
    raise ValueError(f'resample kernel must be 1-D, got shape {k.shape}')
  return k / k.sum()


def _correlate_1d(x: Array, taps: np.ndarray, axis: int) -> Array:
  """'Valid' correlation of `x` with constant `taps` along `axis`."""
  n = x.shape[axis] - len(taps) + 1
  out = None
  for j, t in enumerate(taps):
    term = float(t) * lax.slice_in_dim(x, j, j + n, axis=axis)
    out = term if out is None else out + term
  return out


def _pad_axis(x: Array, lo: int, hi: int, axis: int) -> Array:
  """Zero-pads (positive) or crops (negative) one axis."""
  if lo < 0:
    x = lax.slice_in_dim(x, -lo, x.shape[axis], axis=axis)
    lo = 0
  if hi < 0:
    x = lax.slice_in_dim(x, 0, x.shape[axis] + hi, axis=axis)
    hi = 0
  if lo or hi:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (lo, hi)
    x = jnp.pad(x, widths)
  return x


def _zero_insert(x: Array, up: int, axis: int) -> Array:
  """Inserts `up - 1` zeros after every sample along `axis`."""
  if up == 1:
    return x
  x = jnp.expand_dims(x, axis + 1)
  widths = [(0, 0)] * x.ndim
  widths[axis + 1] = (0, up - 1)
  x = jnp.pad(x, widths)
  shape = list(x.shape)
  shape[axis:axis + 2] = [shape[axis] * up]
  return x.reshape(shape)


def upfirdn2d(x: Array,
              kernel_1d: Sequence[float],
              up: int = 1,
              down: int = 1,
              pad: tuple[int, int] = (0, 0),
              gain: float = 1.0) -> Array:
  """basicsr `upfirdn2d` with a separable kernel, on NHWC input.

  Upsamples by zero insertion, pads (pad0 before, pad1 after, same on H and W),
  convolves (true convolution) with `gain * outer(k1, k1)` and keeps every
  `down`-th sample.

  Args:
    x: [N, H, W, C].
    kernel_1d: the normalised 1-D factor k1 of the 2-D kernel.
    up: upsampling factor.
    down: downsampling factor.
    pad: (pad0, pad1).
    gain: total gain of the 2-D kernel (basicsr multiplies by `factor**2`).

  Returns:
    [N, H', W', C] with H' = (H*up + pad0 + pad1 - len(k1)) // down + 1.
  """
  taps = np.asarray(kernel_1d, np.float64)[::-1] * np.sqrt(gain)
  for axis in (1, 2):
    x = _zero_insert(x, up, axis)
    x = _pad_axis(x, pad[0], pad[1], axis)
    x = _correlate_1d(x, taps, axis)
    if down > 1:
      x = lax.slice_in_dim(x, 0, x.shape[axis], stride=down, axis=axis)
  return x


# ------------------------------------------------------------------------------
# PyTorch bilinear interpolation (align_corners=False, antialias=False).
# ------------------------------------------------------------------------------


def downsample2x(x: Array) -> Array:
  """Bilinear x0.5 (= 2x2 average pooling for even sizes). [N,H,W,C] -> [N,H/2,W/2,C]."""
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    return resize_bilinear(x, (h // 2, w // 2))
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample2x_axis(x: Array, axis: int) -> Array:
  n = x.shape[axis]
  first = lax.slice_in_dim(x, 0, 1, axis=axis)
  last = lax.slice_in_dim(x, n - 1, n, axis=axis)
  prev = jnp.concatenate([first, lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
  nxt = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
  even = 0.25 * prev + 0.75 * x
  odd = 0.75 * x + 0.25 * nxt
  out = jnp.stack([even, odd], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] = 2 * n
  return out.reshape(shape)


def upsample2x(x: Array) -> Array:
  """Bilinear x2 with edge clamping. [N,H,W,C] -> [N,2H,2W,C]."""
  return _upsample2x_axis(_upsample2x_axis(x, 1), 2)


@functools.lru_cache(maxsize=64)
def _bilinear_taps(in_size: int, out_size: int):
  """Source indices and weights of PyTorch's bilinear resize along one axis."""
  scale = in_size / out_size
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = src - i0
  return i0, i1, (1.0 - w1).astype(np.float32), w1.astype(np.float32)


def _resize_axis(x: Array, out_size: int, axis: int) -> Array:
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  i0, i1, w0, w1 = _bilinear_taps(in_size, out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  w0 = jnp.asarray(w0, x.dtype).reshape(shape)
  w1 = jnp.asarray(w1, x.dtype).reshape(shape)
  return jnp.take(x, i0, axis=axis) * w0 + jnp.take(x, i1, axis=axis) * w1


def resize_bilinear(x: Array, size: tuple[int, int]) -> Array:
  """PyTorch `F.interpolate(x, size, mode='bilinear', align_corners=False)`.

  Args:
    x: [N, H, W, C].
    size: (H', W').

  Returns:
    [N, H', W', C].
  """
  return _resize_axis(_resize_axis(x, size[0], 1), size[1], 2)


def interpolate(x: Array, scale_factor: float, mode: str = 'bilinear') -> Array:
  """PyTorch `F.interpolate(x, scale_factor=2 or 0.5, mode, align_corners=False)` (or `nn.Upsample`).

  With a `scale_factor` PyTorch maps output pixel i to source coordinate
  `(i + 0.5) / scale_factor - 0.5` ('bilinear') or `floor(i / scale_factor)`
  ('nearest'), with the output size floored; for x0.5 that is the mean of
  samples 2i and 2i+1 (bilinear) or sample 2i (nearest), also for odd sizes.

  Args:
    x: [N, H, W, C].
    scale_factor: 2 or 0.5.
    mode: 'bilinear' (align_corners=False, no antialias) or 'nearest'.

  Returns:
    [N, 2H, 2W, C] or [N, H//2, W//2, C].
  """
  if mode not in ('bilinear', 'nearest'):
    raise ValueError(f"interpolation mode must be 'bilinear' or 'nearest', got {mode!r}")
  if scale_factor == 2:
    if mode == 'bilinear':
      return upsample2x(x)
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  if scale_factor == 0.5:
    n, h, w, c = x.shape
    x = x[:, :2 * (h // 2), :2 * (w // 2)]
    if mode == 'nearest':
      return x[:, ::2, ::2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  raise ValueError(f'scale_factor must be 2 or 0.5, got {scale_factor}')
