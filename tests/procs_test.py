"""The tests' subprocess helper: a child and its whole process group die on every exit, a killed parent included."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from gfpgan_jax.testing import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie waiting to be reaped by init counts as dead)."""
  try:
    state = pathlib.Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()[0]
  except (FileNotFoundError, ProcessLookupError):
    return False
  return state not in ('Z', 'X')


def _wait_dead(pid: int, seconds: float = 10) -> bool:
  deadline = time.time() + seconds
  while time.time() < deadline:
    if not _alive(pid):
      return True
    time.sleep(0.05)
  return False


def _read_pids(path: pathlib.Path, n: int, seconds: float = 20) -> list[int]:
  deadline = time.time() + seconds
  while time.time() < deadline:
    lines = path.read_text().split() if path.exists() else []
    if len(lines) >= n:
      return [int(x) for x in lines[:n]]
    time.sleep(0.05)
  raise AssertionError(f'{path}: no {n} pids after {seconds} s')


def test_an_exception_in_the_block_kills_the_child_and_its_grandchildren(tmp_path):
  pids = tmp_path / 'pids'
  with pytest.raises(RuntimeError, match='test failed'):
    with procs.popen(['sh', '-c', f'sleep 600 & echo $! >> {pids}; echo $$ >> {pids}; wait']) as proc:
      child, grandchild = _read_pids(pids, 2)[::-1]
      assert child == proc.pid and os.getpgid(grandchild) == proc.pid  # one group, not the test's
      assert os.getpgid(proc.pid) != os.getpgid(0)
      raise RuntimeError('test failed')
  assert _wait_dead(child) and _wait_dead(grandchild)


def test_run_kills_the_group_on_a_timeout(tmp_path):
  pids = tmp_path / 'pids'
  start = time.time()
  with pytest.raises(subprocess.TimeoutExpired):
    procs.run(['sh', '-c', f'sleep 600 & echo $! >> {pids}; wait'], timeout=2)
  assert time.time() - start < 30
  assert _wait_dead(_read_pids(pids, 1)[0])


def test_run_returns_the_commands_exit_code_and_output():
  r = procs.run([sys.executable, '-c', 'import sys; print("hi"); sys.exit(3)'], capture_output=True, text=True)
  assert (r.returncode, r.stdout) == (3, 'hi\n')
  with pytest.raises(subprocess.CalledProcessError):
    procs.run(['false'], check=True)


def test_a_sigkilled_worker_leaves_no_orphan(tmp_path):
  """What a crashed or OOM-killed pytest worker does: its training subprocess must not run on."""
  pids = tmp_path / 'pids'
  worker_code = (
      'import subprocess, sys, time\n'
      'from gfpgan_jax.testing import procs\n'
      f'with procs.popen(["sh", "-c", "echo $$ >> {pids}; exec sleep 600"]) as p:\n'
      '  time.sleep(600)\n')
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  with procs.popen([sys.executable, '-c', worker_code], env=env) as worker:
    (child,) = _read_pids(pids, 1)
    assert _alive(child)
    os.kill(worker.pid, signal.SIGKILL)  # no finally, no atexit: only PDEATHSIG can act
    assert worker.wait(timeout=30) == -signal.SIGKILL
    assert _wait_dead(child), f'the child {child} of a SIGKILLed worker is still running'
