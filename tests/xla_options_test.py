"""XLA compiler options: what they switch on the CPU, the opt-outs, and unchanged numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfpgan_jax import xla_options
from gfpgan_jax.models import vgg


@pytest.fixture(autouse=True)
def _fresh_probe():
  xla_options._use_cpu_options.cache_clear()  # pylint: disable=protected-access
  yield
  xla_options._use_cpu_options.cache_clear()  # pylint: disable=protected-access


def test_cpu_gets_the_options_unless_opted_out(monkeypatch):
  monkeypatch.delenv('GFPGAN_JAX_XLA_DEFAULTS', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '')
  assert jax.default_backend() == 'cpu'
  options = xla_options.compiler_options()
  assert options == xla_options.CPU_OPTIONS
  options['extra'] = '1'  # a copy: callers may extend it
  assert xla_options.compiler_options() == xla_options.CPU_OPTIONS

  xla_options._use_cpu_options.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setenv('GFPGAN_JAX_XLA_DEFAULTS', '1')
  assert xla_options.compiler_options() == {}

  xla_options._use_cpu_options.cache_clear()  # pylint: disable=protected-access
  monkeypatch.delenv('GFPGAN_JAX_XLA_DEFAULTS')
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=-reduce')  # the user's own choice
  assert xla_options.compiler_options() == {}


def test_unknown_option_falls_back_to_the_defaults(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setattr(xla_options, 'CPU_OPTIONS', {'xla_cpu_no_such_option_here': ''})
  assert xla_options.compiler_options() == {}


def test_the_options_change_the_program_not_the_result():
  module = vgg.VGGFeatureExtractor(range_norm=True)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  variables = module.init(jax.random.key(0), x)
  fn = lambda v, x: module.apply(v, x)
  lowered = jax.jit(fn).lower(variables, x)
  tuned, default = lowered.compile(compiler_options=xla_options.CPU_OPTIONS), lowered.compile()
  # The default program hands the network to YNNPACK fusions; the tuned one does not.
  assert '__ynn_fusion' in default.as_text() and '__ynn_fusion' not in tuned.as_text()
  out, ref = tuned(variables, x), default(variables, x)
  for name in ref:
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-4 * float(jnp.abs(ref[name]).max()))
