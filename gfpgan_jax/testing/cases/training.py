"""Parity cases of the training networks: generators, decoders, discriminators, ArcFace, VGG19."""

import os
import pathlib
import tempfile

import numpy as np

from gfpgan_jax.testing import parity
from gfpgan_jax.testing.cases.base import Case
from gfpgan_jax.testing.cases.base import images as _images
from gfpgan_jax.testing.cases.base import jit as _jit
from gfpgan_jax.testing.cases.base import to_torch as _t

RELEASED_GFPGAN = dict(input_is_latent=True, different_w=True, sft_half=True)


# ------------------------------------------------------------------------------ generators


def gfpgan_torch(m, inp):
  image, rgbs = m(_t(inp['x']), return_rgb=True, randomize_noise=False)
  return {'image': parity.nchw_to_nhwc(image), **{f'rgb{i}': parity.nchw_to_nhwc(r) for i, r in enumerate(rgbs)}}


def gfpgan_flax(module, variables, inp):
  image, rgbs = _jit(lambda v, x: module.apply(v, x, return_rgb=True, randomize_noise=False))(variables, inp['x'])
  return {'image': image, **{f'rgb{i}': r for i, r in enumerate(rgbs)}}


def _clean(o, kw):
  return o.gfpganv1_clean_arch.GFPGANv1Clean(**kw)


def _v1(o, kw):
  return o.gfpganv1_arch.GFPGANv1(**kw)


def stylegan_inputs(size, batch, feat=512, mixing=False):

  def inputs(rs):
    log = int(np.log2(size))
    out = {'z': rs.randn(batch, feat).astype(np.float32),
           'noise': [rs.randn(batch, 2**((k + 5) // 2), 2**((k + 5) // 2), 1).astype(np.float32)
                     for k in range(2 * (log - 2) + 1)]}
    if mixing:
      out['z2'] = rs.randn(batch, feat).astype(np.float32)
      out['trunc'] = (rs.randn(1, feat) * 0.5).astype(np.float32)
    return out

  return inputs


def sg_torch(mixing):

  def run(m, inp):
    noise = [_t(n) for n in inp['noise']]
    if mixing:
      img, lat = m([_t(inp['z']), _t(inp['z2'])], noise=noise, truncation=0.7,
                   truncation_latent=_t(inp['trunc']), inject_index=5, return_latents=True)
    else:
      img, lat = m([_t(inp['z'])], noise=noise, return_latents=True)
    stored, _ = m([_t(inp['z'])], randomize_noise=False)
    return {'image': parity.nchw_to_nhwc(img), 'latent': lat.numpy(), 'stored_noise': parity.nchw_to_nhwc(stored)}

  return run


def sg_flax(mixing):

  def run(module, variables, inp):
    if mixing:
      f = lambda v, i: module.apply(v, [i['z'], i['z2']], noise=i['noise'], truncation=0.7,
                                    truncation_latent=i['trunc'], inject_index=5, return_latents=True)
    else:
      f = lambda v, i: module.apply(v, i['z'], noise=i['noise'], return_latents=True)
    img, lat = _jit(f)(variables, inp)
    stored, _ = _jit(lambda v, z: module.apply(v, z, randomize_noise=False))(variables, inp['z'])
    return {'image': img, 'latent': lat, 'stored_noise': stored}

  return run


# ------------------------------------------------------------------------------ others


def _d_torch(m, inp):
  return {'logits': m(_t(inp['x'])).numpy()}


def _d_flax(module, variables, inp):
  return {'logits': _jit(module.apply)(variables, inp['x'])}


def _comp_torch(m, inp):
  out, feats = m(_t(inp['x']), return_feats=True)
  return {'logits': parity.nchw_to_nhwc(out), 'feat3': parity.nchw_to_nhwc(feats[0]),
          'feat5': parity.nchw_to_nhwc(feats[1])}


def _comp_flax(module, variables, inp):
  out, feats = _jit(lambda v, x: module.apply(v, x, return_feats=True))(variables, inp['x'])
  return {'logits': out, 'feat3': feats[0], 'feat5': feats[1]}


def vgg_official(o, kw):
  """The official extractor; it loads torchvision weights from a fixed relative path."""
  import torch  # pylint: disable=g-import-not-at-top
  tv = o.tv_vgg.vgg19(weights=None)
  parity.randomize_torch_module(tv)
  cwd = os.getcwd()
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / o.vgg_arch.VGG_PRETRAIN_PATH
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    os.chdir(tmp)
    try:
      m = o.vgg_arch.VGGFeatureExtractor(**kw)
    finally:
      os.chdir(cwd)
  m.torchvision_state_dict = parity.state_dict_numpy(tv)
  return m


def _vgg_torch(m, inp):
  return {k: parity.nchw_to_nhwc(v) for k, v in m(_t(inp['x'])).items()}


def _vgg_flax(module, variables, inp):
  return _jit(module.apply)(variables, inp['x'])


CASES = [
    Case('gfpganv1clean_512', 'gfpganv1clean', dict(out_size=512, channel_multiplier=2, **RELEASED_GFPGAN), _clean,
         _images(512), gfpgan_torch, gfpgan_flax, heavy=True),
    Case('gfpganv1clean_small', 'gfpganv1clean',
         dict(out_size=64, channel_multiplier=1, narrow=0.5, num_style_feat=128, num_mlp=3, input_is_latent=False,
              different_w=True, sft_half=False), _clean, _images(64, 2), gfpgan_torch, gfpgan_flax),
    Case('gfpganv1_512', 'gfpganv1', dict(out_size=512, channel_multiplier=1, **RELEASED_GFPGAN), _v1, _images(512),
         gfpgan_torch, gfpgan_flax, heavy=True),
    Case('gfpganv1_small', 'gfpganv1',
         dict(out_size=64, channel_multiplier=2, narrow=0.5, num_style_feat=128, num_mlp=2, lr_mlp=0.05,
              input_is_latent=False, different_w=False, sft_half=False), _v1, _images(64, 2), gfpgan_torch,
         gfpgan_flax),
    Case('stylegan2_512', 'stylegan2', dict(out_size=512, channel_multiplier=1),
         lambda o, kw: o.stylegan2_arch.StyleGAN2Generator(**kw), stylegan_inputs(512, 1), sg_torch(False),
         sg_flax(False), heavy=True),
    Case('stylegan2_mixing', 'stylegan2', dict(out_size=32, channel_multiplier=2, num_style_feat=64, narrow=0.25),
         lambda o, kw: o.stylegan2_arch.StyleGAN2Generator(**kw), stylegan_inputs(32, 2, 64, True),
         sg_torch(True), sg_flax(True)),
    Case('stylegan2clean_512', 'stylegan2clean', dict(out_size=512, channel_multiplier=2),
         lambda o, kw: o.stylegan2_clean_arch.StyleGAN2GeneratorClean(**kw), stylegan_inputs(512, 1),
         sg_torch(False), sg_flax(False), heavy=True),
    Case('stylegan2clean_mixing', 'stylegan2clean', dict(out_size=32, channel_multiplier=2, num_style_feat=64,
                                                         narrow=0.25),
         lambda o, kw: o.stylegan2_clean_arch.StyleGAN2GeneratorClean(**kw), stylegan_inputs(32, 2, 64, True),
         sg_torch(True), sg_flax(True)),
    Case('stylegan2_discriminator_512', 'stylegan2_discriminator', dict(out_size=512, channel_multiplier=1),
         lambda o, kw: o.stylegan2_arch.StyleGAN2Discriminator(**kw), _images(512, 3), _d_torch, _d_flax,
         heavy=True),
    Case('stylegan2_discriminator_groups', 'stylegan2_discriminator',
         dict(out_size=64, channel_multiplier=2, narrow=0.25, stddev_group=4),
         lambda o, kw: o.stylegan2_arch.StyleGAN2Discriminator(**kw), _images(64, 8), _d_torch, _d_flax),
    Case('facial_component_discriminator_eye', 'facial_component_discriminator', {},
         lambda o, kw: o.gfpganv1_arch.FacialComponentDiscriminator(), _images(80, 2), _comp_torch, _comp_flax),
    Case('facial_component_discriminator_mouth', 'facial_component_discriminator', {},
         lambda o, kw: o.gfpganv1_arch.FacialComponentDiscriminator(), _images(120, 2), _comp_torch, _comp_flax),
    Case('arcface', 'arcface', dict(block='IRBlock', layers=(2, 2, 2, 2), use_se=False),
         lambda o, kw: o.arcface_arch.ResNetArcFace(**kw), _images(128, 2, 1), _d_torch, _d_flax),
    Case('arcface_se', 'arcface', dict(block='IRBlock', layers=(1, 1, 1, 1), use_se=True),
         lambda o, kw: o.arcface_arch.ResNetArcFace(**kw), _images(128, 2, 1), _d_torch, _d_flax),
    Case('vgg19', 'vgg19',
         dict(layer_name_list=['conv1_2', 'conv2_2', 'conv3_4', 'conv4_4', 'conv5_4'], vgg_type='vgg19',
              use_input_norm=True, range_norm=True), vgg_official, _images(64, 2), _vgg_torch, _vgg_flax),
]
