"""Parity cases of the bilinear family: gfpgan `GFPGANBilinear` and `StyleGAN2GeneratorBilinear`.

Both have exactly the state-dict schemas of GFPGANv1 / basicsr StyleGAN2Generator,
so `detect_arch` reports those (`detected_as`).
"""

from gfpgan_jax.testing.cases.base import Case
from gfpgan_jax.testing.cases.base import images as _images
from gfpgan_jax.testing.cases.training import RELEASED_GFPGAN
from gfpgan_jax.testing.cases.training import gfpgan_flax
from gfpgan_jax.testing.cases.training import gfpgan_torch
from gfpgan_jax.testing.cases.training import sg_flax
from gfpgan_jax.testing.cases.training import sg_torch
from gfpgan_jax.testing.cases.training import stylegan_inputs


def _gfpgan(o, kw):
  return o.gfpgan_bilinear_arch.GFPGANBilinear(**kw)


def _stylegan(o, kw):
  return o.stylegan2_bilinear_arch.StyleGAN2GeneratorBilinear(**kw)


CASES: list[Case] = [
    # The v1.2-v1.4 training arch (released options, channel_multiplier 2).
    Case('gfpganbilinear_512', 'gfpganbilinear', dict(out_size=512, channel_multiplier=2, **RELEASED_GFPGAN),
         _gfpgan, _images(512), gfpgan_torch, gfpgan_flax, heavy=True, detected_as='gfpganv1'),
    # Mapping MLP (input_is_latent=False, lr_mlp != 0.01), one w, SFT on all channels.
    Case('gfpganbilinear_small', 'gfpganbilinear',
         dict(out_size=64, channel_multiplier=2, narrow=0.5, num_style_feat=128, num_mlp=2, lr_mlp=0.05,
              input_is_latent=False, different_w=False, sft_half=False), _gfpgan, _images(64, 2), gfpgan_torch,
         gfpgan_flax, detected_as='gfpganv1'),
    Case('stylegan2bilinear_mixing', 'stylegan2bilinear',
         dict(out_size=32, channel_multiplier=2, num_style_feat=64, narrow=0.25), _stylegan,
         stylegan_inputs(32, 2, 64, True), sg_torch(True), sg_flax(True), detected_as='stylegan2'),
    Case('stylegan2bilinear_nearest', 'stylegan2bilinear',
         dict(out_size=64, channel_multiplier=1, num_style_feat=64, num_mlp=2, lr_mlp=0.1, narrow=0.25,
              interpolation_mode='nearest'), _stylegan, stylegan_inputs(64, 2, 64), sg_torch(False),
         sg_flax(False), detected_as='stylegan2'),
]
