"""The clean StyleGAN2 generator (gfpgan `stylegan2_clean_arch.py`).

Plain convs with the equalized-lr scale and the sqrt(2) gains folded into the
stored weights, bilinear (align_corners=False) upsampling instead of FIR.
`StyleGAN2GeneratorClean` with SFT `conditions` is gfpgan's
`StyleGAN2GeneratorCSFT`, the decoder of `GFPGANv1Clean` (v1.2-v1.4).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import layers
from gfpgan_jax.models import resample
from gfpgan_jax.models import stylegan2

Array = jax.Array
Dtype = Any


class ModulatedConv2d(nn.Module):
  """Clean `ModulatedConv2d`: weight stored pre-scaled; bilinear resampling of the input.

  Params: `weight` [1, k, k, in, out], `modulation` (Linear, kaiming init, bias 1).
  """
  out_channels: int
  kernel_size: int
  demodulate: bool = True
  sample_mode: str | None = None
  eps: float = 1e-8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, style: Array) -> Array:
    if self.sample_mode not in (None, 'upsample', 'downsample'):
      raise ValueError(f"sample_mode must be 'upsample', 'downsample' or None, got {self.sample_mode!r}")
    in_ch = x.shape[-1]
    k = self.kernel_size
    s = layers.Linear(in_ch, kernel_init=layers.kaiming_normal_init(0.0, 'linear'),
                      bias_init=layers.constant_init(1.0), param_dtype=self.param_dtype,
                      name='modulation')(style.astype(jnp.float32))
    fan_in = in_ch * k * k

    def w_init(key, shape, dtype=jnp.float32):
      return jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)

    w = self.param('weight', w_init, (1, k, k, in_ch, self.out_channels), self.param_dtype)[0]
    x, demod = stylegan2.modulate_and_demodulate(x, s, w, self.demodulate, self.eps, self.dtype)
    # The style scale is per input channel, so it commutes with the resize.
    if self.sample_mode == 'upsample':
      x = resample.upsample2x(x)
    elif self.sample_mode == 'downsample':
      x = resample.downsample2x(x)
    out = layers.conv2d(x, w.astype(self.dtype), padding=k // 2)
    if demod is not None:
      out = out * demod.astype(out.dtype)[:, None, None, :]
    return out


class StyleConv(nn.Module):
  """Clean `StyleConv`: lrelu(sqrt(2) * modconv(x) + w_n * noise + b).

  Params: `weight` [1] noise strength, `bias` [1, 1, 1, C], `modulated_conv`.
  """
  out_channels: int
  kernel_size: int = 3
  sample_mode: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, style: Array, noise: Array | None = None) -> Array:
    out = ModulatedConv2d(self.out_channels, self.kernel_size, sample_mode=self.sample_mode,
                          dtype=self.dtype, param_dtype=self.param_dtype,
                          name='modulated_conv')(x, style) * layers.SQRT2
    strength = self.param('weight', nn.initializers.zeros, (1,), self.param_dtype)
    out = out + strength.astype(out.dtype) * stylegan2.draw_noise(self, out, noise)
    out = out + self.param('bias', nn.initializers.zeros, (1, 1, 1, self.out_channels),
                           self.param_dtype).astype(out.dtype)
    return layers.leaky_relu(out)


class ToRGB(nn.Module):
  """Clean `ToRGB`: 1x1 modulated conv (no demod) + bias, plus the bilinear-upsampled skip."""
  upsample: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, style: Array, skip: Array | None = None) -> Array:
    out = ModulatedConv2d(3, 1, demodulate=False, dtype=self.dtype, param_dtype=self.param_dtype,
                          name='modulated_conv')(x, style)
    out = out + self.param('bias', nn.initializers.zeros, (1, 1, 1, 3), self.param_dtype).astype(out.dtype)
    if skip is not None:
      if self.upsample:
        skip = resample.upsample2x(skip)
      out = out + skip.astype(out.dtype)
    return out


class StyleGAN2GeneratorClean(stylegan2.StyleGAN2Base):
  """gfpgan `StyleGAN2GeneratorClean` (and `StyleGAN2GeneratorCSFT` with conditions).

  Attributes:
    out_size: output resolution (power of two).
    num_style_feat: style width (512).
    num_mlp: mapping-network depth.
    channel_multiplier: StyleGAN2 channel multiplier.
    narrow: channel narrowing ratio.
    sft_half: apply SFT to the second half of the channels only.
  """

  def _make_style_mlp(self):
    return [
        layers.Linear(self.num_style_feat, kernel_init=layers.kaiming_normal_init(0.2, 'leaky_relu'),
                      bias_init=layers.constant_init(0.0), param_dtype=self.param_dtype,
                      name=f'style_mlp.{2 * j + 1}') for j in range(self.num_mlp)
    ]

  def _style_mlp_act(self, x):
    return layers.leaky_relu(x)

  def _make_style_conv(self, out_channels, upsample, name):
    return StyleConv(out_channels, 3, sample_mode='upsample' if upsample else None, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

  def _make_to_rgb(self, upsample, name):
    return ToRGB(upsample, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
