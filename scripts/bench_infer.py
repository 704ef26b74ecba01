"""GFPGANv1Clean 512 inference: latency and images/s, ours (JAX) beside the official PyTorch model.

Both run the released v1.3/v1.4 architecture with the same random weights on
the same machine and thread count; the official model runs as `GFPGANer` runs
it (`randomize_noise=True`, grouped convolutions, float32). Ours runs the
jitted forward with fresh noise, and (row `jax_uint8`) the complete
uint8 -> uint8 restore function of `gfpgan_jax.inference`.

On a GPU machine (no PyTorch comparison there unless torch sees the GPU),
`--dtypes float32,bfloat16` reports both precisions, and `--torch-dtypes
float32,float16` the official model in float32 and under fp16 autocast
(`torch.autocast('cuda', torch.float16)`). `--size` shrinks the architecture
for a quick check of the script (not a benchmark figure).
"""

import os
import statistics
import time


def add_arguments(p):
  p.add_argument('--batch-sizes', default='1,8', help='comma-separated batch sizes')
  p.add_argument('--iters', type=int, default=3, help='timed iterations per measurement (after 1 warm-up)')
  p.add_argument('--threads', type=int, default=os.cpu_count(), help='CPU threads for both frameworks')
  p.add_argument('--dtypes', default='float32', help='JAX compute dtypes, e.g. float32,bfloat16')
  p.add_argument('--no-torch', action='store_true', help='skip the official PyTorch model')
  p.add_argument('--torch-dtypes', default='float32',
                 help="official model precisions: float32 and/or float16 (fp16 autocast, on a GPU)")
  p.add_argument('--torch-device', default='auto', help="'auto' (cuda when torch sees a GPU), 'cpu' or 'cuda'")
  p.add_argument('--no-uint8', action='store_true', help='skip the uint8 -> uint8 restore rows (half the compiles)')
  p.add_argument('--size', type=int, default=512, help='GFPGANv1Clean out_size (512 = the released model)')


def _time(fn, iters):
  fn()  # warm-up (and compilation)
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
  from gfpgan_jax import inference  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top

  batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  device = jax.devices()[0]
  results = {'device': f'{device.platform}: {device.device_kind}', 'threads': args.threads, 'rows': []}
  tm = None
  arch_kwargs = {} if args.size == 512 else {'out_size': args.size}
  torch_device = 'cpu'
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import parity  # pylint: disable=g-import-not-at-top
    torch_device = args.torch_device if args.torch_device != 'auto' else (
        'cuda' if torch.cuda.is_available() else 'cpu')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tm = official.load().gfpganv1_clean_arch.GFPGANv1Clean(
        args.size, channel_multiplier=2, input_is_latent=True, different_w=True, sft_half=True).eval()
    variables = convert.torch_to_flax(parity.state_dict_numpy(tm), 'gfpganv1clean', **arch_kwargs)
    tm = tm.to(torch_device)
    results['torch_device'] = torch_device
  else:
    variables = archs.init('gfpganv1clean', jax.random.key(0), **arch_kwargs)
  variables = jax.device_put(variables)

  def row(name, batch, seconds):
    r = {'impl': name, 'batch': batch, 'latency_s': seconds, 'images_per_s': batch / seconds}
    results['rows'].append(r)
    print(f'{name:>22} batch {batch}: {seconds * 1e3:9.1f} ms/batch, {batch / seconds:7.2f} img/s', flush=True)
    return r

  for batch in batch_sizes:
    x = np.random.RandomState(0).uniform(-1, 1, (batch, args.size, args.size, 3)).astype(np.float32)
    torch_row = None
    if tm is not None:
      xt = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order='C')).to(torch_device)
      sync = torch.cuda.synchronize if torch_device == 'cuda' else (lambda: None)
      for tdtype in args.torch_dtypes.split(','):
        if tdtype not in ('float32', 'float16'):
          raise ValueError(f'--torch-dtypes: {tdtype!r} is not float32 or float16')
        amp = tdtype == 'float16'

        def torch_fn(amp=amp):
          with torch.no_grad(), torch.autocast(torch_device, torch.float16, enabled=amp):
            tm(xt, return_rgb=False, randomize_noise=True)
          sync()

        r = row('official_pytorch' + ('_fp16' if amp else ''), batch, _time(torch_fn, args.iters))
        torch_row = torch_row or r  # the float32 row (or the only one) is the reference of the speed-ups
        if amp:
          results.setdefault('torch_fp16', {})[batch] = r['latency_s']
    for dtype in args.dtypes.split(','):
      module, _ = archs.build('gfpganv1clean', dtype=jnp.dtype(dtype), **arch_kwargs)
      fwd = xla_options.jit(lambda v, x, k, m=module: m.apply(v, x, return_rgb=False, rngs={'noise': k})[0])
      xj = jax.device_put(jnp.asarray(x))
      key = jax.random.key(0)
      r = row(f'jax_{dtype}', batch, _time(lambda: fwd(variables, xj, key).block_until_ready(), args.iters))
      rows = [r]
      if not args.no_uint8:
        restore = xla_options.jit(inference.make_restore_fn(module))
        xu = jax.device_put(jnp.asarray(((x + 1) * 127.5).astype(np.uint8)))
        rows.append(row(f'jax_{dtype}_uint8', batch,
                        _time(lambda: restore(variables, xu, key).block_until_ready(), args.iters)))
      if torch_row:
        for rr in rows:
          rr['speedup_vs_pytorch'] = torch_row['latency_s'] / rr['latency_s']
          print(f'{"":>18} {rr["impl"]}: {rr["speedup_vs_pytorch"]:.2f}x the official PyTorch throughput')
          if batch in results.get('torch_fp16', {}):
            rr['speedup_vs_pytorch_fp16'] = results['torch_fp16'][batch] / rr['latency_s']
            print(f'{"":>18} {rr["impl"]}: {rr["speedup_vs_pytorch_fp16"]:.2f}x the official fp16 autocast')
  return results
