"""`ResNetArcFace` (gfpgan `arcface_arch.py`), the identity network of the training loss.

Always runs in inference mode: BatchNorm uses running statistics and dropout
is the identity. The embedding is not L2-normalised (the loss is L1 on it).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import layers

Array = jax.Array
Dtype = Any

_xavier_normal = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')


class SEBlock(nn.Module):
  """Squeeze-and-excitation: `fc` = Sequential(Linear '0', PReLU '1', Linear '2', Sigmoid)."""
  reduction: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    y = jnp.mean(x, axis=(1, 2))
    y = _SEFC(c, self.reduction, self.dtype, self.param_dtype, name='fc')(y)
    return x * y[:, None, None, :]


class _SEFC(nn.Module):
  channels: int
  reduction: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, y: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = layers.Linear(self.channels // self.reduction, name='0', **kw)(y)
    y = layers.PReLU(name='1', **kw)(y)
    y = layers.Linear(self.channels, name='2', **kw)(y)
    return jax.nn.sigmoid(y)


class _Downsample(nn.Module):
  """`downsample` Sequential: '0' 1x1 conv (stride s, no bias), '1' BatchNorm."""
  features: int
  stride: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Conv2d(self.features, 1, stride=self.stride, use_bias=False, kernel_init=_xavier_normal,
                      name='0', **kw)(x)
    return layers.BatchNorm(name='1', **kw)(x)


class IRBlock(nn.Module):
  """bn0, conv1 (3x3 in->in), bn1, prelu, conv2 (3x3 in->planes, stride), bn2, [se], + residual, prelu.

  The same single-parameter PReLU is applied twice, as in the official block.
  """
  planes: int
  stride: int = 1
  use_se: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    in_ch = x.shape[-1]
    prelu = layers.PReLU(name='prelu', **kw)
    out = layers.BatchNorm(name='bn0', **kw)(x)
    out = layers.Conv2d(in_ch, 3, padding=1, use_bias=False, kernel_init=_xavier_normal, name='conv1', **kw)(out)
    out = prelu(layers.BatchNorm(name='bn1', **kw)(out))
    out = layers.Conv2d(self.planes, 3, stride=self.stride, padding=1, use_bias=False, kernel_init=_xavier_normal,
                        name='conv2', **kw)(out)
    out = layers.BatchNorm(name='bn2', **kw)(out)
    if self.use_se:
      out = SEBlock(name='se', **kw)(out)
    residual = x
    if self.stride != 1 or in_ch != self.planes:
      residual = _Downsample(self.planes, self.stride, name='downsample', **kw)(x)
    return prelu(out + residual.astype(out.dtype))


class _Layer(nn.Module):
  """`layerN` Sequential of blocks named '0', '1', ..."""
  planes: int
  num_blocks: int
  stride: int
  use_se: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(use_se=self.use_se, dtype=self.dtype, param_dtype=self.param_dtype)
    x = IRBlock(self.planes, self.stride, name='0', **kw)(x)
    for i in range(1, self.num_blocks):
      x = IRBlock(self.planes, 1, name=str(i), **kw)(x)
    return x


class ResNetArcFace(nn.Module):
  """gfpgan `ResNetArcFace` (GFP-GAN: block='IRBlock', layers=(2, 2, 2, 2), use_se=False).

  Attributes:
    block: only 'IRBlock' (the official models use it).
    layers: blocks per stage.
    use_se: squeeze-and-excitation in each block.
  """
  block: str = 'IRBlock'
  layers: Sequence[int] = (2, 2, 2, 2)
  use_se: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Embeds faces. x: [N, 128, 128, 1] grayscale -> [N, 512] (not normalised)."""
    if self.block != 'IRBlock':
      raise ValueError(f"ResNetArcFace supports block='IRBlock' only, got {self.block!r}")
    if x.ndim != 4 or x.shape[1:] != (128, 128, 1):
      raise ValueError(f'expected NHWC grayscale input [N, 128, 128, 1], got shape {x.shape}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Conv2d(64, 3, padding=1, use_bias=False, kernel_init=_xavier_normal, name='conv1', **kw)(x)
    x = layers.PReLU(name='prelu', **kw)(layers.BatchNorm(name='bn1', **kw)(x))
    x = layers.max_pool2x(x)
    for n, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
      x = _Layer(planes, self.layers[n], stride, self.use_se, name=f'layer{n + 1}', **kw)(x)
    x = layers.BatchNorm(name='bn4', **kw)(x)
    x = layers.nchw_flatten(x)
    x = layers.Linear(512, kernel_init=_xavier_normal, bias_init=nn.initializers.zeros, few_rows=True, name='fc5',
                      **kw)(x)
    return layers.BatchNorm(name='bn5', **kw)(x)
