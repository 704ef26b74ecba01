"""Resuming from the newest checkpoint step that verifies and restores, falling back past bad ones.

For each step, newest first:
  1. its checksum manifest is verified (`checkpoint_manifest`; a step without
     one, from an older version or a run stopped before the manifest, is
     restored unverified);
  2. its JSON files (`_CHECKPOINT_METADATA`, `state/_METADATA`, the data
     iterator's state) are parsed;
  3. it is restored (train state and data iterator), and `check` (e.g. all
     parameters finite) runs on the result.
A step failing any of these is logged with the step and the file; the newest
step that passes wins, and the newer bad steps are moved into
`WORKDIR/checkpoints_rejected/` (never deleted; they would otherwise clash
with the steps the resumed run writes). With `strict`, the first failure stops
the run instead, and nothing is moved.
"""

import json
import logging
import pathlib
import re
import time
from typing import Any, Callable

import jax
import numpy as np

from gfpgan_jax import checkpoint_manifest as manifest

log = logging.getLogger('gfpgan_jax.train')
PyTree = Any


class NoUsableCheckpointError(manifest.CorruptCheckpointError):
  """Every step of the workdir failed; names each step's problem."""

  def __init__(self, directory, failures: list[manifest.CorruptCheckpointError]):
    self.failures = failures
    first = failures[0]
    RuntimeError.__init__(self, f'no checkpoint in {directory} restores: ' + '; '.join(
        f'step {e.step}: {e.path}: {e.reason}' for e in failures) + '. Nothing was moved or deleted; move the '
        f'checkpoints/ folder aside to start afresh')
    self.step, self.path, self.reason = first.step, first.path, first.reason


def _check_json(step: int, step_dir: pathlib.Path):
  files = [step_dir / '_CHECKPOINT_METADATA', step_dir / 'state' / '_METADATA']
  if (step_dir / 'data_iter').is_dir():
    files += sorted((step_dir / 'data_iter').glob('*.json'))
  for f in files:
    if not f.is_file():
      raise manifest.CorruptCheckpointError(step, f, 'missing')
    try:
      json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
      raise manifest.CorruptCheckpointError(step, f, f'not valid JSON ({type(e).__name__}: {e})') from e


def _file_named_in(exc: BaseException, step_dir: pathlib.Path) -> str:
  """The first path under `step_dir` named anywhere in the exception chain, else the step directory."""
  pattern = re.compile(re.escape(str(step_dir)) + r'[^\s\'",:;)\]]*')
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    m = pattern.search(str(e))
    if m:
      return m.group(0)
    todo += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return str(step_dir)


def _try_step(ckpt, step: int, abstract_state, data_iter, check):
  step_dir = ckpt.step_dir(step)
  if not manifest.verify(step_dir, step):
    log.warning('checkpoint step %d has no checksum manifest (an older version wrote it, or the run stopped '
                'before the manifest): restoring it unverified', step)
  _check_json(step, step_dir)
  try:
    state = ckpt.restore(step, abstract_state, data_iter)
    if check is not None:
      check(state)
  except Exception as e:  # pylint: disable=broad-except
    raise manifest.CorruptCheckpointError(step, _file_named_in(e, step_dir),
                                          f'restore failed ({type(e).__name__}: {str(e)[:300]})') from e
  return state


def _agree(ok: bool) -> bool:
  """Whether every process succeeded (one process's failure makes all of them fall back)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _move_aside(ckpt, step: int) -> pathlib.Path:
  rejected = ckpt.workdir / 'checkpoints_rejected'
  target = rejected / str(step)
  if target.exists():
    target = rejected / f'{step}.{time.strftime("%Y%m%d-%H%M%S")}'
  if jax.process_index() == 0:
    rejected.mkdir(exist_ok=True)
    ckpt.step_dir(step).rename(target)
  return target


def restore_latest(ckpt, abstract_state: PyTree, data_iter=None, strict: bool = False,
                   check: Callable[[PyTree], None] | None = None) -> tuple[PyTree | None, int | None]:
  """Restores the newest usable step of `ckpt` (a `checkpointing.Checkpointer`).

  Args:
    ckpt: the checkpointer of the workdir.
    abstract_state: the restore target (shapes, dtypes and shardings).
    data_iter: the grain iterator, restored in place.
    strict: stop at the first failing step instead of falling back.
    check: called on a restored state; raising marks the step unusable.

  Returns:
    (state, step), or (None, None) when the workdir has no checkpoint.

  Raises:
    CorruptCheckpointError: `strict` and the newest step fails (step and file named).
    NoUsableCheckpointError: every step fails.
  """
  steps = sorted(ckpt.all_steps(), reverse=True)
  failures = []
  for step in steps:
    error = None
    try:
      state = _try_step(ckpt, step, abstract_state, data_iter, check)
    except manifest.CorruptCheckpointError as e:
      error = e
    if _agree(error is None):
      break
    error = error or manifest.CorruptCheckpointError(step, ckpt.step_dir(step), 'failed on another process')
    if strict:
      raise manifest.CorruptCheckpointError(error.step, error.path, error.reason + ' (--strict_resume: stopping; '
                                            'rerun without it to fall back to the previous step)') from error
    log.error('CHECKPOINT STEP %d IS UNUSABLE: %s: %s', step, error.path, error.reason)
    failures.append(error)
  else:
    if failures:
      raise NoUsableCheckpointError(ckpt.directory, failures)
    return None, None
  for bad in failures:
    moved = _move_aside(ckpt, bad.step)
    log.error('FELL BACK from checkpoint step %d to step %d; the bad step is kept in %s', bad.step, step, moved)
  if failures:
    _barrier()
    ckpt.manager.reload()
  return state, step


def _barrier():
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('gfpgan_jax-resume-fallback')
