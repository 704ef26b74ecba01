"""Random Gaussian blur kernels and their per-sample application (gfpgan.md 3.1 step 3).

The kernels are basicsr's `bivariate_Gaussian`: on the grid -r..r (r = size//2,
x along columns, y along rows) k(p) = exp(-1/2 p^T S^-1 p) normalised to sum 1,
with S = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T ("aniso") or
sigma_x^2 I ("iso", which is the same formula with sigma_y = sigma_x, theta = 0).

They are applied as `cv2.filter2D(img, -1, k)` does: correlation, output the
size of the input, border BORDER_REFLECT_101 (`jnp.pad(mode='reflect')`).
Every sample has its own kernel. Two formulations are provided:

* `'fft'` (default): reflect-pad by r, then one real 2-D FFT per image and
  channel of size >= H + 2r (rounded up to a 2,3,5,7-smooth length),
  multiplied by the kernel's transform. O(HW log HW) whatever the kernel size;
  the padded length makes the circular convolution equal to the linear one on
  the kept window.
* `'conv'`: a depthwise `lax.conv_general_dilated` with the batch folded into
  the channels (feature_group_count = N * C), at HIGHEST precision so that
  GPUs do not drop to TF32. O(HW K^2).

`scripts/benchmark.py data` times both.

XLA's SPMD partitioner does not split an FFT along its batch dimensions: on a
batch-sharded array it all-gathers the whole batch and every device transforms
all of it. So when a mesh is set (`jax.set_mesh`, as the trainer does) and the
batch divides over all its devices, the FFT blur runs under `jax.shard_map`:
each device blurs its own samples, with no collectives. (`custom_partitioning`
would do the same but puts a per-process object id in the HLO, which defeats
the persistent compilation cache and differs between the processes of a pod.)
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
import numpy as np

Array = jax.Array


def gaussian_kernels(sigma_x: Array, sigma_y: Array, theta: Array, size: int) -> Array:
  """Bivariate Gaussian kernels, one per sample, as basicsr builds them.

  Args:
    sigma_x: float32 [N], standard deviation along the kernel's first axis.
    sigma_y: float32 [N], along the second axis (= sigma_x for "iso").
    theta: float32 [N], rotation in radians (0 for "iso").
    size: odd kernel size K (41 in the official recipe).

  Returns:
    float32 [N, K, K] kernels (rows = y, columns = x), each summing to one.
  """
  if size % 2 != 1:
    raise ValueError(f'kernel size must be odd, got {size}')
  ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float32)
  xx, yy = np.meshgrid(ax, ax)  # xx varies along columns, as basicsr's mesh_grid
  c, s = jnp.cos(theta), jnp.sin(theta)
  # S^-1 = R diag(1/sx^2, 1/sy^2) R^T, without forming S (no cancellation in
  # its determinant for very elongated kernels).
  px, py = 1.0 / jnp.square(sigma_x), 1.0 / jnp.square(sigma_y)
  ia = c * c * px + s * s * py
  ib = c * s * (px - py)
  id_ = s * s * px + c * c * py
  q = (ia[:, None, None] * xx * xx + 2.0 * ib[:, None, None] * xx * yy
       + id_[:, None, None] * yy * yy)
  k = jnp.exp(-0.5 * q)
  return k / jnp.sum(k, axis=(1, 2), keepdims=True)


def _fast_len(n: int) -> int:
  """Smallest m >= n whose prime factors are all in {2, 3, 5, 7}."""
  m = n
  while True:
    r = m
    for p in (2, 3, 5, 7):
      while r % p == 0:
        r //= p
    if r == 1:
      return m
    m += 1


def _blur_fft(images: Array, kernels: Array) -> Array:
  n, h, w, c = images.shape
  k = kernels.shape[-1]
  r = k // 2
  x = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode='reflect')
  x = jnp.moveaxis(x, -1, 1)  # [N, C, H + 2r, W + 2r]
  lh, lw = _fast_len(h + 2 * r), _fast_len(w + 2 * r)
  fx = jnp.fft.rfft2(x, s=(lh, lw))
  # Correlation = convolution with the point-reflected kernel.
  fk = jnp.fft.rfft2(kernels[:, ::-1, ::-1], s=(lh, lw))
  y = jnp.fft.irfft2(fx * fk[:, None], s=(lh, lw))
  y = y[:, :, k - 1:k - 1 + h, k - 1:k - 1 + w]
  return jnp.moveaxis(y, 1, -1).astype(images.dtype)


def _blur_fft_batch_local(images: Array, kernels: Array) -> Array:
  """`_blur_fft`, split over the batch across the devices of the context mesh when there is one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or images.shape[0] % mesh.size:
    return _blur_fft(images, kernels)
  spec = P(tuple(mesh.axis_names))
  return jax.shard_map(_blur_fft, in_specs=(spec, spec), out_specs=spec)(images, kernels)


def _blur_conv(images: Array, kernels: Array) -> Array:
  n, h, w, c = images.shape
  k = kernels.shape[-1]
  r = k // 2
  x = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode='reflect')
  # Fold the batch into channels: [1, H', W', N*C], channel index = n*C + c.
  x = jnp.moveaxis(x, 0, 2).reshape(1, h + 2 * r, w + 2 * r, n * c)
  rhs = jnp.repeat(kernels, c, axis=0)  # [N*C, K, K], same order
  rhs = jnp.moveaxis(rhs, 0, -1)[:, :, None, :]  # HWIO with I = 1
  y = lax.conv_general_dilated(
      x, rhs.astype(x.dtype), window_strides=(1, 1), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=n * c,
      precision=lax.Precision.HIGHEST)
  return jnp.moveaxis(y.reshape(h, w, n, c), 2, 0)


@functools.partial(jax.jit, static_argnames='method')
def blur(images: Array, kernels: Array, method: str = 'fft') -> Array:
  """`cv2.filter2D(img, -1, kernel)` per sample (correlation, BORDER_REFLECT_101).

  Args:
    images: float32 [N, H, W, C]; H and W larger than K // 2.
    kernels: float32 [N, K, K], K odd.
    method: 'fft' or 'conv' (see the module docstring).

  Returns:
    float32 [N, H, W, C].
  """
  if method == 'fft':
    return _blur_fft_batch_local(images, kernels)
  if method == 'conv':
    return _blur_conv(images, kernels)
  raise ValueError(f"unknown blur method {method!r}; expected 'fft' or 'conv'")
