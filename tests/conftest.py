"""Test set-up: 8 virtual CPU devices, parsed absl flags, and the official PyTorch code."""

import jax

jax.config.update('jax_num_cpu_devices', 8)

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.FLAGS.mark_as_parsed()  # grain reads absl flags


@pytest.fixture(scope='session')
def official():
  """The official GFPGAN/basicsr architecture modules (downloaded once with pip)."""
  from gfpgan_jax.testing import official as official_lib  # pylint: disable=g-import-not-at-top
  return official_lib.load()
