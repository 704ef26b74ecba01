"""RestoreFormer 512 inference: latency and images/s, ours (JAX) beside the official PyTorch model.

Both run the released architecture (`RestoreFormer()`, default constructor)
with the same random weights on the same machine and thread count, float32.
Ours runs the jitted forward (`gfpgan_jax.xla_options.jit`) and (row
`jax_<dtype>_uint8`) the complete uint8 -> uint8 restore function of
`gfpgan_jax.inference`.

    python scripts/bench_restoreformer.py [--batch-sizes 1] [--threads N] [--json FILE]
"""

import argparse
import json
import os
import pathlib
import statistics
import time


def add_arguments(p):
  p.add_argument('--batch-sizes', default='1', help='comma-separated batch sizes')
  p.add_argument('--iters', type=int, default=3, help='timed iterations per measurement (after 1 warm-up)')
  p.add_argument('--threads', type=int, default=os.cpu_count(), help='CPU threads for both frameworks')
  p.add_argument('--dtypes', default='float32', help='JAX compute dtypes, e.g. float32,bfloat16')
  p.add_argument('--no-torch', action='store_true', help='skip the official PyTorch model')


def _time(fn, iters):
  t = time.perf_counter()
  fn()  # warm-up (and compilation)
  first = time.perf_counter() - t
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), first


def run(args):
  if args.threads != os.cpu_count():  # only effective before JAX initialises its CPU backend
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gfpgan_jax import convert  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import inference  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top

  batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  device = jax.devices()[0]
  results = {'device': f'{device.platform}: {device.device_kind}', 'threads': args.threads, 'rows': []}
  tm = None
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import parity  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tm = official.load().restoreformer_arch.RestoreFormer().eval()
    variables = convert.torch_to_flax(parity.state_dict_numpy(tm), 'restoreformer')
  else:
    variables = archs.init('restoreformer', jax.random.key(0))
  variables = jax.device_put(variables)

  def row(name, batch, timing):
    seconds, first = timing
    r = {'impl': name, 'batch': batch, 'latency_s': seconds, 'images_per_s': batch / seconds, 'first_call_s': first}
    results['rows'].append(r)
    print(f'{name:>18} batch {batch}: {seconds * 1e3:9.1f} ms/batch, {batch / seconds:7.2f} img/s '
          f'(first call {first:.1f} s)', flush=True)
    return r

  for batch in batch_sizes:
    x = np.random.RandomState(0).uniform(-1, 1, (batch, 512, 512, 3)).astype(np.float32)
    torch_row = None
    if tm is not None:
      xt = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order='C'))

      def torch_fn():
        with torch.no_grad():
          tm(xt, return_rgb=False, weight=0.5)  # as GFPGANer calls it

      torch_row = row('official_pytorch', batch, _time(torch_fn, args.iters))
    for dtype in args.dtypes.split(','):
      module, _ = archs.build('restoreformer', dtype=jnp.dtype(dtype))
      fwd = xla_options.jit(lambda v, x, m=module: m.apply(v, x, return_rgb=False)[0])
      xj = jax.device_put(jnp.asarray(x))
      r = row(f'jax_{dtype}', batch, _time(lambda: fwd(variables, xj).block_until_ready(), args.iters))
      restore = xla_options.jit(inference.make_restore_fn(module))
      xu = jax.device_put(jnp.asarray(((x + 1) * 127.5).astype(np.uint8)))
      key = jax.random.key(0)
      ru = row(f'jax_{dtype}_uint8', batch,
               _time(lambda: restore(variables, xu, key).block_until_ready(), args.iters))
      if torch_row:
        for rr in (r, ru):
          rr['speedup_vs_pytorch'] = torch_row['latency_s'] / rr['latency_s']
          print(f'{"":>18} {rr["impl"]}: {rr["speedup_vs_pytorch"]:.2f}x the official PyTorch throughput')
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--json', type=pathlib.Path, help='also write the results to this JSON file')
  add_arguments(parser)
  args = parser.parse_args(argv)
  results = run(args)
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
