"""Parity cases of the parsenet family: facexlib's ParseNet (the paste-back face parser)."""

from gfpgan_jax.testing import parity
from gfpgan_jax.testing.cases.base import Case
from gfpgan_jax.testing.cases.base import images as _images
from gfpgan_jax.testing.cases.base import jit as _jit
from gfpgan_jax.testing.cases.base import to_torch as _t


def _official(o, kw):
  return o.parsenet.ParseNet(**kw)


def _torch(m, inp):
  mask, img = m(_t(inp['x']))
  return {'parsing': parity.nchw_to_nhwc(mask), 'image': parity.nchw_to_nhwc(img)}


def _flax(module, variables, inp):
  mask, img = _jit(module.apply)(variables, inp['x'])
  return {'parsing': mask, 'image': img}


def _case(name, kwargs, size, batch, heavy=False):
  return Case(name, 'parsenet', kwargs, _official, _images(size, batch), _torch, _flax, heavy=heavy)


CASES = [
    # The released parsing_parsenet.pth configuration.
    _case('parsenet_512', dict(in_size=512, out_size=512, parsing_ch=19), 512, 1, heavy=True),
    # Small configurations: two stride-2 and two upsampling blocks with clipped channels, and the other options.
    _case('parsenet_small', dict(in_size=64, out_size=64, min_feat_size=16, base_ch=32, parsing_ch=5, res_depth=2,
                                 ch_range=(32, 64)), 64, 2),
    _case('parsenet_prelu_in', dict(in_size=64, out_size=64, base_ch=32, parsing_ch=19, res_depth=1,
                                    relu_type='PReLU', norm_type='in', ch_range=(16, 64)), 64, 2),
    _case('parsenet_gn_selu_up', dict(in_size=32, out_size=64, base_ch=64, parsing_ch=7, res_depth=1,
                                      relu_type='SELU', norm_type='gn', ch_range=(32, 64)), 32, 2),
    _case('parsenet_pixel_relu', dict(in_size=64, out_size=32, min_feat_size=16, base_ch=16, parsing_ch=3,
                                      res_depth=1, relu_type='ReLU', norm_type='pixel', ch_range=(8, 32)), 64, 2),
]
