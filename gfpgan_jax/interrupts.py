"""SIGTERM and Ctrl-C (SIGINT) for the trainer: save and stop where possible, exit at once where not.

Python runs signal handlers in the main thread between bytecodes, so a signal
that arrives during an XLA compile (minutes of C++) is seen only after it; a
`KeyboardInterrupt` raised there, or at interpreter teardown with XLA's threads
alive, ended in segmentation faults. So the handlers here are no-ops, and a
watcher thread reads the signal numbers from `signal.set_wakeup_fd` at once:

* SIGTERM, or a first SIGINT while the loop runs steps: a flag that the loop
  polls after each step; it then saves the current step and stops (exit code
  0 for SIGTERM, a preemption; 130 for SIGINT).
* A first SIGINT before the loop (building, restoring) or while the main thread
  compiles: nothing is being saved then, so after any in-flight checkpoint
  write has finished, one line naming the last checkpoint and `os._exit(130)`.
* A second SIGINT: one line and `os._exit(130)` at once. A checkpoint write in
  flight is abandoned; Orbax writes each step into a temporary directory and
  renames it only when complete, so no half-written step looks complete.
"""

import logging
import os
import signal
import sys
import threading
from typing import Callable

log = logging.getLogger('gfpgan_jax.train')
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

_active = None


def _flush_logs():
  for logger in (logging.getLogger(), logging.getLogger('gfpgan_jax'), log, logging.getLogger('absl')):
    for h in logger.handlers:
      try:
        h.flush()
      except Exception:  # pylint: disable=broad-except
        pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass


def exit_now(message: str, code: int = EXIT_INTERRUPTED):
  """Prints one line and ends the process at once (no interpreter teardown, so no XLA-thread crash)."""
  _flush_logs()
  os.write(2, (message + '\n').encode())
  os._exit(code)  # pylint: disable=protected-access


# Functions of jax/_src on the stack of a trace (`jit_trace`), a lowering or a compile (jax 0.8).
_COMPILE_FRAMES = ('jit_trace', 'jit_lower', 'lower', 'compile')


def main_thread_compiling() -> bool:
  """Whether the main thread is tracing, lowering or compiling a jitted function (from its Python stack)."""
  frame = sys._current_frames().get(threading.main_thread().ident)  # pylint: disable=protected-access
  while frame is not None:
    name, path = frame.f_code.co_name, frame.f_code.co_filename.replace(os.sep, '/')
    if '/jax/_src/' in path and (path.endswith('/compiler.py') or name in _COMPILE_FRAMES):
      return True
    frame = frame.f_back
  return False


class StopSignals:
  """SIGTERM/SIGINT handling of one training run (see the module docstring).

  Attributes:
    raised: a stop was asked for (the loop saves the current step and stops).
    signal_name: 'SIGTERM' or 'SIGINT', the first stop signal received.
    phase: 'start' (building, restoring), 'loop' (running steps) or 'end' (closing); set by the trainer. Only in
      'loop', and not while compiling, does a first SIGINT wait for the step and save it.
  """

  def __init__(self, sigint: bool = True):
    self.raised = False
    self.signal_name = None
    self.phase = 'start'
    self._sigints = 0
    self._describe = lambda: 'unknown (the run had not opened its checkpoints yet)'
    self._wait_for_write = lambda: None
    self._previous = {}
    self._wakeup = None
    if threading.current_thread() is not threading.main_thread():
      return  # signals can only be handled in the main thread (e.g. a trainer run from a worker thread)
    signums = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    if sigint:
      r, w = os.pipe()
      os.set_blocking(w, False)
      self._wakeup = (r, w, signal.set_wakeup_fd(w, warn_on_full_buffer=False))
      threading.Thread(target=self._watch, args=(r,), name='gfpgan_jax-signals', daemon=True).start()
    for s in signums:
      self._previous[s] = signal.signal(s, self._handle)

  def attach(self, describe_last_checkpoint: Callable[[], str], wait_for_write: Callable[[], None]):
    """Names the last checkpoint in exit messages; lets an immediate exit wait for an in-flight write."""
    self._describe, self._wait_for_write = describe_last_checkpoint, wait_for_write

  def _handle(self, signum, frame):
    del frame
    if self._wakeup is None:  # SIGTERM only, handled in the main thread
      self._stop(signum)

  def _stop(self, signum):
    self.signal_name = self.signal_name or signal.Signals(signum).name
    self.raised = True

  def _watch(self, fd):
    while True:
      try:
        data = os.read(fd, 64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum == signal.SIGTERM:
          self._stop(signum)
        elif signum == signal.SIGINT:
          self._on_sigint()

  def _on_sigint(self):
    self._sigints += 1
    if self._sigints > 1:
      exit_now(f'interrupted again (SIGINT): exiting at once; an in-flight checkpoint write is abandoned (it never '
               f'looks complete); the last checkpoint is {self._safe_describe()}')
    self._stop(signal.SIGINT)
    compiling = main_thread_compiling()
    if self.phase == 'loop' and not compiling:
      log.warning('SIGINT: saving the current step, then stopping (press Ctrl-C again to exit at once)')
      return
    where = 'while compiling' if compiling else {'start': 'before training started', 'end': 'while closing'}[self.phase]
    # Off the watcher thread, so that a second Ctrl-C still exits at once while a write is awaited.
    threading.Thread(target=self._exit_unsaved, args=(where,), daemon=True).start()

  def _exit_unsaved(self, where):
    try:
      self._wait_for_write()
    except Exception as e:  # pylint: disable=broad-except
      log.error('the in-flight checkpoint write failed: %s', e)
    exit_now(f'interrupted (SIGINT) {where}: exiting without saving; the last checkpoint is '
             f'{self._safe_describe()}; rerun the same command to resume')

  def _safe_describe(self) -> str:
    try:
      return self._describe()
    except Exception as e:  # pylint: disable=broad-except
      return f'unknown ({type(e).__name__}: {e})'

  def restore(self):
    """Puts back the previous handlers (the watcher thread is left to idle: it only reads a private pipe)."""
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}
    if self._wakeup is not None:
      signal.set_wakeup_fd(self._wakeup[2])
      self._wakeup = None


def install(sigint: bool = True) -> StopSignals:
  """The process-wide handlers, installed once (by `gfpgan_jax.train` before anything slow)."""
  global _active
  if _active is None:
    _active = StopSignals(sigint)
  return _active


def active() -> StopSignals | None:
  return _active
