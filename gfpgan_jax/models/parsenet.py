"""facexlib `ParseNet` (0.3.0, from PSFRGAN): the 19-class face parser behind GFP-GAN's paste-back mask.

An encoder (a 3x3 conv, then stride-2 residual blocks down to `min_feat_size`),
`res_depth` residual blocks at the bottleneck (with an outer skip), a decoder
of nearest-upsampling residual blocks up to `out_size`, and two 3x3 heads: the
parsing logits and an image. Every conv is preceded by a reflection pad
(`ReflectionPad2d(ceil((k - 1) / 2))`) and has no padding of its own. The
upsampling convs are computed at the input resolution (`upsample_pad_conv3x3`,
the same function of the weights), 2.25x fewer FLOPs than upsampling first.

GFP-GAN (`FaceRestoreHelper`, gfpgan.md section 4) runs the released
`ParseNet(in_size=512, out_size=512, parsing_ch=19)` (`parsing_parsenet.pth`) on
the restored face, RGB in [-1, 1], and takes the argmax of the logits.

Parameter paths are the official state-dict keys split on '.' (for example
`encoder.1.conv1.norm.norm.running_mean`); `nn.Sequential` children are
named '0', '1', ... Normalisation always runs in inference mode (BatchNorm with
running statistics). NHWC throughout.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from gfpgan_jax.models import layers

Array = jax.Array
Dtype = Any

NORM_TYPES = ('bn', 'in', 'gn', 'pixel', 'none')
RELU_TYPES = ('relu', 'leakyrelu', 'prelu', 'selu', 'none')
_SCALES = ('none', 'down', 'up')
_EPS = 1e-5  # BatchNorm2d, InstanceNorm2d and GroupNorm defaults


def _check_choice(what: str, value: str, valid: Sequence[str]) -> str:
  """Lower-cases `value` (the official layers do) and checks it is one of `valid`."""
  if not isinstance(value, str) or value.lower() not in valid:
    raise ValueError(f'ParseNet {what} must be one of {list(valid)} (case-insensitive), got {value!r}')
  return value.lower()


class PReLU(nn.Module):
  """`nn.PReLU(channels)`: one learned slope per channel, param `weight` [C], init 0.25."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    a = self.param('weight', layers.constant_init(0.25), (x.shape[-1],), self.param_dtype).astype(self.dtype)
    return jnp.where(x >= 0, x, a * x)


class GroupNorm(nn.Module):
  """`nn.GroupNorm(groups, C, affine=True)`, eps 1e-5, statistics in float32. Params `weight`, `bias` [C]."""
  groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h, w, c = x.shape
    if c % self.groups:
      raise ValueError(f"ParseNet norm_type='gn' uses {self.groups} groups; {c} channels are not divisible by it")
    scale = self.param('weight', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    g = x.astype(jnp.float32).reshape(n, h, w, self.groups, c // self.groups)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) * lax.rsqrt(var + _EPS)).reshape(n, h, w, c)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def instance_norm(x: Array, eps: float = _EPS) -> Array:
  """`nn.InstanceNorm2d(affine=False)` (no running statistics: always the instance's own), float32."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
  return ((xf - mean) * lax.rsqrt(var + eps)).astype(x.dtype)


def pixel_norm(x: Array, eps: float = 1e-12) -> Array:
  """`F.normalize(x, p=2, dim=1)` (NCHW), i.e. over channels: x / max(||x||_2, eps), float32."""
  xf = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
  return (xf / jnp.maximum(norm, eps)).astype(x.dtype)


class NormLayer(nn.Module):
  """facexlib `NormLayer`: the normalisation lives in child `norm` (params only for 'bn' and 'gn').

  Attributes:
    norm_type: one of `NORM_TYPES` (case-insensitive). facexlib's 'layer' is
      not supported: it builds `nn.LayerNorm(None)`, which fails in PyTorch too.
  """
  norm_type: str = 'bn'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kind = _check_choice('norm_type', self.norm_type, NORM_TYPES)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if kind == 'bn':
      return layers.BatchNorm(eps=_EPS, name='norm', **kw)(x)
    if kind == 'gn':
      return GroupNorm(32, name='norm', **kw)(x)
    if kind == 'in':
      return instance_norm(x)
    if kind == 'pixel':
      return pixel_norm(x)
    return x


class ReluLayer(nn.Module):
  """facexlib `ReluLayer`: ReLU, LeakyReLU(0.2), PReLU(C) (child `func`), SELU or none."""
  relu_type: str = 'leakyrelu'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kind = _check_choice('relu_type', self.relu_type, RELU_TYPES)
    if kind == 'relu':
      return jax.nn.relu(x)
    if kind == 'leakyrelu':
      return layers.leaky_relu(x, 0.2)
    if kind == 'prelu':
      return PReLU(name='func', dtype=self.dtype, param_dtype=self.param_dtype)(x)
    if kind == 'selu':
      return jax.nn.selu(x)
    return x


def upsample_nearest2x(x: Array) -> Array:
  """`F.interpolate(scale_factor=2, mode='nearest')`. x: [N, H, W, C] -> [N, 2H, 2W, C]."""
  n, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


def _phase_taps(w: Array, axis: int) -> tuple[Array, Array]:
  """Along `axis` of a 3-tap kernel: the 2-tap kernels of output phases 0 and 1 after nearest 2x upsampling."""
  w0, w1, w2 = (jnp.take(w, i, axis=axis) for i in range(3))
  return jnp.stack([w0, w1 + w2], axis), jnp.stack([w0 + w1, w2], axis)


def upsample_pad_conv3x3(x: Array, w: Array) -> Array:
  """`conv3x3(reflection_pad1(nearest_up2x(x)))` computed at the input resolution (sub-pixel form).

  Reflection-padding the upsampled map equals upsampling the edge-padded
  input E (cropped by one), so output pixel (2i + a, 2j + b) is a 2x2 conv of
  E at (i + a, j + b) with the kernel rows/columns summed per phase: phase 0
  (w0, w1 + w2), phase 1 (w0 + w1, w2). All four phases run as one 2x2 conv
  with 4 x O outputs: 16 instead of 36 multiply-adds per input pixel and
  channel pair, and no upsampled copy of the input. Only the rounding of the
  summed weights differs from the direct form.

  Args:
    x: [N, H, W, I].
    w: [3, 3, I, O] (HWIO).

  Returns:
    [N, 2H, 2W, O].
  """
  n, h, wd, _ = x.shape
  o = w.shape[-1]
  k = jnp.concatenate([kb for ka in _phase_taps(w, 0) for kb in _phase_taps(ka, 1)], axis=-1)  # [2, 2, I, 4O]
  y = layers.conv2d(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge'), k)  # [N, H+1, W+1, 4O]
  phases = [[y[:, a:a + h, b:b + wd, (2 * a + b) * o:(2 * a + b + 1) * o] for b in (0, 1)] for a in (0, 1)]
  return jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2).reshape(n, 2 * h, 2 * wd, o)


class UpConv2d(nn.Module):
  """`conv3x3(ReflectionPad2d(1)(interpolate(x, 2, 'nearest')))` with `layers.Conv2d`'s params and init.

  Params `weight` [3, 3, I, O], `bias` [O] (the official `conv2d`); see
  `upsample_pad_conv3x3` for how it is computed.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N, H, W, I] -> [N, 2H, 2W, features]."""
    in_ch = x.shape[-1]
    w = self.param('weight', layers.torch_default_kernel_init, (3, 3, in_ch, self.features), self.param_dtype)
    y = upsample_pad_conv3x3(x.astype(self.dtype), w.astype(self.dtype))
    if self.use_bias:
      b = self.param('bias', layers.torch_default_bias_init(in_ch * 9), (self.features,), self.param_dtype)
      y = y + b.astype(self.dtype)
    return y


class ConvLayer(nn.Module):
  """facexlib `ConvLayer`: [nearest 2x up] -> reflection pad -> conv (stride 2 if 'down') -> norm -> act.

  Children: `conv2d` (a `layers.Conv2d`; `UpConv2d` for 3x3 upsampling convs),
  `norm` (`NormLayer`), `relu` (`ReluLayer`). As in the official code, the conv has no bias exactly when
  `norm_type == 'bn'` (compared case-sensitively there).

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    scale: 'none', 'down' (stride-2 conv) or 'up' (nearest 2x upsampling first).
    norm_type: see `NormLayer`.
    relu_type: see `ReluLayer`.
    use_pad: reflection-pad by ceil((k - 1) / 2) before the conv.
    bias: conv bias (ignored, i.e. off, with norm_type 'bn').
  """
  features: int
  kernel_size: int = 3
  scale: str = 'none'
  norm_type: str = 'none'
  relu_type: str = 'none'
  use_pad: bool = True
  bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N, H, W, C_in] -> [N, H', W', features] (H' = H/2 'down', 2H 'up', H otherwise for k=3)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    use_bias = self.bias and self.norm_type != 'bn'
    if self.scale == 'up' and self.use_pad and self.kernel_size == 3:  # every upsampling conv of ParseNet
      x = UpConv2d(self.features, use_bias, name='conv2d', **kw)(x)
    else:
      if self.scale == 'up':
        x = upsample_nearest2x(x)
      if self.use_pad:
        p = math.ceil((self.kernel_size - 1) / 2)
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode='reflect')
      x = layers.Conv2d(self.features, self.kernel_size, stride=2 if self.scale == 'down' else 1, padding=0,
                        use_bias=use_bias, name='conv2d', **kw)(x)
    x = NormLayer(self.norm_type, name='norm', **kw)(x)
    return ReluLayer(self.relu_type, name='relu', **kw)(x)


class ResidualBlock(nn.Module):
  """facexlib `ResidualBlock`: `shortcut_func(x) + conv2(conv1(x))`.

  The shortcut is the identity when `scale == 'none'` and the channels are
  unchanged, else a plain `ConvLayer` (bias, no norm, no activation) with the
  block's scale. 'down' puts the stride in conv2, 'up' the upsampling in conv1.
  conv2 has no activation.

  Attributes:
    features: output channels.
    relu_type: activation of conv1.
    norm_type: normalisation of conv1 and conv2.
    scale: 'none', 'down' or 'up'.
  """
  features: int
  relu_type: str = 'prelu'
  norm_type: str = 'bn'
  scale: str = 'none'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N, H, W, C_in] -> [N, H', W', features]."""
    if self.scale not in _SCALES:
      raise ValueError(f'ResidualBlock scale must be one of {list(_SCALES)}, got {self.scale!r}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.scale == 'none' and x.shape[-1] == self.features:
      identity = x
    else:
      identity = ConvLayer(self.features, 3, self.scale, name='shortcut_func', **kw)(x)
    scale1, scale2 = {'down': ('none', 'down'), 'up': ('up', 'none'), 'none': ('none', 'none')}[self.scale]
    res = ConvLayer(self.features, 3, scale1, norm_type=self.norm_type, relu_type=self.relu_type, name='conv1',
                    **kw)(x)
    res = ConvLayer(self.features, 3, scale2, norm_type=self.norm_type, relu_type='none', name='conv2', **kw)(res)
    return identity + res


class _Stage(nn.Module):
  """An `nn.Sequential` of `ResidualBlock`s named '0', '1', ... (after an optional first `ConvLayer` '0')."""
  features: Sequence[int]
  scale: str
  relu_type: str
  norm_type: str
  first_conv: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    offset = 0
    if self.first_conv is not None:
      x = ConvLayer(self.first_conv, 3, name='0', **kw)(x)
      offset = 1
    for i, c in enumerate(self.features):
      x = ResidualBlock(c, self.relu_type, self.norm_type, self.scale, name=str(i + offset), **kw)(x)
    return x


class ParseNet(nn.Module):
  """facexlib `ParseNet` (the official constructor's options and defaults).

  The released model (`parsing_parsenet.pth`) is `ParseNet(in_size=512,
  out_size=512, parsing_ch=19)` with the other defaults.

  Attributes:
    in_size: input height and width.
    out_size: output height and width.
    min_feat_size: bottleneck size (capped at `in_size`); the encoder has
      log2(in_size // min_feat_size) stride-2 blocks, the decoder
      log2(out_size // min_feat_size) upsampling blocks.
    base_ch: channels of the first conv (doubled per encoder block, halved per
      decoder block, each clipped to `ch_range`).
    parsing_ch: parsing classes.
    res_depth: residual blocks at the bottleneck.
    relu_type: one of `RELU_TYPES`, case-insensitive (official spelling
      'LeakyReLU', 'PReLU', ...).
    norm_type: one of `NORM_TYPES`.
    ch_range: (min, max) channels.
    dtype: compute dtype (normalisation statistics are float32).
    param_dtype: parameter dtype.
  """
  in_size: int = 128
  out_size: int = 128
  min_feat_size: int = 32
  base_ch: int = 64
  parsing_ch: int = 19
  res_depth: int = 10
  relu_type: str = 'LeakyReLU'
  norm_type: str = 'bn'
  ch_range: Sequence[int] = (32, 256)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _plan(self) -> tuple[list[int], int, list[int], int]:
    """Channels as the official constructor computes them: (encoder, body, decoder, heads' input)."""
    _check_choice('norm_type', self.norm_type, NORM_TYPES)
    _check_choice('relu_type', self.relu_type, RELU_TYPES)
    min_ch, max_ch = self.ch_range
    clip = lambda c: max(min_ch, min(c, max_ch))  # noqa: E731
    if clip(self.base_ch) != self.base_ch:
      raise ValueError(f'ParseNet base_ch={self.base_ch} must lie in ch_range={tuple(self.ch_range)} '
                       '(the official network fails on the channel mismatch otherwise)')
    min_feat = min(self.in_size, self.min_feat_size)
    if min_feat < 1 or self.out_size < min_feat:
      raise ValueError(f'ParseNet needs 1 <= min(in_size, min_feat_size) <= out_size; got in_size={self.in_size}, '
                       f'out_size={self.out_size}, min_feat_size={self.min_feat_size}')
    down_steps = int(math.log2(self.in_size // min_feat))
    up_steps = int(math.log2(self.out_size // min_feat))
    head = self.base_ch
    encoder = []
    for _ in range(down_steps):
      encoder.append(clip(head * 2))
      head *= 2
    body = clip(head)
    decoder = []
    for _ in range(up_steps):
      decoder.append(clip(head // 2))
      head //= 2
    return encoder, body, decoder, clip(head)

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Parses faces.

    Args:
      x: [N, in_size, in_size, 3] RGB in [-1, 1].

    Returns:
      `(parsing, image)`, the official `(out_mask, out_img)`: parsing logits
      [N, S, S, parsing_ch] and image [N, S, S, 3], S = `out_size` (for
      sizes that are power-of-two multiples of the bottleneck size).
    """
    if x.ndim != 4 or x.shape[1:] != (self.in_size, self.in_size, 3):
      raise ValueError(f'ParseNet expects NHWC RGB input [N, {self.in_size}, {self.in_size}, 3], got {x.shape}')
    encoder, body, decoder, head = self._plan()
    kw = dict(relu_type=self.relu_type, norm_type=self.norm_type, dtype=self.dtype, param_dtype=self.param_dtype)
    feat = _Stage(tuple(encoder), 'down', first_conv=self.base_ch, name='encoder', **kw)(x)
    x = feat + _Stage((body,) * self.res_depth, 'none', name='body', **kw)(feat)
    x = _Stage(tuple(decoder), 'up', name='decoder', **kw)(x)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out_img = ConvLayer(3, 3, name='out_img_conv', **kw)(x)
    out_mask = ConvLayer(self.parsing_ch, 3, name='out_mask_conv', **kw)(x)
    return out_mask, out_img
