"""NHWC building blocks shared by the GFP-GAN networks.

Parameter names and values mirror the official PyTorch state dicts (only the
layout differs: conv kernels are HWIO, linear weights are [in, out], NCHW
tensors are NHWC), so weight conversion is a key map plus a transpose.

Two layer families exist (gfpgan.md section 1.1):

* basicsr "equalized" layers (`EqualConv2d`, `EqualLinear`, `FusedLeakyReLU`,
  `ConvLayer`, `ResBlock`) store unscaled weights and apply `1/sqrt(fan_in)`
  (and `lr_mul`) at run time; the sqrt(2) gains live in the activations.
* plain layers (`Conv2d`, `Linear`) of the clean architectures, with the
  scales folded into the stored weights.

Every module takes `dtype` (compute) and `param_dtype` (storage, float32).
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from gfpgan_jax.models import resample

Array = jax.Array
Dtype = Any

SQRT2 = math.sqrt(2.0)
DEFAULT_RESAMPLE_KERNEL = (1, 3, 3, 1)
_CONV_DIMS = ('NHWC', 'HWIO', 'NHWC')
_PHASE_ROWS = np.array([[2, 0], [3, 1]])  # conv_transpose2x: [phase, tap] -> kernel row (3: zero)


def leaky_relu(x: Array, negative_slope: float = 0.2) -> Array:
  return jnp.where(x >= 0, x, negative_slope * x)


def scaled_leaky_relu(x: Array, negative_slope: float = 0.2) -> Array:
  """basicsr `ScaledLeakyReLU`: sqrt(2) * lrelu(x)."""
  return leaky_relu(x, negative_slope) * SQRT2


def conv2d(x: Array,
           w: Array,
           stride: int = 1,
           padding: int | Sequence[tuple[int, int]] = 0,
           groups: int = 1) -> Array:
  """Cross-correlation like `F.conv2d`. x: [N,H,W,I], w: [kh,kw,I/groups,O]."""
  if isinstance(padding, int):
    padding = [(padding, padding)] * 2
  return lax.conv_general_dilated(
      x, w, window_strides=(stride, stride), padding=padding, dimension_numbers=_CONV_DIMS,
      feature_group_count=groups)


def conv_transpose2x(x: Array, w: Array) -> Array:
  """`F.conv_transpose2d(x, w, stride=2, padding=0)` for a 3x3 kernel: [N,H,W,I] -> [N,2H+1,2W+1,O].

  w is the kernel as a cross-correlation would use it, [3,3,I,O] (HWIO of the
  torch [I,O,3,3] weight, not flipped). Output pixel p gets x[m] * w[p - 2m].

  On the CPU it is computed by phases: the even and odd output rows and columns
  are four stride-1 2x2 convs of the input padded by one, stacked as 4*O
  output channels of one conv, then interleaved. XLA:CPU computes the
  weight gradient of the zero-dilated form (`lhs_dilation`, used on other
  backends) as a window-dilated, reversed convolution with no fast kernel:
  963 ms forward and backward for the 128 -> 64 channel layer of the 64 px
  demo at batch 4, against 34 ms for the phase form (2-core CPU). The two are
  the same sum, so they agree to float32 rounding.
  """
  kh, kw = w.shape[:2]
  if (kh, kw) != (3, 3) or jax.default_backend() != 'cpu':
    return lax.conv_general_dilated(x, w[::-1, ::-1], window_strides=(1, 1), padding=[(kh - 1, kh - 1),
                                                                                      (kw - 1, kw - 1)],
                                    lhs_dilation=(2, 2), dimension_numbers=_CONV_DIMS)
  n, h, wd, i = x.shape
  o = w.shape[-1]
  # Over the input padded by one, xp[m] = x[m - 1], output row 2m + a (phase a) takes the taps
  # xp[m + t], t = 0, 1, with kernel rows _PHASE_ROWS[a][t] (3: the zero row): even rows
  # w[2] x[m-1] + w[0] x[m], odd rows w[1] x[m]. The same for columns.
  wz = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))
  k = wz[_PHASE_ROWS[:, :, None, None], _PHASE_ROWS[None, None, :, :]]  # [a, t_h, b, t_w, I, O]
  kernel = k.transpose(1, 3, 4, 0, 2, 5).reshape(2, 2, i, 4 * o)  # [t_h, t_w, I, (a, b, O)]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = lax.conv_general_dilated(xp, kernel, window_strides=(1, 1), padding='VALID', dimension_numbers=_CONV_DIMS)
  y = y.reshape(n, h + 1, wd + 1, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h + 2, 2 * wd + 2, o)
  return y[:, :2 * h + 1, :2 * wd + 1]


def max_pool2x(x: Array) -> Array:
  """`F.max_pool2d(x, 2)` on [N,H,W,C] -> [N,H//2,W//2,C], with torch's gradient.

  The gradient goes to the first maximum of each window in row-major order
  (torch's index; `nn.max_pool`'s reduce-window gradient is a variadic
  reduce-window over four index maps, about 50 ms a step for ArcFace's
  128 px stem on XLA:CPU). Here it is a one-hot selection made of elementwise
  comparisons over the four window positions, which fuses with its neighbours.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  win = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
  v = lax.stop_gradient(win)
  top = jnp.max(v, axis=-1, keepdims=True)
  hit = [v[..., i] == top[..., 0] for i in range(4)]
  seen = hit[0]
  first = [hit[0]]
  for is_max in hit[1:]:  # a maximum with none before it
    first.append(is_max & ~seen)
    seen = seen | is_max
  return sum(win[..., i] * first[i].astype(x.dtype) for i in range(4))


@jax.custom_vjp
def matmul_few_rows(x: Array, w: Array) -> Array:
  """x @ w for x [N, K] and w [K, O], for a large w and a handful of rows.

  Identical forward; the input gradient g @ w.T is computed one row at a time
  (a matrix-vector product each) on the CPU when N <= 8: XLA:CPU's GEMM for
  such a product with w's contracting dim minor takes 140 ms for ArcFace's fc5
  (32768 x 512) at N = 4, the rows 11 ms.
  """
  return jnp.dot(x, w)


def _matmul_few_rows_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _matmul_few_rows_bwd(res, g):
  x, w = res
  if 0 < x.shape[0] <= 8 and jax.default_backend() == 'cpu':
    dx = jnp.stack([jnp.dot(w, g[i]) for i in range(x.shape[0])])
  else:
    dx = jnp.dot(g, w.T)
  return dx.astype(x.dtype), jnp.dot(x.T, g).astype(w.dtype)


matmul_few_rows.defvjp(_matmul_few_rows_fwd, _matmul_few_rows_bwd)


def nchw_flatten(x: Array) -> Array:
  """Flattens [N,H,W,C] in PyTorch's NCHW order, as `x.view(N, -1)` on NCHW."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


# ------------------------------------------------------------------------------
# Initialisers with PyTorch's distributions.
# ------------------------------------------------------------------------------


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
  """`nn.Conv2d`/`nn.Linear` default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
  fan_in = math.prod(shape[:-1])
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def kaiming_normal_init(a: float = 0.0, nonlinearity: str = 'leaky_relu', scale: float = 1.0):
  """`nn.init.kaiming_normal_(mode='fan_in')` times `scale` (basicsr `default_init_weights`)."""
  if nonlinearity == 'linear':
    gain = 1.0
  else:
    gain = math.sqrt(2.0 / (1 + a**2))

  def init(key, shape, dtype=jnp.float32):
    fan_in = math.prod(shape[:-1])
    return jax.random.normal(key, shape, dtype) * (gain / math.sqrt(fan_in) * scale)

  return init


def constant_init(value: float):

  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.full(shape, value, dtype)

  return init


# ------------------------------------------------------------------------------
# Plain layers (clean architectures, ArcFace, VGG).
# ------------------------------------------------------------------------------


class Conv2d(nn.Module):
  """`nn.Conv2d` in NHWC. Params: `weight` [k,k,in/groups,out], `bias` [out].

  `groups` as in PyTorch (`groups=in=out` is a depthwise conv; a torch
  (C,1,k,k) weight is (k,k,1,C) here).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  kernel_init: Any = torch_default_kernel_init
  bias_init: Any = None
  groups: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_ch = x.shape[-1]
    k = self.kernel_size
    if in_ch % self.groups or self.features % self.groups:
      raise ValueError(f'Conv2d: in ({in_ch}) and out ({self.features}) channels must be divisible by groups '
                       f'({self.groups})')
    w = self.param('weight', self.kernel_init, (k, k, in_ch // self.groups, self.features), self.param_dtype)
    y = conv2d(x.astype(self.dtype), w.astype(self.dtype), self.stride, self.padding, self.groups)
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(in_ch // self.groups * k * k)
      b = self.param('bias', bias_init, (self.features,), self.param_dtype)
      y = y + b.astype(self.dtype)
    return y


class Linear(nn.Module):
  """`nn.Linear`. Params: `weight` [in, out], `bias` [out]."""
  features: int
  use_bias: bool = True
  kernel_init: Any = torch_default_kernel_init
  bias_init: Any = None
  few_rows: bool = False  # a large layer applied to a few rows: `matmul_few_rows`
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_ch = x.shape[-1]
    w = self.param('weight', self.kernel_init, (in_ch, self.features), self.param_dtype)
    matmul = matmul_few_rows if self.few_rows and x.ndim == 2 else jnp.dot
    y = matmul(x.astype(self.dtype), w.astype(self.dtype))
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(in_ch)
      y = y + self.param('bias', bias_init, (self.features,), self.param_dtype).astype(self.dtype)
    return y


class PReLU(nn.Module):
  """`nn.PReLU()`: one learned slope, param `weight` [1], init 0.25."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    a = self.param('weight', constant_init(0.25), (1,), self.param_dtype).astype(self.dtype)
    return jnp.where(x >= 0, x, a * x)


class BatchNorm(nn.Module):
  """`nn.BatchNorm{1,2}d` in inference mode (running statistics), eps 1e-5.

  Params `weight`, `bias`; collection `batch_stats` holds `running_mean`,
  `running_var` and `num_batches_tracked` (kept for a strict round trip).
  Normalisation is computed in float32.
  """
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param('weight', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    mean = self.variable('batch_stats', 'running_mean', jnp.zeros, (c,), self.param_dtype)
    var = self.variable('batch_stats', 'running_var', jnp.ones, (c,), self.param_dtype)
    self.variable('batch_stats', 'num_batches_tracked', jnp.zeros, (), jnp.int32)
    mul = scale.astype(jnp.float32) * lax.rsqrt(var.value.astype(jnp.float32) + self.eps)
    add = bias.astype(jnp.float32) - mean.value.astype(jnp.float32) * mul
    return (x.astype(jnp.float32) * mul + add).astype(self.dtype)


# ------------------------------------------------------------------------------
# basicsr equalized-learning-rate layers.
# ------------------------------------------------------------------------------


class EqualConv2d(nn.Module):
  """basicsr `EqualConv2d`: conv with weight * 1/sqrt(in*k*k) at run time."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  bias_init_val: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_ch = x.shape[-1]
    k = self.kernel_size
    w = self.param('weight', nn.initializers.normal(1.0), (k, k, in_ch, self.features),
                   self.param_dtype)
    scale = 1.0 / math.sqrt(in_ch * k * k)
    y = conv2d(x.astype(self.dtype), (w * scale).astype(self.dtype), self.stride, self.padding)
    if self.use_bias:
      b = self.param('bias', constant_init(self.bias_init_val), (self.features,), self.param_dtype)
      y = y + b.astype(self.dtype)
    return y


class EqualLinear(nn.Module):
  """basicsr `EqualLinear`: `x @ (W * lr_mul/sqrt(in)) + b * lr_mul`, optional fused lrelu."""
  features: int
  use_bias: bool = True
  bias_init_val: float = 0.0
  lr_mul: float = 1.0
  activation: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.activation not in ('fused_lrelu', None):
      raise ValueError(f"EqualLinear activation must be 'fused_lrelu' or None, got {self.activation!r}")
    in_ch = x.shape[-1]
    lr_mul = self.lr_mul

    def w_init(key, shape, dtype=jnp.float32):
      return jax.random.normal(key, shape, dtype) / lr_mul

    w = self.param('weight', w_init, (in_ch, self.features), self.param_dtype)
    scale = lr_mul / math.sqrt(in_ch)
    y = jnp.dot(x.astype(self.dtype), (w * scale).astype(self.dtype))
    if self.use_bias:
      b = self.param('bias', constant_init(self.bias_init_val), (self.features,), self.param_dtype)
      y = y + (b * lr_mul).astype(self.dtype)
    if self.activation == 'fused_lrelu':
      y = scaled_leaky_relu(y)
    return y


class FusedLeakyReLU(nn.Module):
  """basicsr `FusedLeakyReLU`: sqrt(2) * lrelu(x + bias). Param `bias` [C]."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b = self.param('bias', nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
    return scaled_leaky_relu(x + b.astype(x.dtype))


def blur_before_stride2(x: Array, kernel_size: int, resample_kernel=DEFAULT_RESAMPLE_KERNEL) -> Array:
  """basicsr `UpFirDnSmooth(downsample_factor=2)`: the FIR blur before a stride-2 conv."""
  k1 = resample.make_resample_kernel_1d(resample_kernel)
  p = (len(k1) - 2) + (kernel_size - 1)
  return resample.upfirdn2d(x, k1, pad=((p + 1) // 2, p // 2))


class ConvLayer(nn.Module):
  """basicsr `ConvLayer` (an `nn.Sequential`; child names are its indices).

  Without downsampling: '0' EqualConv2d (stride 1, pad k//2), '1' activation.
  With downsampling: blur (index 0, no params), '1' EqualConv2d (stride 2,
  pad 0), '2' activation. The conv has a bias only if `bias and not activate`;
  with `activate and bias` the bias lives in the FusedLeakyReLU.

  `interpolation_mode` None is basicsr's FIR downsampling; 'bilinear' or
  'nearest' is gfpgan's bilinear-arch `ConvLayer`: index 0 is
  `nn.Upsample(scale_factor=0.5)` and the conv has stride 1, pad k//2.
  """
  features: int
  kernel_size: int
  downsample: bool = False
  resample_kernel: Sequence[int] = DEFAULT_RESAMPLE_KERNEL
  bias: bool = True
  activate: bool = True
  interpolation_mode: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    idx = 0
    fir = self.interpolation_mode is None
    if self.downsample:
      if fir:
        x = blur_before_stride2(x, self.kernel_size, self.resample_kernel)
      else:
        x = resample.interpolate(x, 0.5, self.interpolation_mode)
      idx = 1
    x = EqualConv2d(
        self.features,
        self.kernel_size,
        stride=2 if self.downsample and fir else 1,
        padding=0 if self.downsample and fir else self.kernel_size // 2,
        use_bias=self.bias and not self.activate,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=str(idx))(x)
    if self.activate:
      if self.bias:
        x = FusedLeakyReLU(dtype=self.dtype, param_dtype=self.param_dtype, name=str(idx + 1))(x)
      else:
        x = scaled_leaky_relu(x)
    return x


class ResBlock(nn.Module):
  """basicsr discriminator-style `ResBlock`: (conv2(conv1(x)) + skip(x)) / sqrt(2), x0.5 size.

  `interpolation_mode` as in `ConvLayer` (None: FIR; 'bilinear': gfpgan's bilinear arch).
  """
  features: int
  resample_kernel: Sequence[int] = DEFAULT_RESAMPLE_KERNEL
  interpolation_mode: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(resample_kernel=self.resample_kernel, dtype=self.dtype, param_dtype=self.param_dtype)
    down = dict(downsample=True, interpolation_mode=self.interpolation_mode)
    out = ConvLayer(x.shape[-1], 3, name='conv1', **kw)(x)
    out = ConvLayer(self.features, 3, name='conv2', **down, **kw)(out)
    skip = ConvLayer(self.features, 1, bias=False, activate=False, name='skip', **down, **kw)(x)
    return (out + skip) / SQRT2
