"""Every network against the official PyTorch code (float32, shared random weights, same input)."""

import numpy as np
import pytest

from gfpgan_jax.testing import parity
from gfpgan_jax.testing import parity_cases


@pytest.mark.parametrize('name', [c.name for c in parity_cases.CASES])
def test_parity_with_official(official, name):
  result = parity_cases.run(parity_cases.CASES_BY_NAME[name], official)
  assert set(result.outputs) == set(result.reference)
  for key in result.reference:
    err = parity.assert_parity(result.outputs[key], result.reference[key], f'{name}/{key}')
    print(f'{name}/{key}: {err}')
  # The comparison is not vacuous: outputs vary and are not all zero.
  for key, ref in result.reference.items():
    assert np.std(ref) > 0, f'{name}/{key} is constant'
