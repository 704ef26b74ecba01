"""The CPU-friendly forms of three ops against their plain forms: values and gradients.

`conv_transpose2x`, `max_pool2x` and `matmul_few_rows` (gfpgan_jax/models/layers.py)
replace ops whose gradients XLA:CPU computes slowly; each must compute the same
function and the same gradient.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest
import torch

from gfpgan_jax.models import layers


def _conv_transpose_dilated(x, w):
  return lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), [(2, 2), (2, 2)], lhs_dilation=(2, 2),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=lax.Precision.HIGHEST)


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize('shape', [(2, 5, 7, 3, 4), (1, 1, 1, 2, 2), (3, 8, 8, 16, 8)])
def test_conv_transpose2x_matches_torch_and_the_dilated_form(shape):
  n, h, w_, i, o = shape
  rs = np.random.RandomState(0)
  x = rs.randn(n, h, w_, i).astype(np.float32)
  w = rs.randn(3, 3, i, o).astype(np.float32)
  got = layers.conv_transpose2x(jnp.asarray(x), jnp.asarray(w))
  ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                             torch.from_numpy(w).permute(2, 3, 0, 1), stride=2)
  ref = ref.permute(0, 2, 3, 1).numpy()
  assert got.shape == (n, 2 * h + 1, 2 * w_ + 1, o) == ref.shape
  assert _rel(got, ref) < 1e-6
  cot = rs.randn(*ref.shape).astype(np.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * cot)
  g_got = jax.grad(loss(layers.conv_transpose2x), argnums=(0, 1))(x, w)
  g_ref = jax.grad(loss(_conv_transpose_dilated), argnums=(0, 1))(x, w)
  for a, b in zip(g_got, g_ref):
    assert _rel(a, b) < 1e-6


def test_max_pool2x_value_and_torch_gradient_with_ties():
  rs = np.random.RandomState(1)
  x = rs.randn(2, 7, 6, 3).astype(np.float32)
  x[0, 0:2, 0:2, 0] = 1.5  # a window of four equal maxima
  x[1, 2:4, 2:4, 1] = [[0.0, 2.0], [2.0, 0.0]]  # two
  got = layers.max_pool2x(jnp.asarray(x))
  np.testing.assert_array_equal(got, nn.max_pool(jnp.asarray(x), (2, 2), (2, 2)))
  cot = rs.randn(*got.shape).astype(np.float32)
  g = jax.grad(lambda v: jnp.sum(layers.max_pool2x(v) * cot))(x)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  (torch.nn.functional.max_pool2d(xt, 2) * torch.from_numpy(cot).permute(0, 3, 1, 2)).sum().backward()
  np.testing.assert_array_equal(g, xt.grad.permute(0, 2, 3, 1).numpy())
  assert g[0, 0, 0, 0] == cot[0, 0, 0, 0] and g[0, 0, 1, 0] == g[0, 1, 0, 0] == g[0, 1, 1, 0] == 0


@pytest.mark.parametrize('rows', [1, 4, 12])
def test_matmul_few_rows_gradients(rows):
  rs = np.random.RandomState(2)
  x, w = rs.randn(rows, 64).astype(np.float32), rs.randn(64, 32).astype(np.float32)
  np.testing.assert_allclose(layers.matmul_few_rows(x, w), jnp.dot(x, w), rtol=1e-6, atol=1e-6)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  got = jax.grad(loss(layers.matmul_few_rows), argnums=(0, 1))(x, w)
  ref = jax.grad(loss(jnp.dot), argnums=(0, 1))(x, w)
  for a, b in zip(got, ref):
    assert _rel(a, b) < 1e-6
