r"""Whole-step parity with the official iteration: every logged loss term and every network's gradient.

    python scripts/benchmark.py step_parity [--config ''] [--size 512] [--batch 2]
    python scripts/benchmark.py step_parity --config tiny --size 32      # what tests/step_parity_test.py runs

One official `GFPGANModel.optimize_parameters` (the official sources,
`gfpgan_jax.testing.torch_train_step`) beside `gfpgan_jax.steps.step_on_pair`,
from the same weights (the official random initialisation, converted), the
same GT and LQ batch (the official OpenCV degradations, made once and fed to
both) and the stored decoder noise on both sides, for a plain iteration
(`current_iter` 1) and an R1 iteration (`current_iter` = `d_reg_every`). It
prints each term's relative difference (target 1e-5) and each network's
gradient relative L2 difference (target 1e-3); see
`gfpgan_jax.testing.step_parity`. The default is the full recipe
(configs/ffhq.py, no variant) at 512 px; on the CPU it takes minutes (the
step's compile, twice). It also counts D's activations whose leaky ReLU
takes the other slope on our side (`step_parity.slope_flips`): their input is
within float32 rounding of the kink, where the gradient jumps, as for one
activation of D's final_conv at 512 px with seed 0.
"""

import os
import sys
import time


def add_arguments(p):
  p.add_argument('--config', default='', help="configs/ffhq.py variant ('' = the full recipe)")
  p.add_argument('--size', type=int, default=512, help='image side (G out_size; crop sizes scale with it)')
  p.add_argument('--batch', type=int, default=2, help='batch size')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config override (repeatable)')
  p.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)), help='torch threads')
  p.add_argument('--seed', type=int, default=0)


def run(args):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import bench_train  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.testing import step_parity  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  torch.set_num_threads(args.threads)
  config = bench_train.load_config(args.config, args.size, args.batch, args.set)
  gt, locs = bench_train.make_batch(config, args.seed)
  t0 = time.perf_counter()
  report = step_parity.run(config, gt, locs, seed=args.seed)
  print(f"whole-step parity: config {args.config or 'full recipe'!r}, {config.data.resolution} px, batch "
        f"{config.data.batch_size} ({time.perf_counter() - t0:.0f} s)")
  print(step_parity.format_report(report))
  ok = True
  for kind, rep in report.items():
    loss_ok = rep['max_loss_rel'] <= step_parity.LOSS_RTOL
    grad_ok = rep['max_grad_rel_l2'] <= step_parity.GRAD_RTOL
    ok = ok and loss_ok and grad_ok
    print(f"{kind}: worst loss term rel {rep['max_loss_rel']:.2e} ({'ok' if loss_ok else 'OVER'} "
          f"{step_parity.LOSS_RTOL:g}), worst gradient rel L2 {rep['max_grad_rel_l2']:.2e} "
          f"({'ok' if grad_ok else 'OVER'} {step_parity.GRAD_RTOL:g})")
    if rep['grads']['d']['rel_l2'] > step_parity.GRAD_RTOL and rep['d_slope_flips']['count']:
      print(f"{kind}: D's gradient moved with activations on the other slope of a leaky ReLU (see above): their "
            "input is within float32 rounding of the kink, where the gradient jumps. Try another --seed.")
  return {'config': {'variant': args.config, 'resolution': int(config.data.resolution),
                     'batch': int(config.data.batch_size), 'overrides': list(args.set)},
          'within_targets': ok, **report}
