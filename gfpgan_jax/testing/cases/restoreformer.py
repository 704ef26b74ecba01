"""Parity cases of the restoreformer family: the official `RestoreFormer` against ours.

Outputs: 'image' (the forward's first output) and 'codes' (the codebook
indices the VectorQuantizer picks, captured from the official forward with a
hook), so a different nearest code fails the case even where it would move
the image only a little.

The official codebook init, U(+-1/n_embed), is tiny next to the random
encoder's latents (std ~0.2): every code is then nearly equidistant from z,
the nearest and second-nearest distances differ by ~1e-7 of their size (float32
rounding) and the argmin is decided by rounding. The cases therefore draw the
codebook from N(0, 0.2^2), which puts that gap at ~1e-4 (over a thousand
times the rounding error) for these seeds; a trained codebook is separated
by construction.
"""

import numpy as np

from gfpgan_jax.testing import parity
from gfpgan_jax.testing.cases.base import Case
from gfpgan_jax.testing.cases.base import images as _images
from gfpgan_jax.testing.cases.base import jit as _jit
from gfpgan_jax.testing.cases.base import to_torch as _t

CODEBOOK_STD = 0.2


def _official(o, kw):
  import torch  # pylint: disable=g-import-not-at-top
  m = o.restoreformer_arch.RestoreFormer(**kw)
  with torch.no_grad():
    m.quantize.embedding.weight.normal_(0.0, CODEBOOK_STD)
  return m


def _torch(m, inp):
  captured = {}

  def keep_indices(module, args, out):  # a hook that returns None leaves the output alone
    del module, args
    captured['idx'] = out[2][2]

  hook = m.quantize.register_forward_hook(keep_indices)
  try:
    image, second = m(_t(inp['x']))
  finally:
    hook.remove()
  assert second is None
  r = m.decoder.z_shape[2]  # the latent side, resolution / 2**(levels - 1)
  codes = captured['idx'].reshape(-1, r, r).numpy().astype(np.int32)
  return {'image': parity.nchw_to_nhwc(image), 'codes': codes}


def _flax(module, variables, inp):
  image, codes = _jit(lambda v, x: module.apply(v, x, return_codes=True))(variables, inp['x'])
  return {'image': image, 'codes': codes}


SMALL = dict(resolution=64, ch=32, ch_mult=(1, 2, 2), attn_resolutions=(16,), n_embed=64, embed_dim=32,
             z_channels=32, head_size=4)

CASES: list[Case] = [
    # The released model (RestoreFormer.pth): the default constructor.
    Case('restoreformer_512', 'restoreformer', {}, _official, _images(512), _torch, _flax, heavy=True),
    # Attention in an encoder level, the encoder mid, the decoder mid and a decoder level (all at 16 px).
    Case('restoreformer_small', 'restoreformer', SMALL, _official, _images(64, 2), _torch, _flax),
]
