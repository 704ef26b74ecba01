"""scripts/bench_train.py and `gfpgan_jax.testing.torch_train_step`: the official step trains, weights convert."""

import math

import jax
import numpy as np
import pytest
import torch

from gfpgan_jax import train_state as ts
from gfpgan_jax.testing import scripts
from gfpgan_jax.testing import torch_train_step

@pytest.fixture(scope='module')
def bench():
  return scripts.load('bench_train')


def test_load_config_resolution_batch_and_overrides(bench):
  config = bench.load_config('demo', resolution=128, batch=2,
                             overrides=['loss.style_weight=0', 'model.use_identity=False'], dtype='bfloat16')
  assert config.data.resolution == config.model.generator_kwargs.out_size == 128
  assert (config.loss.eye_size, config.loss.mouth_size) == (32, 48)  # demo's 16/24 at 64 px, scaled
  assert config.data.batch_size == 2 and config.dtype == 'bfloat16'
  assert config.loss.style_weight == 0.0 and config.model.use_identity is False
  with pytest.raises(KeyError, match='no config field'):
    bench.load_config('tiny', overrides=['loss.no_such_weight=1'])


def test_make_batch_boxes_follow_flips(bench):
  config = bench.load_config('tiny', batch=2)
  images, locs = bench.make_batch(config, seed=0)
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  assert set(locs) == set(ts.COMPONENTS) and locs['mouth'].shape == (2, 4)
  # Sample 1 is mirrored: its left eye is sample 0's right eye reflected (x -> 32 - x).
  np.testing.assert_allclose(locs['left_eye'][1, [0, 2]] + locs['right_eye'][0, [2, 0]], 32 + 1, atol=1e-5)


@pytest.fixture(scope='module')
def trained(bench, official):
  """The official model (tiny config, batch 2, decoder frozen) before and after a plain and an R1 iteration."""
  config = bench.load_config('tiny', batch=2, overrides=['model.fix_decoder=True'])  # the official recipe
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # OpenMP threads crawl on a loaded machine
  try:
    model = torch_train_step.build(config, official, seed=0)
    before = model.torch_state_dicts()
    ema_before = {k: v.detach().clone() for k, v in model.net_g_ema.named_parameters()}
    images, locs = bench.make_batch(config, seed=0)
    gt = images.astype(np.float32) / 127.5 - 1
    logs = []
    for it in (1, config.loss.d_reg_every):
      model.feed_data(torch_train_step.make_data(gt, gt[:, ::-1], locs))
      model.optimize_parameters(it)
      logs.append(dict(model.log_dict))
  finally:
    torch.set_num_threads(threads)
  return config, model, before, ema_before, logs


def test_official_step_losses_finite_and_weights_move(trained):
  config, model, before, ema_before, logs = trained
  plain, r1 = logs
  assert 'l_d_r1' not in plain and 'l_d_r1' in r1
  for log in logs:
    for name in ('l_g_pix', 'l_g_percep', 'l_g_style', 'l_g_gan', 'l_g_gan_mouth', 'l_g_comp_style_loss',
                 'l_identity', 'l_d', 'l_d_left_eye', 'l_d_mouth'):
      assert math.isfinite(log[name]), (name, log)
  assert f'l_p_{config.data.resolution}' in plain  # the pyramid reaches the output size
  after = model.torch_state_dicts()
  moved = lambda a, b: not np.array_equal(a, b)
  assert moved(before['g']['conv_body_first.0.weight'], after['g']['conv_body_first.0.weight'])
  assert moved(before['d']['final_linear.1.weight'], after['d']['final_linear.1.weight'])
  for c in ts.COMPONENTS:
    assert moved(before['dc'][c]['final_conv.0.weight'], after['dc'][c]['final_conv.0.weight'])
  decoder = [k for k in before['g'] if k.startswith('stylegan_decoder.') and 'noise' not in k]
  assert decoder and all(np.array_equal(before['g'][k], after['g'][k]) for k in decoder)  # fix_decoder
  for frozen in ('arcface', 'vgg19'):
    assert all(np.array_equal(before[frozen][k], after[frozen][k]) for k in before[frozen])
  ema = dict(model.net_g_ema.named_parameters())
  assert not torch.equal(ema['conv_body_first.0.weight'], ema_before['conv_body_first.0.weight'])


def test_official_weights_become_our_state(bench, trained, tmp_path):
  config, model, _, _, _ = trained
  path = str(tmp_path / 'w.npz')
  bench.save_official_weights(model, path)
  nets = ts.build_networks(config)
  state = jax.jit(lambda k: ts.init_state(nets, config, k))(jax.random.key(0))
  frozen = ts.init_frozen(nets, jax.random.key(1))
  state, frozen = bench.official_weights(path, nets, config, state, frozen)
  want = model.torch_state_dicts()['dc']['mouth']['final_conv.0.weight']  # [1, 256, 3, 3] -> HWIO
  got = np.asarray(state.dc_params['mouth']['final_conv']['0']['weight'])
  np.testing.assert_array_equal(got, np.transpose(want, (2, 3, 1, 0)))
  g_leaf, ema_leaf = jax.tree.leaves(state.g_params)[0], jax.tree.leaves(state.g_ema_params)[0]
  np.testing.assert_array_equal(np.asarray(g_leaf), np.asarray(ema_leaf))
  assert g_leaf.unsafe_buffer_pointer() != ema_leaf.unsafe_buffer_pointer()  # the step donates the state
  assert set(frozen) == {'vgg', 'arcface'}
