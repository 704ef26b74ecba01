"""Converted-checkpoint directories (Orbax variables + a JSON of the arch) and `load_generator`.

Layout of a directory written by `save`:

    DIR/gfpgan_jax.json   {"format": 1, "arch": ..., "kwargs": {...}, ...}
    DIR/variables/        Orbax checkpoint of {'params': ..., 'noises': ...}

The directory is assembled under a temporary name and renamed into place, so
a crash never leaves a half-written checkpoint at DIR.
"""

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gfpgan_jax.convert import archs
from gfpgan_jax.convert import state_dict as sd_lib

META_FILE = 'gfpgan_jax.json'
VARIABLES_DIR = 'variables'
FORMAT_VERSION = 1


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def save(directory: str | os.PathLike,
         variables: dict[str, Any],
         arch: str,
         kwargs: dict[str, Any] | None = None,
         overwrite: bool = False,
         **meta) -> pathlib.Path:
  """Writes variables of `arch` as a converted checkpoint directory.

  Args:
    directory: output directory (must not exist unless `overwrite`).
    variables: Flax variables; checked against `arch` before anything is written.
    arch: arch name (`gfpgan_jax.convert.archs.ARCHS`).
    kwargs: constructor options over the released defaults.
    overwrite: replace an existing directory.
    **meta: extra JSON-serialisable fields for the metadata file.

  Returns:
    The directory path.
  """
  directory = pathlib.Path(directory).absolute()
  cfg = archs.get(arch).config(**(kwargs or {}))
  sd_lib.check_variables(variables, arch, **cfg)
  if directory.exists() and not overwrite:
    raise FileExistsError(f'{directory} exists; pass overwrite=True (--overwrite) to replace it')
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
  try:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / VARIABLES_DIR, jax.tree.map(np.asarray, variables))
    ckptr.wait_until_finished()
    info = {'format': FORMAT_VERSION, 'arch': arch, 'kwargs': _jsonable(cfg), **meta}
    (tmp / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
    if directory.exists():
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return directory


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
  """The metadata of a converted checkpoint or export directory."""
  directory = pathlib.Path(directory)
  meta_file = directory / META_FILE
  if not meta_file.is_file():
    raise sd_lib.ConversionError(f'{directory} is not a gfpgan_jax checkpoint directory (no {META_FILE})')
  try:
    meta = json.loads(meta_file.read_text())
  except json.JSONDecodeError as e:
    raise sd_lib.ConversionError(f'{meta_file} is corrupt: {e}') from e
  if meta.get('format') != FORMAT_VERSION or 'arch' not in meta:
    raise sd_lib.ConversionError(f'{meta_file}: unsupported format {meta.get("format")!r}')
  return meta


def load(directory: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any]]:
  """Reads a converted checkpoint directory.

  Returns:
    (arch, complete kwargs, variables as numpy arrays).

  Raises:
    ConversionError: not a checkpoint directory, truncated/corrupt files, or
      variables that do not match the recorded arch.
  """
  directory = pathlib.Path(directory).absolute()
  meta = read_meta(directory)
  arch = meta['arch']
  cfg = archs.get(arch).config(**meta.get('kwargs', {}))
  try:
    restored = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
  except Exception as e:  # pylint: disable=broad-except
    raise sd_lib.ConversionError(f'cannot read the variables of {directory}: {type(e).__name__}: {e}') from e
  variables = jax.tree.map(np.asarray, restored)
  sd_lib.check_variables(variables, arch, **cfg)
  return arch, cfg, variables


def is_workdir(path: pathlib.Path) -> bool:
  """Whether `path` is a training workdir (`model.json` or `checkpoints/`, not a converted checkpoint)."""
  from gfpgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  return path.is_dir() and not (path / META_FILE).exists() and (
      (path / checkpointing.MODEL_FILE).is_file() or (path / checkpointing.CHECKPOINT_DIR).is_dir())


def load_any(path: pathlib.Path, step: int | None = None):
  """(arch, kwargs, variables) of a converted/export directory or of a training workdir's G-EMA.

  Args:
    path: converted checkpoint or export directory, or a training workdir.
    step: checkpoint step of a workdir (default: the latest).

  Raises:
    FileNotFoundError: no such path, or a workdir without (that) checkpoint.
    ConversionError: unreadable, or variables that do not match the arch.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'not found: {path}')
  if is_workdir(path):
    from gfpgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
    arch, kwargs, variables, _ = checkpointing.load_generator_ema(path, step)
    cfg = archs.get(arch).config(**kwargs)
    sd_lib.check_variables(variables, arch, **cfg)
    return arch, cfg, variables
  if step is not None:
    raise sd_lib.ConversionError(f'--step applies to training workdirs only; {path} is not one')
  return load(path)


def read_network(path: str | os.PathLike,
                 arch: str | None = None,
                 **kwargs) -> tuple[str, dict[str, Any], dict[str, Any]]:
  """`(arch, complete kwargs, variables)` of any convertible network, from a directory or a `.pth`.

  Args:
    path: a converted checkpoint directory, an export directory, a training
      workdir (its latest G-EMA), or an official `.pth` (arch and options
      detected from the keys unless given; `params_ema`, else `params`, else a
      bare state dict; a `module.` prefix is stripped).
    arch: the arch of a `.pth` (required where the keys cannot tell, e.g.
      'gfpganbilinear'); for a directory, the arch it must hold.
    **kwargs: constructor options for a `.pth` (override the options read
      from its keys, which are used also when `arch` is given).

  Raises:
    FileNotFoundError: nothing at `path`.
    ConversionError: not loadable as `arch`, or a directory of another arch.
    ValueError: an unknown arch or option, or options for a directory.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    found, cfg, variables = load_any(path)
    if arch is not None and found != arch:
      raise sd_lib.ConversionError(f'{path} holds a {found!r}, not a {arch!r}')
    if kwargs:
      raise ValueError(f'options {sorted(kwargs)} apply to a .pth only; {path} records its own: {cfg}')
    return found, cfg, variables
  if not path.is_file():
    raise FileNotFoundError(f'no checkpoint at {path}')
  from gfpgan_jax.convert import detect  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import pth  # pylint: disable=g-import-not-at-top
  sd, _ = pth.read_pth(path)
  if arch is None:
    found = detect.detect_arch(sd)
    if found is None:
      raise sd_lib.ConversionError(f'{path}: {detect.describe(sd)}; pass the arch explicitly')
    arch, detected = found
  else:
    detected = detect.options_for(sd, arch)
  kwargs = {**detected, **kwargs}
  variables = sd_lib.torch_to_flax(sd, arch, **kwargs)
  return arch, archs.get(arch).config(**kwargs), variables


def load_network(path: str | os.PathLike,
                 arch: str | None = None,
                 dtype: Any = jnp.float32,
                 **kwargs) -> tuple[nn.Module, dict[str, Any]]:
  """Returns `(module, variables)` of any convertible network (see `read_network` for the arguments).

  `dtype` is the compute dtype of the module; parameters stay float32.
  """
  arch, cfg, variables = read_network(path, arch, **kwargs)
  module, _ = archs.build(arch, dtype=dtype, **cfg)
  return module, variables


def load_generator(path: str | os.PathLike,
                   arch: str | None = None,
                   dtype: Any = jnp.float32,
                   **kwargs) -> tuple[nn.Module, dict[str, Any]]:
  """Returns `(module, variables)` of a generator (`load_network` for restoring archs only).

  Args:
    path: a converted checkpoint directory, an export directory, a training
      workdir (its latest G-EMA), or an official `.pth` (arch and options
      detected from the keys unless given).
    arch: force this arch for a `.pth`.
    dtype: compute dtype of the returned module (parameters stay float32).
    **kwargs: constructor options for a `.pth` (override the detected ones).

  Raises:
    ConversionError: not a generator checkpoint, or not loadable.
  """
  if pathlib.Path(path).is_dir():
    arch = None  # a directory records its arch
  arch, cfg, variables = read_network(path, arch, **kwargs)
  if not archs.get(arch).is_generator:
    raise sd_lib.ConversionError(f'{path} holds a {arch!r}, not a generator')
  module, _ = archs.build(arch, dtype=dtype, **cfg)
  return module, variables
