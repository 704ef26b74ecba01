"""bfloat16 compute with float32 parameters: quality floor against float32 at the released 512 config."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from gfpgan_jax import convert
from gfpgan_jax.convert import archs
from gfpgan_jax.testing import parity

# Stated floor for the 512 output of GFPGANv1Clean (released config) in bf16 vs float32,
# PSNR over the [-1, 1] image range. Measured on CPU: 44.7 dB (the intermediate RGBs: > 70 dB).
PSNR_FLOOR_DB = 40.0


def _psnr(a, b, peak_to_peak=2.0):
  mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64))**2))
  return 10 * np.log10(peak_to_peak**2 / mse)


def test_bf16_compute_float32_params(official):
  torch.manual_seed(0)
  tm = official.gfpganv1_clean_arch.GFPGANv1Clean(512, channel_multiplier=2, input_is_latent=True, different_w=True,
                                                  sft_half=True)
  variables = convert.torch_to_flax(parity.state_dict_numpy(parity.randomize_torch_module(tm)), 'gfpganv1clean')
  x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (1, 512, 512, 3)).astype(np.float32))
  outs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    module, _ = archs.build('gfpganv1clean', dtype=dtype)
    # Parameters are float32 whatever the compute dtype.
    shapes = jax.eval_shape(module.init, {'params': jax.random.key(0), 'noise': jax.random.key(1)}, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes['params'])} == {jnp.dtype(jnp.float32)}
    image, rgbs = jax.jit(lambda v, x, m=module: m.apply(v, x, randomize_noise=False))(variables, x)
    assert image.dtype == dtype
    outs[dtype] = (np.asarray(image.astype(jnp.float32)), [np.asarray(r.astype(jnp.float32)) for r in rgbs])
  ref, ref_rgbs = outs[jnp.float32]
  got, got_rgbs = outs[jnp.bfloat16]
  psnr = _psnr(got, ref)
  print(f'bf16 vs float32, 512 output: PSNR {psnr:.1f} dB; intermediate RGBs: '
        + ', '.join(f'{_psnr(g, r):.1f}' for g, r in zip(got_rgbs, ref_rgbs)))
  assert psnr >= PSNR_FLOOR_DB
  for g, r in zip(got_rgbs, ref_rgbs):
    assert _psnr(g, r) >= PSNR_FLOOR_DB
  assert psnr < 120  # bf16 really ran: the outputs differ
