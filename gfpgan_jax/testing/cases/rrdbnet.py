"""Parity cases of the rrdbnet family: basicsr's RRDBNet (the Real-ESRGAN background upsampler)."""

from gfpgan_jax.testing import parity
from gfpgan_jax.testing.cases.base import Case
from gfpgan_jax.testing.cases.base import images as _images
from gfpgan_jax.testing.cases.base import jit as _jit
from gfpgan_jax.testing.cases.base import to_torch as _t

# A small trunk: two RRDBs (so `apply` runs the scanned trunk), narrow features.
SMALL = dict(num_in_ch=3, num_out_ch=3, num_feat=32, num_block=2, num_grow_ch=16)


def _official(o, kw):
  return o.rrdbnet_arch.RRDBNet(**{k: v for k, v in kw.items() if k != 'scan_blocks'})  # ours only


def _official_strong_trunk(o, kw):
  """The official network with its dense-block weights x20 and `conv_body` x3.

  basicsr initialises the dense blocks at 0.1 x kaiming and scales their residuals by 0.2 twice, so in a small
  random network the trunk hardly shows in the output (a 1% change of one conv moves it by 7e-6, under the
  parity bar). Scaled up, the trunk dominates and every block is checked.
  """
  import torch  # pylint: disable=g-import-not-at-top
  m = _official(o, kw)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if '.rdb' in name and name.endswith('weight'):
        p.mul_(20)
      elif name.startswith('conv_body'):
        p.mul_(3)
  return m


def _torch(m, inp):
  return {'image': parity.nchw_to_nhwc(m(_t(inp['x'])))}


def _flax(module, variables, inp):
  return {'image': _jit(module.apply)(variables, inp['x'])}


def _case(name, kwargs, size, batch, heavy=False, width=None):
  inputs = _images(size, batch, kwargs['num_in_ch'], low=0.0, width=width)  # Real-ESRGAN images are in [0, 1]
  official = _official if heavy else _official_strong_trunk
  return Case(name, 'rrdbnet', kwargs, official, inputs, _torch, _flax, heavy=heavy)


CASES = [
    # RealESRGAN_x2plus.pth's configuration (the GFPGAN background upsampler) on a small input.
    _case('rrdbnet_x2plus', dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=64, num_block=23, num_grow_ch=32), 24,
          1, heavy=True),
    _case('rrdbnet_x4_small', dict(SMALL, scale=4), 32, 2),
    _case('rrdbnet_x2_small', dict(SMALL, scale=2), 32, 2, width=20),
    _case('rrdbnet_x4_unrolled', dict(SMALL, scale=4, scan_blocks=False), 16, 1, width=12),
    # One block (the unscanned trunk), other channel counts.
    _case('rrdbnet_x1_small', dict(num_in_ch=4, num_out_ch=4, scale=1, num_feat=16, num_block=1, num_grow_ch=8), 16,
          2, width=24),
]
