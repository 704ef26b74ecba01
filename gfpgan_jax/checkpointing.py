"""Training checkpoints: Orbax `CheckpointManager` holding the train state and the data iterator.

Layout of a workdir:

    WORKDIR/config.json            the experiment config
    WORKDIR/model.json             generator arch + kwargs (what `export` needs)
    WORKDIR/checkpoints/<step>/    {state, data_iter} (Orbax; written atomically) + checksum manifest
    WORKDIR/checkpoints_rejected/  steps that failed verification or restore at a resume (kept for inspection)
    WORKDIR/tb/                    TensorBoard events (process 0)

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save never leaves a half-written checkpoint behind; saves are
asynchronous (the training loop goes on while arrays are written).
"""

import contextlib
import errno
import json
import logging
import pathlib
import shutil
import threading
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from gfpgan_jax import checkpoint_manifest as manifest
from gfpgan_jax import train_state as ts
from gfpgan_jax.convert import state_dict as sd_lib

log = logging.getLogger('gfpgan_jax.train')
PyTree = Any
CHECKPOINT_DIR = 'checkpoints'
MODEL_FILE = 'model.json'
REJECTED_DIR = 'checkpoints_rejected'  # unusable steps, moved aside by a resume (never deleted)
_STEP_METADATA = '_CHECKPOINT_METADATA'  # Orbax writes it into every committed step directory


class DiskFullError(OSError):
  """A checkpoint write ran out of disk space (one line: path, bytes needed and free, last good step)."""

  def __str__(self):
    return self.strerror


class Checkpointer:
  """Saves and restores `{state, data_iter}` under `WORKDIR/checkpoints`, with verified manifests.

  Each step is written by Orbax (asynchronously); once its commit has finished,
  process 0 writes its checksum manifest (`checkpoint_manifest`), lazily: at
  the next `save`, `wait` or `close`. `restore_latest` restores the newest step
  that verifies and restores, falling back past bad steps (moved aside into
  `WORKDIR/checkpoints_rejected/`, never deleted).
  """

  def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3, async_save: bool = True):
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._lock = threading.RLock()
    self._pending = []  # steps saved by this run whose manifest is not written yet
    self._good = set()  # steps known to restore: written (and committed) by this run, or restored
    self._saving = None  # the step being written, until its commit is known to be finished

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def committed_steps(self) -> list[int]:
    """Steps whose directory is complete on disk (Orbax renames a step's temporary directory when done)."""
    if not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.name.isdigit() and (p / _STEP_METADATA).is_file())

  def save(self, step: int, state: ts.TrainState, data_iter=None, force: bool = True) -> bool:
    """Starts an (asynchronous) save of `step`, after finishing the previous one and its manifest.

    Raises:
      DiskFullError: the disk filled up (this save's or the previous one's).
    """
    items = {'state': ocp.args.StandardSave(state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
    with self._lock:
      self._finish(step)
      with self._disk_errors(step, state):
        self._saving = step
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
      if saved:
        self._pending.append(step)
      else:
        self._saving = None
      return saved

  def restore(self, step: int, abstract_state: ts.TrainState, data_iter=None) -> ts.TrainState:
    """Restores `state` (with the shardings of `abstract_state`) and, in place, the data iterator."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items))['state']

  def restore_latest(self, abstract_state: ts.TrainState, data_iter=None, strict: bool = False,
                     check: Callable[[ts.TrainState], None] | None = None) -> tuple[ts.TrainState | None, int | None]:
    """Restores the newest step that verifies and restores; see `resume.restore_latest`."""
    from gfpgan_jax import resume  # pylint: disable=g-import-not-at-top
    state, step = resume.restore_latest(self, abstract_state, data_iter, strict, check)
    if step is not None:
      self._good.add(step)
    return state, step

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def saving_step(self) -> int | None:
    """The step being written in the background, if any (its commit is not finished yet)."""
    return self._saving

  def last_good_step(self, verify: bool = True) -> int | None:
    """The newest step that verifies against its manifest (or, unverified, that this run wrote or restored).

    Waits for an in-flight save first. Steps without a manifest that this run
    did not write or restore are not vouched for.
    """
    with self._lock:
      try:
        self._finish(None)
      except Exception:  # pylint: disable=broad-except
        pass  # a failed save is not a good step; the error itself is reported by `wait`/`save`
      for step in sorted(self.committed_steps(), reverse=True):
        vouched = step in self._good
        if not verify and vouched:
          return step
        try:
          if manifest.verify(self.step_dir(step), step) or vouched:
            return step
        except manifest.CorruptCheckpointError as e:
          log.error('%s', e)
      return None

  def describe_last_good(self, verify: bool = False) -> str:
    """'step N in DIR' for the last good step; without `verify`, lock-free (for signal handlers: no waiting)."""
    if verify:
      step = self.last_good_step(verify=True)
    else:
      good = (self._good | set(self._pending)) & set(self.committed_steps())
      step = max(good) if good else None
    return f'step {step} in {self.directory}' if step is not None else f'none (nothing saved in {self.directory})'

  def wait(self):
    """Waits for the in-flight save and writes its manifest (raises DiskFullError on a full disk)."""
    with self._lock:
      self._finish(None)

  def close(self):
    self.wait()
    self.manager.close()

  def _finish(self, next_step: int | None):
    """Waits for the in-flight save; writes the manifests of the committed steps of this run (process 0)."""
    step = self._saving
    with self._disk_errors(step if step is not None else next_step, None):
      self.manager.wait_until_finished()
      self._saving = None
      committed = set(self.committed_steps())
      for s in self._pending:
        if s in committed:
          if jax.process_index() == 0:
            manifest.write(self.step_dir(s))
          self._good.add(s)
      self._pending = []

  @contextlib.contextmanager
  def _disk_errors(self, step, state):
    """Turns a full disk (ENOSPC anywhere in the exception chain) into one DiskFullError line."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not _is_disk_full(e):
        raise
      self._saving = None
      self._pending = [s for s in self._pending if s != step]
      raise DiskFullError(errno.ENOSPC, self._disk_full_message(step, state)) from e

  def _disk_full_message(self, step, state) -> str:
    good = sorted(set(self.committed_steps()) & self._good) or self.committed_steps()
    if good:
      needed = manifest.directory_bytes(self.step_dir(good[-1]))
    else:
      needed = sum(int(x.nbytes) for x in jax.tree.leaves(state)) if state is not None else 0
    free = shutil.disk_usage(self.directory).free
    last = f'step {good[-1]}' if good else 'none'
    return (f'no space left on the device of {self.directory} while writing checkpoint step {step}: it needs about '
            f'{needed} bytes ({needed / 2**20:.1f} MiB), {free} bytes ({free / 2**20:.1f} MiB) are free; the last '
            f'good checkpoint is {last} (intact). Free some space and rerun the same command to resume')


def _is_disk_full(exc: BaseException) -> bool:
  """Whether ENOSPC is anywhere in the chain (causes, contexts, exception groups) of `exc`."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(e) or 'ENOSPC' in str(e):
      return True
    todo += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return False


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
