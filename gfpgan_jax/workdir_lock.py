"""One training run per workdir: an exclusive OS lock on `WORKDIR/.lock`.

The lock is `fcntl.flock` on an open file: the kernel drops it when its
process ends in any way (SIGKILL included), so it never goes stale. The file
stays behind and holds the holder's pid, host and start time, which a second
run reads to name the holder in its error. Forked children (data workers)
close their copy of the descriptor at once, so a surviving child never keeps
the lock of a dead trainer.

Multi-host runs: only process 0 takes the lock; every process then learns the
outcome from process 0 (a broadcast, which is also the barrier the others wait
at) and all of them fail together when the workdir is held.
"""

import datetime
import fcntl
import json
import os
import pathlib
import socket

import numpy as np

LOCK_FILE = '.lock'

_HELD_FDS: set[int] = set()  # descriptors of the locks this process holds (closed in forked children)


def _close_in_child():
  for fd in list(_HELD_FDS):
    try:
      os.close(fd)
    except OSError:
      pass
  _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir's lock (its pid and host are in the message)."""


def holder(workdir: str | pathlib.Path) -> dict:
  """The pid, host and start time recorded by the lock's last holder ({} if unreadable)."""
  try:
    info = json.loads((pathlib.Path(workdir) / LOCK_FILE).read_text())
    return info if isinstance(info, dict) else {}
  except (OSError, ValueError):
    return {}


def _locked_message(workdir: pathlib.Path) -> str:
  info = holder(workdir)
  who = (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {info.get('started', '?')})"
         if info else 'another process (no pid recorded yet)')
  return (f'{workdir} is in use by another training run: {who}. One run per workdir: wait for it to end or stop '
          f'it, or pass another --workdir.')


class WorkdirLock:
  """An exclusive, non-blocking lock on `workdir/.lock`; a context manager.

  Args:
    workdir: the training workdir (must exist).
  """

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir).absolute()
    self.path = self.workdir / LOCK_FILE
    self._fd = None

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock and records this process in the file.

    Raises:
      WorkdirLockedError: another process holds it (named in the message).
    """
    if self._fd is not None:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirLockedError(_locked_message(self.workdir)) from None
    except BaseException:
      os.close(fd)
      raise
    _HELD_FDS.add(fd)
    self._fd = fd
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
    return self

  def release(self):
    """Drops the lock (the file stays; its record is harmless once unlocked)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    _HELD_FDS.discard(fd)
    try:
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def lock_for_run(workdir: str | pathlib.Path) -> WorkdirLock:
  """The workdir's lock for a (possibly multi-process) run: process 0 locks, all processes learn the result.

  Returns:
    The lock (held on process 0, a no-op handle elsewhere); `release()` it at the end.

  Raises:
    WorkdirLockedError: on every process, when another run holds the workdir.
  """
  import jax  # pylint: disable=g-import-not-at-top
  lock = WorkdirLock(workdir)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = WorkdirLockedError(_locked_message(lock.workdir) + ' (process 0 could not take the lock)')
  if error is not None:
    raise error
  return lock
