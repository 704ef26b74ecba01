r"""Full GFP-GAN training step: images/s of ours (jitted JAX) beside the official PyTorch step.

    python scripts/benchmark.py train [--config demo] [--resolution 64] [--batch 4] [--iters 5]
    python scripts/benchmark.py train --breakdown        # also time steps with parts of the loss off
    python scripts/benchmark.py train --set loss.style_weight=0 --set model.use_identity=False

Both sides run one complete iteration of `GFPGANModel.optimize_parameters`
(gfpgan.md 3.4) with the same config (`configs/ffhq.py`, default variant
`demo`: 64 px, batch 4, a narrow G/D, full-size component Ds, ArcFace and
VGG19), the same random weights (the official initialisation, converted to
our variables) and the same GT batch with component boxes:

* ours: `gfpgan_jax.steps.train_step` jitted with the state donated, the plain
  and the R1 variant, timed after compilation and a warm-up call. It includes
  the degradations (on the device).
* official: the `GFPGANModel` methods compiled from the official sources with
  the official networks and loss modules
  (`gfpgan_jax.testing.torch_train_step`), on the same thread count. The
  official degradations run per image in the data loader (OpenCV), so they are
  timed separately (`gfpgan_jax.testing.cv2_degradations`, one thread, like
  one loader worker) and reported both without and with the step.

Every iteration with R1 (1 in `loss.d_reg_every` = 16) is slower, so
images/s use the 1:16 weighted mean of the two step times. Each framework runs
in its own subprocess: on the CPU the peak memory is that process's RSS
high-water mark (`ru_maxrss`, including compilation for ours); on a GPU,
`memory_stats()['peak_bytes_in_use']` (ours) and
`torch.cuda.max_memory_allocated()` (official). FLOPs per step come from
XLA's cost analysis of the compiled step (and, for the plain official step,
from `torch.utils.flop_counter`, which counts convolutions and matmuls only).

On a GPU the default is the full recipe at 512 px in float32 and bfloat16, with
the model-FLOPs utilisation (cost-analysis FLOPs / (time x peak FLOP/s); the
peak from a table by device kind or `--peak-tflops`). The official step runs
there only if the installed torch sees a GPU.

The machine's load average is recorded: with other processes on the cores,
PyTorch's OpenMP threads degrade much more than XLA's pool (try `--threads 1`).
"""

import argparse
import ast
import functools
import importlib.util
import json
import os
import pathlib
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPONENTS = ('left_eye', 'right_eye', 'mouth')
# FFHQ 512 alignment template (facexlib), rows COMPONENTS, columns x, y, half length (as gfpgan_jax/data/demo.py).
_TEMPLATE_512 = ((193.0, 240.0, 20.0), (319.0, 240.0, 20.0), (257.0, 371.0, 48.0))
# Dense peak FLOP/s (SXM parts) by device-kind substring: (bfloat16 tensor cores, float32 without TF32).
PEAK_FLOPS = {'H200': (989e12, 67e12), 'H100': (989e12, 67e12), 'A100': (312e12, 19.5e12)}
# --breakdown: config overrides that switch parts of the iteration off (plain steps only).
BREAKDOWN = {
    'no_perceptual_style': ('loss.perceptual_weight=0', 'loss.style_weight=0'),
    'no_identity': ('model.use_identity=False',),
    'no_components': ('model.use_components=False',),
    'core_only': ('loss.perceptual_weight=0', 'loss.style_weight=0', 'model.use_identity=False',
                  'model.use_components=False'),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', default=None,
                 help="configs/ffhq.py variant ('' = the full recipe); default demo on CPU, full on GPU")
  p.add_argument('--resolution', type=int, default=None, help="image side (default: the variant's)")
  p.add_argument('--batch', type=int, default=None, help="batch size (default: the variant's)")
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for both sides, e.g. loss.style_weight=0 (repeatable)')
  p.add_argument('--rounds', type=int, default=3,
                 help='measurement rounds; on a CPU both sides take turns in every round')
  p.add_argument('--iters', type=int, default=2, help='timed plain steps per implementation and round')
  p.add_argument('--r1-iters', type=int, default=1, help='timed R1 steps per implementation and round')
  p.add_argument('--warmup', type=int, default=1, help='untimed steps per variant (after compilation)')
  p.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                 help='CPU cores (affinity) and torch threads for both sides')
  p.add_argument('--dtypes', default=None, help='JAX compute dtypes (default float32; float32,bfloat16 on GPU)')
  p.add_argument('--deg-images', type=int, default=16, help='images timed through the official degradations')
  p.add_argument('--breakdown', action='store_true',
                 help=f'also time plain steps of both sides with parts off: {", ".join(BREAKDOWN)}')
  p.add_argument('--peak-tflops', type=float, default=None, help='peak TFLOP/s for the MFU (default: by device)')
  p.add_argument('--no-torch', action='store_true', help='skip the official PyTorch step')
  p.add_argument('--no-torch-flops', action='store_true', help='skip counting the official FLOPs')
  p.add_argument('--seed', type=int, default=0)


# ------------------------------------------------------------------------------ shared by both workers


def load_config(variant: str | None, resolution: int | None = None, batch: int | None = None,
                overrides=(), dtype: str | None = None):
  """configs/ffhq.py (`variant`, '' or None = the full recipe) with the benchmark's changes.

  Args:
    variant: a `VARIANTS` name or ''/None.
    resolution: new image side; G's out_size follows and the component crop
      sizes scale with it.
    batch: new batch size.
    overrides: 'dotted.key=value' strings (values parsed as Python literals).
    dtype: compute dtype ('float32' | 'bfloat16').
  """
  spec = importlib.util.spec_from_file_location('ffhq_config', _ROOT / 'configs' / 'ffhq.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  if resolution:
    ratio = resolution / config.data.resolution
    config.data.resolution = resolution
    config.model.generator_kwargs.out_size = resolution
    config.loss.eye_size = max(1, round(config.loss.eye_size * ratio))
    config.loss.mouth_size = max(1, round(config.loss.mouth_size * ratio))
  if batch:
    config.data.batch_size = batch
  if dtype:
    config.dtype = dtype
  for item in overrides:
    key, _, text = item.partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = config
    *path, last = key.split('.')
    for name in path:
      node = node[name]
    if last not in node:
      raise KeyError(f'--set {item}: no config field {key!r}')
    node[last] = value
  return config


def make_batch(config, seed: int):
  """The GT batch both sides train on: uint8 NHWC faces and float32 [B, 4] component boxes.

  The face is scikit-image's astronaut portrait (as the demo dataset), every
  other sample flipped with its boxes mirrored (official flip), with tints so
  the samples differ; boxes from the FFHQ template (official
  `get_component_coordinates`, eyes enlarged by `data.eye_enlarge_ratio`).
  """
  import cv2  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.data import landmarks  # pylint: disable=g-import-not-at-top

  res, n = int(config.data.resolution), int(config.data.batch_size)
  face = cv2.resize(skimage.data.astronaut()[10:250, 110:350], (res, res), interpolation=cv2.INTER_AREA)
  rs = np.random.RandomState(seed)
  locs = landmarks.scale_locations(np.asarray(_TEMPLATE_512), res / 512)
  images, boxes = [], []
  for i in range(n):
    img, loc = face, locs
    if i % 2:
      img, loc = face[:, ::-1], landmarks.flip_locations(locs, res)
    tint = rs.uniform(0.85, 1.15, 3) * img.astype(np.float32) + rs.uniform(-10, 10)
    images.append(np.clip(np.round(tint), 0, 255).astype(np.uint8))
    boxes.append(landmarks.component_boxes(loc, config.data.eye_enlarge_ratio))
  boxes = np.stack(boxes)
  return np.stack(images), {c: boxes[:, j] for j, c in enumerate(COMPONENTS)}


def _rss_mb() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _pin_threads(threads: int) -> None:
  cpus = sorted(os.sched_getaffinity(0))
  if threads < len(cpus):
    os.sched_setaffinity(0, cpus[:threads])


# ------------------------------------------------------------------------------ official PyTorch worker


def save_official_weights(model, path: str) -> None:
  """The official model's random weights (`torch_state_dicts()`) as one npz, keys joined with '/'."""
  flat = {}

  def walk(prefix, tree):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(f'{prefix}{k}/', v)
      else:
        flat[f'{prefix}{k}'] = v

  walk('', model.torch_state_dicts())
  np.savez(path, **flat)


class TorchSession:
  """The official iteration, built once; `step(r1)` times one iteration.

  Setup writes the random weights to `spec['weights']` (npz) for ours, and
  times the official OpenCV degradations.
  """

  def __init__(self, spec: dict):
    import cv2  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import cv2_degradations  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import official as official_lib  # pylint: disable=g-import-not-at-top
    from gfpgan_jax.testing import torch_train_step  # pylint: disable=g-import-not-at-top

    self.torch, self.spec = torch, spec
    torch.set_num_threads(spec['threads'])
    self.rss_import = _rss_mb()
    config = load_config(spec['variant'], spec['resolution'], spec['batch'], spec['overrides'])
    self.batch_size = int(config.data.batch_size)
    self.device = 'cuda' if spec['torch_device'] == 'cuda' else 'cpu'
    self.model = torch_train_step.build(config, official_lib.load(), seed=spec['seed'], device=self.device)
    if spec.get('weights'):
      save_official_weights(self.model, spec['weights'])

    # The official degradations, one image at a time on one thread (one data-loader worker).
    gt_u8, locs = make_batch(config, spec['seed'])
    gt01 = gt_u8.astype(np.float32) / 255.0
    dcfg = config.data.degradation
    rng, py_rng = np.random.default_rng(spec['seed']), random.Random(spec['seed'])
    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
      lq01 = np.stack([cv2_degradations.degrade_official(img, dcfg, rng, py_rng) for img in gt01])
      n = max(1, spec['deg_images'])
      t0 = time.perf_counter()
      for i in range(n):
        cv2_degradations.degrade_official(gt01[i % len(gt01)], dcfg, rng, py_rng)
      self.degrade_s_per_image = (time.perf_counter() - t0) / n
    finally:
      cv2.setNumThreads(threads[0])
      torch.set_num_threads(threads[1])
    self.data = torch_train_step.make_data(gt01 * 2 - 1, lq01 * 2 - 1, locs)
    self.reg = self.model.net_d_reg_every
    self.iteration = 0
    for r1 in (False, True) if spec['r1_iters'] > 0 else (False,):
      for _ in range(spec['warmup']):
        self.step(r1)

  def _sync(self):
    if self.device == 'cuda':
      self.torch.cuda.synchronize()

  def step(self, r1: bool) -> float:
    self.iteration += 1
    while (self.iteration % self.reg == 0) != r1:  # official: R1 when current_iter % net_d_reg_every == 0
      self.iteration += 1
    # New tensors every iteration, as from the data loader (an R1 iteration sets gt.requires_grad).
    fresh = {k: v.clone() for k, v in self.data.items()}
    self._sync()
    t0 = time.perf_counter()
    self.model.feed_data(fresh)
    self.model.optimize_parameters(self.iteration)
    self._sync()
    return time.perf_counter() - t0

  def finish(self) -> dict:
    """Losses, degradation cost, counted FLOPs and peak memory."""
    result = {'impl': 'official_pytorch', 'device': self.device, 'batch': self.batch_size, 'd_reg_every': self.reg,
              'losses': {k: float(v) for k, v in self.model.log_dict.items()},
              'degrade_ms_per_image': self.degrade_s_per_image * 1e3}
    if self.spec['count_flops']:
      from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
      counter = flop_counter.FlopCounterMode(display=False)
      with counter:  # a plain step: R1's autograd.grad(create_graph=True) is not supported by the counter
        self.step(False)
      result['torch_counted_flops_plain'] = float(counter.get_total_flops())
    result['rss_after_import_mb'] = self.rss_import
    result['rss_end_mb'] = _rss_mb()  # steady state, after the timed steps
    result['peak_rss_mb'] = _peak_rss_mb()
    if self.device == 'cuda':
      result['peak_device_memory_mb'] = self.torch.cuda.max_memory_allocated() / 2**20
    return result


# ------------------------------------------------------------------------------ JAX worker


def _unflatten(flat) -> dict:
  out = {}
  for key in flat.files:
    node = out
    *path, last = key.split('/')
    for p in path:
      node = node.setdefault(p, {})
    node[last] = flat[key]
  return out


def official_weights(path: str, nets, config, state, frozen):
  """`state` and `frozen` with the official weights saved by `save_official_weights` at `path` (converted)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import state_dict as sd_lib  # pylint: disable=g-import-not-at-top

  with np.load(path) as f:
    sds = _unflatten(f)
  res = int(config.data.resolution)
  g = sd_lib.torch_to_flax(sds['g'], nets.g_arch, **nets.g_kwargs)
  d = sd_lib.torch_to_flax(sds['d'], 'stylegan2_discriminator', out_size=res,
                           **config.model.discriminator_kwargs.to_dict())['params']
  dc = {c: sd_lib.torch_to_flax(sds['dc'][c], 'facial_component_discriminator')['params']
        for c in state.dc_params}
  new_frozen = dict(frozen)
  if 'arcface' in frozen:
    new_frozen['arcface'] = sd_lib.torch_to_flax(sds['arcface'], 'arcface', **config.model.arcface_kwargs.to_dict())
  if 'vgg' in frozen:
    new_frozen['vgg'] = sd_lib.torch_to_flax(sds['vgg19'], 'vgg19', layer_name_list=ts.vgg_layer_names(config))
  for name, new, old in (('G', g, {'params': state.g_params, 'noises': state.g_noises}), ('D', d, state.d_params),
                         ('component Ds', dc, state.dc_params), ('frozen', new_frozen, frozen)):
    if jax.tree.structure(new) != jax.tree.structure(old):
      raise ValueError(f'converted official {name} weights do not match our variables')

  def assemble(g, d, dc):  # jitted: every leaf gets its own buffer (the state is donated)
    return state.replace(g_params=g['params'], g_noises=g['noises'], g_ema_params=jax.tree.map(jnp.copy, g['params']),
                         d_params=d, dc_params=dc, g_opt=nets.g_tx.init(g['params']), d_opt=nets.d_tx.init(d),
                         dc_opt={c: nets.dc_tx.init(p) for c, p in dc.items()})

  return jax.jit(assemble)(g, d, dc), jax.device_put(new_frozen)


def init_training(config, seed: int, weights: str | None = None):
  """Our networks, initial state, frozen variables and GT batch (`make_batch`) for `config`, from `seed`.

  The state is `ts.init_state` from key `seed` and the frozen networks from
  `seed + 1`; `weights` (an `.npz` of `save_official_weights`) replaces both
  with that official initialisation, converted. Used by `JaxSession` and by
  tests/bf16_train_test.py.

  Returns:
    (nets, state, batch, frozen), the batch on the default device.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import train_state as ts  # pylint: disable=g-import-not-at-top

  nets = ts.build_networks(config)
  state = jax.jit(functools.partial(ts.init_state, nets, config))(jax.random.key(seed))
  frozen = ts.init_frozen(nets, jax.random.key(seed + 1))
  if weights:
    state, frozen = official_weights(weights, nets, config, state, frozen)
  gt_u8, locs = make_batch(config, seed)
  batch = {'gt': gt_u8, 'num_skipped': jnp.zeros((gt_u8.shape[0],), jnp.int32)}
  if nets.dc is not None:
    batch.update({f'loc_{c}': locs[c] for c in COMPONENTS})
  return nets, state, jax.device_put(batch), frozen


def compile_step(nets, config, state, batch, frozen, r1: bool):
  """`steps.train_step` (plain or R1) for these arguments, compiled ahead of time with `xla_options`.

  The state argument is donated: pass each call the state the previous one returned.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import steps  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top

  fn = jax.jit(functools.partial(steps.train_step, nets=nets, config=config, r1=r1), donate_argnums=0)
  return fn.lower(state, batch, frozen).compile(compiler_options=xla_options.compiler_options())


def peak_flops(device_kind: str, dtype: str, override_tflops: float | None = None) -> float | None:
  """Dense peak FLOP/s of a device kind for `dtype` (`PEAK_FLOPS`), or the override in TFLOP/s."""
  if override_tflops:
    return override_tflops * 1e12
  for kind, (bf16, fp32) in PEAK_FLOPS.items():
    if kind in device_kind:
      return bf16 if dtype == 'bfloat16' else fp32
  return None


class JaxSession:
  """Our jitted step (plain and R1 variants, compiled ahead of time); `step(r1)` times one call."""

  def __init__(self, spec: dict):
    import jax  # pylint: disable=g-import-not-at-top
    from gfpgan_jax import steps  # pylint: disable=g-import-not-at-top

    self.jax, self.spec = jax, spec
    self.device = jax.devices()[0]
    self.rss_import = _rss_mb()
    config = self.config = load_config(spec['variant'], spec['resolution'], spec['batch'], spec['overrides'],
                                       spec['dtype'])
    nets, self.state, self.batch, self.frozen = init_training(config, spec['seed'], spec.get('weights'))
    self.compiled, self.compile_s, self.flops = {}, {}, {}
    for r1 in (False, True) if spec['r1_iters'] > 0 else (False,):
      name = 'r1' if r1 else 'plain'
      t0 = time.perf_counter()
      self.compiled[r1] = compile_step(nets, config, self.state, self.batch, self.frozen, r1)
      self.compile_s[name] = time.perf_counter() - t0
      cost = self.compiled[r1].cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      self.flops[name] = float(cost['flops']) if cost and 'flops' in cost else None
      for _ in range(spec['warmup']):
        self.step(r1)
    # The degradations alone (they are part of the step above).
    pair = jax.jit(functools.partial(steps.make_pair, config=config))
    key = jax.random.key(spec['seed'])
    jax.block_until_ready(pair(key, self.batch['gt']))
    times = []
    for i in range(3):
      t0 = time.perf_counter()
      jax.block_until_ready(pair(jax.random.fold_in(key, i), self.batch['gt']))
      times.append(time.perf_counter() - t0)
    self.degrade_s_per_batch = statistics.median(times)

  def step(self, r1: bool) -> float:
    t0 = time.perf_counter()
    self.state, self.metrics = self.compiled[r1](self.state, self.batch, self.frozen)
    self.jax.block_until_ready((self.state, self.metrics))
    return time.perf_counter() - t0

  def finish(self) -> dict:
    """Compile times, FLOPs, losses and peak memory."""
    config = self.config
    result = {'impl': f'jax_{config.dtype}', 'device': f'{self.device.platform}: {self.device.device_kind}',
              'batch': int(config.data.batch_size), 'd_reg_every': int(config.loss.d_reg_every),
              'compile_s': self.compile_s, 'flops_per_step': self.flops,
              'degrade_s_per_batch': self.degrade_s_per_batch,
              'losses': {k: float(v) for k, v in self.jax.device_get(self.metrics).items()}}
    if self.device.platform != 'cpu':
      stats = self.device.memory_stats() or {}
      if 'peak_bytes_in_use' in stats:
        result['peak_device_memory_mb'] = stats['peak_bytes_in_use'] / 2**20
      peak = peak_flops(self.device.device_kind, config.dtype, self.spec.get('peak_tflops'))
      if peak:
        result['peak_flops'] = peak
    result['rss_after_import_mb'] = self.rss_import
    result['rss_end_mb'] = _rss_mb()  # steady state, after the timed steps
    result['peak_rss_mb'] = _peak_rss_mb()
    return result


SESSIONS = {'torch': TorchSession, 'jax': JaxSession}


def serve(kind: str, spec: dict) -> None:
  """Worker process: sets up a session, then answers the driver's commands on stdin.

  Commands: 'plain N' / 'r1 N' (time N steps; answer {'times': [...]}) and
  'finish' (answer the session's summary, exit). Answers are JSON lines on the
  original stdout; anything libraries print goes to stderr.
  """
  _pin_threads(spec['threads'])
  channel = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)

  def send(obj):
    channel.write(json.dumps(obj) + '\n')
    channel.flush()

  session = SESSIONS[kind](spec)
  send({'ready': True})
  for line in sys.stdin:
    cmd, *rest = line.split()
    if cmd == 'finish':
      send(session.finish())
      return
    send({'times': [session.step(cmd == 'r1') for _ in range(int(rest[0]))]})


# ------------------------------------------------------------------------------ driver


class _Worker:
  """A worker process (its own RSS high-water mark) driven over pipes."""

  def __init__(self, kind: str, spec: dict, log_dir: pathlib.Path, label: str):
    self.kind, self.label = kind, label
    self.log_path = log_dir / f'{kind}-{len(list(log_dir.iterdir()))}.log'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get('PYTHONPATH', '')]))
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), '--worker', kind, json.dumps(spec)]
    with open(self.log_path, 'w') as log:
      self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                   text=True)
    self.times = {'plain': [], 'r1': []}
    self._recv()

  def _recv(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      code = self.proc.wait()
      raise RuntimeError(f'{self.kind} worker ({self.label}) failed (exit {code}):\n'
                         + self.log_path.read_text()[-5000:])
    return json.loads(line)

  def _ask(self, command: str) -> dict:
    self.proc.stdin.write(command + '\n')
    self.proc.stdin.flush()
    return self._recv()

  def time_steps(self, variant: str, n: int) -> None:
    if n > 0:
      self.times[variant] += self._ask(f'{variant} {n}')['times']

  def finish(self) -> dict:
    result = self._ask('finish')
    self.proc.stdin.close()
    self.proc.wait()
    result.update(_step_summary(self.times, result['batch'], result['d_reg_every']))
    return result


def _step_summary(times: dict[str, list[float]], batch: int, reg_every: int) -> dict:
  """Median seconds per plain/R1 step, their 1:reg_every mean and images/s."""
  s = {k: statistics.median(v) for k, v in times.items() if v}
  out = {'s_per_step': s, 'times': times}
  if 'plain' in s:
    mean = ((reg_every - 1) * s['plain'] + s['r1']) / reg_every if 'r1' in s else s['plain']
    s[f'mean_1_{reg_every}'] = mean
    out['images_per_s'] = batch / mean
    out['images_per_s_plain'] = batch / s['plain']
  return out


def _probe() -> dict:
  """JAX's platform and whether torch sees a GPU, from a throwaway process (no memory kept here)."""
  code = ('import json, jax\nd = jax.devices()[0]\ntry:\n  import torch\n  cuda = torch.cuda.is_available()\n'
          'except ImportError:\n  cuda = False\nprint(json.dumps({"platform": d.platform, "kind": d.device_kind, '
          '"torch_cuda": cuda}))')
  out = subprocess.run([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def _measure(args, spec: dict, torch_ok: bool, dtypes: list[str], label: str, interleave: bool) -> dict:
  """Official then ours (on the official weights) for one config.

  With `interleave` (CPU), all workers are set up first and then take turns
  in `args.rounds` rounds, so a change of background load hits both alike;
  otherwise (GPU, where two processes would compete for its memory) each
  worker runs all its rounds and exits before the next starts.

  Returns:
    {'torch': result or None, 'jax': [result per dtype]}.
  """
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / 'logs').mkdir()
    weights = str(tmp / 'official_weights.npz') if torch_ok else None
    specs = ([('torch', dict(spec, weights=weights))] if torch_ok else [])
    specs += [('jax', dict(spec, dtype=d, weights=weights)) for d in dtypes]

    def rounds(workers):
      for r in range(args.rounds):
        print(f'[{label}] round {r + 1}/{args.rounds}', flush=True)
        for variant, n in (('plain', args.iters), ('r1', spec['r1_iters'])):
          for w in workers:
            w.time_steps(variant, n)

    def start(kind, s):
      print(f'[{label}] setting up {"the official PyTorch step" if kind == "torch" else "ours, " + s["dtype"]} ...',
            flush=True)
      return _Worker(kind, s, tmp / 'logs', label)

    results = []
    if interleave:
      workers = [start(k, s) for k, s in specs]
      rounds(workers)
      results = [w.finish() for w in workers]
    else:
      for k, s in specs:
        w = start(k, s)
        rounds([w])
        results.append(w.finish())
  out = {'torch': results.pop(0) if torch_ok else None, 'jax': results}
  t = out['torch']
  if t and 'images_per_s' in t:
    s_mean = t['s_per_step'][f"mean_1_{t['d_reg_every']}"]
    t['s_per_step_with_degradations'] = s_mean + t['batch'] * t['degrade_ms_per_image'] / 1e3
    t['images_per_s_with_degradations'] = t['batch'] / t['s_per_step_with_degradations']
  for j in out['jax']:
    if 'peak_flops' in j:
      j['mfu'] = {v: f / (j['s_per_step'][v] * j['peak_flops'])
                  for v, f in j['flops_per_step'].items() if f and v in j['s_per_step']}
  return out


def _gb(mb):
  return f'{mb / 1024:.2f} GB' if mb is not None else '-'


def _print_table(results: dict) -> None:
  c = results['config']
  print(f"\nGFP-GAN training step: config {c['variant'] or 'full recipe'!r}, {c['resolution']} px, batch "
        f"{c['batch']}, {results['threads']} thread(s) on {results['device']}; load average "
        f"{results['load_average_start'][0]:.1f} -> {results['load_average_end'][0]:.1f}")
  reg = c['d_reg_every']
  m = f'mean_1_{reg}'
  hdr = (f"{'implementation':<40}{'plain s':>9}{'R1 s':>9}{f'1:{reg} s':>9}{'img/s':>9}{'peak mem':>11}"
         f"{'RSS at end':>12}")
  print(hdr + '\n' + '-' * len(hdr))
  main = results['main']
  t = main['torch']
  rows = []
  if t:
    s = t['s_per_step']
    mem = _gb(t.get('peak_device_memory_mb', t['peak_rss_mb']))
    rows.append(('official PyTorch, step only', s.get('plain'), s.get('r1'), s.get(m), t.get('images_per_s'), mem,
                 _gb(t['rss_end_mb'])))
    if 's_per_step_with_degradations' in t:
      deg = t['s_per_step_with_degradations'] - s[m]
      rows.append((f"  + OpenCV degradations ({t['degrade_ms_per_image']:.0f} ms/img)",
                   s.get('plain') + deg, s.get('r1', 0) + deg if 'r1' in s else None,
                   t['s_per_step_with_degradations'], t['images_per_s_with_degradations'], '', ''))
  for j in main['jax']:
    s = j['s_per_step']
    mem = _gb(j.get('peak_device_memory_mb', j['peak_rss_mb']))
    rows.append((f"ours {j['impl'][4:]} (degradations included)", s.get('plain'), s.get('r1'), s.get(m),
                 j.get('images_per_s'), mem, _gb(j['rss_end_mb'])))
  fmt = lambda v: f'{v:9.3f}' if isinstance(v, float) else f"{'-':>9}"
  for name, p, r, mean, ips, mem, end in rows:
    print(f'{name:<40}{fmt(p)}{fmt(r)}{fmt(mean)}{fmt(ips)}{mem:>11}{end:>12}')
  for j in main['jax']:
    f = j['flops_per_step']
    print(f"ours {j['impl'][4:]}: compile {', '.join(f'{k} {v:.0f} s' for k, v in j['compile_s'].items())}; "
          f"degradations alone {j['degrade_s_per_batch'] * 1e3:.0f} ms/batch; XLA cost-analysis FLOPs/step "
          + ', '.join(f'{k} {v / 1e9:.1f} G' for k, v in f.items() if v)
          + (f"; {f['plain'] / j['s_per_step']['plain'] / 1e9:.1f} GFLOP/s (plain)" if f.get('plain') else ''))
    if 'mfu' in j:
      print(f"  MFU ({j['peak_flops'] / 1e12:.0f} TFLOP/s peak): "
            + ', '.join(f'{k} {v * 100:.1f}%' for k, v in j['mfu'].items()))
  if t and t.get('torch_counted_flops_plain'):
    print(f"official plain step, torch FlopCounterMode (conv + matmul only): "
          f"{t['torch_counted_flops_plain'] / 1e9:.1f} GFLOP")
  for r in results.get('ratios', []):
    print(f"ratio ours {r['impl'][4:]} / official: {r['vs_step_only']:.2f}x images/s vs the step alone, "
          f"{r['vs_step_with_degradations']:.2f}x vs step + degradations")
  if results.get('breakdown'):
    print('\nbreakdown (plain steps, s/step; cost = full - variant):')
    print(f"{'variant':<22}{'official':>10}{'cost':>8}{'ours':>10}{'cost':>8}")
    plain = lambda r: r['s_per_step']['plain'] if r else None
    full = results['breakdown']['full']
    for name, b in results['breakdown'].items():
      tp, jp = plain(b['torch']), plain(b['jax'])
      tc = plain(full['torch']) - tp if tp and name != 'full' else None
      jc = plain(full['jax']) - jp if jp and name != 'full' else None
      print(f'{name:<22}{fmt(tp):>10}{fmt(tc)[1:] if tc else "":>8}{fmt(jp):>10}{fmt(jc)[1:] if jc else "":>8}')
    t_deg = main['torch']['degrade_ms_per_image'] * c['batch'] / 1e3 if main['torch'] else None
    j_deg = main['jax'][0]['degrade_s_per_batch'] if main['jax'] else None
    print(f"{'degradations (batch)':<22}{fmt(t_deg):>10}{'':>8}{fmt(j_deg):>10}")


def run(args) -> dict:
  """Runs the benchmark; returns a JSON-able dict (printed as a table)."""
  probe = _probe()
  on_gpu = probe['platform'] != 'cpu'
  variant = args.config if args.config is not None else ('' if on_gpu else 'demo')
  dtypes = (args.dtypes or ('float32,bfloat16' if on_gpu else 'float32')).split(',')
  torch_device = 'cuda' if on_gpu else 'cpu'
  torch_ok = not args.no_torch and (not on_gpu or probe['torch_cuda'])
  if not args.no_torch and not torch_ok:
    print('torch does not see a GPU here: no official PyTorch comparison (the CPU would take minutes a step)')
  config = load_config(variant, args.resolution, args.batch, args.set)
  spec = dict(variant=variant, resolution=args.resolution, batch=args.batch, overrides=list(args.set),
              threads=args.threads, r1_iters=args.r1_iters, warmup=args.warmup, seed=args.seed,
              deg_images=args.deg_images, count_flops=not args.no_torch_flops, torch_device=torch_device,
              peak_tflops=args.peak_tflops, dtype=dtypes[0])
  results = {
      'device': f"{probe['platform']}: {probe['kind']}", 'threads': args.threads,
      'config': {'variant': variant, 'resolution': config.data.resolution, 'batch': config.data.batch_size,
                 'overrides': list(args.set), 'd_reg_every': config.loss.d_reg_every,
                 'eye_size': config.loss.eye_size, 'mouth_size': config.loss.mouth_size},
      'load_average_start': os.getloadavg(),
  }
  interleave = not on_gpu
  results['main'] = _measure(args, spec, torch_ok, dtypes, 'full step', interleave)
  t = results['main']['torch']
  if t:
    results['ratios'] = [{'impl': j['impl'], 'vs_step_only': j['images_per_s'] / t['images_per_s'],
                          'vs_step_with_degradations': j['images_per_s'] / t['images_per_s_with_degradations']}
                         for j in results['main']['jax']]
  if args.breakdown:
    bspec = dict(spec, r1_iters=0, count_flops=False, deg_images=1)
    main = results['main']
    results['breakdown'] = {'full': {'torch': main['torch'], 'jax': main['jax'][0] if main['jax'] else None}}
    for name, overrides in BREAKDOWN.items():
      pair = _measure(args, dict(bspec, overrides=list(args.set) + list(overrides)), torch_ok, dtypes[:1], name,
                      interleave)
      results['breakdown'][name] = {'torch': pair['torch'], 'jax': pair['jax'][0]}
  results['load_average_end'] = os.getloadavg()
  _print_table(results)
  return results


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == '--worker':
    serve(argv[1], json.loads(argv[2]))
    return
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--json', type=pathlib.Path, help='also write the results to this JSON file')
  add_arguments(parser)
  args = parser.parse_args(argv)
  results = run(args)
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
