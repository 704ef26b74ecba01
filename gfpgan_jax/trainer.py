"""`train_and_evaluate`: the GFP-GAN training loop over a device mesh (one CPU, one GPU or a pod).

Resume order: the latest checkpoint of WORKDIR (state + data iterator), else
the pretrained weights of `config.init`, else random initialisation.
"""

import functools
import json
import logging
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gfpgan_jax import checkpointing
from gfpgan_jax import metrics_io
from gfpgan_jax import optim
from gfpgan_jax import sharding
from gfpgan_jax import steps
from gfpgan_jax import train_state as ts
from gfpgan_jax import xla_options
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint as ckpt_lib
from gfpgan_jax.convert import pth
from gfpgan_jax.convert import state_dict as sd_lib
from gfpgan_jax.data import demo
from gfpgan_jax.data import input_pipeline

log = logging.getLogger('gfpgan_jax.train')
PyTree = Any


# ------------------------------------------------------------------------------
# Configuration checks (before anything is compiled).
# ------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict):
  """Raises ValueError naming the bad value; runs before any data is read or code compiled."""

  def positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'config.{name} must be a positive integer, got {value!r}')

  for name in ('total_steps', 'log_every_steps', 'image_every_steps', 'checkpoint_every_steps', 'eval_every_steps',
               'keep_checkpoints', 'data.batch_size', 'data.eval_batch_size', 'loss.d_reg_every'):
    positive_int(name, functools.reduce(getattr, name.split('.'), config))
  ts.compute_dtype(config)
  n_dev, n_proc = jax.device_count(), jax.process_count()
  for name in ('batch_size', 'eval_batch_size'):
    b = config.data[name]
    if b % n_dev:
      raise ValueError(f'config.data.{name}={b} is not divisible by the {n_dev} devices')
    if b % n_proc:
      raise ValueError(f'config.data.{name}={b} is not divisible by the {n_proc} processes')
  d_kw = config.model.discriminator_kwargs
  per_gpu = d_kw.get('stddev_per_gpu_batch', 0) or config.data.batch_size
  group = min(per_gpu, d_kw.get('stddev_group', 4))
  if config.data.batch_size % per_gpu or per_gpu % group:
    raise ValueError(f'config.data.batch_size={config.data.batch_size} must be a multiple of the minibatch-stddev '
                     f'per-GPU batch {per_gpu}, and that of the group {group}: set '
                     'config.model.discriminator_kwargs.stddev_per_gpu_batch (0 = the whole batch) or stddev_group')
  for size in (config.loss.eye_size, config.loss.mouth_size):
    if size % 4:
      raise ValueError(f'component patch sizes must be multiples of 4, got {size}')
  if config.model.use_components and not config.data.crop_components:
    raise ValueError('config.model.use_components needs config.data.crop_components (the eye/mouth boxes)')
  if config.data.source not in ('folder', 'lmdb', 'tfds', 'demo'):
    raise ValueError(f"config.data.source must be 'folder', 'lmdb', 'tfds' or 'demo', got {config.data.source!r}")
  ts.vgg_layer_names(config)


def _resolve_demo_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """`data.source='demo'`: write the built-in faces into WORKDIR/demo_data and read them as a folder."""
  if config.data.source != 'demo':
    return config
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  if jax.process_index() == 0:
    demo.write_demo_dataset(workdir / 'demo_data', config.data.resolution, seed=config.seed)
  _barrier('demo_data')
  paths = demo.write_demo_dataset(workdir / 'demo_data', config.data.resolution, seed=config.seed)
  config.data.update(source='folder', train_dir=paths['train_dir'], eval_dir=paths['eval_dir'],
                     landmarks_path=paths['landmarks_path'], landmarks_resolution=512)
  return config


def _barrier(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------
# Pretrained weights.
# ------------------------------------------------------------------------------


def load_variables(path: str, arch: str, kwargs: dict[str, Any]) -> PyTree:
  """Variables of `arch` (with `kwargs`) from an official `.pth` or a converted checkpoint directory."""
  p = pathlib.Path(path)
  if p.is_dir():
    saved_arch, _, variables = ckpt_lib.load(p)
    if saved_arch != arch:
      raise sd_lib.ConversionError(f'{path} holds a {saved_arch!r} checkpoint, expected {arch!r}')
    sd_lib.check_variables(variables, arch, **kwargs)
    return variables
  if not p.is_file():
    raise FileNotFoundError(f'pretrained weights not found: {path}')
  sd, _ = pth.read_pth(p)
  return sd_lib.torch_to_flax(sd, arch, **kwargs)


def _decoder_kwargs(nets: ts.Networks) -> dict[str, Any]:
  keep = ('out_size', 'num_style_feat', 'num_mlp', 'channel_multiplier', 'narrow', 'resample_kernel', 'lr_mlp')
  return {k: v for k, v in nets.g_kwargs.items() if k in keep}


def load_pretrained(state: ts.TrainState, nets: ts.Networks, config: ml_collections.ConfigDict) -> ts.TrainState:
  """Applies `config.init` to a freshly initialised state (not used when resuming)."""
  init = config.init
  if init.generator:
    state = ts.with_pretrained_g(state, load_variables(init.generator, nets.g_arch, nets.g_kwargs), nets)
    log.info('generator initialised from %s', init.generator)
  elif init.decoder:
    decoder = load_variables(init.decoder, ts.DECODER_ARCH[nets.g_arch], _decoder_kwargs(nets))
    state = ts.with_pretrained_decoder(state, decoder, nets)
    log.info('decoder initialised from %s', init.decoder)
  if init.discriminator:
    d_kwargs = dict(config.model.discriminator_kwargs.to_dict(), out_size=config.data.resolution)
    d = load_variables(init.discriminator, 'stylegan2_discriminator', d_kwargs)['params']
    state = state.replace(d_params=d, d_opt=nets.d_tx.init(d))
  for c in ts.COMPONENTS:
    path = init[f'd_{c}']
    if path and nets.dc is not None:
      p = load_variables(path, 'facial_component_discriminator', {})['params']
      state = state.replace(dc_params=dict(state.dc_params, **{c: p}), dc_opt=dict(state.dc_opt, **{c: nets.dc_tx.init(p)}))
  return state


def load_frozen(nets: ts.Networks, config: ml_collections.ConfigDict) -> PyTree:
  """The frozen loss networks: pretrained when `config.init` names them, else random (warned)."""
  frozen = ts.init_frozen(nets, jax.random.fold_in(jax.random.key(config.seed), 7))
  if nets.vgg is not None:
    if config.init.vgg19:
      kw = dict(layer_name_list=ts.vgg_layer_names(config))
      frozen['vgg'] = load_variables(config.init.vgg19, 'vgg19', kw)
    else:
      log.warning('config.init.vgg19 is empty: the perceptual/style losses use a RANDOM VGG19')
  if nets.arcface is not None:
    if config.init.arcface:
      frozen['arcface'] = load_variables(config.init.arcface, 'arcface', config.model.arcface_kwargs.to_dict())
    else:
      log.warning('config.init.arcface is empty: the identity loss uses a RANDOM ArcFace')
  return frozen


# ------------------------------------------------------------------------------
# Loop helpers.
# ------------------------------------------------------------------------------


class CompiledSteps:
  """Jitted functions compiled ahead of time on first use, then called as compiled executables.

  In a multi-process run, processes meet at a coordination-service barrier
  after each compile, so no process waits in a cross-process collective while
  another is still compiling (CPU/gloo collectives time out after 30 s). Each
  function is compiled exactly once; a call with other shapes or shardings fails.
  """

  def __init__(self, **fns):
    self._fns = fns
    self._compiled = {}
    self.compiles = {name: 0 for name in fns}

  def __call__(self, name: str, *args):
    if name not in self._compiled:
      self._compiled[name] = self._fns[name].lower(*args).compile(
          compiler_options=xla_options.compiler_options())
      self.compiles[name] += 1
      host_barrier(f'gfpgan_jax-compiled-{name}')
    return self._compiled[name](*args)


def host_barrier(name: str, timeout_s: int = 3600):
  """All processes reach this point (a coordination-service barrier, no device collective)."""
  if jax.process_count() > 1:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def _global_batch(batch: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}


def check_finite(metrics: dict[str, Any], step: int, ckpt: checkpointing.Checkpointer):
  """Stops the run on a non-finite loss, naming it (the last good checkpoint is untouched)."""
  for name, value in metrics.items():
    if not math.isfinite(float(value)):
      raise FloatingPointError(f'non-finite {name} = {float(value)} at step {step}; stopping. The last good '
                               f'checkpoint is step {ckpt.latest_step()} in {ckpt.directory}')


def _params_finite(state: ts.TrainState) -> dict[str, jax.Array]:
  """Whether every float in each trained network is finite (checked before each save)."""

  def finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)

  return {name: finite(getattr(state, name)) for name in ('g_params', 'g_ema_params', 'd_params', 'dc_params')}


def check_finite_state(finite: dict[str, Any], step: int, ckpt: checkpointing.Checkpointer):
  bad = [name for name, ok in finite.items() if not bool(ok)]
  if bad:
    raise FloatingPointError(f'non-finite values in {", ".join(bad)} at step {step}; not saving. The last good '
                             f'checkpoint is step {ckpt.latest_step()} in {ckpt.directory}')


def evaluate(state, frozen, fns: CompiledSteps, config, batch_sharding, image_dir=None) -> dict[str, float]:
  """Masked means of the per-face validation metrics over the whole eval set.

  With `image_dir`, process 0 also writes each face's LQ | output | GT row there as `<eval file stem>.png`
  (each file written whole, then renamed into place).
  """
  import os  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.data import sources  # pylint: disable=g-import-not-at-top

  sums, count = {}, 0.0
  key = jax.random.key(config.eval_seed)
  it = input_pipeline.make_eval_iterator(config)
  names = sources.list_image_files(config.data.eval_dir) if image_dir is not None else None
  for batch in it:
    m = jax.device_get(fns('eval_step', state, _global_batch(batch, batch_sharding), frozen, key))
    rows = m.pop('lq_out_gt')
    if names is not None and jax.process_index() == 0:
      image_dir = pathlib.Path(image_dir)
      image_dir.mkdir(parents=True, exist_ok=True)
      for row, index, ok in zip(rows, np.asarray(m['index']), np.asarray(m['mask'])):
        if ok:
          path = image_dir / (pathlib.PurePosixPath(names[index]).with_suffix('.png').as_posix().replace('/', '__'))
          tmp = path.with_name(path.name + '.tmp')
          Image.fromarray(np.asarray(row)).save(tmp, format='PNG')
          os.replace(tmp, path)
    m.pop('index', None)
    mask = m.pop('mask').astype(np.float64)
    count += mask.sum()
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64) * mask))
  return {f'val/{k}': v / max(count, 1.0) for k, v in sums.items()}


def _learning_rates(state: ts.TrainState) -> dict[str, jax.Array]:
  out = {'lr/g': optim.learning_rate(state.g_opt), 'lr/d': optim.learning_rate(state.d_opt)}
  if state.dc_opt:
    out['lr/d_components'] = optim.learning_rate(next(iter(state.dc_opt.values())))
  return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------
# Main entry.
# ------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> tuple[ts.TrainState, dict[str, Any]]:
  """Trains (or resumes) in `workdir` up to `config.total_steps`.

  Returns:
    (final state, info): info holds 'step' (the last completed step) and
    'compiles' (how many times each jitted step was compiled).
  """
  workdir = pathlib.Path(workdir).absolute()
  validate_config(config)
  workdir.mkdir(parents=True, exist_ok=True)
  config = _resolve_demo_data(config, workdir)
  mesh = sharding.make_mesh(config)
  with jax.set_mesh(mesh):  # the context mesh lets batch-local ops (the FFT blur) use shard_map
    return _train(config, workdir, mesh)


def _train(config, workdir, mesh):
  """The body of `train_and_evaluate`, under the context mesh."""
  nets = ts.build_networks(config)
  train_iter = input_pipeline.make_train_iterator(config)  # fails fast on missing data
  is_main = jax.process_index() == 0
  writer = metrics_io.MetricWriter(workdir, enabled=is_main)
  if is_main:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
    checkpointing.write_model_info(workdir, nets.g_arch, nets.g_kwargs)
    writer.write_text('config', '```\n' + str(config) + '\n```')
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints, config.async_checkpoints)

  init_fn = functools.partial(ts.init_state, nets, config)
  abstract = jax.eval_shape(init_fn, jax.random.key(config.seed))
  state_sh = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  start = ckpt.latest_step()
  if start is None:
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.key(config.seed))
    state = jax.device_put(load_pretrained(state, nets, config), state_sh)
    start = 0
    log.info('initialised a new run in %s', workdir)
  else:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    state = ckpt.restore(start, target, train_iter)
    log.info('resumed from step %d of %s', start, ckpt.directory)
  frozen = jax.device_put(load_frozen(nets, config), repl)

  jit = functools.partial(jax.jit, out_shardings=repl)
  fns = CompiledSteps(
      train_step=jax.jit(functools.partial(steps.train_step, nets=nets, config=config, r1=False),
                         in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
                         donate_argnums=0),
      train_step_r1=jax.jit(functools.partial(steps.train_step, nets=nets, config=config, r1=True),
                            in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
                            donate_argnums=0),
      preview_step=jit(functools.partial(steps.preview_step, nets=nets, config=config,
                                         num=min(config.num_preview_images, config.data.batch_size))),
      eval_step=jit(functools.partial(steps.eval_step, nets=nets, config=config)),
      params_finite=jit(_params_finite),
      count_skipped=jit(lambda total, n: total + n),
  )

  progress = metrics_io.Progress(config.total_steps, config.data.batch_size, start)
  sigterm = checkpointing.SigtermFlag()
  # The running count of unreadable files, kept on the devices (a global, replicated scalar).
  skipped = jax.device_put(jnp.zeros((), jnp.float32), repl)
  metrics = None
  try:
    for step in range(start, config.total_steps):
      batch = _global_batch(next(train_iter), batch_sh)
      r1 = (step + 1) % config.loss.d_reg_every == 0  # official: current_iter % net_d_reg_every == 0
      state, metrics = fns('train_step_r1' if r1 else 'train_step', state, batch, frozen)
      skipped = fns('count_skipped', skipped, metrics['data/num_skipped'])
      done = step + 1
      if done % config.log_every_steps == 0 or done == config.total_steps:
        host = jax.device_get({**metrics, **_learning_rates(state), 'data/num_skipped_total': skipped})
        check_finite(host, done, ckpt)
        scalars = {f'train/{k}': v for k, v in host.items()}
        scalars.update(progress.report(done, scalars))
        writer.write_scalars(done, scalars)
      if done % config.image_every_steps == 0:
        writer.write_images(done, {'train/lq_out_gt': np.asarray(fns('preview_step', state, batch))})
      preempted = sigterm.raised or ckpt.reached_preemption(done)
      if done % config.checkpoint_every_steps == 0 or done == config.total_steps or preempted:
        check_finite(jax.device_get(metrics), done, ckpt)
        check_finite_state(jax.device_get(fns('params_finite', state)), done, ckpt)
        ckpt.save(done, state, train_iter)
      if config.data.eval_dir and (done % config.eval_every_steps == 0 or done == config.total_steps):
        val = evaluate(state, frozen, fns, config, batch_sh, workdir / 'images' / 'val' / f'{done:08d}')
        writer.write_scalars(done, val)
        log.info('validation at step %d: %s', done, ', '.join(f'{k}={v:.4g}' for k, v in val.items()))
      if preempted:
        log.info('preempted (SIGTERM): saved step %d, exiting', done)
        break
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
    sigterm.restore()
    if hasattr(train_iter, 'close'):
      train_iter.close()
  return state, {'step': int(jax.device_get(state.step)), 'compiles': fns.compiles}
