"""Device mesh and shardings: data parallel by default, optional FSDP for the large tensors.

The mesh has two axes, ('data', 'fsdp'). Batches are split over both; with
`fsdp > 1` every parameter (and its Adam moments and EMA copy) with at least
`fsdp_min_size` elements is split along its largest dimension divisible by the
fsdp axis size, and everything else is replicated. Under `jax.jit` XLA
inserts the gathers and reductions (no pmap, no pmean).
"""

import math
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections

PyTree = Any
BATCH_AXES = ('data', 'fsdp')


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """A ('data', 'fsdp') mesh over all devices of all processes.

  `config.mesh.fsdp` devices per FSDP group; `config.mesh.data` = -1 takes the rest.
  """
  n = jax.device_count()
  fsdp = int(config.mesh.fsdp)
  data = int(config.mesh.data)
  if data == -1:
    if n % fsdp:
      raise ValueError(f'mesh.fsdp={fsdp} does not divide the {n} devices')
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f'mesh data x fsdp = {data} x {fsdp} does not match the {n} devices')
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _leaf_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp == 0:
      spec = [None] * len(shape)
      spec[d] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_state: PyTree, mesh: jax.sharding.Mesh, fsdp_min_size: int = 2**18) -> PyTree:
  """NamedShardings for a (abstract) state pytree: FSDP-split large arrays, replicate the rest."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(tuple(x.shape), fsdp, fsdp_min_size)),
                      abstract_state)
