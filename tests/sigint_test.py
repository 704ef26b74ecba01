"""Ctrl-C (SIGINT) of `python -m gfpgan_jax.train`: during a compile, during steps, and twice.

Every subprocess runs in its own session and its whole process group is killed
on any exit of the test.
"""

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from gfpgan_jax import checkpoint_manifest as manifest
from gfpgan_jax import checkpointing
from gfpgan_jax import trainer
from gfpgan_jax.testing import procs
from trainer_test import _TRAIN_WITH_DEVICES, ROOT, _flat_state, _subprocess_env, load_config


class _Proc:
  """A subprocess (`procs.popen`: its own process group) with its merged output read line by line."""

  def __init__(self, proc):
    self.proc = proc
    self.lines, self._queue = [], queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    try:
      for line in self.proc.stdout:
        self._queue.put(line)
    except (OSError, ValueError):  # the pipe closed under the reader when the test ended first
      pass
    self._queue.put(None)

  def wait_for(self, predicate, timeout):
    """Reads output until predicate(output so far) holds; fails on exit or timeout."""
    deadline = time.time() + timeout
    while not predicate(''.join(self.lines)):
      assert time.time() < deadline, f'timed out; output:\n{self.output}'
      try:
        line = self._queue.get(timeout=0.5)
      except queue.Empty:
        continue
      assert line is not None, f'exited early ({self.proc.poll()}); output:\n{self.output}'
      self.lines.append(line)

  def sigint(self):
    os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group

  def finish(self, timeout) -> int:
    rc = self.proc.wait(timeout=timeout)
    while (line := self._queue.get(timeout=10)) is not None:
      self.lines.append(line)
    return rc

  @property
  def output(self):
    return ''.join(self.lines)


@pytest.fixture
def spawn():
  """start(args, env) -> _Proc; every group started is SIGKILLed when the test ends (`procs.popen`)."""
  with contextlib.ExitStack() as stack:

    def start(args, env):
      return _Proc(stack.enter_context(procs.popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True)))

    yield start


def _train_cmd(workdir, *overrides):
  return [sys.executable, '-c', _TRAIN_WITH_DEVICES, '8', '--config', f'{ROOT}/configs/ffhq.py:tiny', '--workdir',
          str(workdir), '--config.loss.d_reg_every=2', '--config.eval_every_steps=1000',
          '--config.image_every_steps=1000', *overrides]


def _assert_clean(out):
  for crash in ('Segmentation fault', 'Fatal Python error', 'Traceback', 'core dumped', 'KeyboardInterrupt'):
    assert crash not in out, out


def test_sigint_during_compile_exits_at_once_with_130(tmp_path, spawn):
  # An empty compilation cache: the train step really compiles (for minutes on 2 cores).
  env = _subprocess_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'empty_cache'))
  p = spawn(_train_cmd(tmp_path / 'w', '--config.total_steps=4'), env)
  p.wait_for(lambda out: 'Training source' in out, timeout=300)
  time.sleep(3)  # into the compile of the state's initialisation
  sent = time.time()
  p.sigint()
  rc = p.finish(timeout=60)
  assert rc == 130, p.output
  assert time.time() - sent < 30, 'the exit waited for the compile'
  _assert_clean(p.output)
  # Tracing and compiling the initialisation, or between two compiles (where nothing is written either).
  assert re.search(r'interrupted \(SIGINT\) (while compiling|before training started): exiting without saving; '
                   r'the last checkpoint is none \(nothing saved in ' + re.escape(str(tmp_path / 'w' / 'checkpoints')),
                   p.output), p.output
  assert not (tmp_path / 'w' / 'checkpoints').exists() or not any((tmp_path / 'w' / 'checkpoints').iterdir())


def test_sigint_during_steps_saves_the_step_and_exits_130(tmp_path, spawn):
  env = _subprocess_env(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or '')
  workdir = tmp_path / 'w'
  p = spawn(_train_cmd(workdir, '--config.total_steps=1000', '--config.checkpoint_every_steps=2'), env)
  deadline = time.time() + 600
  while not (workdir / 'checkpoints' / '2').exists():
    assert p.proc.poll() is None and time.time() < deadline, p.output
    time.sleep(0.5)
  p.sigint()
  rc = p.finish(timeout=120)
  assert rc == 130, p.output
  _assert_clean(p.output)
  ckpt = checkpointing.Checkpointer(workdir)
  saved = ckpt.committed_steps()[-1]
  assert 2 <= saved < 1000
  assert f'interrupted (SIGINT): saved step {saved} in {workdir / "checkpoints"}' in p.output, p.output
  assert f'preempted (SIGINT): saved step {saved}' in p.output
  assert manifest.verify(ckpt.step_dir(saved), saved)  # committed, and its manifest written
  ckpt.close()


_COMPILE = '''
import sys
sys.path.insert(0, sys.argv[1])
from gfpgan_jax import interrupts
signals = interrupts.install()
signals.attach(lambda: 'step 7 in /somewhere', lambda: None)
signals.phase = 'loop'
import threading, time
import jax, jax.numpy as jnp
def f(x):  # about 2 s of tracing, lowering and compiling on an idle 2-core CPU
  for i in range(1500):
    x = jnp.sin(x) * i + jnp.cos(x[::-1])
  return x
def say_when_compiling():  # so that the test signals inside the compile, however fast the machine
  while not interrupts.main_thread_compiling():
    time.sleep(0.005)
  print('inside the compile', flush=True)
threading.Thread(target=say_when_compiling, daemon=True).start()
print('compiling', flush=True)
jax.jit(f).lower(jnp.ones(16)).compile()
print('compiled', flush=True)
'''


def test_sigint_during_a_checkpoint_write_saves_and_resumes_bit_exactly(tmp_path, spawn):
  """Ctrl-C while Orbax writes a step (a temporary step directory exists): that write and the current step are
  saved, and the resumed run ends bit-identical to an uninterrupted one."""
  env = _subprocess_env(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or '')
  workdir = tmp_path / 'w'
  p = spawn(_train_cmd(workdir, '--config.total_steps=1000', '--config.checkpoint_every_steps=1'), env)
  deadline = time.time() + 600
  while not any('orbax-checkpoint-tmp' in q.name for q in (workdir / 'checkpoints').glob('*')
                if q.name.partition('.')[0] not in ('', '1')):  # a write after the first one
    assert p.proc.poll() is None and time.time() < deadline, p.output
    time.sleep(0.05)
  p.sigint()
  rc = p.finish(timeout=120)
  assert rc == 130, p.output
  _assert_clean(p.output)
  ckpt = checkpointing.Checkpointer(workdir)
  saved = ckpt.committed_steps()[-1]
  assert 2 <= saved < 1000
  assert f'interrupted (SIGINT): saved step {saved} in {workdir / "checkpoints"}' in p.output, p.output
  assert all(manifest.verify(ckpt.step_dir(s), s) for s in ckpt.committed_steps())  # no half-written step
  ckpt.close()

  total = saved + 2  # past the interruption, through one more R1 step
  config = load_config(total_steps=total, checkpoint_every_steps=1, image_every_steps=1000)
  assert trainer.train_and_evaluate(config, workdir)[1]['step'] == total
  assert trainer.train_and_evaluate(config, tmp_path / 'reference')[1]['step'] == total
  a, b = _flat_state(workdir, total), _flat_state(tmp_path / 'reference', total)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigint_while_the_loop_compiles_exits_at_once(spawn):
  """In the loop, a first SIGINT waits for the step; unless the main thread is compiling (seen from its stack)."""
  p = spawn([sys.executable, '-c', _COMPILE, str(ROOT)], _subprocess_env(JAX_COMPILATION_CACHE_DIR=''))
  p.wait_for(lambda out: 'inside the compile' in out, timeout=60)
  p.sigint()
  assert p.finish(timeout=30) == 130, p.output
  _assert_clean(p.output)
  assert 'compiled' not in p.output.replace('compiling', '')
  assert ('interrupted (SIGINT) while compiling: exiting without saving; the last checkpoint is step 7 in '
          '/somewhere') in p.output, p.output


_LOOP = '''
import sys, time
sys.path.insert(0, sys.argv[1])
from gfpgan_jax import interrupts
signals = interrupts.install()
signals.attach(lambda: 'step 7 in /somewhere', lambda: None)
signals.phase = 'loop'
print('ready', flush=True)
while True:
  time.sleep(0.05)
  if signals.raised:
    print('stop flag seen', flush=True)
    signals.raised = False
'''


def test_second_sigint_exits_at_once(spawn):
  p = spawn([sys.executable, '-c', _LOOP, str(ROOT)], _subprocess_env())
  p.wait_for(lambda out: 'ready' in out, timeout=60)
  p.sigint()
  p.wait_for(lambda out: 'stop flag seen' in out, timeout=30)  # the first one only asks the loop to stop
  assert p.proc.poll() is None
  p.sigint()
  assert p.finish(timeout=30) == 130
  _assert_clean(p.output)
  assert 'SIGINT: saving the current step, then stopping (press Ctrl-C again to exit at once)' in p.output
  assert ('interrupted again (SIGINT): exiting at once; an in-flight checkpoint write is abandoned (it never looks '
          'complete); the last checkpoint is step 7 in /somewhere') in p.output, p.output


def test_sigint_before_the_loop_exits_at_once(spawn):
  p = spawn([sys.executable, '-c', _LOOP.replace("signals.phase = 'loop'", ''), str(ROOT)],
            _subprocess_env())
  p.wait_for(lambda out: 'ready' in out, timeout=60)
  p.sigint()
  assert p.finish(timeout=30) == 130
  _assert_clean(p.output)
  assert 'stop flag seen' not in p.output
  assert ('interrupted (SIGINT) before training started: exiting without saving; the last checkpoint is step 7 in '
          '/somewhere') in p.output, p.output

