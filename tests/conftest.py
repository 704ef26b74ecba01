"""Test set-up: 8 virtual CPU devices, parsed absl flags, the official PyTorch code, memory and process hygiene."""

import ctypes
import gc
import os
import tempfile

import jax

jax.config.update('jax_num_cpu_devices', 8)
# Persistent compilation cache: the training tests compile the same step several times
# (and in subprocesses, which get the directory through JAX_COMPILATION_CACHE_DIR).
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(tempfile.gettempdir(), 'gfpgan_jax_xla'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.FLAGS.mark_as_parsed()  # grain reads absl flags


@pytest.fixture(scope='session')
def official():
  """The official GFPGAN/basicsr architecture modules (downloaded once with pip)."""
  from gfpgan_jax.testing import official as official_lib  # pylint: disable=g-import-not-at-top
  return official_lib.load()


# The training tests (several processes each compiling the whole step, or several runs in the worker) need most
# of the 24 GiB of a CI machine: they share one xdist worker (`--dist loadgroup`) and are scheduled first, so that
# they overlap the short tests of the other worker and never each other.
_HEAVY_MODULES = ('trainer_test', 'sigint_test', 'checkpoint_faults_test', 'compile_metrics_test', 'paired_test',
                  'bf16_train_test')


def pytest_collection_modifyitems(config, items):
  del config
  heavy = [it for it in items if it.module.__name__.rpartition('.')[2] in _HEAVY_MODULES]
  for it in heavy:
    it.add_marker(pytest.mark.xdist_group('heavy_training'))
  heavy_ids = {id(it) for it in heavy}
  items[:] = heavy + [it for it in items if id(it) not in heavy_ids]


try:
  _LIBC = ctypes.CDLL('libc.so.6')
except OSError:  # not glibc
  _LIBC = None


@pytest.fixture(autouse=True)
def _return_freed_memory():
  """After each test, hands freed heap pages back to the OS (glibc keeps them otherwise; a worker's RSS then only
  grows, by GBs over the suite)."""
  yield
  gc.collect()
  if _LIBC is not None:
    _LIBC.malloc_trim(0)


def pytest_sessionfinish(session, exitstatus):
  """Last resort: no subprocess started through `gfpgan_jax.testing.procs` outlives the session.

  Every subprocess-spawning test uses `procs.popen`/`procs.run` (own process
  group, SIGKILLed on any exit; PDEATHSIG when the worker itself is killed).
  """
  del session, exitstatus
  from gfpgan_jax.testing import procs  # pylint: disable=g-import-not-at-top
  procs.kill_all()
