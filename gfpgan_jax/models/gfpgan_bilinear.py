"""`GFPGANBilinear` (gfpgan `gfpgan_bilinear_arch.py`, gfpgan.md 1.7).

GFPGANv1 with every `upfirdn2d` replaced by bilinear `F.interpolate` /
`nn.Upsample` (align_corners=False): the U-Net down blocks resize x0.5 and
run stride-1 convs (pad k//2), the decoder is `StyleGAN2GeneratorBilinear`
with SFT. It keeps EqualConv/EqualLinear with runtime scaling and the fused
leaky ReLU, and has exactly GFPGANv1's parameter names and shapes, so the
GFPGANv1 U-Net pieces (`ResUpBlock`, `SFTBranch`) and forward are reused.

The released v1.2-v1.4 models were trained as this arch (channel_multiplier
2) and then converted exactly to `GFPGANv1Clean`; the same conversion on our
variables is `gfpgan_jax.convert.bilinear_to_clean`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import gfpgan
from gfpgan_jax.models import layers
from gfpgan_jax.models import stylegan2
from gfpgan_jax.models import stylegan2_bilinear

Array = jax.Array
Dtype = Any


class GFPGANBilinear(nn.Module):
  """gfpgan `GFPGANBilinear`.

  `decoder_load_path` / `fix_decoder` of the official constructor are
  training concerns (initialisation, optimiser masks) and are not fields.

  Attributes:
    out_size: input/output resolution.
    num_style_feat: style width.
    channel_multiplier: StyleGAN2 channel multiplier (the official default 1;
      the v1.2-v1.4 models used 2).
    num_mlp: decoder mapping-network depth.
    lr_mlp: decoder mapping-network learning-rate multiplier.
    input_is_latent: feed the style code as w (True) or through the mapping MLP.
    different_w: predict one w per decoder layer (w+).
    narrow: channel narrowing ratio (the U-Net uses narrow / 2).
    sft_half: CS-SFT on half of the decoder channels.
  """
  out_size: int = 512
  num_style_feat: int = 512
  channel_multiplier: int = 1
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
    self.conv_body_first = layers.ConvLayer(ch[self.out_size], 1, **kw)
    self.conv_body_down = [
        layers.ResBlock(ch[2**(i - 1)], interpolation_mode='bilinear', name=f'conv_body_down.{n}', **kw)
        for n, i in enumerate(range(log_size, 2, -1))
    ]
    self.final_conv = layers.ConvLayer(ch[4], 3, **kw)
    levels = list(range(3, log_size + 1))
    self.conv_body_up = [gfpgan.ResUpBlock(ch[2**i], name=f'conv_body_up.{n}', **kw) for n, i in enumerate(levels)]
    self.toRGB = [  # pylint: disable=invalid-name
        layers.EqualConv2d(3, 1, name=f'toRGB.{n}', **kw) for n, _ in enumerate(levels)
    ]
    n_out = (log_size * 2 - 2) * self.num_style_feat if self.different_w else self.num_style_feat
    self.final_linear = layers.EqualLinear(n_out, **kw)
    self.stylegan_decoder = stylegan2_bilinear.StyleGAN2GeneratorBilinearSFT(
        out_size=self.out_size, num_style_feat=self.num_style_feat, num_mlp=self.num_mlp,
        channel_multiplier=self.channel_multiplier, lr_mlp=self.lr_mlp, narrow=self.narrow,
        sft_half=self.sft_half, **kw)
    sft_mul = 1 if self.sft_half else 2
    self.condition_scale = [
        gfpgan.SFTBranch(ch[2**i], ch[2**i] * sft_mul, 1.0, name=f'condition_scale.{n}', **kw)
        for n, i in enumerate(levels)
    ]
    self.condition_shift = [
        gfpgan.SFTBranch(ch[2**i], ch[2**i] * sft_mul, 0.0, name=f'condition_shift.{n}', **kw)
        for n, i in enumerate(levels)
    ]

  def __call__(self,
               x: Array,
               return_latents: bool = False,
               return_rgb: bool = True,
               randomize_noise: bool = True,
               **kwargs) -> tuple[Array, list[Array]]:
    """Restores faces.

    Args:
      x: [N, out_size, out_size, 3] RGB in [-1, 1].
      return_latents: accepted for API parity; the latent is not returned
        (as in the official forward).
      return_rgb: also return the intermediate RGB images.
      randomize_noise: draw decoder noise from the 'noise' rng (official
        default) or use the stored `noises` buffers (deterministic).
      **kwargs: ignored (e.g. GFPGANer's `weight=`; the official
        GFPGANBilinear forward would reject them).

    Returns:
      (image [N, out_size, out_size, 3] unclamped,
       out_rgbs: log2(out_size) - 2 images [N, r, r, 3] for r = 8..out_size).
    """
    del kwargs
    gfpgan._check_input(x, self.out_size)  # pylint: disable=protected-access
    feat = self.conv_body_first(x)
    unet_skips = []
    for block in self.conv_body_down:
      feat = block(feat)
      unet_skips.insert(0, feat)
    feat = self.final_conv(feat)
    # pylint: disable-next=protected-access
    return gfpgan._decode(self, feat, unet_skips, return_latents, return_rgb, randomize_noise)
