"""Checks of a training config, and of a resume against the workdir's stored config, before anything is built.

`validate(config)` runs first (no data read, nothing compiled or written):
types and ranges, the `init.*` files, and the pretrained loss networks of the
full recipe. `check_resume(config, workdir, allow_config_change)` compares a
resumed run's config with `WORKDIR/config.json` before anything is written:

* architecture fields (`model.*`, `data.resolution`): always refused, with
  one error listing every differing field;
* data-stream fields (seeds, batch size, the training sources): refused
  unless `allow_config_change`; then recorded in `WORKDIR/config_changes.jsonl`
  with the previous config;
* anything else (total_steps, cadences, learning rates, ...): accepted and
  recorded.

Every failure is a `ConfigError` (a ValueError) with a one-line message.
"""

import datetime
import functools
import json
import numbers
import os
import pathlib
from typing import Any

import jax
import ml_collections

CONFIG_FILE = 'config.json'
CHANGES_FILE = 'config_changes.jsonl'
CHECKPOINT_DIR = 'checkpoints'  # = checkpointing.CHECKPOINT_DIR (not imported: this module stays light)

# The official sources of the frozen loss networks (README, gfpgan.md 3.4 and 3.6).
VGG19_FILE = 'vgg19-dcbb9e9d.pth'
VGG19_URL = 'https://download.pytorch.org/models/vgg19-dcbb9e9d.pth'
ARCFACE_FILE = 'arcface_resnet18.pth'
ARCFACE_URL = 'https://github.com/TencentARC/GFPGAN/releases/download/v0.1.0/arcface_resnet18.pth'


class ConfigError(ValueError):
  """A bad config value or a refused config change; the message is one line naming the field and the fix."""


# ------------------------------------------------------------------------------
# Values.
# ------------------------------------------------------------------------------


def _get(config, name: str):
  return functools.reduce(lambda node, key: node[key], name.split('.'), config)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _positive_int(config, name: str, minimum: int = 1):
  v = _get(config, name)
  if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
    what = 'a positive integer' if minimum == 1 else f'an integer >= {minimum}'
    raise ConfigError(f'config.{name} must be {what}, got {v!r}')


def _positive(config, name: str):
  v = _get(config, name)
  if not _is_number(v) or v <= 0:  # NaN passes here and is caught by the NaN stop of the loop
    raise ConfigError(f'config.{name} must be a number > 0, got {v!r}')


def _weight(config, name: str):
  v = _get(config, name)
  if not _is_number(v) or v < 0:
    raise ConfigError(f'config.{name} must be a number >= 0 (0 turns the term off), got {v!r}')


def _tuple_hint(name: str, v) -> str:
  if isinstance(v, tuple) and len(v) == 1:
    if v[0] is None:
      return f' (on the command line `--config.{name}=None` gives (None,); set it to None in the config file)'
    return (f' (on the command line a single value becomes a 1-tuple; write all values, e.g. '
            f"--config.{name}='(a, b)')")
  return ''


def _pair(config, name: str, lo=None, hi=None, allow_none: bool = False, ordered: bool = False,
          what: str = '(low, high)'):
  v = _get(config, name)
  if v is None and allow_none:
    return
  ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) for x in v)
  if ok and lo is not None:
    ok = all(x >= lo for x in v)
  if ok and hi is not None:
    ok = all(x < hi for x in v)
  if ok and ordered:
    ok = v[0] <= v[1]
  if not ok:
    rng = f' with values in [{lo}, {hi})' if hi is not None else (f' with values >= {lo}' if lo is not None else '')
    order = ', low <= high' if ordered else ''
    none = ' or None' if allow_none else ''
    raise ConfigError(f'config.{name} must be a pair {what} of numbers{rng}{order}{none}, got {v!r}'
                      f'{_tuple_hint(name, v)}')


def _int_tuple(config, name: str, length: int | None = None, increasing: bool = False):
  v = _get(config, name)
  ok = isinstance(v, (tuple, list)) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
  if ok and length is not None:
    ok = len(v) == length
  if ok and increasing:
    ok = all(a < b for a, b in zip(v, v[1:]))
  if not ok:
    size = f'{length} ' if length else ''
    order = ', increasing' if increasing else ''
    raise ConfigError(f'config.{name} must be a tuple of {size}non-negative integers{order}, got {v!r}')


def _check_values(config):
  """Types and ranges: learning rates, weights, cadences and the tuple-valued fields."""
  for name in ('total_steps', 'log_every_steps', 'image_every_steps', 'checkpoint_every_steps', 'eval_every_steps',
               'keep_checkpoints', 'num_preview_images', 'data.batch_size', 'data.eval_batch_size',
               'loss.d_reg_every', 'loss.eye_size', 'loss.mouth_size'):
    _positive_int(config, name)
  _positive_int(config, 'loss.remove_pyramid_loss', minimum=0)
  for name in ('optim.g_lr', 'optim.d_lr', 'optim.dc_lr', 'optim.eps', 'optim.gamma', 'data.eye_enlarge_ratio'):
    _positive(config, name)
  for name in ('pixel_weight', 'pyramid_weight', 'perceptual_weight', 'style_weight', 'gan_weight', 'r1_weight',
               'component_gan_weight', 'comp_style_weight', 'identity_weight'):
    _weight(config, f'loss.{name}')
  for layer in config.loss.vgg_layer_weights.keys():
    _weight(config, f'loss.vgg_layer_weights.{layer}')
  ema = config.optim.ema_decay
  if not _is_number(ema) or not 0 <= ema <= 1:
    raise ConfigError(f'config.optim.ema_decay must be a number in [0, 1], got {ema!r}')
  for name in ('g_betas', 'd_betas', 'dc_betas'):
    _pair(config, f'optim.{name}', lo=0, hi=1, what='(beta1, beta2)')
  _int_tuple(config, 'optim.milestones', increasing=True)
  _int_tuple(config, 'model.arcface_kwargs.layers', length=4)
  dg = config.data.degradation
  for name in ('blur_sigma', 'downsample_range', 'noise_range', 'jpeg_range', 'brightness', 'contrast', 'saturation',
               'hue'):
    if name in dg:
      _pair(config, f'data.degradation.{name}', allow_none=True, ordered=True)
  if 'kernel_list' in dg and 'kernel_prob' in dg and dg.kernel_list is not None and dg.kernel_prob is not None:
    kl, kp = dg.kernel_list, dg.kernel_prob
    if not isinstance(kp, (tuple, list)) or len(kp) != len(kl) or not all(_is_number(p) and p >= 0 for p in kp):
      raise ConfigError(f'config.data.degradation.kernel_prob must be one probability >= 0 per kernel of '
                        f'kernel_list {tuple(kl)!r}, got {kp!r}')


def _check_devices(config):
  n_dev, n_proc = jax.device_count(), jax.process_count()
  for name in ('batch_size', 'eval_batch_size'):
    b = config.data[name]
    if b % n_dev:
      raise ConfigError(f'config.data.{name}={b} is not divisible by the {n_dev} devices')
    if b % n_proc:
      raise ConfigError(f'config.data.{name}={b} is not divisible by the {n_proc} processes')
  d_kw = config.model.discriminator_kwargs
  per_gpu = d_kw.get('stddev_per_gpu_batch', 0) or config.data.batch_size
  group = min(per_gpu, d_kw.get('stddev_group', 4))
  if config.data.batch_size % per_gpu or per_gpu % group:
    raise ConfigError(f'config.data.batch_size={config.data.batch_size} must be a multiple of the minibatch-stddev '
                      f'per-GPU batch {per_gpu}, and that of the group {group}: set '
                      'config.model.discriminator_kwargs.stddev_per_gpu_batch (0 = the whole batch) or stddev_group')


def _check_model(config):
  from gfpgan_jax import train_state as ts  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top
  try:
    ts.compute_dtype(config)
    ts.vgg_layer_names(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for size in (config.loss.eye_size, config.loss.mouth_size):
    if size % 4:
      raise ConfigError(f'component patch sizes must be multiples of 4, got {size}')
  if config.model.use_components and not config.data.crop_components:
    raise ConfigError('config.model.use_components needs config.data.crop_components (the eye/mouth boxes)')
  if config.data.source not in ('folder', 'lmdb', 'tfds', 'demo'):
    raise ConfigError(f"config.data.source must be 'folder', 'lmdb', 'tfds' or 'demo', got {config.data.source!r}")
  m = config.model
  if m.generator not in ts.DECODER_ARCH:
    raise ConfigError(f'config.model.generator must be one of {sorted(ts.DECODER_ARCH)}, got {m.generator!r}')
  for field, arch in (('generator_kwargs', m.generator), ('discriminator_kwargs', 'stylegan2_discriminator'),
                      ('arcface_kwargs', 'arcface')):
    try:
      archs.get(arch).config(**m[field].to_dict())
    except ValueError as e:
      raise ConfigError(f'config.model.{field}: {e}') from None


# ------------------------------------------------------------------------------
# Pretrained files.
# ------------------------------------------------------------------------------


def _init_paths(config) -> dict[str, str]:
  return {k: v for k, v in config.init.items() if isinstance(v, str) and v}


def check_init_paths(config):
  """Every non-empty `config.init.*` path exists (all missing ones in one error)."""
  missing = [f'config.init.{k}={v}' for k, v in _init_paths(config).items() if not os.path.exists(v)]
  if missing:
    raise ConfigError(f'pretrained weights not found: {", ".join(missing)} (no such file or directory; fix the path '
                      f'or pass an empty value)')


def check_loss_networks(config):
  """The frozen VGG19 / ArcFace must be pretrained unless `config.init.allow_random_loss_networks` opts out."""
  lc, init = config.loss, config.init
  needed = []
  if (lc.perceptual_weight or lc.style_weight) and not init.vgg19:
    needed.append(f'--config.init.vgg19={VGG19_FILE} (torchvision ImageNet VGG19, {VGG19_URL})')
  if config.model.use_identity and not init.arcface:
    needed.append(f'--config.init.arcface={ARCFACE_FILE} (official GFPGAN release v0.1.0, {ARCFACE_URL})')
  if needed and not init.get('allow_random_loss_networks', False):
    raise ConfigError('the perceptual/style and identity losses need pretrained loss networks; with random ones the '
                      f'run is meaningless. Pass {" and ".join(needed)}, or set '
                      '--config.init.allow_random_loss_networks=True to train with RANDOM ones on purpose')


def validate(config: ml_collections.ConfigDict):
  """Raises ConfigError naming the bad value; runs before any data is read, state built or code compiled."""
  _check_values(config)
  check_init_paths(config)
  check_loss_networks(config)
  _check_model(config)
  _check_devices(config)


# ------------------------------------------------------------------------------
# Resuming: the stored config.
# ------------------------------------------------------------------------------

_STREAM_KEYS = ('seed', 'data.seed', 'data.batch_size', 'data.shuffle', 'data.source', 'data.sources')


def field_kind(key: str) -> str:
  """'architecture', 'data stream' or 'other' for a dotted config field."""
  if key.startswith('model.') or key == 'data.resolution':
    return 'architecture'
  if key in _STREAM_KEYS or key.startswith('data.sources.'):
    return 'data stream'
  parts = key.split('.')
  if parts[0] == 'data' and len(parts) == 2 and 'eval' not in parts[1]:
    name = parts[1]
    if name.endswith(('_dir', '_dirs', '_path', '_paths')) and name != 'landmarks_path' or name.startswith(
        ('tfds_', 'lmdb')):
      return 'data stream'
  return 'other'


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b.c': value} of nested dicts (lists and tuples are values)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def _json_dict(config) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _has_checkpoints(workdir: pathlib.Path) -> bool:
  d = workdir / CHECKPOINT_DIR
  return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def _fmt(v) -> str:
  return json.dumps(v)


class ResumeCheck:
  """The outcome of `check_resume`: what changed against the stored config (nothing written yet)."""

  def __init__(self, previous: dict[str, Any] | None, changes: dict[str, tuple[Any, Any]]):
    self.previous = previous
    self.changes = changes

  def describe(self) -> list[str]:
    """One 'field (kind): old -> new' line per change."""
    return [f'{k} ({field_kind(k)}): {_fmt(a)} -> {_fmt(b)}' for k, (a, b) in sorted(self.changes.items())]

  def record(self, workdir: str | pathlib.Path):
    """Appends the accepted changes, with the previous config, to WORKDIR/config_changes.jsonl."""
    if not self.changes:
      return
    row = {'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
           'changes': {k: [a, b] for k, (a, b) in self.changes.items()},
           'kinds': {k: field_kind(k) for k in self.changes},
           'previous_config': self.previous}
    with open(pathlib.Path(workdir) / CHANGES_FILE, 'a', encoding='utf-8') as f:
      f.write(json.dumps(row) + '\n')


def _same_place_in_workdir(old: Any, new: Any, workdir: pathlib.Path) -> bool:
  """Whether `new`, a path inside `workdir`, names the same place as `old` did in a workdir since moved or copied.

  E.g. the demo's `data.train_dir`: '/old/w/demo_data/train' -> '/new/w/demo_data/train'.
  """
  if not isinstance(old, str) or not isinstance(new, str) or not old or not new:
    return False
  try:
    rel = pathlib.Path(new).absolute().relative_to(workdir.absolute()).parts
  except ValueError:
    return False
  return bool(rel) and pathlib.Path(old).parts[-len(rel):] == rel


def check_resume(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                 allow_config_change: bool = False) -> ResumeCheck:
  """Compares `config` with WORKDIR/config.json when WORKDIR holds checkpoints; writes nothing.

  Only fields in both are compared: a field only in `config` was added by a
  newer version, one only in the file is no longer read. A path inside the
  workdir (the demo's data) that names the same place in a moved or copied
  workdir is not a change.

  Raises:
    ConfigError: an architecture change (always), or a data-stream change
      without `allow_config_change`; the message lists every such field.
  """
  workdir = pathlib.Path(workdir)
  stored_file = workdir / CONFIG_FILE
  if not _has_checkpoints(workdir) or not stored_file.is_file():
    return ResumeCheck(None, {})
  try:
    previous = json.loads(stored_file.read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f'{stored_file} is unreadable ({type(e).__name__}: {e}); it records the config of the '
                      f'checkpoints in {workdir / CHECKPOINT_DIR}: restore it, or start a new --workdir') from None
  old, new = flatten(previous), flatten(_json_dict(config))
  changes = {k: (old[k], v) for k, v in new.items()
             if k in old and old[k] != v and not _same_place_in_workdir(old[k], v, workdir)}

  def listing(kind):
    return ', '.join(f'{k}: {_fmt(a)} -> {_fmt(b)}' for k, (a, b) in sorted(changes.items()) if field_kind(k) == kind)

  arch = listing('architecture')
  if arch:
    raise ConfigError(f'{workdir} holds checkpoints of another architecture; these fields differ from its '
                      f'{CONFIG_FILE}: {arch}. Resume with the stored values, or start a new --workdir')
  stream = listing('data stream')
  if stream and not allow_config_change:
    raise ConfigError(f'resuming {workdir} with a changed data stream ({stream}) would change the images the run '
                      f'sees from here on; restore the stored values, or pass --allow_config_change to accept it '
                      f'(recorded in {CHANGES_FILE})')
  return ResumeCheck(previous, changes)


def write_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict):
  """Writes WORKDIR/config.json atomically (a reader never sees half a file)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(config.to_json_best_effort(indent=2) + '\n')
  tmp.replace(path)
