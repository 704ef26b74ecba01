"""Test set-up: 8 virtual CPU devices, parsed absl flags, and the official PyTorch code."""

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
