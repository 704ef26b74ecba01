"""Parity cases: each official network, randomly initialised, against ours on the same input.

Shared by `tests/*parity_test.py`, the conversion tests and the benchmarks. A
case builds the official PyTorch module, converts its state dict with
`gfpgan_jax.convert.torch_to_flax`, runs both in float32 on the same input and
returns named outputs (NHWC) for comparison. The cases live in
`gfpgan_jax/testing/cases/`, one module per network family.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax import convert
from gfpgan_jax.convert import archs
from gfpgan_jax.testing import parity
from gfpgan_jax.testing.cases import bilinear
from gfpgan_jax.testing.cases import parsenet
from gfpgan_jax.testing.cases import restoreformer
from gfpgan_jax.testing.cases import retinaface
from gfpgan_jax.testing.cases import rrdbnet
from gfpgan_jax.testing.cases import training
from gfpgan_jax.testing.cases.base import Case

CASES: list[Case] = [*training.CASES, *bilinear.CASES, *restoreformer.CASES, *retinaface.CASES, *parsenet.CASES,
                     *rrdbnet.CASES]
CASES_BY_NAME = {c.name: c for c in CASES}


@dataclasses.dataclass
class Result:
  case: Case
  torch_module: Any
  state_dict: dict[str, np.ndarray]
  flax_module: Any
  variables: Any
  reference: dict[str, np.ndarray]
  outputs: dict[str, np.ndarray]

  def errors(self) -> dict[str, parity.Errors]:
    return {k: parity.errors(self.outputs[k], self.reference[k]) for k in self.reference}


def run(case: Case, official, seed: int = 0) -> Result:
  """Builds both networks with shared random weights and runs them on the same input."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  tm = case.official(official, dict(case.kwargs)).eval()
  parity.randomize_torch_module(tm, seed)
  sd = getattr(tm, 'torchvision_state_dict', None) or parity.state_dict_numpy(tm)
  variables = convert.torch_to_flax(sd, case.arch, **case.kwargs)
  module, _ = archs.build(case.arch, **case.kwargs)
  inputs = case.inputs(np.random.RandomState(seed))
  with torch.no_grad():
    reference = case.run_torch(tm, inputs)
  jin = jax.tree.map(jnp.asarray, inputs)
  outputs = {k: np.asarray(v) for k, v in case.run_flax(module, variables, jin).items()}
  return Result(case, tm, parity.state_dict_numpy(tm), module, variables, reference, outputs)
