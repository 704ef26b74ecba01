"""torchvision `roi_align` in JAX (NHWC, one box per image), as used for GFP-GAN's face components.

GFP-GAN crops the eyes and the mouth with `torchvision.ops.roi_align(img, rois,
output_size)`, i.e. `spatial_scale=1`, `sampling_ratio=-1` (adaptive) and
`aligned=False` (gfpgan.md 3.3, "Patch extraction"). For a box
(x1, y1, x2, y2) and an output of `out` bins per axis, torchvision computes,
per axis (x shown; y is the same with H):

* `start = x1 * spatial_scale - offset` (offset 0.5 if `aligned` else 0),
  `size = (x2 - x1) * spatial_scale`, clamped to >= 1 when not `aligned`;
* `bin = size / out` and `grid = ceil(size / out)` samples per bin (or
  `sampling_ratio` when it is > 0);
* sample i of bin p sits at `start + p * bin + (i + 0.5) * bin / grid`;
* bilinear sampling of a sample at (y, x): if y < -1, y > H, x < -1 or x > W
  the sample is 0; otherwise the coordinate is clamped to >= 0, and a floor
  index >= H - 1 snaps to H - 1 (interpolation weight 0 on the next row);
* the bin value is the sum of its samples divided by `max(grid_h * grid_w, 1)`.

The out-of-range rule is the one of torchvision's compiled CPU and CUDA
kernels (`roi_align_common.h`, `roi_align_kernel.cu`), which is what
`torchvision.ops.roi_align` runs in the official training. torchvision's
pure-PyTorch `_roi_align` (used only under `torch.compile` or deterministic
mode, and available to our tests) omits it and clamps instead: samples beyond
the border take the edge pixel. `zero_outside=False` reproduces that variant.
The two agree whenever every sample lies in [-1, H] x [-1, W], which is the
case for boxes inside the image.

Implementation: the sample and bilinear weights only depend on one axis each,
and the out-of-range rule is a product of a y and an x condition, so the op
is separable: `out[n] = A_y[n] @ image[n] @ A_x[n]^T` with per-box
interpolation matrices A [out, H] (each row is a bin: the average over its
samples of the two-tap bilinear weights). This is exact, linear in the image
(gradients flow to the image like torchvision's backward; boxes get none), and
costs two small matmuls instead of a gather per sample.

Static sample bound: with `sampling_ratio <= 0` the number of samples per bin
is data dependent. Each axis evaluates `max_samples` candidate samples per bin
and masks those with index >= grid, which is exact whenever
`ceil(size / out) <= max_samples`. The default bound, `ceil(2 * H / out)`
(resp. W), is exact for every box up to twice the size of the feature map
(for GFP-GAN at 512 px: 13 for the 80 px eyes, 9 for the 120 px mouth; real
component boxes need 1 or 2). The bound costs little: it only sizes the
[N, out, max_samples, H] tensor the interpolation matrix is summed from. For a
larger box the grid is capped at `max_samples`: the result is then torchvision
with `sampling_ratio=max_samples` on that axis (evenly spaced samples covering
the whole bin), not a truncated average.
"""

from collections.abc import Sequence
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _axis_matrix(start: Array, size: Array, out: int, num: int, grid: Array, max_samples: int,
                 zero_outside: bool) -> Array:
  """Per-box bin-averaged bilinear weights along one axis.

  Args:
    start: [N] float32 roi start in feature-map pixels.
    size: [N] float32 roi extent in feature-map pixels (already clamped).
    out: number of output bins.
    num: input size along this axis (H or W).
    grid: [N] int32 samples per bin along this axis (may be <= 0: no samples).
    max_samples: static number of candidate samples per bin.
    zero_outside: apply torchvision's compiled-kernel out-of-range rule.

  Returns:
    [N, out, num] float32: row p holds sum_i w_i * bilinear taps of sample i,
    with w_i = 1/grid for the used samples, 0 otherwise.
  """
  bin_size = (size / out)[:, None, None]  # [N, 1, 1]
  grid_f = grid.astype(jnp.float32)[:, None, None]
  p = jnp.arange(out, dtype=jnp.float32)[None, :, None]
  i = jnp.arange(max_samples, dtype=jnp.float32)[None, None, :]
  # Same operation order as the C++ kernel: start + p * bin + ((i + .5) * bin) / grid.
  pos = start[:, None, None] + p * bin_size + ((i + 0.5) * bin_size) / jnp.maximum(grid_f, 1.0)  # [N, out, S]
  keep = i < grid_f
  if zero_outside:
    keep &= (pos >= -1.0) & (pos <= num)  # NaN compares false: dropped like the kernel does
  # Clamping to [0, num - 1] before the floor equals the kernel's clamp at 0 and
  # its snap of indices >= num - 1 (where the fractional part becomes 0).
  c = jnp.clip(pos, 0.0, num - 1.0)
  low = jnp.floor(c)
  frac = c - low
  low = low.astype(jnp.int32)
  high = jnp.minimum(low + 1, num - 1)
  taps = ((1.0 - frac)[..., None] * jax.nn.one_hot(low, num, dtype=jnp.float32) +
          frac[..., None] * jax.nn.one_hot(high, num, dtype=jnp.float32))  # [N, out, S, num]
  taps = jnp.where(keep[..., None], taps, 0.0)
  return taps.sum(axis=2) / jnp.maximum(grid_f, 1.0)


@functools.partial(jax.jit,
                   static_argnames=('output_size', 'spatial_scale', 'sampling_ratio', 'aligned', 'max_samples',
                                    'zero_outside'))
def roi_align(images: Array,
              boxes: Array,
              output_size: int | Sequence[int],
              spatial_scale: float = 1.0,
              sampling_ratio: int = -1,
              aligned: bool = False,
              *,
              max_samples: int | Sequence[int] | None = None,
              zero_outside: bool = True) -> Array:
  """torchvision `roi_align` with one box per image, NHWC. Jit-compatible.

  Equals `torchvision.ops.roi_align(images_nchw, rois, output_size,
  spatial_scale, sampling_ratio, aligned)` with `rois[n] = (n, *boxes[n])`,
  transposed to NHWC (see the module docstring for the exact semantics and
  the `max_samples` bound). Jitted; all arguments but `images` and `boxes`
  are static (pass sequences as tuples).

  Args:
    images: [N, H, W, C] feature maps (any float dtype; computed in float32).
    boxes: [N, 4] (x1, y1, x2, y2) in image coordinates (scaled by
      `spatial_scale`); row n is cropped from images[n]. Not differentiated.
    output_size: out or (out_h, out_w) bins.
    spatial_scale: box coordinate -> feature map coordinate factor.
    sampling_ratio: samples per bin per axis if > 0; adaptive
      (ceil(roi size / out)) otherwise.
    aligned: shift the box by -0.5 pixel (Detectron2) and do not clamp its
      size to >= 1.
    max_samples: static bound on the adaptive samples per bin, an int or
      (h, w). Default: ceil(2 * H / out_h) and ceil(2 * W / out_w). Ignored
      when `sampling_ratio > 0`.
    zero_outside: True (default): samples outside [-1, H] x [-1, W] are 0,
      as in torchvision's compiled kernels (the official training). False:
      torchvision's pure-PyTorch `_roi_align`, which clamps them to the edge.

  Returns:
    [N, out_h, out_w, C] in the dtype of `images`.
  """
  if images.ndim != 4:
    raise ValueError(f'images must be [N, H, W, C], got shape {images.shape}')
  n, h, w, _ = images.shape
  if boxes.shape != (n, 4):
    raise ValueError(f'boxes must be [N, 4] = [{n}, 4] (one box per image), got shape {boxes.shape}')
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  if sampling_ratio > 0:
    bound_h = bound_w = sampling_ratio
  elif max_samples is None:
    bound_h, bound_w = math.ceil(2 * h / out_h), math.ceil(2 * w / out_w)
  else:
    bound_h, bound_w = (max_samples, max_samples) if isinstance(max_samples, int) else tuple(max_samples)
  if min(bound_h, bound_w) < 1:
    raise ValueError(f'max_samples must be >= 1, got {max_samples}')

  boxes = lax.stop_gradient(boxes.astype(jnp.float32))
  offset = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = (boxes[:, k] * spatial_scale - offset for k in range(4))
  size_w, size_h = x2 - x1, y2 - y1
  if not aligned:
    size_w, size_h = jnp.maximum(size_w, 1.0), jnp.maximum(size_h, 1.0)

  def grid(size, out, bound):
    if sampling_ratio > 0:
      return jnp.full(size.shape, sampling_ratio, jnp.int32)
    return jnp.minimum(jnp.ceil(size / out), bound).astype(jnp.int32)

  a_y = _axis_matrix(y1, size_h, out_h, h, grid(size_h, out_h, bound_h), bound_h, zero_outside)  # [N, out_h, H]
  a_x = _axis_matrix(x1, size_w, out_w, w, grid(size_w, out_w, bound_w), bound_w, zero_outside)  # [N, out_w, W]
  hi = lax.Precision.HIGHEST
  x = images.astype(jnp.float32)
  x = jnp.einsum('nph,nhwc->npwc', a_y, x, precision=hi)
  x = jnp.einsum('nqw,npwc->npqc', a_x, x, precision=hi)
  return x.astype(images.dtype)
