"""Whole-step parity with the official `optimize_parameters` (issue 12, item 3), on a small config.

Same weights, GT, LQ and stored noise on both sides; a plain and an R1
iteration. Every logged loss term within rel. 1e-5, every network's gradient
within rel. L2 1e-3 (`gfpgan_jax.testing.step_parity`). The 512 px version is
`python scripts/benchmark.py step_parity`.
"""

import pytest
import torch

from gfpgan_jax.testing import scripts
from gfpgan_jax.testing import step_parity


@pytest.fixture(scope='module')
def report(official):
  bench = scripts.load('bench_train')
  # tiny: 32 px, narrow G and D, full-size component Ds, VGG19 and ArcFace, every loss on; the decoder trains,
  # so all of G has gradients. The pyramid weight drops to 1e-12 after iteration 2, so the R1 iteration
  # (current_iter 16) also checks the schedule.
  config = bench.load_config('tiny', batch=2)
  gt, locs = bench.make_batch(config, seed=0)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # OpenMP threads crawl on a loaded machine
  try:
    rep = step_parity.run(config, gt, locs, seed=0, official=official)
  finally:
    torch.set_num_threads(threads)
  print(step_parity.format_report(rep))
  return config, rep


@pytest.mark.parametrize('kind', ['plain', 'r1'])
def test_every_logged_term_matches(report, kind):
  config, rep = report
  got = rep[kind]['losses']
  assert set(got) == set(step_parity.term_names(config, kind == 'r1'))
  assert ('l_d_r1' in got) == (kind == 'r1') and 'l_p_32' in got and 'l_g_comp_style_loss' in got
  bad = {k: v for k, v in got.items() if not v['rel'] <= step_parity.LOSS_RTOL}
  assert not bad, bad


@pytest.mark.parametrize('kind', ['plain', 'r1'])
def test_every_gradient_matches(report, kind):
  _, rep = report
  grads = rep[kind]['grads']
  assert set(grads) == {'g', 'd', 'd_left_eye', 'd_right_eye', 'd_mouth'}
  for name, g in grads.items():
    assert g['norm'] > 0 and g['params'] > 0, (name, g)
    assert g['rel_l2'] <= step_parity.GRAD_RTOL, (name, g)


def test_pyramid_schedule_reached_both_sides(report):
  config, rep = report
  assert config.loss.remove_pyramid_loss < config.loss.d_reg_every
  plain, r1 = rep['plain']['losses']['l_p_8'], rep['r1']['losses']['l_p_8']
  assert plain['official'] > 1e-6 and 0 < r1['official'] < 1e-9  # weight 1, then 1e-12



def test_slope_flips_counts_activations_on_the_other_slope(official):
  from gfpgan_jax import convert  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.models import discriminators  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.testing import parity  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  arch = dict(out_size=16, channel_multiplier=1, narrow=1 / 16)
  torch.manual_seed(0)
  theirs = parity.randomize_torch_module(official.stylegan2_arch.StyleGAN2Discriminator(**arch)).eval()
  params = convert.torch_to_flax(parity.state_dict_numpy(theirs), 'stylegan2_discriminator', **arch)['params']
  ours = discriminators.StyleGAN2Discriminator(**arch)
  x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  xt = torch.from_numpy(parity.nhwc_to_nchw(x))
  same = step_parity.slope_flips(theirs, ours, params, [xt], [x])
  assert same['count'] == 0 and same['layers'] == {} and same['weightiest'] is None
  every = step_parity._official_activations(theirs, xt)  # pylint: disable=protected-access
  assert {'conv_body.0.1', 'conv_body.1.conv2.2', 'final_conv.1', 'final_linear.0'} <= set(every)
  n_act = sum(a.size for a in every.values())
  assert same['of'] == n_act
  # Move one unit of final_linear.0 to the other side of its kink on our side only: exactly that one flips.
  acts = every['final_linear.0'][0]
  unit = int(np.argmax(acts))
  bias = np.array(params['final_linear']['0']['bias'])
  bias[unit] -= 2 * acts[unit] / 2**0.5  # its input x > 0 becomes -x (EqualLinear's lr_mul is 1 in D)
  moved = {**params, 'final_linear': {**params['final_linear'], '0': {**params['final_linear']['0'], 'bias': bias}}}
  got = step_parity.slope_flips(theirs, ours, moved, [xt], [x])
  assert got['count'] == 1 and got['of'] == n_act and got['layers'] == {'final_linear.0': [1, acts.size]}
  name, theirs_act, ours_act = got['weightiest']
  assert name == 'final_linear.0' and theirs_act == pytest.approx(acts[unit], rel=1e-6)
  assert ours_act == pytest.approx(-0.2 * acts[unit], rel=1e-4)  # the same input, negated: slope 0.2


@pytest.mark.parametrize('kind', ['plain', 'r1'])
def test_the_report_counts_d_slope_flips(report, kind):
  _, rep = report
  flips = rep[kind]['d_slope_flips']
  # A flip needs an input within float32 rounding of 0: a handful at most (at 512 px, seed 0: 1 of 1.3e8).
  assert flips['of'] > 0 and 0 <= flips['count'] <= 1e-4 * flips['of'], flips
  assert "D's leaky ReLUs on the other slope here" in step_parity.format_report(rep)
