"""`train_and_evaluate`: the GFP-GAN training loop over a device mesh (one CPU, one GPU or a pod).

Resume order: the latest checkpoint of WORKDIR (state + data iterator), else
the pretrained weights of `config.init`, else random initialisation.
"""

import functools
import json
import logging
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gfpgan_jax import checkpointing
from gfpgan_jax import config_checks
from gfpgan_jax import interrupts
from gfpgan_jax import metrics_io
from gfpgan_jax import optim
from gfpgan_jax import sharding
from gfpgan_jax import steps
from gfpgan_jax import train_state as ts
from gfpgan_jax import workdir_lock
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
  """Raises ConfigError (a ValueError) naming the bad value; runs before any data is read or code compiled."""
  config_checks.validate(config)


def _resolve_demo_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """`data.source='demo'`: write the built-in faces into WORKDIR/demo_data and read them as a folder."""
  if config.data.source != 'demo':
    return config
  if jax.process_index() == 0:
    demo.write_demo_dataset(workdir / 'demo_data', config.data.resolution, seed=config.seed)
  _barrier('demo_data')
  demo.write_demo_dataset(workdir / 'demo_data', config.data.resolution, seed=config.seed)  # idempotent
  return _demo_resolved_view(config, workdir)


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
  loaded = {}
  if nets.vgg is not None and config.init.vgg19:
    kw = dict(layer_name_list=ts.vgg_layer_names(config))
    loaded['vgg'] = load_variables(config.init.vgg19, 'vgg19', kw)
  if nets.arcface is not None and config.init.arcface:
    loaded['arcface'] = load_variables(config.init.arcface, 'arcface', config.model.arcface_kwargs.to_dict())
  frozen = ts.init_frozen(nets, jax.random.fold_in(jax.random.key(config.seed), 7), skip=tuple(loaded))
  if nets.vgg is not None and 'vgg' not in loaded:
    log.warning('config.init.vgg19 is empty: the perceptual/style losses use a RANDOM VGG19')
  if nets.arcface is not None and 'arcface' not in loaded:
    log.warning('config.init.arcface is empty: the identity loss uses a RANDOM ArcFace')
  return dict(frozen, **loaded)


# ------------------------------------------------------------------------------
# Loop helpers.
# ------------------------------------------------------------------------------


_CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'


class CompiledSteps:
  """Jitted functions compiled ahead of time (`compile`, else on first use), then called as compiled executables.

  Each compile is logged ("compiling NAME …", then "compiled NAME in N s",
  noting a load from the persistent compilation cache), and its seconds are
  summed in `compile_seconds` (the progress line leaves them out).

  In a multi-process run, processes meet at a coordination-service barrier
  after each compile, so no process waits in a cross-process collective while
  another is still compiling (CPU/gloo collectives time out after 30 s). Each
  function is compiled exactly once; a call with other shapes or shardings fails.
  """

  def __init__(self, **fns):
    self._fns = fns
    self._compiled = {}
    self.compiles = {name: 0 for name in fns}
    self.compile_seconds = 0.0

  def compile(self, name: str, *args):
    """Compiles `name` for `args` (arrays, or `jax.ShapeDtypeStruct`s with their shardings) unless it is compiled."""
    if name in self._compiled:
      return self._compiled[name]
    hint = (" (minutes on a CPU; XLA's 'Very slow compile?' banner meanwhile is not an error)"
            if not self._compiled and jax.default_backend() == 'cpu' else '')
    log.info('compiling %s …%s', name, hint)
    start, hits = time.perf_counter(), []
    listener = lambda event, **_: hits.append(event) if event == _CACHE_HIT_EVENT else None
    jax.monitoring.register_event_listener(listener)
    try:
      self._compiled[name] = self._fns[name].lower(*args).compile(compiler_options=xla_options.compiler_options())
    finally:
      jax.monitoring.unregister_event_listener(listener)
    self.compiles[name] += 1
    host_barrier(f'gfpgan_jax-compiled-{name}')
    seconds = time.perf_counter() - start
    self.compile_seconds += seconds
    log.info('compiled %s in %.1f s%s', name, seconds, ' (from the persistent compilation cache)' if hits else '')
    return self._compiled[name]

  def out_info(self, name: str) -> PyTree:
    """The outputs of compiled `name` as `jax.ShapeDtypeStruct`s (with shardings)."""
    return self._compiled[name].out_info

  def __call__(self, name: str, *args):
    return self.compile(name, *args)(*args)


def _spec(shape: tuple[int, ...], dtype, sharding, weak_type: bool = False) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, weak_type=weak_type)


def abstract_batches(config: ml_collections.ConfigDict, batch_sharding) -> tuple[dict[str, Any], dict[str, Any]]:
  """The global train and eval batches of `input_pipeline` as `jax.ShapeDtypeStruct`s (see its docstring)."""
  b, e, r = config.data.batch_size, config.data.eval_batch_size, config.data.resolution
  train = {'gt': _spec((b, r, r, 3), np.uint8, batch_sharding), 'num_skipped': _spec((b,), np.int32, batch_sharding)}
  if config.data.crop_components:
    train.update({f'loc_{c}': _spec((b, 4), np.float32, batch_sharding) for c in ts.COMPONENTS})
  if config.data.get('train_lq_dir', ''):  # paired data: the given LQ of each GT
    train['lq'] = _spec((b, r, r, 3), np.uint8, batch_sharding)
  evals = {'gt': _spec((e, r, r, 3), np.uint8, batch_sharding), 'index': _spec((e,), np.int32, batch_sharding),
           'mask': _spec((e,), np.bool_, batch_sharding), 'num_skipped': _spec((e,), np.int32, batch_sharding)}
  if config.data.get('eval_lq_dir', ''):
    evals['lq'] = _spec((e, r, r, 3), np.uint8, batch_sharding)
  return train, evals


def precompile(fns: CompiledSteps, config: ml_collections.ConfigDict, start: int, state: ts.TrainState, state_sh,
               batch_sh, frozen: PyTree, skipped: jax.Array):
  """Compiles, from abstract inputs, every step that the loop from `start` will call, before it runs one.

  So training never pauses for a compile at its first preview or
  validation, and every compile is over before the progress clock starts.
  """
  todo = range(start + 1, config.total_steps + 1)  # the `done` step numbers of the loop
  r1_steps = {d % config.loss.d_reg_every == 0 for d in todo}
  state = jax.tree.map(lambda x, sh: _spec(x.shape, x.dtype, sh, x.weak_type), state, state_sh)
  train_batch, eval_batch = abstract_batches(config, batch_sh)
  for kind in sorted(r1_steps):
    name = 'train_step_r1' if kind else 'train_step'
    fns.compile(name, state, train_batch, frozen)
    metrics = fns.out_info(name)[1]
    fns.compile('count_skipped', skipped, metrics['data/num_skipped'])
    if config.log_every_steps > 1:
      fns.compile(f'accumulate_{name}', metrics, metrics)
  if any(d % config.image_every_steps == 0 for d in todo):
    fns.compile('preview_step', state, train_batch)
  if todo:
    fns.compile('params_finite', state)
    if config.data.eval_dir:
      fns.compile('eval_step', state, eval_batch, frozen, jax.random.key(config.eval_seed))


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
                               f'checkpoint is {ckpt.describe_last_good(verify=True)}')


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
                             f'checkpoint is {ckpt.describe_last_good(verify=True)}')


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


def _tree_add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def _warn_skipped(total: int, before: int) -> int:
  """Warns when the count of unreadable training files grows; returns it."""
  if total > before:
    log.warning('%d unreadable training files skipped so far (%d new), each replaced by the next readable file; '
                "the first are named in the 'Skipping unreadable image' warnings", total, total - before)
  return total


def _learning_rates(state: ts.TrainState) -> dict[str, jax.Array]:
  out = {'lr/g': optim.learning_rate(state.g_opt), 'lr/d': optim.learning_rate(state.d_opt)}
  if state.dc_opt:
    out['lr/d_components'] = optim.learning_rate(next(iter(state.dc_opt.values())))
  return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------
# Main entry.
# ------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       allow_config_change: bool = False,
                       strict_resume: bool = False) -> tuple[ts.TrainState, dict[str, Any]]:
  """Trains (or resumes) in `workdir` up to `config.total_steps`.

  The workdir is locked for the whole run (`workdir_lock`: a second run fails
  at once). A resume is checked against the stored config.json before anything
  is written (`config_checks.check_resume`).

  Args:
    config: the training config (configs/ffhq.py).
    workdir: checkpoints, logs and samples.
    allow_config_change: accept a resume that changes the data stream (seeds,
      batch size, sources); the change is recorded in config_changes.jsonl.
    strict_resume: stop when the latest checkpoint fails verification or
      restore, instead of falling back to the newest step that passes.

  Returns:
    (final state, info): info holds 'step' (the last completed step),
    'compiles' (how many times each jitted step was compiled) and 'stopped_by'
    ('SIGTERM' or 'SIGINT' when a signal stopped the run early, else None).

  Raises:
    config_checks.ConfigError: a bad config or a refused change (nothing written).
    workdir_lock.WorkdirLockedError: another run holds the workdir.
  """
  workdir = pathlib.Path(workdir).absolute()
  validate_config(config)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir_lock.lock_for_run(workdir)
  try:
    resume = config_checks.check_resume(_demo_resolved_view(config, workdir), workdir, allow_config_change)
    cache = xla_options.enable_compilation_cache(config.compilation_cache, workdir)
    log.info('persistent compilation cache: %s', cache or 'off')
    config = _resolve_demo_data(config, workdir)
    mesh = sharding.make_mesh(config)
    with jax.set_mesh(mesh):  # the context mesh lets batch-local ops (the FFT blur) use shard_map
      return _train(config, workdir, mesh, resume, strict_resume)
  finally:
    lock.release()


def _demo_resolved_view(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """The config as `_resolve_demo_data` makes it (an unlocked copy), without writing the demo data."""
  if config.data.source != 'demo':
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  root = workdir / 'demo_data'
  config.data.update(source='folder', train_dir=str(root / 'train'), eval_dir=str(root / 'eval'),
                     landmarks_path=str(root / 'landmarks.json'), landmarks_resolution=512)
  return config


def _train(config, workdir, mesh, resume: config_checks.ResumeCheck, strict_resume: bool = False):
  """The body of `train_and_evaluate`, under the context mesh."""
  nets = ts.build_networks(config)
  train_iter = input_pipeline.make_train_iterator(config)  # fails fast on missing data
  is_main = jax.process_index() == 0
  writer = metrics_io.MetricWriter(workdir, enabled=is_main)
  if is_main:
    resume.record(workdir)
    for line in resume.describe():
      (log.warning if '(data stream)' in line else log.info)('config change on resume: %s', line)
    config_checks.write_config(workdir, config)
    checkpointing.write_model_info(workdir, nets.g_arch, nets.g_kwargs)
    writer.write_text('config', '```\n' + str(config) + '\n```')
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints, config.async_checkpoints)

  init_fn = functools.partial(ts.init_state, nets, config)
  abstract = jax.eval_shape(init_fn, jax.random.key(config.seed))
  state_sh = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
  state, start = ckpt.restore_latest(target, train_iter, strict=strict_resume)
  if start is None:
    state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.key(config.seed))
    state = jax.device_put(load_pretrained(state, nets, config), state_sh)
    start = 0
    log.info('initialised a new run in %s', workdir)
  else:
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
      # Running sums of the step metrics over a log interval (one per step kind: their metrics differ).
      accumulate_train_step=jit(_tree_add),
      accumulate_train_step_r1=jit(_tree_add),
  )

  signals = interrupts.active() or interrupts.StopSignals(sigint=False)  # SIGINT: only from the CLI (train.py)
  signals.attach(ckpt.describe_last_good, ckpt.wait)
  # The running count of unreadable files, kept on the devices (a global, replicated scalar).
  skipped = jax.device_put(jnp.zeros((), jnp.float32), repl)
  metrics, skipped_before = None, 0
  precompile(fns, config, start, state, state_sh, batch_sh, frozen, skipped)
  writer.resume(start)
  means = metrics_io.IntervalMeans(lambda kind, sums, m: fns(f'accumulate_{kind}', sums, m))
  progress = metrics_io.Progress(config.total_steps, config.data.batch_size, start,
                                 compile_seconds=lambda: fns.compile_seconds)
  try:
    signals.phase = 'loop'
    for step in range(start, config.total_steps):
      batch = _global_batch(next(train_iter), batch_sh)
      r1 = (step + 1) % config.loss.d_reg_every == 0  # official: current_iter % net_d_reg_every == 0
      kind = 'train_step_r1' if r1 else 'train_step'
      state, metrics = fns(kind, state, batch, frozen)
      skipped = fns('count_skipped', skipped, metrics['data/num_skipped'])
      means.add(kind, metrics)
      done = step + 1
      if done % config.log_every_steps == 0 or done == config.total_steps:
        # The step metrics are means over the interval; learning rates and the skipped total are at `done`.
        host = {**means.pop(), **jax.device_get({**_learning_rates(state), 'data/num_skipped_total': skipped})}
        check_finite(host, done, ckpt)
        scalars = {f'train/{k}': v for k, v in host.items()}
        scalars.update(progress.report(done, scalars))
        writer.write_scalars(done, scalars)
        skipped_before = _warn_skipped(int(host['data/num_skipped_total']), skipped_before)
      if done % config.image_every_steps == 0:
        writer.write_images(done, {'train/lq_out_gt': np.asarray(fns('preview_step', state, batch))})
      preempted = signals.raised or ckpt.reached_preemption(done)
      if done % config.checkpoint_every_steps == 0 or done == config.total_steps or preempted:
        check_finite(jax.device_get(metrics), done, ckpt)
        check_finite_state(jax.device_get(fns('params_finite', state)), done, ckpt)
        ckpt.save(done, state, train_iter)
      if config.data.eval_dir and (done % config.eval_every_steps == 0 or done == config.total_steps):
        val = evaluate(state, frozen, fns, config, batch_sh, workdir / 'images' / 'val' / f'{done:08d}')
        writer.write_scalars(done, val)
        log.info('validation at step %d: %s', done, ', '.join(f'{k}={v:.4g}' for k, v in val.items()))
      if preempted:
        log.info('preempted (%s): saved step %d, exiting', signals.signal_name or 'SIGTERM', done)
        break
  finally:
    signals.phase = 'end'
    try:
      ckpt.close()  # waits for the last save and writes its manifest
    finally:
      writer.close()
      if signals is not interrupts.active():
        signals.restore()
      if hasattr(train_iter, 'close'):
        train_iter.close()
  return state, {'step': int(jax.device_get(state.step)), 'compiles': fns.compiles, 'stopped_by': signals.signal_name}
