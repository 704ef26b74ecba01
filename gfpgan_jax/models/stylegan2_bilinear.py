"""The bilinear StyleGAN2 generator (gfpgan `stylegan2_bilinear_arch.py`).

basicsr's StyleGAN2 with every `upfirdn2d` replaced by `F.interpolate`
(bilinear, align_corners=False, no antialias): the upsampling StyleConvs
resize their input x2 and run a plain 3x3 conv (pad 1); the ToRGB skip is
resized x2. It keeps the equalized-lr layers (runtime 1/sqrt(fan_in) scaling,
`EqualLinear` mapping network with `lr_mlp`) and the fused leaky ReLU, so its
state dict is basicsr `StyleGAN2Generator`'s (gfpgan.md 1.7). This is the
decoder GFP-GAN v1.2-v1.4 were trained with before their exact conversion to
the clean arch (`gfpgan_jax.convert.bilinear_to_clean`).

The layers are the basicsr ones of `stylegan2.py` with their
`interpolation_mode` hook set; the synthesis loop is the shared
`StyleGAN2Base`.
"""

import jax

from gfpgan_jax.models import layers
from gfpgan_jax.models import stylegan2

Array = jax.Array

INTERPOLATION_MODES = ('bilinear', 'nearest')


class StyleGAN2GeneratorBilinear(stylegan2.StyleGAN2Base):
  """gfpgan `StyleGAN2GeneratorBilinear` (and `StyleGAN2GeneratorBilinearSFT` with conditions).

  Call as `StyleGAN2Base.__call__`: `styles` [N, F] (or w+ [N, L, F], or two
  codes for style mixing), optional SFT `conditions`, `noise` /
  `randomize_noise` (fresh noise from the 'noise' rng or the stored
  `noises` buffers), `truncation`, `truncation_latent`, `inject_index`,
  `return_latents`; returns `(image [N, out_size, out_size, 3], latent or None)`.

  Attributes:
    out_size: output resolution (power of two).
    num_style_feat: style width (512).
    num_mlp: mapping-network depth.
    channel_multiplier: StyleGAN2 channel multiplier.
    lr_mlp: mapping-network learning-rate multiplier (0.01).
    narrow: channel narrowing ratio.
    interpolation_mode: 'bilinear' (align_corners=False) or 'nearest'.
    sft_half: apply SFT to the second half of the channels only (the SFT variant).
  """
  lr_mlp: float = 0.01
  interpolation_mode: str = 'bilinear'

  def setup(self):
    if self.interpolation_mode not in INTERPOLATION_MODES:
      raise ValueError(f'interpolation_mode must be one of {INTERPOLATION_MODES}, got {self.interpolation_mode!r}')
    super().setup()

  def _make_style_mlp(self):
    return [
        layers.EqualLinear(self.num_style_feat, lr_mul=self.lr_mlp, activation='fused_lrelu',
                           param_dtype=self.param_dtype, name=f'style_mlp.{i}')
        for i in range(1, self.num_mlp + 1)
    ]

  def _style_mlp_act(self, x: Array) -> Array:
    return x  # the fused lrelu is inside EqualLinear

  def _make_style_conv(self, out_channels, upsample, name):
    return stylegan2.StyleConv(out_channels, 3, sample_mode='upsample' if upsample else None,
                               interpolation_mode=self.interpolation_mode, dtype=self.dtype,
                               param_dtype=self.param_dtype, name=name)

  def _make_to_rgb(self, upsample, name):
    return stylegan2.ToRGB(upsample, interpolation_mode=self.interpolation_mode, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)


# gfpgan's `StyleGAN2GeneratorBilinearSFT` (the GFPGANBilinear decoder) is the same network with SFT
# `conditions` and `sft_half`; the official class always uses bilinear resampling.
StyleGAN2GeneratorBilinearSFT = StyleGAN2GeneratorBilinear

__all__ = ['StyleGAN2GeneratorBilinear', 'StyleGAN2GeneratorBilinearSFT']
