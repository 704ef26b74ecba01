"""Real-ESRGAN x2plus background upsampling, tiled: ours (JAX) beside the official `RealESRGANer.tile_process`.

Both sides run the released RealESRGAN_x2plus network, `RRDBNet(num_feat=64,
num_block=23, num_grow_ch=32, scale=2)`, with the same random weights on the
same float RGB photo (default 270x480; `--size 1080x1920` is a 1080p photo,
about 20 TFLOP, minutes per call on a few CPU cores), tiled as GFP-GAN's
inference tiles it (`tile=400, tile_pad=10, pre_pad=0`), on the same machine
and thread count. The official side is `RealESRGANer.pre_process ->
tile_process -> post_process` (float32, under `torch.no_grad()`); ours is
`gfpgan_jax.models.tiling.tiled_apply` with the network jitted by
`gfpgan_jax.xla_options` (same-shape tiles batched, up to `--max-batch`).
One warm-up call each (ours compiles one program per tile shape there; its
time is reported), then the median of `--iters` calls.

FLOPs: XLA's cost analysis of our compiled network on the largest tile
(counted on the unrolled trunk, `scan_blocks=False`: the analysis counts a
scanned block once), and for the whole photo that figure scaled by each
tile's area (all the work is convolutions, linear in the area). GFLOP/s is
the photo's FLOPs over the median time. The two outputs are compared, so both
provably compute the same.
"""

import contextlib
import io
import os
import pathlib
import statistics
import tempfile
import time

RELEASED = dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=64, num_block=23, num_grow_ch=32)


def add_arguments(p):
  p.add_argument('--size', default='270x480', help='photo size HxW (1080x1920: a 1080p photo)')
  p.add_argument('--iters', type=int, default=1, help='timed iterations per side (after 1 warm-up)')
  p.add_argument('--threads', type=int, default=os.cpu_count(), help='CPU threads for both frameworks')
  p.add_argument('--tile', type=int, default=400)
  p.add_argument('--tile-pad', type=int, default=10)
  p.add_argument('--pre-pad', type=int, default=0, help='GFP-GAN inference uses 0 (RealESRGANer default: 10)')
  p.add_argument('--max-batch', type=int, default=4, help='ours: same-shape tiles per call')
  p.add_argument('--dtype', default='float32', help='JAX compute dtype (float32 or bfloat16)')
  p.add_argument('--no-torch', action='store_true', help='skip the official RealESRGANer')


def _time(fn, iters):
  t = time.perf_counter()
  fn()  # warm-up (and compilation)
  warmup = time.perf_counter() - t
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), warmup


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
  from gfpgan_jax.models import tiling  # pylint: disable=g-import-not-at-top

  h, w = (int(v) for v in args.size.lower().split('x'))
  scale = RELEASED['scale']
  device = jax.devices()[0]
  results = {'device': f'{device.platform}: {device.device_kind}', 'threads': args.threads, 'size': [h, w],
             'tile': args.tile, 'tile_pad': args.tile_pad, 'pre_pad': args.pre_pad, 'max_batch': args.max_batch,
             'load_average': os.getloadavg(), 'rows': []}
  rs = np.random.RandomState(0)
  image = rs.uniform(0, 1, (h, w, 3)).astype(np.float32)

  # Tiles as tile_process cuts the padded image; the FLOPs of each are its area times the largest tile's.
  hp, wp = h + args.pre_pad, w + args.pre_pad
  hp, wp = hp + hp % 2, wp + wp % 2  # the mod-2 pad of scale 2
  boxes = tiling.tiles(hp, wp, args.tile, args.tile_pad) if args.tile else [tiling.Tile(0, hp, 0, wp, 0, hp, 0, wp)]
  shapes = sorted({b.padded_shape for b in boxes})
  largest = max(shapes, key=lambda s: s[0] * s[1])
  results.update(tiles=len(boxes), tile_shapes=[list(s) for s in shapes], largest_tile=list(largest))

  tm = upsampler = None
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import parity  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    o = official.load()
    tm = parity.randomize_torch_module(o.rrdbnet_arch.RRDBNet(**RELEASED).eval())
    with tempfile.TemporaryDirectory() as tmp:  # RealESRGANer loads its weights from a file
      path = pathlib.Path(tmp) / 'RealESRGAN_x2plus.pth'
      torch.save({'params_ema': tm.state_dict()}, path)
      upsampler = o.realesrgan_utils.RealESRGANer(scale, str(path), model=tm, tile=args.tile, tile_pad=args.tile_pad,
                                                  pre_pad=args.pre_pad, half=False, device=torch.device('cpu'))
    variables = convert.torch_to_flax(parity.state_dict_numpy(tm), 'rrdbnet', **RELEASED)
  else:
    variables = archs.init('rrdbnet', jax.random.key(0), **RELEASED)
  variables = jax.device_put(variables)
  module, _ = archs.build('rrdbnet', dtype=jnp.dtype(args.dtype), **RELEASED)

  # XLA's FLOPs of one (largest) tile, compiled with our options; unrolled, since the cost analysis counts the
  # body of the scanned trunk once (the two programs compute the same).
  unrolled, _ = archs.build('rrdbnet', dtype=jnp.dtype(args.dtype), scan_blocks=False, **RELEASED)
  t0 = time.perf_counter()
  compiled = xla_options.jit(unrolled.apply).lower(variables, jnp.zeros((1, *largest, 3), jnp.float32)).compile()
  results['compile_one_tile_unrolled_s'] = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  tile_flops = float(cost['flops']) if cost and 'flops' in cost else None
  image_flops = (sum(tile_flops * b.padded_shape[0] * b.padded_shape[1] / (largest[0] * largest[1]) for b in boxes)
                 if tile_flops else None)
  results.update(flops_per_largest_tile=tile_flops, flops_per_image=image_flops)
  print(f'{h}x{w} photo, {len(boxes)} tiles of {len(shapes)} shapes (largest {largest[0]}x{largest[1]}); '
        f'{(tile_flops or float("nan")) / 1e12:.2f} TFLOP per largest tile, '
        f'{(image_flops or float("nan")) / 1e12:.2f} TFLOP per photo', flush=True)

  def row(name, seconds, warmup, **extra):
    r = {'impl': name, 'latency_s': seconds, 'warmup_s': warmup,
         'gflops_per_s': image_flops / seconds / 1e9 if image_flops else None, **extra}
    results['rows'].append(r)
    print(f'{name:>18}: {seconds:9.2f} s/photo (warm-up {warmup:.1f} s), {r["gflops_per_s"] or float("nan"):7.1f} '
          'GFLOP/s', flush=True)
    return r

  out = {}
  torch_row = None
  if upsampler is not None:

    def torch_fn():
      with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # tile_process prints every tile
        upsampler.pre_process(image)
        if args.tile:
          upsampler.tile_process()
        else:
          upsampler.process()
        out['torch'] = upsampler.post_process()[0].permute(1, 2, 0).numpy()

    torch_row = row('official_pytorch', *_time(torch_fn, args.iters))

  fn = tiling.network_fn(module, variables)

  def jax_fn():
    out['jax'] = tiling.tiled_apply(fn, image[None], scale, args.tile, args.tile_pad, args.pre_pad,
                                    args.max_batch)[0]

  r = row(f'jax_{args.dtype}', *_time(jax_fn, args.iters))
  if torch_row:
    ref = out['torch'].astype(np.float64)
    r['speedup_vs_pytorch'] = torch_row['latency_s'] / r['latency_s']
    r['max_abs_diff_vs_pytorch'] = float(np.abs(out['jax'] - ref).max())
    r['rel_l2_vs_pytorch'] = float(np.linalg.norm(out['jax'] - ref) / np.linalg.norm(ref))
    print(f'{"":>18} {r["impl"]}: {r["speedup_vs_pytorch"]:.2f}x the official PyTorch throughput; max |diff| '
          f'{r["max_abs_diff_vs_pytorch"]:.1e}, rel L2 {r["rel_l2_vs_pytorch"]:.1e} from it', flush=True)
  return results
