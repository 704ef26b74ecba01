"""basicsr `VGGFeatureExtractor`: named VGG features (taken before ReLU) for the perceptual loss.

GFP-GAN uses VGG19 with layers conv1_2, conv2_2, conv3_4, conv4_4, conv5_4,
`use_input_norm=True` and `range_norm=True` (gfpgan.md 1.11).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import layers

Array = jax.Array
Dtype = Any

_BLOCKS = {'vgg11': (1, 1, 2, 2, 2), 'vgg13': (2, 2, 2, 2, 2), 'vgg16': (2, 2, 3, 3, 3), 'vgg19': (2, 2, 4, 4, 4)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GFPGAN_LAYERS = ('conv1_2', 'conv2_2', 'conv3_4', 'conv4_4', 'conv5_4')


def layer_names(vgg_type: str = 'vgg19') -> list[str]:
  """basicsr `NAMES[vgg_type]`: the torchvision `features` layers in order."""
  if vgg_type not in _BLOCKS:
    raise ValueError(f'vgg_type must be one of {sorted(_BLOCKS)}, got {vgg_type!r}')
  names = []
  for b, n in enumerate(_BLOCKS[vgg_type], start=1):
    for j in range(1, n + 1):
      names += [f'conv{b}_{j}', f'relu{b}_{j}']
    names.append(f'pool{b}')
  return names


class _VGGNet(nn.Module):
  names: Sequence[str]
  remove_pooling: bool
  pooling_stride: int
  layer_name_list: Sequence[str]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    out = {}
    for name in self.names:
      if name.startswith('conv'):
        x = layers.Conv2d(int(64 * 2**min(int(name[4]) - 1, 3)), 3, padding=1, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=name)(x)
      elif name.startswith('relu'):
        x = jax.nn.relu(x)
      elif not self.remove_pooling:
        s = self.pooling_stride
        x = layers.max_pool2x(x) if s == 2 else nn.max_pool(x, (2, 2), (s, s))
      if name in self.layer_name_list:
        out[name] = x
    return out


class VGGFeatureExtractor(nn.Module):
  """Named VGG features, NHWC.

  Attributes:
    layer_name_list: which layers to return (features before ReLU for `conv*`).
    vgg_type: 'vgg11' | 'vgg13' | 'vgg16' | 'vgg19' (no BN variants).
    use_input_norm: normalise by the ImageNet mean/std (input in [0, 1]).
    range_norm: map [-1, 1] input to [0, 1] first.
    remove_pooling: drop the max-pools.
    pooling_stride: max-pool stride.
  """
  layer_name_list: Sequence[str] = GFPGAN_LAYERS
  vgg_type: str = 'vgg19'
  use_input_norm: bool = True
  range_norm: bool = False
  remove_pooling: bool = False
  pooling_stride: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    """x: [N, H, W, 3] RGB -> {name: [N, h, w, C]}."""
    names = layer_names(self.vgg_type)
    unknown = [n for n in self.layer_name_list if n not in names]
    if unknown:
      raise ValueError(f'unknown VGG layers {unknown}; valid: {names}')
    last = max(names.index(n) for n in self.layer_name_list)
    if self.range_norm:
      x = (x + 1) / 2
    if self.use_input_norm:
      x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    return _VGGNet(tuple(names[:last + 1]), self.remove_pooling, self.pooling_stride, tuple(self.layer_name_list),
                   self.dtype, self.param_dtype, name='vgg_net')(x.astype(self.dtype))
