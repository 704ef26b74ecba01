"""Initialising a run from official PyTorch checkpoints (decoder prior, fine-tuning, loss networks)."""

import functools

import jax
import numpy as np
import pytest
import torch

from configs import ffhq
from gfpgan_jax import convert
from gfpgan_jax import train_state as ts
from gfpgan_jax import trainer
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.testing import parity


def _save(module, path, key):
  parity.randomize_torch_module(module)
  sd = module.state_dict()
  torch.save({key: sd} if key else sd, path)
  return parity.state_dict_numpy(module)


def _assert_same(tree_a, tree_b):
  la, lb = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
  assert len(la) == len(lb) and la
  for a, b in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope='module')
def setup():
  config = ffhq.get_config('tiny')
  nets = ts.build_networks(config)
  state = jax.jit(functools.partial(ts.init_state, nets, config))(jax.random.key(0))
  return config, nets, jax.tree.map(np.asarray, state)


def test_decoder_prior_and_discriminators_from_official_files(official, setup, tmp_path):
  config, nets, state = setup
  config = config.copy_and_resolve_references()  # tests change config.init
  g = nets.g_kwargs
  dec_kw = dict(num_style_feat=g['num_style_feat'], num_mlp=g['num_mlp'], channel_multiplier=g['channel_multiplier'],
                narrow=g['narrow'])
  prior = _save(official.stylegan2_arch.StyleGAN2Generator(g['out_size'], **dec_kw), tmp_path / 'prior.pth',
                'params_ema')
  d_kw = config.model.discriminator_kwargs
  disc = _save(official.stylegan2_arch.StyleGAN2Discriminator(32, channel_multiplier=d_kw.channel_multiplier,
                                                              narrow=d_kw.narrow), tmp_path / 'd.pth', 'params')
  eye = _save(official.gfpganv1_arch.FacialComponentDiscriminator(), tmp_path / 'eye.pth', 'params')
  config.init.decoder = str(tmp_path / 'prior.pth')
  config.init.discriminator = str(tmp_path / 'd.pth')
  config.init.d_left_eye = str(tmp_path / 'eye.pth')
  new = trainer.load_pretrained(state, nets, config)

  want = convert.torch_to_flax(prior, 'stylegan2', out_size=32, **dec_kw)
  _assert_same(new.g_params['stylegan_decoder'], want['params'])
  _assert_same(new.g_noises['stylegan_decoder'], want['noises'])
  _assert_same(new.g_ema_params['stylegan_decoder'], want['params'])
  _assert_same(new.g_params['final_linear'], state.g_params['final_linear'])  # the U-Net keeps its init
  _assert_same(new.d_params, convert.torch_to_flax(disc, 'stylegan2_discriminator', out_size=32,
                                                   channel_multiplier=d_kw.channel_multiplier,
                                                   narrow=d_kw.narrow)['params'])
  _assert_same(new.dc_params['left_eye'], convert.torch_to_flax(eye, 'facial_component_discriminator')['params'])
  _assert_same(new.dc_params['mouth'], state.dc_params['mouth'])


def test_generator_for_fine_tuning_and_frozen_networks(official, setup, tmp_path):
  config, nets, state = setup
  config = config.copy_and_resolve_references()  # tests change config.init
  g = dict(nets.g_kwargs)
  g.pop('resample_kernel')
  gen = _save(official.gfpganv1_arch.GFPGANv1(**g), tmp_path / 'g.pth', 'params_ema')
  # A converted checkpoint directory works as well as a .pth.
  checkpoint.save(tmp_path / 'g_dir', convert.torch_to_flax(gen, 'gfpganv1', **g), 'gfpganv1', g)
  arc = _save(official.arcface_arch.ResNetArcFace('IRBlock', [1, 1, 1, 1], use_se=False), tmp_path / 'arc.pth', None)
  for source in ('g.pth', 'g_dir'):
    config.init.generator = str(tmp_path / source)
    config.init.arcface = str(tmp_path / 'arc.pth')
    new = trainer.load_pretrained(state, nets, config)
    want = convert.torch_to_flax(gen, 'gfpganv1', **g)
    _assert_same(new.g_params, want['params'])
    _assert_same(new.g_ema_params, want['params'])
    frozen = trainer.load_frozen(nets, config)
    _assert_same(frozen['arcface'], convert.torch_to_flax(arc, 'arcface', layers=(1, 1, 1, 1), use_se=False))
  # The VGG19 not named stays random, drawn as if nothing were loaded; the loaded ArcFace is never drawn.
  key = jax.random.fold_in(jax.random.key(config.seed), 7)
  assert nets.vgg is not None and set(frozen) == {'vgg', 'arcface'}
  _assert_same(frozen['vgg'], ts.init_frozen(nets, key)['vgg'])
  assert set(ts.init_frozen(nets, key, skip=('arcface',))) == {'vgg'}


def test_wrong_weights_fail_clearly(official, setup, tmp_path):
  config, nets, state = setup
  config = config.copy_and_resolve_references()  # tests change config.init
  _save(official.gfpganv1_arch.FacialComponentDiscriminator(), tmp_path / 'eye.pth', 'params')
  config.init.decoder = str(tmp_path / 'eye.pth')
  with pytest.raises(convert.ConversionError, match="does not match arch 'stylegan2'"):
    trainer.load_pretrained(state, nets, config)
  config.init.decoder = str(tmp_path / 'missing.pth')
  with pytest.raises(FileNotFoundError, match='pretrained weights not found'):
    trainer.load_pretrained(state, nets, config)
