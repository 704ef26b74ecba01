r"""Whole-photo restoration: our pipeline (JAX) beside the official `GFPGANer.enhance` path.

    python scripts/benchmark.py photo [--size 1080x1920] [--faces 1,4,16] [--images 2] [--bg none|realesrgan|both]

Both sides restore the same composed photos (`gfpgan_jax.testing.composed`:
copies of scikit-image's astronaut at known similarity transforms) with the
same random weights: RetinaFace-ResNet50, GFPGANv1Clean 512 (v1.3/v1.4),
ParseNet (the paste mask, as `GFPGANer` always uses it) and, with `--bg
realesrgan`, Real-ESRGAN x2plus tiled 400/10/0. Upscale 2, float32, the same
cores for both (process affinity, which XLA's thread pool follows, and
`torch.set_num_threads`).

* official: `GFPGANer.enhance(img, paste_back=True)` step by step, on the
  official code (facexlib 0.3.0 `FaceRestoreHelper`, gfpgan 1.3.8's
  GFPGANv1Clean, realesrgan's `RealESRGANer`), one photo and one face at a
  time, under `torch.no_grad`. `basicsr.utils.tensor2img` is written out (its
  formula) because basicsr's `utils/__init__` imports what cannot run here.
* ours: `gfpgan_jax.faces.pipeline.PhotoPipeline` over the photos (faces of
  all photos restored together in batches of `--batch-size`).

Random detector weights find random faces, so both sides run the detector
for its cost and then take the true landmarks of the composed photo. Each
measurement restores `--images` photos; ours is warmed up (compiled) on them
first. Stage times: detect, align, restore (the generator), parse (ParseNet),
background, paste (the official paste includes its ParseNet calls; they are
timed separately as parse). FLOPs are XLA's cost analysis of our lowered
networks (detector, generator and parser per face; the background from one
tile's count scaled by area); GFLOP/s = FLOPs / wall time of ours.
"""

import collections
import contextlib
import io
import os
import pathlib
import tempfile
import time

GENERATOR = dict(out_size=512, channel_multiplier=2)
BACKGROUND = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=2)  # x2plus


def add_arguments(p):
  p.add_argument('--size', default='1080x1920', help='photo size HxW')
  p.add_argument('--faces', default='1,4,16', help='faces per photo, comma-separated')
  p.add_argument('--images', type=int, default=2, help='photos per measurement')
  p.add_argument('--bg', default='none', choices=('none', 'realesrgan', 'both'), help='background upsampler')
  p.add_argument('--iters', type=int, default=1, help='timed repetitions (median)')
  p.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                 help='CPU cores (affinity) and torch threads for both frameworks')
  p.add_argument('--batch-size', type=int, default=4, help='our faces per generator call')
  p.add_argument('--bg-tile', type=int, default=400)
  p.add_argument('--no-torch', action='store_true', help='skip the official code')


def _tensor2img(output):
  """basicsr.utils.tensor2img(output, rgb2bgr=True, min_max=(-1, 1)) for one [1, 3, H, W] tensor."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  img = output.squeeze(0).float().detach().cpu().clamp_(-1, 1)
  img = ((img + 1) / 2).numpy().transpose(1, 2, 0)[..., ::-1]
  return (img * 255.0).round().astype(np.uint8)


class _Timed:
  """Wraps a callable (a torch module) and adds its wall time to `times[stage]`."""

  def __init__(self, fn, times, stage):
    self.fn, self.times, self.stage = fn, times, stage

  def __call__(self, *a, **k):
    t = time.perf_counter()
    try:
      return self.fn(*a, **k)
    finally:
      self.times[self.stage] += time.perf_counter() - t


def _official_enhance(helper, gfpgan, upsampler, bgr, landmarks, times):
  """`GFPGANer.enhance(bgr, has_aligned=False, only_center_face=False, paste_back=True)` with known landmarks."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.testing import official_faces  # pylint: disable=g-import-not-at-top
  mod = official_faces.load()
  with torch.no_grad():
    helper.clean_all()
    helper.read_image(bgr)
    t = time.perf_counter()
    helper.get_face_landmarks_5(only_center_face=False, eye_dist_threshold=5)
    times['detect'] += time.perf_counter() - t
    helper.all_landmarks_5 = [np.asarray(lm, np.float32) for lm in landmarks]
    helper.det_faces = [np.zeros(5, np.float32) for _ in landmarks]
    t = time.perf_counter()
    helper.align_warp_face()
    times['align'] += time.perf_counter() - t
    for cropped_face in helper.cropped_faces:
      t = time.perf_counter()
      x = mod.img2tensor(cropped_face / 255., bgr2rgb=True, float32=True)
      mod.normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
      output = gfpgan(x.unsqueeze(0), return_rgb=False, weight=0.5)[0]
      helper.add_restored_face(_tensor2img(output))
      times['restore'] += time.perf_counter() - t
    bg = None
    if upsampler is not None:
      t = time.perf_counter()
      with contextlib.redirect_stdout(io.StringIO()):  # tile_process prints every tile
        bg = upsampler.enhance(bgr, outscale=2)[0]
      times['background'] += time.perf_counter() - t
    t = time.perf_counter()
    parse_before = times['parse']
    helper.get_inverse_affine(None)
    out = helper.paste_faces_to_input_image(upsample_img=bg)
    times['paste'] += time.perf_counter() - t - (times['parse'] - parse_before)
  return out


class _KnownFaces:
  """A detector stand-in: runs our RetinaFace on the images (its cost), then returns the true faces, in order."""

  def __init__(self, detector, landmarks):
    self.detector, self.landmarks = detector, collections.deque(landmarks)

  def __call__(self, images):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.faces import detect  # pylint: disable=g-import-not-at-top
    self.detector(images)
    out = []
    for _ in images:
      lm = np.asarray(self.landmarks.popleft(), np.float32)
      boxes = np.concatenate([lm.min(axis=1), lm.max(axis=1)], axis=1)
      out.append(detect.FaceSet(boxes, np.ones(len(lm)), lm))
    return out


def _lowered_flops(fn, *args):
  import jax  # pylint: disable=g-import-not-at-top
  try:
    cost = jax.jit(fn).lower(*args).cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def _build(args, use_bg):
  """(torch nets or None, our (module, variables) per network)."""
  import jax  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import convert  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.testing.cases import retinaface as rcase  # pylint: disable=g-import-not-at-top
  specs = {'generator': ('gfpganv1clean', GENERATOR), 'detector': ('retinaface_resnet50', {}),
           'parser': ('parsenet', {})}
  if use_bg:
    specs['background'] = ('rrdbnet', BACKGROUND)
  torch_nets, ours = {}, {}
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import parity  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    o = official.load()
    torch_nets['generator'] = o.gfpganv1_clean_arch.GFPGANv1Clean(
        512, channel_multiplier=2, input_is_latent=True, different_w=True, sft_half=True).eval()
    torch_nets['detector'] = rcase.condition(
        o.retinaface.RetinaFace(network_name='resnet50', phase='test', device='cpu').eval())
    torch_nets['parser'] = o.parsenet.ParseNet(512, 512, parsing_ch=19).eval()
    if use_bg:
      torch_nets['background'] = o.rrdbnet_arch.RRDBNet(**specs['background'][1]).eval()
    for name, net in torch_nets.items():
      parity.randomize_torch_module(net, 0)
      arch, kw = specs[name]
      ours[name] = (archs.build(arch, **kw)[0], convert.torch_to_flax(parity.state_dict_numpy(net), arch, **kw))
  else:
    for name, (arch, kw) in specs.items():
      ours[name] = (archs.build(arch, **kw)[0], archs.init(arch, jax.random.key(0), **kw))
  return torch_nets, ours


def _flops(ours, h, w, bg_tile):
  """XLA's FLOPs of one detection (an h x w photo), one face (generator + parser) and one background."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.models import tiling  # pylint: disable=g-import-not-at-top
  out = {}
  m, v = ours['detector']
  out['detect'] = _lowered_flops(m.apply, v, jnp.zeros((1, h, w, 3), jnp.float32))
  m, v = ours['generator']
  g = _lowered_flops(lambda v, x: m.apply(v, x, return_rgb=False, randomize_noise=False), v,
                     jnp.zeros((1, 512, 512, 3), jnp.float32))
  m, v = ours['parser']
  p = _lowered_flops(m.apply, v, jnp.zeros((1, 512, 512, 3), jnp.float32))
  out['face'] = g + p if g and p else None
  if 'background' in ours:
    from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top
    # Unrolled: the cost analysis counts the body of the scanned trunk once (the two compute the same).
    m, v = archs.build('rrdbnet', scan_blocks=False, **BACKGROUND)[0], ours['background'][1]
    boxes = tiling.tiles(h + h % 2, w + w % 2, bg_tile, 10)
    largest = max({b.padded_shape for b in boxes}, key=lambda s: s[0] * s[1])
    t = _lowered_flops(m.apply, v, jnp.zeros((1, *largest, 3), jnp.float32))
    out['background'] = (sum(t * b.padded_shape[0] * b.padded_shape[1] / (largest[0] * largest[1]) for b in boxes)
                         if t else None)
  return out


def run(args):
  cpus = sorted(os.sched_getaffinity(0))
  if args.threads < len(cpus):  # before JAX starts its thread pool
    os.sched_setaffinity(0, cpus[:args.threads])
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gfpgan_jax.faces import batching  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.faces import detect  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.faces import inputs  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.faces import pipeline  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.faces import timing  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.testing import composed  # pylint: disable=g-import-not-at-top

  h, w = (int(v) for v in args.size.lower().split('x'))
  face_counts = [int(n) for n in args.faces.split(',')]
  bgs = {'none': [False], 'realesrgan': [True], 'both': [False, True]}[args.bg]
  torch_nets, ours = _build(args, any(bgs))
  device = jax.devices()[0]
  flops = _flops(ours, h, w, args.bg_tile)
  results = {'device': f'{device.platform}: {device.device_kind}', 'threads': args.threads, 'size': [h, w],
             'images': args.images, 'batch_size': args.batch_size, 'flops': flops, 'rows': []}
  print(f'{h}x{w} photos, {args.images} per measurement, {args.threads} threads; XLA FLOPs: detect '
        f'{(flops["detect"] or 0) / 1e9:.0f} G, per face (generator + parser) {(flops["face"] or 0) / 1e9:.0f} G'
        + (f', background {(flops.get("background") or 0) / 1e12:.1f} T' if 'background' in flops else ''),
        flush=True)

  helper = gfpgan = None
  upsampler = None
  tmp = tempfile.TemporaryDirectory()
  if torch_nets:
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official_faces  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    helper = official_faces.make_helper(2, use_parse=True)
    helper.face_det = torch_nets['detector']
    gfpgan = torch_nets['generator']
    if 'background' in torch_nets:
      path = pathlib.Path(tmp.name) / 'RealESRGAN_x2plus.pth'
      torch.save({'params_ema': torch_nets['background'].state_dict()}, path)
      upsampler = official.load().realesrgan_utils.RealESRGANer(
          2, str(path), model=torch_nets['background'], tile=args.bg_tile, tile_pad=10, pre_pad=0, half=False,
          device=torch.device('cpu'))

  batcher = batching.FaceBatcher(ours['generator'], batch_size=args.batch_size, mesh=batching.local_mesh(),
                                 randomize_noise=True, parser=ours['parser'])
  detector = detect.RetinaFaceDetector(*ours['detector'], batch_size=1)
  background = (pipeline.Background(*ours['background'], upscale=2, tile=args.bg_tile)
                if 'background' in ours else None)

  for use_bg in bgs:
    for n in face_counts:
      photos = [composed.group_photo(n, size=(h, w), seed=i) for i in range(args.images)]
      key = f'{n} face(s), background {"realesrgan" if use_bg else "LANCZOS4"}'
      total_faces = n * args.images

      def ours_once(timers):
        pipe = pipeline.PhotoPipeline(batcher, detector=_KnownFaces(detector, [p.landmarks for p in photos]),
                                      upscale=2, background=background if use_bg else None, timers=timers)
        items = [inputs.Item(inputs.Source(f'p{i}', 'png', None, 'image', p.image, f'p{i}.png'), p.image, i)
                 for i, p in enumerate(photos)]
        t = time.perf_counter()
        for r in pipe.run(items):
          assert r.image is not None and len(r.restored) == n, r.error
        return time.perf_counter() - t

      t0 = time.perf_counter()
      ours_once(timing.Timers())  # compiles
      warm = time.perf_counter() - t0
      runs = []
      for _ in range(args.iters):
        timers = timing.Timers()
        runs.append((ours_once(timers), timers.summary()))
      wall, stages = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
      per_image_flops = ((flops['detect'] or 0) + n * (flops['face'] or 0)
                         + (flops.get('background') or 0 if use_bg else 0))
      row = {'impl': 'jax', 'faces': n, 'background': use_bg, 'seconds': wall, 'warmup_s': warm,
             'images_per_s': args.images / wall, 'faces_per_s': total_faces / wall,
             'stages_s_per_image': {k: v / args.images for k, v in stages.items()},
             'gflops_per_s': per_image_flops * args.images / wall / 1e9}
      results['rows'].append(row)
      _print(key, row)

      if helper is not None:
        times_list = []
        for _ in range(args.iters):
          times = collections.defaultdict(float)
          helper.face_parse = _Timed(torch_nets['parser'], times, 'parse')
          t = time.perf_counter()
          for p in photos:
            _official_enhance(helper, gfpgan, upsampler if use_bg else None, np.ascontiguousarray(p.image[..., ::-1]),
                              p.landmarks, times)
          times_list.append((time.perf_counter() - t, dict(times)))
        owall, otimes = sorted(times_list, key=lambda r: r[0])[len(times_list) // 2]
        orow = {'impl': 'official', 'faces': n, 'background': use_bg, 'seconds': owall,
                'images_per_s': args.images / owall, 'faces_per_s': total_faces / owall,
                'stages_s_per_image': {k: v / args.images for k, v in otimes.items()}}
        results['rows'].append(orow)
        _print(key, orow)
        row['speedup_vs_official'] = owall / wall
        print(f'{"":>10}ours: {row["speedup_vs_official"]:.2f}x the official throughput', flush=True)
  tmp.cleanup()
  return results


def _print(key, row):
  stages = ', '.join(f'{k} {v:.2f}' for k, v in sorted(row['stages_s_per_image'].items(), key=lambda kv: -kv[1]))
  extra = f', {row["gflops_per_s"]:.0f} GFLOP/s, warm-up {row["warmup_s"]:.0f} s' if row['impl'] == 'jax' else ''
  print(f'{key}: {row["impl"]:>8}: {row["images_per_s"]:.3f} images/s, {row["faces_per_s"]:.2f} faces/s{extra}; '
        f's/image: {stages}', flush=True)
