"""One run per workdir (the lock), and a refused resume that leaves the workdir as it was."""

import contextlib
import functools
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import portpicker
import pytest

from configs import ffhq
from gfpgan_jax import checkpointing
from gfpgan_jax import config_checks
from gfpgan_jax import restore
from gfpgan_jax import train_state as ts
from gfpgan_jax import trainer
from gfpgan_jax import workdir_lock
from gfpgan_jax.testing import procs as procs_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# `python -c _HOLD WORKDIR [fork]`: takes the lock, optionally forks a child that outlives it, and sleeps. It prints
# "locked" only once the child runs: the lock's at-fork hook has then closed the child's copy of the descriptor
# (before the child's fork() returned), so killing the holder right after the line cannot race that hook.
_HOLD = ('import os, sys, time; from gfpgan_jax import workdir_lock; '
         'lock = workdir_lock.WorkdirLock(sys.argv[1]).acquire(); '
         'ready_r, ready_w = os.pipe(); '
         'child = os.fork() if len(sys.argv) > 2 else -1\n'
         'if child == 0:\n  os.write(ready_w, b"r"); time.sleep(600); os._exit(0)\n'
         'if child > 0:\n  assert os.read(ready_r, 1) == b"r"\n'
         'print("locked", os.getpid(), child, flush=True); time.sleep(600)')


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return env


@contextlib.contextmanager
def _holder(workdir, fork=False):
  """A subprocess (own process group, killed on exit) holding the lock; yields (proc, holder pid, child pid)."""
  args = [sys.executable, '-c', _HOLD, str(workdir)] + (['fork'] if fork else [])
  with procs_lib.popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True) as proc:
    line = proc.stdout.readline().split()
    assert line[:1] == ['locked'], line + [proc.stdout.read()]
    yield proc, int(line[1]), int(line[2])


def _snapshot(workdir):
  """{relative path: sha256} of every file under `workdir` but the lock file."""
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(workdir).rglob('*')) if p.is_file() and p.name != workdir_lock.LOCK_FILE}


def test_second_lock_names_the_holder_and_sigkill_leaves_no_stale_lock(tmp_path):
  with _holder(tmp_path) as (proc, pid, _):
    with pytest.raises(workdir_lock.WorkdirLockedError) as e:
      workdir_lock.WorkdirLock(tmp_path).acquire()
    assert f'pid {pid} on host {socket.gethostname()}' in str(e.value) and '\n' not in str(e.value)
    assert workdir_lock.holder(tmp_path)['pid'] == pid
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
  # The kernel dropped the dead holder's lock: no stale lock, though its record stays in the file.
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    assert lock.held and workdir_lock.holder(tmp_path)['pid'] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLockedError):  # a second lock in the same process is refused too
      workdir_lock.WorkdirLock(tmp_path).acquire()
  with workdir_lock.WorkdirLock(tmp_path):  # released
    pass


def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path):
  with _holder(tmp_path, fork=True) as (proc, pid, child):
    assert child > 0
    os.kill(pid, signal.SIGKILL)  # the holder only: its forked child (a data worker, say) lives on
    proc.wait(timeout=60)
    os.kill(child, 0)  # still alive
    with workdir_lock.WorkdirLock(tmp_path) as lock:
      assert lock.held


# `python -c _DISTRIBUTED PORT ID WORKDIR`: jax.distributed on 2 CPU processes, then `lock_for_run`.
_DISTRIBUTED = ('import sys, jax; jax.config.update("jax_cpu_collectives_implementation", "gloo"); '
                'jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2])); '
                'from gfpgan_jax import workdir_lock\n'
                'try:\n  lock = workdir_lock.lock_for_run(sys.argv[3]); print("held", lock.held, flush=True)\n'
                'except workdir_lock.WorkdirLockedError as e:\n  print("refused", e, flush=True)')


def _two_processes(workdir):
  port = portpicker.pick_unused_port()
  cmds = [[sys.executable, '-c', _DISTRIBUTED, str(port), str(i), str(workdir)] for i in range(2)]
  with contextlib.ExitStack() as stack:
    procs = [stack.enter_context(procs_lib.popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True)) for cmd in cmds]
    return [p.communicate(timeout=240)[0] for p in procs]


def test_multi_process_runs_lock_on_process_0_only(tmp_path):
  outs = _two_processes(tmp_path)
  assert 'held True' in outs[0] and 'held False' in outs[1], outs
  with _holder(tmp_path) as (_, pid, _):
    outs = _two_processes(tmp_path)
  for out in outs:  # both processes fail, naming the holder
    assert f'refused {tmp_path} is in use by another training run: pid {pid}' in out, outs


# ------------------------------------------------------------------------------ a training workdir


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  """A workdir as a tiny run leaves it: config.json, model.json and a checkpoint of step 2 (written directly)."""
  config = ffhq.get_config('tiny')
  config.model.use_components = False  # faster to initialise; not needed here
  wd = tmp_path_factory.mktemp('run')
  nets = ts.build_networks(config)
  state = jax.jit(functools.partial(ts.init_state, nets, config))(jax.random.key(0))
  config_checks.write_config(wd, trainer._demo_resolved_view(config, wd))  # pylint: disable=protected-access
  checkpointing.write_model_info(wd, nets.g_arch, nets.g_kwargs)
  ckpt = checkpointing.Checkpointer(wd)
  ckpt.save(2, state.replace(step=state.step * 0 + 2))
  ckpt.wait()
  ckpt.close()
  return config, wd


def _restores(wd, tmp_path):
  face = tmp_path / 'face.png'
  Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3), np.uint8)).save(face)
  out = tmp_path / 'out'
  assert restore.main(['--weights', str(wd), '--input', str(face), '--output', str(out), '--aligned',
                       '--bg_upsampler', 'none']) == 0
  return (out / 'restored_faces' / 'face_00.png').is_file()


def test_second_trainer_exits_with_the_holder_and_changes_nothing(first_run, tmp_path):
  config, wd = first_run
  before = _snapshot(wd)
  with _holder(wd) as (_, pid, _):
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f'pid {pid} on host'):
      trainer.train_and_evaluate(config, wd)
    # The command: one line on stderr naming the holder, no traceback, at once.
    start = time.time()
    cmd = [sys.executable, '-m', 'gfpgan_jax.train', '--config', f'{ROOT}/configs/ffhq.py:tiny', '--workdir', str(wd)]
    proc = procs_lib.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    err = proc.stderr
    assert proc.returncode == 1
    errors = [l for l in err.splitlines() if 'error' in l.lower() or 'Traceback' in l]
    assert errors == [f'gfpgan_jax.train: error: {wd} is in use by another training run: pid {pid} on host '
                      f'{socket.gethostname()} (started {workdir_lock.holder(wd)["started"]}). One run per workdir: '
                      'wait for it to end or stop it, or pass another --workdir.'], err
    assert time.time() - start < 60
  assert _snapshot(wd) == before  # the first run's checkpoints, config and model files are untouched
  assert not (wd / 'demo_data').exists()


@pytest.mark.parametrize('updates, allowed, fields', [
    ({'model.generator_kwargs.narrow': 0.5, 'data.resolution': 64, 'model.generator_kwargs.out_size': 64}, True,
     ['data.resolution: 32 -> 64', 'model.generator_kwargs.narrow: 0.25 -> 0.5',
      'model.generator_kwargs.out_size: 32 -> 64']),
    ({'data.batch_size': 16, 'seed': 1}, False, ['data.batch_size: 8 -> 16', 'seed: 0 -> 1']),
])
def test_refused_config_change_writes_nothing_and_restore_still_works(first_run, tmp_path, updates, allowed, fields):
  config, wd = first_run
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(updates)
  before = _snapshot(wd)
  model_json, config_json = (wd / 'model.json').read_bytes(), (wd / 'config.json').read_bytes()
  flag = [False, True] if allowed else [False]
  for allow in flag:  # an architecture change is refused even with allow_config_change
    with pytest.raises(config_checks.ConfigError) as e:
      trainer.train_and_evaluate(config, wd, allow_config_change=allow)
    message = str(e.value)
    assert '\n' not in message and ', '.join(fields) in message, message  # those fields, and only those
    assert message.count(' -> ') == len(fields), message
    assert ('--allow_config_change' in message) == (not allowed)
  assert (wd / 'model.json').read_bytes() == model_json and (wd / 'config.json').read_bytes() == config_json
  assert _snapshot(wd) == before and not (wd / config_checks.CHANGES_FILE).exists()
  with workdir_lock.WorkdirLock(wd):  # the refused run released the lock
    pass
  assert _restores(wd, tmp_path)
  assert json.loads((wd / 'model.json').read_text())['kwargs']['narrow'] == 0.25
