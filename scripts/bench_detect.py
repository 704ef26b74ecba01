r"""RetinaFace face detection on a photo: latency of ours (JAX) beside the official facexlib network.

    python scripts/benchmark.py detect [--size 1080x1920] [--iters 3] [--threads N] [--backbone resnet50]

Both sides run facexlib's `RetinaFace` (default ResNet-50, the detector of
FaceRestoreHelper) with the same random weights on the same BGR image, batch
1, float32, with the same number of CPU cores (process affinity, which XLA's
thread pool follows, and `torch.set_num_threads`). Rows:

* `official_forward`: the official network forward (`torch.no_grad`).
* `official_detect_faces` (with `--official-detect`): the whole official
  `detect_faces` (preprocessing, forward, priors, decoding, threshold, sort,
  NMS on the host).
* `jax_forward`: our jitted forward (`gfpgan_jax.xla_options.jit`).
* `jax_detect`: our jitted uint8 image -> detections function
  (`retinaface_post.make_detector`: preprocessing, forward, decoding, top-k,
  NMS), on the device.
* `jax_post`: the post-processing alone, on the network outputs.

Times are medians of `--iters` calls after one warm-up (and compilation).
FLOPs are XLA's cost analysis of the compiled functions; GFLOP/s = FLOPs /
median time. The random network is rescaled to O(1) activations
(`gfpgan_jax.testing.cases.retinaface.condition`), so the scores are not
saturated, as with a trained detector.
"""

import functools
import os
import statistics
import time


def add_arguments(p):
  p.add_argument('--size', default='1080x1920', help='image size HxW')
  p.add_argument('--iters', type=int, default=3, help='timed iterations per measurement (after 1 warm-up)')
  p.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                 help='CPU cores (affinity) and torch threads for both frameworks')
  p.add_argument('--backbone', default='resnet50', choices=('resnet50', 'mobile0.25'))
  p.add_argument('--conf-threshold', type=float, default=0.97, help='score threshold (FaceRestoreHelper: 0.97)')
  p.add_argument('--nms-threshold', type=float, default=0.4)
  p.add_argument('--max-candidates', type=int, default=1000, help='pre-NMS top-k of ours')
  p.add_argument('--max-detections', type=int, default=100, help='output slots of ours')
  p.add_argument('--official-detect', action='store_true', help='also time the official detect_faces')
  p.add_argument('--no-torch', action='store_true', help='skip the official PyTorch model')


def _time(fn, iters):
  fn()  # warm-up (and compilation)
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _flops(fn, *args):
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  cost = jax.jit(fn).lower(*args).compile(compiler_options=xla_options.compiler_options()).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def run(args):
  cpus = sorted(os.sched_getaffinity(0))
  if args.threads < len(cpus):  # before JAX starts its thread pool
    os.sched_setaffinity(0, cpus[:args.threads])
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gfpgan_jax import convert  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.models import retinaface_post as post  # pylint: disable=g-import-not-at-top

  h, w = (int(v) for v in args.size.lower().split('x'))
  arch = 'retinaface_resnet50' if args.backbone == 'resnet50' else 'retinaface_mobilenet0.25'
  device = jax.devices()[0]
  results = {'device': f'{device.platform}: {device.device_kind}', 'threads': args.threads, 'size': [h, w],
             'backbone': args.backbone, 'rows': []}
  image = np.random.RandomState(0).randint(0, 256, (h, w, 3)).astype(np.uint8)  # BGR
  tm = None
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import parity  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing.cases import retinaface as cases  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tm = official.load().retinaface.RetinaFace(network_name=args.backbone, phase='test', device='cpu').eval()
    parity.randomize_torch_module(cases.condition(tm))
    variables = convert.torch_to_flax(parity.state_dict_numpy(tm), arch)
  else:
    variables = archs.init(arch, jax.random.key(0))
  variables = jax.device_put(variables)
  module, _ = archs.build(arch)

  def row(name, seconds, flops=None):
    r = {'impl': name, 'latency_s': seconds}
    msg = f'{name:>22}: {seconds * 1e3:9.1f} ms'
    if flops:
      r.update(flops=flops, gflops_per_s=flops / seconds / 1e9)
      msg += f'  ({flops / 1e9:.1f} GFLOP, {r["gflops_per_s"]:.1f} GFLOP/s)'
    results['rows'].append(r)
    print(msg, flush=True)
    return r

  torch_row = None
  if tm is not None:
    x_chw = (image.astype(np.float32) - np.float32(post.MEAN_BGR)).transpose(2, 0, 1)
    xt = torch.from_numpy(np.ascontiguousarray(x_chw))[None]

    def torch_fwd():
      with torch.no_grad():
        tm(xt)

    torch_row = row('official_forward', _time(torch_fwd, args.iters))
    if args.official_detect:

      def torch_detect():
        with torch.no_grad():
          tm.detect_faces(image, args.conf_threshold, args.nms_threshold, use_origin_size=True)

      row('official_detect_faces', _time(torch_detect, args.iters))

  x = jax.device_put(post.preprocess(image[None]))
  fwd = xla_options.jit(module.apply)
  r_fwd = row('jax_forward', _time(lambda: jax.block_until_ready(fwd(variables, x)), args.iters),
              _flops(module.apply, variables, x))
  opts = dict(conf_threshold=args.conf_threshold, nms_threshold=args.nms_threshold,
              max_candidates=args.max_candidates, max_detections=args.max_detections)
  detector = post.make_detector(module, (h, w), **opts)
  det = xla_options.jit(detector)
  xu = jax.device_put(image[None])
  r_det = row('jax_detect', _time(lambda: jax.block_until_ready(det(variables, xu)), args.iters),
              _flops(detector, variables, xu))
  outs = jax.block_until_ready(fwd(variables, x))
  post_fn = functools.partial(post.detect, image_size=(h, w), **opts)
  pj = xla_options.jit(post_fn)
  row('jax_post', _time(lambda: jax.block_until_ready(pj(*outs)), max(args.iters, 5)), _flops(post_fn, *outs))
  results['num_detections'] = int(det(variables, xu).count[0])
  print(f'{"":>22}  {results["num_detections"]} detection(s) at conf > {args.conf_threshold}')
  if torch_row:
    for rr in (r_fwd, r_det):
      rr['speedup_vs_pytorch'] = torch_row['latency_s'] / rr['latency_s']
      print(f'{"":>22}  {rr["impl"]}: {rr["speedup_vs_pytorch"]:.2f}x the official forward\'s speed')
  return results
