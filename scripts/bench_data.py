r"""Degradation throughput: jitted on-device `degrade` vs the official OpenCV pipeline, in pairs/s.

    python scripts/benchmark.py data [--resolution 512] [--batch-size 8] [--iters 5]

Times `gfpgan_jax.data.degradations.degrade` (configs/ffhq.py defaults, one
jitted call per batch, on JAX's default device) and the OpenCV/numpy/torch
reference of the official `FFHQDegradationDataset` LQ branch
(`gfpgan_jax.testing.cv2_degradations.degrade_official`, one image at a time,
single-threaded like one official data-loader worker) on the same HQ face, and
reports both rates and their ratio. It also times the two blur formulations
(`--blur-methods`) on their own.

The host input pipeline (decode + flip + batch) is measured by
`scripts/bench_host.py`; `run(args, host_rate=...)` takes its rate function as
an extension point and then also reports the end-to-end bound.
"""

import argparse
from collections.abc import Callable
import json
import pathlib
import random
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--resolution', type=int, default=512, help='HQ image side')
  parser.add_argument('--batch-size', type=int, default=8, help='images per jitted degrade call')
  parser.add_argument('--iters', type=int, default=5, help='timed jitted batches')
  parser.add_argument('--warmup', type=int, default=1, help='untimed batches after compilation')
  parser.add_argument('--ref-images', type=int, default=16, help='images timed through the OpenCV reference')
  parser.add_argument('--blur-methods', default='fft,conv', help="blur formulations to time alone ('' = none)")
  parser.add_argument('--blur-iters', type=int, default=2, help='timed batches per blur method')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--host-workers', default='0,2',
                      help="grain worker counts for the host pipeline rate (scripts/bench_host.py); '' = skip")


def _config():
  sys.path.insert(0, str(_ROOT))
  from configs import ffhq  # pylint: disable=g-import-not-at-top
  return ffhq.get_config().data.degradation


def _face(resolution: int):
  """A natural HQ image (skimage's astronaut), float32 RGB [res, res, 3] in [0, 1]."""
  import cv2  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  img = cv2.resize(skimage.data.astronaut(), (resolution, resolution), interpolation=cv2.INTER_AREA)
  return img.astype(np.float32) / 255.0


def jax_rate(args, cfg, face) -> dict:
  """Pairs/s of the jitted `degrade` on JAX's default device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.data import degradations  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top

  images = jax.device_put(jnp.broadcast_to(jnp.asarray(face), (args.batch_size,) + face.shape))
  fn = xla_options.jit(lambda k, x: degradations.degrade(k, x, cfg))
  key = jax.random.key(args.seed)
  t0 = time.perf_counter()
  fn(key, images).block_until_ready()
  compile_s = time.perf_counter() - t0
  for i in range(args.warmup):
    fn(jax.random.fold_in(key, i + 1), images).block_until_ready()
  t0 = time.perf_counter()
  for i in range(args.iters):
    out = fn(jax.random.fold_in(key, 1000 + i), images)
  out.block_until_ready()
  elapsed = time.perf_counter() - t0
  device = jax.devices()[0]
  return {
      'device': f'{device.platform}:{device.device_kind}',
      'batch_size': args.batch_size,
      'iters': args.iters,
      'compile_s': round(compile_s, 2),
      'ms_per_batch': round(1000 * elapsed / args.iters, 2),
      'pairs_per_s': args.batch_size * args.iters / elapsed,
  }


def blur_rates(args, face) -> dict:
  """ms per batch of the blur alone, for each formulation in `--blur-methods`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.data import kernels  # pylint: disable=g-import-not-at-top

  n = args.batch_size
  images = jnp.broadcast_to(jnp.asarray(face), (n,) + face.shape)
  ks = jax.random.split(jax.random.key(args.seed), 3)
  k = kernels.gaussian_kernels(jax.random.uniform(ks[0], (n,), minval=0.1, maxval=10),
                               jax.random.uniform(ks[1], (n,), minval=0.1, maxval=10),
                               jax.random.uniform(ks[2], (n,), minval=-3.14, maxval=3.14), 41)
  out = {}
  for method in [m for m in args.blur_methods.split(',') if m]:
    kernels.blur(images, k, method=method).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(args.blur_iters):
      y = kernels.blur(images, k, method=method)
    y.block_until_ready()
    out[method] = round(1000 * (time.perf_counter() - t0) / args.blur_iters, 2)
  return out


def opencv_rate(args, cfg, face) -> dict:
  """Pairs/s of the official pipeline in OpenCV/numpy/torch, one image at a time, one thread."""
  import cv2  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.testing import cv2_degradations  # pylint: disable=g-import-not-at-top

  threads = cv2.getNumThreads(), torch.get_num_threads()
  cv2.setNumThreads(1)
  torch.set_num_threads(1)
  try:
    rng = np.random.default_rng(args.seed)
    py_rng = random.Random(args.seed)
    cv2_degradations.degrade_official(face, cfg, rng, py_rng)  # loads torchvision's ops
    t0 = time.perf_counter()
    for _ in range(args.ref_images):
      cv2_degradations.degrade_official(face, cfg, rng, py_rng)
    elapsed = time.perf_counter() - t0
  finally:
    cv2.setNumThreads(threads[0])
    torch.set_num_threads(threads[1])
  return {
      'images': args.ref_images,
      'ms_per_image': round(1000 * elapsed / args.ref_images, 2),
      'pairs_per_s': args.ref_images / elapsed,
  }


def run(args, host_rate: Callable[[argparse.Namespace], dict] | None = None) -> dict:
  """Runs the benchmark; returns a JSON-able dict.

  Args:
    args: parsed `add_arguments` options.
    host_rate: extension point for the host input pipeline (decode + flip +
      batch): a function of `args` returning a dict with an `images_per_s`
      entry, or with a list of such dicts under 'runs' (the best is used), as
      `scripts/bench_host.py`'s `host_rate` does. When given, its result is
      reported under 'host' and the end-to-end rate bound
      min(host, device degradations) under 'pipeline_bound_pairs_per_s'.
  """
  if host_rate is None and getattr(args, 'host_workers', ''):
    sys.path.insert(0, str(_ROOT / 'scripts'))
    import bench_host  # pylint: disable=g-import-not-at-top
    host_rate = lambda a: bench_host.host_rate(argparse.Namespace(workers=a.host_workers, resolution=a.resolution))
  cfg = _config()
  face = _face(args.resolution)
  results = {'resolution': args.resolution, 'jax': jax_rate(args, cfg, face)}
  results['jax_blur_ms_per_batch'] = blur_rates(args, face)
  results['opencv'] = opencv_rate(args, cfg, face)
  results['ratio_jax_over_opencv'] = results['jax']['pairs_per_s'] / results['opencv']['pairs_per_s']
  if host_rate is not None:
    host = results['host'] = host_rate(args)
    host_ips = host['images_per_s'] if 'images_per_s' in host else max(r['images_per_s'] for r in host['runs'])
    results['host_images_per_s'] = host_ips
    results['pipeline_bound_pairs_per_s'] = min(host_ips, results['jax']['pairs_per_s'])

  j, o = results['jax'], results['opencv']
  print(f"degradations at {args.resolution}px (configs/ffhq.py defaults):")
  print(f"  JAX degrade on {j['device']}: {j['pairs_per_s']:.1f} pairs/s "
        f"(batch {j['batch_size']}, {j['ms_per_batch']} ms/batch, compile {j['compile_s']} s)")
  print(f"  OpenCV reference, 1 thread: {o['pairs_per_s']:.1f} pairs/s ({o['ms_per_image']} ms/image)")
  print(f"  ratio JAX / OpenCV: {results['ratio_jax_over_opencv']:.2f}")
  for method, ms in results['jax_blur_ms_per_batch'].items():
    print(f"  blur alone, {method}: {ms} ms/batch of {args.batch_size}")
  if host_rate is not None:
    print(f"  host pipeline: {results['host_images_per_s']:.1f} images/s; "
          f"bound {results['pipeline_bound_pairs_per_s']:.1f} pairs/s")
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
