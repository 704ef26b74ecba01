"""What a parity case is, and the helpers the case families share."""

from collections.abc import Callable
import dataclasses
from typing import Any

import numpy as np

from gfpgan_jax import xla_options
from gfpgan_jax.testing import parity

# Our side is compiled as gfpgan_jax compiles its own functions: parity is checked on that program.
jit = xla_options.jit


@dataclasses.dataclass(frozen=True)
class Case:
  """One parity case.

  Attributes:
    name: case id.
    arch: converter arch name.
    kwargs: arch options (complete constructor kwargs of the official class are
      derived from these; `official_kwargs` adds the positional/extra ones).
    official: (official modules, kwargs) -> torch module.
    inputs: numpy RandomState -> dict of NHWC float32 inputs.
    run_torch: (torch module, inputs) -> {name: NHWC array}.
    run_flax: (flax module, variables, inputs) -> {name: array}.
    heavy: a released-size network; tests that only need its layout (the
      round trip) skip its forward pass.
    detected_as: the arch `detect_arch` returns for its state dict (another
      arch with the identical schema, e.g. GFPGANBilinear -> gfpganv1), when
      not `arch`.
  """
  name: str
  arch: str
  kwargs: dict[str, Any]
  official: Callable[[Any, dict[str, Any]], Any]
  inputs: Callable[[np.random.RandomState], dict[str, np.ndarray]]
  run_torch: Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]
  run_flax: Callable[[Any, Any, dict[str, np.ndarray]], dict[str, Any]]
  heavy: bool = False
  detected_as: str | None = None


def to_torch(x):
  """NHWC numpy -> NCHW torch tensor (other ranks unchanged)."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(parity.nhwc_to_nchw(x) if np.ndim(x) == 4 else np.array(x))


def images(size, batch=1, channels=3, low=-1.0, high=1.0, width=None):
  """Inputs `{'x': U(low, high) [batch, size, width or size, channels]}`."""
  return lambda rs: {'x': rs.uniform(low, high, (batch, size, width or size, channels)).astype(np.float32)}
