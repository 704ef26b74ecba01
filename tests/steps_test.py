"""One training step: gradients reach only what the recipe trains; EMA, optimiser corrections, masks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from configs import ffhq
from gfpgan_jax import losses
from gfpgan_jax import optim
from gfpgan_jax import steps
from gfpgan_jax import train_state as ts


def _batch(config, n=8):
  r = config.data.resolution
  rs = np.random.RandomState(0)
  batch = {'gt': jnp.asarray(rs.randint(0, 256, (n, r, r, 3), np.uint8)), 'num_skipped': jnp.zeros(n, jnp.int32)}
  for c in ts.COMPONENTS:
    batch[f'loc_{c}'] = jnp.asarray(np.tile([[4.0, 5.0, 20.0, 21.0]], (n, 1)).astype(np.float32))
  return batch


def _changed(a, b):
  return {jax.tree_util.keystr(k): not np.array_equal(x, y)
          for (k, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b))}


def test_one_step_trains_what_the_recipe_trains():
  config = ffhq.get_config('tiny')
  config.model.fix_decoder = True  # the official recipe (the CPU variants train the decoder: no prior)
  nets = ts.build_networks(config)
  state = jax.jit(functools.partial(ts.init_state, nets, config))(jax.random.key(0))
  frozen = ts.init_frozen(nets, jax.random.key(1))
  before = jax.tree.map(np.asarray, state)
  frozen_before = jax.tree.map(np.asarray, frozen)
  step = jax.jit(functools.partial(steps.train_step, nets=nets, config=config, r1=True))
  after, metrics = step(state, _batch(config), frozen)
  after = jax.tree.map(np.asarray, after)

  assert int(after.step) == 1
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert set(metrics) >= {'g/l1', 'g/pyramid', 'g/percep', 'g/style', 'g/gan', 'g/gan_left_eye', 'g/comp_style',
                          'g/identity', 'g/total', 'd/d', 'd/r1', 'd/d_mouth', 'd/real_score'}
  # The frozen decoder (fix_decoder) is untouched, everything else in G moved.
  dec = _changed(before.g_params['stylegan_decoder'], after.g_params['stylegan_decoder'])
  assert not any(dec.values()), [k for k, v in dec.items() if v]
  rest = {k: v for k, v in after.g_params.items() if k != 'stylegan_decoder'}
  moved = _changed({k: before.g_params[k] for k in rest}, rest)
  assert all(moved.values()), [k for k, v in moved.items() if not v]
  # The noise buffers are not trained; the frozen loss networks are not in the state and stay as they were.
  assert not any(_changed(before.g_noises, after.g_noises).values())
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(a, np.asarray(b))
  # D and the three component Ds were updated.
  assert all(_changed(before.d_params, after.d_params).values())
  for c in ts.COMPONENTS:
    assert all(_changed(before.dc_params[c], after.dc_params[c]).values()), c
  # EMA: ema' = d * ema + (1 - d) * params', leaf by leaf.
  d = config.optim.ema_decay
  for e0, p1, e1 in zip(jax.tree.leaves(before.g_ema_params), jax.tree.leaves(after.g_params),
                        jax.tree.leaves(after.g_ema_params)):
    np.testing.assert_allclose(e1, d * e0 + (1 - d) * p1, rtol=1e-6, atol=1e-7)


def test_optimiser_settings_are_the_official_ones():
  config = ffhq.get_config()
  assert optim.lazy_reg_betas((0.0, 0.99), 16) == (0.0, 0.99**(16 / 17))
  np.testing.assert_allclose(optim.lazy_reg_betas((0.0, 0.99), 16)[1], 0.990585, atol=1e-6)
  sched = optim.multistep_schedule(2e-3, config.optim.milestones, config.optim.gamma)
  # optax counts updates from 0: update k is official iteration k + 1.
  np.testing.assert_allclose([float(sched(c)) for c in (0, 599_999, 600_000, 699_999, 700_000)],
                             [2e-3, 2e-3, 1e-3, 1e-3, 5e-4], rtol=1e-6)
  np.testing.assert_allclose(config.optim.ema_decay, 0.5**(32 / 10000))
  np.testing.assert_allclose(losses.EMA_DECAY_OFFICIAL, config.optim.ema_decay)


def test_frozen_mask_follows_fix_decoder():
  params = {'stylegan_decoder': {'style_convs.0': {'weight': 0}}, 'final_linear': {'weight': 0}}
  assert optim.trainable_mask(params, [r'^stylegan_decoder/']) == {
      'stylegan_decoder': {'style_convs.0': {'weight': False}}, 'final_linear': {'weight': True}}
  assert optim.trainable_mask(params, []) == {'stylegan_decoder': {'style_convs.0': {'weight': True}},
                                              'final_linear': {'weight': True}}
