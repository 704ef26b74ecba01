"""Whole-step parity with the official `optimize_parameters` (issue 12, item 3), on a small config.

Same weights, GT, LQ and stored noise on both sides; a plain and an R1
iteration. Every logged loss term within rel. 1e-5, every network's gradient
within rel. L2 1e-3 (`gfpgan_jax.testing.step_parity`). The 512 px version is
`python scripts/benchmark.py step_parity`.
"""

import importlib.util
import pathlib

import pytest
import torch

from gfpgan_jax.testing import step_parity

_SCRIPT = pathlib.Path(__file__).resolve().parent.parent / 'scripts' / 'bench_train.py'


def _bench_train():
  spec = importlib.util.spec_from_file_location('bench_train', _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def report(official):
  bench = _bench_train()
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
