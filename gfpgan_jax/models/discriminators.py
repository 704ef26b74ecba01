"""The GFP-GAN discriminators: StyleGAN2 (whole face) and the eye/mouth component D."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import layers
from gfpgan_jax.models import stylegan2

Array = jax.Array
Dtype = Any


def minibatch_stddev(x: Array, group_size: int = 4, per_gpu_batch: int = 0, eps: float = 1e-8) -> Array:
  """Appends basicsr's minibatch-stddev channel. [N,H,W,C] -> [N,H,W,C+1].

  basicsr computes the statistic over each GPU's batch. `per_gpu_batch` = S
  splits the global batch into N / S consecutive slices of S samples (the
  data-parallel slices of an official S-per-GPU run); 0, or a batch smaller
  than S (e.g. initialisation's dummy batch of 1), takes the whole batch as
  one slice (one GPU). Within a slice, groups are strided as in the
  official `view(group, -1, ...)`: sample i is in column i % (S / G) with
  G = min(S, group_size); the biased variance over the group is taken per
  feature, then sqrt(var + eps) is averaged over (H, W, C). Statistics are
  computed in float32.

  Raises:
    ValueError: N > S is not divisible by S, or S not by G.
  """
  n, h, w, c = x.shape
  s = min(per_gpu_batch or n, n)
  if n % s:
    raise ValueError(f'minibatch stddev: batch {n} is not divisible by the per-GPU batch {s}')
  g = min(s, group_size)
  if s % g:
    raise ValueError(f'minibatch stddev: per-GPU batch {s} is not divisible by the group size {g}')
  y = x.astype(jnp.float32).reshape(n // s, g, s // g, h, w, c)
  std = jnp.sqrt(jnp.var(y, axis=1) + eps)  # [N/S, S/G, H, W, C]
  std = jnp.mean(std, axis=(2, 3, 4))  # [N/S, S/G]
  std = jnp.broadcast_to(std[:, None, :], (n // s, g, s // g)).reshape(n, 1, 1, 1)
  return jnp.concatenate([x, jnp.broadcast_to(std, (n, h, w, 1)).astype(x.dtype)], axis=-1)


class _ConvBody(nn.Module):
  """`conv_body` Sequential: '0' ConvLayer(3 -> C[out], 1x1), '1'.. ResBlocks down to 4x4."""
  out_size: int
  channels: dict[int, int]
  resample_kernel: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.ConvLayer(self.channels[self.out_size], 1, name='0', **kw)(x)
    log_size = stylegan2.log2_size(self.out_size)
    for n, i in enumerate(range(log_size, 2, -1)):
      x = layers.ResBlock(self.channels[2**(i - 1)], self.resample_kernel, name=str(n + 1), **kw)(x)
    return x


class _FinalLinear(nn.Module):
  """`final_linear` Sequential: '0' EqualLinear(fused lrelu), '1' EqualLinear(-> 1)."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.EqualLinear(self.features, activation='fused_lrelu', name='0', **kw)(x)
    return layers.EqualLinear(1, name='1', **kw)(x)


class StyleGAN2Discriminator(nn.Module):
  """basicsr `StyleGAN2Discriminator` (GFP-GAN: out_size=512, channel_multiplier=1).

  Attributes:
    out_size: input resolution.
    channel_multiplier: StyleGAN2 channel multiplier.
    resample_kernel: FIR taps.
    stddev_group: minibatch-stddev group size (the group is min(per-GPU
      batch, this)).
    stddev_per_gpu_batch: the statistic is computed over consecutive slices of
      this many samples, as basicsr does on each GPU of a data-parallel run
      (the official v1 run: 4 GPUs x 3); 0 = over the whole batch (one GPU).
      Not a weight: converting a released D does not depend on it.
    narrow: channel narrowing ratio.
  """
  out_size: int = 512
  channel_multiplier: int = 2
  resample_kernel: tuple[int, ...] = layers.DEFAULT_RESAMPLE_KERNEL
  stddev_group: int = 4
  stddev_per_gpu_batch: int = 0
  narrow: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Scores images. x: [N, out_size, out_size, 3] in [-1, 1] -> logits [N, 1]."""
    if x.ndim != 4 or x.shape[1:] != (self.out_size, self.out_size, 3):
      raise ValueError(f'expected NHWC input [N, {self.out_size}, {self.out_size}, 3], got shape {x.shape}')
    ch = stylegan2.channels_for(self.narrow, self.channel_multiplier)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = _ConvBody(self.out_size, ch, tuple(self.resample_kernel), name='conv_body', **kw)(x)
    out = minibatch_stddev(out, self.stddev_group, self.stddev_per_gpu_batch)
    out = layers.ConvLayer(ch[4], 3, resample_kernel=tuple(self.resample_kernel), name='final_conv', **kw)(out)
    out = _FinalLinear(ch[4], name='final_linear', **kw)(layers.nchw_flatten(out))
    return out


class FacialComponentDiscriminator(nn.Module):
  """gfpgan `FacialComponentDiscriminator` (VGG-style, eyes 80x80 / mouth 120x120)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, return_feats: bool = False) -> tuple[Array, list[Array] | None]:
    """Scores patches.

    Args:
      x: [N, H, W, 3] patches in [-1, 1], H and W divisible by 4.
      return_feats: also return [conv3 output (128 ch), conv5 output (256 ch)]
        for the component style loss.

    Returns:
      (logit map [N, H/4, W/4, 1], features or None).
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feat = layers.ConvLayer(64, 3, name='conv1', **kw)(x)
    feat = layers.ConvLayer(128, 3, downsample=True, name='conv2', **kw)(feat)
    feat = layers.ConvLayer(128, 3, name='conv3', **kw)(feat)
    feats = [feat]
    feat = layers.ConvLayer(256, 3, downsample=True, name='conv4', **kw)(feat)
    feat = layers.ConvLayer(256, 3, name='conv5', **kw)(feat)
    feats.append(feat)
    out = layers.ConvLayer(1, 3, bias=True, activate=False, name='final_conv', **kw)(feat)
    return out, (feats if return_feats else None)
