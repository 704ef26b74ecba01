"""GFP-GAN generators: U-Net degradation removal + StyleGAN2 decoder with CS-SFT.

`GFPGANv1Clean` is the released v1.2/v1.3/v1.4 architecture (gfpgan.md 1.5);
`GFPGANv1` is the paper model with FIR resampling and equalized-lr layers (1.6).
Both take NHWC RGB in [-1, 1] and return `(image, out_rgbs)`, where
`out_rgbs` are the 7 intermediate restorations at 8..512 px used by the
pyramid loss. Nothing is clamped.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import layers
from gfpgan_jax.models import resample
from gfpgan_jax.models import stylegan2
from gfpgan_jax.models import stylegan2_clean

Array = jax.Array
Dtype = Any


# ------------------------------------------------------------------------------
# Clean (v1.2 - v1.4).
# ------------------------------------------------------------------------------


class CleanResBlock(nn.Module):
  """gfpgan clean `ResBlock`: lrelu convs around a bilinear resize, plus a 1x1 skip.

  Params: `conv1` (3x3, bias), `conv2` (3x3, bias), `skip` (1x1, no bias).
  """
  features: int
  mode: str = 'down'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.mode not in ('down', 'up'):
      raise ValueError(f"mode must be 'down' or 'up', got {self.mode!r}")
    resize = resample.downsample2x if self.mode == 'down' else resample.upsample2x
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = layers.leaky_relu(layers.Conv2d(x.shape[-1], 3, padding=1, name='conv1', **kw)(x))
    out = layers.leaky_relu(layers.Conv2d(self.features, 3, padding=1, name='conv2', **kw)(resize(out)))
    skip = layers.Conv2d(self.features, 1, use_bias=False, name='skip', **kw)
    # A 1x1 conv commutes with the resize: run it at the lower resolution.
    return out + (skip(resize(x)) if self.mode == 'down' else resize(skip(x)))


class CleanSFTBranch(nn.Module):
  """`condition_scale.{i}` / `condition_shift.{i}`: Conv3x3 '0', LeakyReLU, Conv3x3 '2'."""
  features: int
  out_features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.leaky_relu(layers.Conv2d(self.features, 3, padding=1, name='0', **kw)(x))
    return layers.Conv2d(self.out_features, 3, padding=1, name='2', **kw)(x)


class GFPGANv1Clean(nn.Module):
  """gfpgan `GFPGANv1Clean`.

  The released models use out_size=512, channel_multiplier=2,
  input_is_latent=True, different_w=True, sft_half=True (defaults here follow
  the official constructor). `decoder_load_path`/`fix_decoder` are training
  concerns handled by the trainer (initialisation, optimiser masks).

  Attributes:
    out_size: input/output resolution.
    num_style_feat: style width.
    channel_multiplier: StyleGAN2 channel multiplier.
    num_mlp: decoder mapping-network depth.
    input_is_latent: feed the style code as w (True) or through the mapping MLP.
    different_w: predict one w per decoder layer (w+).
    narrow: channel narrowing ratio (the U-Net uses narrow / 2).
    sft_half: CS-SFT on half of the decoder channels.
  """
  out_size: int = 512
  num_style_feat: int = 512
  channel_multiplier: int = 1
  num_mlp: int = 8
  input_is_latent: bool = False
  different_w: bool = False
  narrow: float = 1.0
  sft_half: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    log_size = stylegan2.log2_size(self.out_size)
    ch = stylegan2.channels_for(self.narrow * 0.5, self.channel_multiplier)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.conv_body_first = layers.Conv2d(ch[self.out_size], 1, **kw)
    self.conv_body_down = [
        CleanResBlock(ch[2**(i - 1)], 'down', name=f'conv_body_down.{n}', **kw)
        for n, i in enumerate(range(log_size, 2, -1))
    ]
    self.final_conv = layers.Conv2d(ch[4], 3, padding=1, **kw)
    levels = list(range(3, log_size + 1))
    self.conv_body_up = [CleanResBlock(ch[2**i], 'up', name=f'conv_body_up.{n}', **kw) for n, i in enumerate(levels)]
    self.toRGB = [layers.Conv2d(3, 1, name=f'toRGB.{n}', **kw) for n, i in enumerate(levels)]  # pylint: disable=invalid-name
    n_out = (log_size * 2 - 2) * self.num_style_feat if self.different_w else self.num_style_feat
    self.final_linear = layers.Linear(n_out, **kw)
    self.stylegan_decoder = stylegan2_clean.StyleGAN2GeneratorClean(
        out_size=self.out_size, num_style_feat=self.num_style_feat, num_mlp=self.num_mlp,
        channel_multiplier=self.channel_multiplier, narrow=self.narrow, sft_half=self.sft_half, **kw)
    sft_mul = 1 if self.sft_half else 2
    self.condition_scale = [
        CleanSFTBranch(ch[2**i], ch[2**i] * sft_mul, name=f'condition_scale.{n}', **kw) for n, i in enumerate(levels)
    ]
    self.condition_shift = [
        CleanSFTBranch(ch[2**i], ch[2**i] * sft_mul, name=f'condition_shift.{n}', **kw) for n, i in enumerate(levels)
    ]

  def __call__(self,
               x: Array,
               return_latents: bool = False,
               return_rgb: bool = True,
               randomize_noise: bool = True) -> tuple[Array, list[Array]]:
    """Restores faces.

    Args:
      x: [N, out_size, out_size, 3] RGB in [-1, 1].
      return_latents: accepted for API parity; the latent is not returned
        (as in the official forward).
      return_rgb: also return the intermediate RGB images.
      randomize_noise: draw decoder noise from the 'noise' rng (official
        default) or use the stored `noises` buffers (deterministic).

    Returns:
      (image [N, out_size, out_size, 3], out_rgbs: 7 x [N, r, r, 3] for r = 8..out_size).
    """
    _check_input(x, self.out_size)
    feat = layers.leaky_relu(self.conv_body_first(x))
    unet_skips = []
    for block in self.conv_body_down:
      feat = block(feat)
      unet_skips.insert(0, feat)
    feat = layers.leaky_relu(self.final_conv(feat))
    return _decode(self, feat, unet_skips, return_latents, return_rgb, randomize_noise)


def _check_input(x: Array, out_size: int):
  if x.ndim != 4 or x.shape[1:] != (out_size, out_size, 3):
    raise ValueError(f'expected NHWC input [N, {out_size}, {out_size}, 3], got shape {x.shape}')


def _decode(model, feat, unet_skips, return_latents, return_rgb, randomize_noise):
  """The shared second half of both GFPGAN forwards: style code, U-Net up path, SFT, decoder."""
  style_code = model.final_linear(layers.nchw_flatten(feat))
  if model.different_w:
    style_code = style_code.reshape(style_code.shape[0], -1, model.num_style_feat)
  conditions, out_rgbs = [], []
  for i, block in enumerate(model.conv_body_up):
    feat = block(feat + unet_skips[i])
    conditions.append(model.condition_scale[i](feat))
    conditions.append(model.condition_shift[i](feat))
    if return_rgb:
      out_rgbs.append(model.toRGB[i](feat))
  image, _ = model.stylegan_decoder([style_code], conditions, input_is_latent=model.input_is_latent,
                                    randomize_noise=randomize_noise, return_latents=return_latents)
  return image, out_rgbs


# ------------------------------------------------------------------------------
# Original paper model (v1).
# ------------------------------------------------------------------------------


class ConvUpLayer(nn.Module):
  """gfpgan `ConvUpLayer`: bilinear x2, then EqualConv (runtime scale), then activation.

  Params: `weight` [k,k,in,out]; `bias` only when `bias and not activate`;
  `activation.bias` when `activate and bias`.
  """
  features: int
  kernel_size: int
  padding: int = 0
  bias: bool = True
  activate: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, in_ch = self.kernel_size, x.shape[-1]
    w = self.param('weight', nn.initializers.normal(1.0), (k, k, in_ch, self.features), self.param_dtype)
    w = (w * (1.0 / (in_ch * k * k)**0.5)).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1 and self.padding == 0:
      out = resample.upsample2x(layers.conv2d(x, w))  # a 1x1 conv commutes with the resize
    else:
      out = layers.conv2d(resample.upsample2x(x), w, padding=self.padding)
    if self.bias and not self.activate:
      out = out + self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype).astype(out.dtype)
    if self.activate:
      if self.bias:
        out = layers.FusedLeakyReLU(dtype=self.dtype, param_dtype=self.param_dtype, name='activation')(out)
      else:
        out = layers.scaled_leaky_relu(out)
    return out


class ResUpBlock(nn.Module):
  """gfpgan `ResUpBlock`: (conv2(conv1(x)) + skip(x)) / sqrt(2), x2 size."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = layers.ConvLayer(x.shape[-1], 3, name='conv1', **kw)(x)
    out = ConvUpLayer(self.features, 3, padding=1, name='conv2', **kw)(out)
    skip = ConvUpLayer(self.features, 1, bias=False, activate=False, name='skip', **kw)(x)
    return (out + skip) / layers.SQRT2


class SFTBranch(nn.Module):
  """GFPGANv1 `condition_*.{i}`: EqualConv '0', ScaledLeakyReLU, EqualConv '2' (bias init `last_bias`)."""
  features: int
  out_features: int
  last_bias: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.scaled_leaky_relu(layers.EqualConv2d(self.features, 3, padding=1, name='0', **kw)(x))
    return layers.EqualConv2d(self.out_features, 3, padding=1, bias_init_val=self.last_bias, name='2', **kw)(x)


class GFPGANv1(nn.Module):
  """gfpgan `GFPGANv1` (the paper model; released with channel_multiplier=1).

  Attributes:
    out_size, num_style_feat, channel_multiplier, num_mlp, input_is_latent,
    different_w, narrow, sft_half: as `GFPGANv1Clean`.
    resample_kernel: FIR taps (1, 3, 3, 1).
    lr_mlp: decoder mapping-network learning-rate multiplier.
  """
  out_size: int = 512
  num_style_feat: int = 512
  channel_multiplier: int = 1
  resample_kernel: tuple[int, ...] = layers.DEFAULT_RESAMPLE_KERNEL
  num_mlp: int = 8
  lr_mlp: float = 0.01
  input_is_latent: bool = False
  different_w: bool = False
  narrow: float = 1.0
  sft_half: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    log_size = stylegan2.log2_size(self.out_size)
    ch = stylegan2.channels_for(self.narrow * 0.5, self.channel_multiplier)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    rk = tuple(self.resample_kernel)
    self.conv_body_first = layers.ConvLayer(ch[self.out_size], 1, resample_kernel=rk, **kw)
    self.conv_body_down = [
        layers.ResBlock(ch[2**(i - 1)], rk, name=f'conv_body_down.{n}', **kw)
        for n, i in enumerate(range(log_size, 2, -1))
    ]
    self.final_conv = layers.ConvLayer(ch[4], 3, resample_kernel=rk, **kw)
    levels = list(range(3, log_size + 1))
    self.conv_body_up = [ResUpBlock(ch[2**i], name=f'conv_body_up.{n}', **kw) for n, i in enumerate(levels)]
    self.toRGB = [layers.EqualConv2d(3, 1, name=f'toRGB.{n}', **kw) for n, i in enumerate(levels)]  # pylint: disable=invalid-name
    n_out = (log_size * 2 - 2) * self.num_style_feat if self.different_w else self.num_style_feat
    self.final_linear = layers.EqualLinear(n_out, **kw)
    self.stylegan_decoder = stylegan2.StyleGAN2Generator(
        out_size=self.out_size, num_style_feat=self.num_style_feat, num_mlp=self.num_mlp,
        channel_multiplier=self.channel_multiplier, resample_kernel=rk, lr_mlp=self.lr_mlp,
        narrow=self.narrow, sft_half=self.sft_half, **kw)
    sft_mul = 1 if self.sft_half else 2
    self.condition_scale = [
        SFTBranch(ch[2**i], ch[2**i] * sft_mul, 1.0, name=f'condition_scale.{n}', **kw) for n, i in enumerate(levels)
    ]
    self.condition_shift = [
        SFTBranch(ch[2**i], ch[2**i] * sft_mul, 0.0, name=f'condition_shift.{n}', **kw) for n, i in enumerate(levels)
    ]

  def __call__(self,
               x: Array,
               return_latents: bool = False,
               return_rgb: bool = True,
               randomize_noise: bool = True) -> tuple[Array, list[Array]]:
    """Restores faces; see `GFPGANv1Clean.__call__`."""
    _check_input(x, self.out_size)
    feat = self.conv_body_first(x)
    unet_skips = []
    for block in self.conv_body_down:
      feat = block(feat)
      unet_skips.insert(0, feat)
    feat = self.final_conv(feat)
    return _decode(self, feat, unet_skips, return_latents, return_rgb, randomize_noise)
