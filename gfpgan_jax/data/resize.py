"""`cv2.resize(..., interpolation=cv2.INTER_LINEAR)` with per-sample, data-dependent sizes.

OpenCV's INTER_LINEAR maps output pixel i to the source coordinate
`s = (i + 0.5) * in / out - 0.5` (half-pixel centres), takes the two
neighbours floor(s), floor(s) + 1 with weights 1 - f, f, and clamps at the
borders (s < 0 uses pixel 0; s >= in - 1 uses pixel in - 1). There is no
antialiasing when it shrinks (so `jax.image.resize`, which antialiases, is not
used), and the same formula enlarges. For an exact 2x shrink OpenCV switches to
INTER_AREA, which gives the same 2x2 means.

Shapes must be static under `jit`, but the degradation's intermediate size is
random. An image of valid size (h, w) therefore lives in a fixed [H, W] buffer:
the top-left h x w region holds the picture and the rest replicates its last
row and column (so any clamped read is correct). The resampling is a pair of
gathers whose source coordinates use the dynamic sizes.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def linear_taps(out_len: int, out_valid: Array, in_valid: Array) -> tuple[Array, Array, Array]:
  """Source taps of INTER_LINEAR along one axis.

  Args:
    out_len: static length of the output buffer.
    out_valid: int32 scalar, the real output length (<= out_len). Positions
      beyond it repeat the last real one.
    in_valid: int32 scalar, the real input length.

  Returns:
    (i0, i1, frac): int32 [out_len], int32 [out_len], float32 [out_len]; the
    output is `(1 - frac) * x[i0] + frac * x[i1]`.
  """
  i = jnp.minimum(jnp.arange(out_len), out_valid - 1)
  # s = (i + 0.5) * in / out - 0.5 = num / den exactly, in integers, so the
  # integer part is exact and the fraction is rounded once.
  num = (2 * i + 1) * in_valid - out_valid
  den = 2 * out_valid
  s0 = jnp.floor_divide(num, den)
  frac = (num - s0 * den).astype(jnp.float32) / den.astype(jnp.float32)
  frac = jnp.where(s0 < 0, 0.0, frac)
  s0 = jnp.maximum(s0, 0)
  frac = jnp.where(s0 >= in_valid - 1, 0.0, frac)
  s0 = jnp.minimum(s0, in_valid - 1)
  s1 = jnp.minimum(s0 + 1, in_valid - 1)
  return s0, s1, frac


def _lerp_rows(x: Array, i0: Array, i1: Array, frac: Array) -> Array:
  """Interpolates whole rows (axis 0): gathers of contiguous slices."""
  f = frac.reshape((-1,) + (1,) * (x.ndim - 1))
  return (1.0 - f) * jnp.take(x, i0, axis=0) + f * jnp.take(x, i1, axis=0)


def _resize_one(image: Array, in_size: Array, out_size: Array, out_shape: tuple[int, int]) -> Array:
  r0, r1, fr = linear_taps(out_shape[0], out_size[0], in_size[0])
  c0, c1, fc = linear_taps(out_shape[1], out_size[1], in_size[1])
  # Both passes gather rows (long contiguous slices, fast once batched by
  # vmap); the columns are handled as the rows of the transposed image.
  # OpenCV interpolates horizontally first; the order only moves the float
  # rounding (~1e-7).
  x = _lerp_rows(image, r0, r1, fr)
  x = _lerp_rows(jnp.swapaxes(x, 0, 1), c0, c1, fc)
  return jnp.swapaxes(x, 0, 1)


def resize_linear(images: Array, in_size: Array, out_size: Array,
                  out_shape: tuple[int, int] | None = None) -> Array:
  """Per-sample `cv2.resize(img, (w_out, h_out), interpolation=cv2.INTER_LINEAR)`.

  Args:
    images: float32 [N, H, W, C]; sample n's picture is its top-left
      in_size[n] region (the rest is ignored).
    in_size: int32 [N, 2], (h, w) valid input sizes, each >= 1.
    out_size: int32 [N, 2], (h, w) output sizes, each >= 1 and at most
      out_shape.
    out_shape: static (H_out, W_out) of the output buffer; defaults to (H, W).

  Returns:
    float32 [N, H_out, W_out, C]: the resized pictures in the top-left
    out_size region, their last row/column replicated beyond it.
  """
  if out_shape is None:
    out_shape = images.shape[1:3]
  out_shape = tuple(int(v) for v in out_shape)
  in_size = jnp.asarray(in_size, jnp.int32)
  out_size = jnp.asarray(out_size, jnp.int32)
  return jax.vmap(lambda x, i, o: _resize_one(x, i, o, out_shape))(images, in_size, out_size)
