"""Subprocesses of the tests that never outlive them: their own process group, killed on any exit.

Each child runs in a new session (its own process group, `start_new_session`)
and is started through a tiny launcher that sets `PR_SET_PDEATHSIG` to SIGKILL
and then `exec`s the command: the child dies with the process that started it,
even when that process is SIGKILLed (an OOM-killed or crashed pytest worker),
and no `preexec_fn` runs between fork and exec (unsafe with JAX's threads).
On every exit of `popen`'s `with` block or of `run` (return, exception,
timeout, Ctrl-C) the whole group is SIGKILLed, grandchildren included.
(PDEATHSIG follows the thread that started the child: start children from the
test's own thread, as pytest runs tests, not from a short-lived helper thread.)

    with procs.popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
      out, _ = proc.communicate(timeout=300)
    r = procs.run(cmd, capture_output=True, text=True, timeout=300)
"""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

# argv[1]: the parent's pid; argv[2:]: the command. PR_SET_PDEATHSIG is 1 (linux/prctl.h). The parent may die
# between fork and prctl: then the launcher's parent is no longer that pid, and it exits at once.
_LAUNCHER = ('import ctypes, os, signal, sys\n'
             'ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n'
             'if os.getppid() != int(sys.argv[1]):\n'
             '  os._exit(137)\n'
             'os.execvp(sys.argv[2], sys.argv[2:])\n')

_LIVE: set[int] = set()  # process groups started here and not yet killed


def launcher_argv(cmd: Sequence[str]) -> list[str]:
  """`cmd` behind the PDEATHSIG launcher (Linux; elsewhere `cmd` itself)."""
  if not sys.platform.startswith('linux'):
    return list(cmd)
  return [sys.executable, '-c', _LAUNCHER, str(os.getpid()), *map(str, cmd)]


def kill_group(pgid: int) -> None:
  """SIGKILLs process group `pgid` (a no-op when it is gone)."""
  _LIVE.discard(pgid)
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def kill_all() -> None:
  """SIGKILLs every group started here that is still recorded (the test session's last resort)."""
  for pgid in list(_LIVE):
    kill_group(pgid)


@contextlib.contextmanager
def popen(cmd: Sequence[str], **kwargs) -> Iterator[subprocess.Popen]:
  """`subprocess.Popen(cmd, **kwargs)` in its own process group, SIGKILLed (group and all) when the block exits.

  The child's pid is its group id. Signals sent with `proc.send_signal` reach the
  command itself (the launcher `exec`s it).
  """
  proc = subprocess.Popen(launcher_argv(cmd), start_new_session=True, **kwargs)
  _LIVE.add(proc.pid)
  try:
    yield proc
  finally:
    kill_group(proc.pid)
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
      if stream is not None:
        stream.close()


def run(cmd: Sequence[str], *, timeout: float | None = None, check: bool = False, input=None,  # pylint: disable=redefined-builtin
        capture_output: bool = False, **kwargs) -> subprocess.CompletedProcess:
  """`subprocess.run` with `popen`'s guarantees; on a timeout the group is killed and TimeoutExpired raised."""
  if capture_output:
    kwargs['stdout'] = kwargs['stderr'] = subprocess.PIPE
  if input is not None:
    kwargs['stdin'] = subprocess.PIPE
  with popen(cmd, **kwargs) as proc:
    stdout, stderr = proc.communicate(input, timeout=timeout)
    code = proc.wait()
  result = subprocess.CompletedProcess(list(cmd), code, stdout, stderr)
  if check:
    result.check_returncode()
  return result
