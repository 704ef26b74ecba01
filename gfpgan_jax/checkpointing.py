"""Training checkpoints: Orbax `CheckpointManager` holding the train state and the data iterator.

Layout of a workdir:

    WORKDIR/config.json            the experiment config
    WORKDIR/model.json             generator arch + kwargs (what `export` needs)
    WORKDIR/checkpoints/<step>/    {state, data_iter} (Orbax; written atomically)
    WORKDIR/tb/                    TensorBoard events (process 0)

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save never leaves a half-written checkpoint behind; saves are
asynchronous (the training loop goes on while arrays are written).
"""

import json
import logging
import pathlib
import signal
import threading
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from gfpgan_jax import train_state as ts
from gfpgan_jax.convert import state_dict as sd_lib

PyTree = Any
CHECKPOINT_DIR = 'checkpoints'
MODEL_FILE = 'model.json'


class Checkpointer:
  """Saves and restores `{state, data_iter}` under `WORKDIR/checkpoints`."""

  def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: ts.TrainState, data_iter=None, force: bool = True) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: ts.TrainState, data_iter=None) -> ts.TrainState:
    """Restores `state` (with the shardings of `abstract_state`) and, in place, the data iterator."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items))['state']

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def write_model_info(workdir: str | pathlib.Path, arch: str, kwargs: dict[str, Any]):
  """Records the generator arch so exports need neither the trainer nor its config."""
  info = {'arch': arch, 'kwargs': {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
  path = pathlib.Path(workdir) / MODEL_FILE
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
  tmp.replace(path)


def load_generator_ema(workdir: str | pathlib.Path, step: int | None = None) -> tuple[str, dict[str, Any], PyTree, int]:
  """G-EMA of a training workdir: (arch, kwargs, {'params', 'noises'} as numpy, step).

  Only `g_ema_params` and `g_noises` are read, as host numpy arrays, so this
  works on any machine: not the devices, mesh or sharding of the run that
  saved them (restoring without a target would ask for the saving topology).

  Args:
    workdir: a training workdir (`model.json` + `checkpoints/`).
    step: the checkpoint step; default the latest.

  Raises:
    FileNotFoundError: not a training workdir, no checkpoint in it, or no
      checkpoint of `step`.
    ConversionError: an unreadable `model.json` or checkpoint.
  """
  workdir = pathlib.Path(workdir).absolute()
  info_file = workdir / MODEL_FILE
  if not info_file.is_file() or not (workdir / CHECKPOINT_DIR).is_dir():
    raise FileNotFoundError(f'{workdir} is not a gfpgan_jax training workdir (no {MODEL_FILE} / {CHECKPOINT_DIR}/)')
  try:
    info = json.loads(info_file.read_text())
    arch, kwargs = info['arch'], dict(info['kwargs'])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise sd_lib.ConversionError(f'{info_file} is corrupt: {type(e).__name__}: {e}') from e
  restored, step = restore_numpy(workdir, step, ('g_ema_params', 'g_noises'))
  variables = {'params': restored['g_ema_params'], 'noises': restored['g_noises']}
  return arch, kwargs, variables, step


def restore_numpy(workdir: str | pathlib.Path, step: int | None = None,
                  fields: tuple[str, ...] | None = None) -> tuple[dict[str, Any], int]:
  """Reads (some fields of) a saved train state as host numpy arrays, on any machine.

  Unlike a restore to devices, this needs neither the devices, mesh nor
  sharding of the run that saved it.

  Args:
    workdir: a training workdir.
    step: the checkpoint step; default the latest.
    fields: `TrainState` fields to read (default all).

  Returns:
    ({field: pytree of np.ndarray}, step).

  Raises:
    FileNotFoundError: no checkpoint, or none of `step`.
    ConversionError: an unreadable checkpoint.
  """
  directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
  handlers = {'state': ocp.PyTreeCheckpointHandler()}
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Orbax warns that it skips the data iterator, which is intended
  try:
    return _restore_numpy(directory, step, fields, handlers)
  finally:
    absl_logger.setLevel(level)


def _restore_numpy(directory, step, fields, handlers):
  with ocp.CheckpointManager(directory, item_names=('state',), item_handlers=handlers) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    step = steps[-1] if step is None else int(step)
    if step not in steps:
      raise FileNotFoundError(f'no checkpoint of step {step} in {directory}; steps: {steps}')
    try:
      saved = manager.item_metadata(step)['state'].tree
      item = {k: saved[k] for k in (fields or saved)}
      as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=item, restore_args=as_numpy, partial_restore=True)))['state']
    except Exception as e:  # pylint: disable=broad-except
      raise sd_lib.ConversionError(f'cannot read step {step} in {directory}: {type(e).__name__}: {e}') from e
  return jax.tree.map(np.asarray, restored), step


class SigtermFlag:
  """Turns SIGTERM into a flag the training loop polls (save, then exit cleanly)."""

  def __init__(self):
    self.raised = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
