"""ParseNet 512 face parsing (the paste-back mask network): latency, ours (JAX) beside the official PyTorch module.

Both run facexlib's released configuration, `ParseNet(in_size=512,
out_size=512, parsing_ch=19)`, with the same random weights (BN statistics
included) on the same input batch, machine and thread count: the official
module in eval mode under `torch.no_grad()`, ours as `gfpgan_jax.xla_options.jit`
compiles it. One warm-up call each (ours: compiled ahead of time, the compile
time is reported apart), then the median of `--iters` calls. The FLOPs are XLA's
cost analysis of our compiled forward; GFLOP/s is that over the median time.
The outputs of both are compared (relative L2), so the two sides provably
compute the same thing.
"""

import os
import statistics
import time


def add_arguments(p):
  p.add_argument('--batch', type=int, default=8, help='faces per call')
  p.add_argument('--iters', type=int, default=3, help='timed iterations per measurement (after 1 warm-up)')
  p.add_argument('--threads', type=int, default=os.cpu_count(), help='CPU threads for both frameworks')
  p.add_argument('--dtypes', default='float32', help='JAX compute dtypes, e.g. float32,bfloat16')
  p.add_argument('--no-torch', action='store_true', help='skip the official PyTorch module')


def _time(fn, iters):
  fn()  # warm-up
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def run(args):
  if args.threads != os.cpu_count():  # only effective before JAX initialises its CPU backend
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gfpgan_jax import convert  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  results = {'device': f'{device.platform}: {device.device_kind}', 'threads': args.threads, 'batch': args.batch,
             'load_average': os.getloadavg(), 'rows': []}
  x = np.random.RandomState(0).uniform(-1, 1, (args.batch, 512, 512, 3)).astype(np.float32)
  reference = None
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import parity  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tm = official.load().parsenet.ParseNet(in_size=512, out_size=512, parsing_ch=19).eval()
    parity.randomize_torch_module(tm)
    variables = convert.torch_to_flax(parity.state_dict_numpy(tm), 'parsenet')
  else:
    variables = archs.init('parsenet', jax.random.key(0))
  variables = jax.device_put(variables)

  def row(name, seconds, **extra):
    r = {'impl': name, 'batch': args.batch, 'latency_s': seconds, 'images_per_s': args.batch / seconds, **extra}
    results['rows'].append(r)
    print(f'{name:>18} batch {args.batch}: {seconds * 1e3:9.1f} ms/batch, {args.batch / seconds:7.2f} img/s',
          flush=True)
    return r

  torch_row = None
  if not args.no_torch:
    xt = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order='C'))
    out = {}

    def torch_fn():
      with torch.no_grad():
        out['mask'] = tm(xt)[0]

    torch_row = row('official_pytorch', _time(torch_fn, args.iters))
    reference = out['mask'].numpy().transpose(0, 2, 3, 1)

  xj = jax.device_put(jnp.asarray(x))
  for dtype in args.dtypes.split(','):
    module, _ = archs.build('parsenet', dtype=jnp.dtype(dtype))
    t0 = time.perf_counter()
    fwd = xla_options.jit(module.apply).lower(variables, xj).compile()  # gfpgan_jax's compiler options
    compile_s = time.perf_counter() - t0
    cost = fwd.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost['flops']) if cost and 'flops' in cost else None
    seconds = _time(lambda: jax.block_until_ready(fwd(variables, xj)), args.iters)
    extra = {'compile_s': compile_s, 'flops': flops, 'gflops_per_s': flops / seconds / 1e9 if flops else None}
    if reference is not None:
      mask = np.asarray(fwd(variables, xj)[0], np.float64)
      extra['parsing_rel_l2_vs_pytorch'] = float(np.linalg.norm(mask - reference) / np.linalg.norm(reference))
    r = row(f'jax_{dtype}', seconds, **extra)
    print(f'{"":>18} compile {compile_s:.1f} s; {flops / 1e9 if flops else float("nan"):.1f} GFLOP per call, '
          f'{r["gflops_per_s"] or float("nan"):.1f} GFLOP/s', flush=True)
    if torch_row:
      r['speedup_vs_pytorch'] = torch_row['latency_s'] / seconds
      torch_row.setdefault('gflops_per_s', flops / torch_row['latency_s'] / 1e9 if flops else None)
      print(f'{"":>18} {r["impl"]}: {r["speedup_vs_pytorch"]:.2f}x the official PyTorch throughput; parsing rel L2 '
            f'{r["parsing_rel_l2_vs_pytorch"]:.1e} from it', flush=True)
  return results
