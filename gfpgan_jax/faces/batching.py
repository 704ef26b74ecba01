"""Restores (and parses) aligned faces in fixed-size batches, sharded over the local devices.

`FaceBatcher` runs the generator on batches of `batch_size` faces (the last
one padded to a power-of-two bucket), one compilation per face size and bucket. The batch is split over a 1-D
device mesh ('faces': every local device) with `NamedSharding`; the weights
are replicated. With a face parser (ParseNet) the restored faces stay on the
device and are parsed in the same batch: only the class maps ([N, 512, 512]
uint8, ParseNet's argmax) come back.

Decoder noise. With `randomize_noise` (the official behaviour) every face
gets its own key, `fold_in(key, global face index)`, where the global index is
the face's position in the whole run (image order, then face order). Its noise
maps are drawn from that key and handed to the generator as per-face stored
noise (`per_face_noise`), so a face's noise does not depend on the batch
size, its position in the batch, or the number of devices. With stored noise the generator is deterministic anyway.
An exported function (`--exported`) draws the noise of a whole batch from one
seed, `fold_in(key, index of the batch's first face)`.

A RuntimeError in a batch (e.g. out of device memory) does what the official
`GFPGANer.enhance` does for a face: the cropped face is returned unchanged;
the error is logged with the faces it hit.
"""

from collections.abc import Callable
import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from gfpgan_jax import inference
from gfpgan_jax import xla_options
from gfpgan_jax.faces import paste as paste_lib
from gfpgan_jax.faces import timing

log = logging.getLogger('gfpgan_jax.restore')
AXIS = 'faces'


def local_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ('faces',) mesh over `devices` (default: every local device)."""
  devices = list(jax.local_devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))


def round_batch(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """batch_size rounded up to a multiple of the mesh size (each device gets the same number of faces)."""
  n = mesh.size
  return max(n, -(-int(batch_size) // n) * n)


def generator_size(module) -> int:
  """The generator's output side (GFPGAN `out_size`, RestoreFormer `resolution`; 512 for the released models)."""
  return int(getattr(module, 'out_size', None) or getattr(module, 'resolution', None) or 512)


def per_face_noise(noises, keys: jax.Array):
  """Stored-noise trees with a batch axis: map j of face i is `normal(fold_in(keys[i], j))`.

  Args:
    noises: the generator's 'noises' collection (maps [1, r, r, 1]).
    keys: [B] keys, one per face.

  Returns:
    The same tree with maps [B, r, r, 1].
  """
  leaves, treedef = jax.tree.flatten(noises)
  out = [jax.vmap(lambda k, j=j, x=x: jax.random.normal(jax.random.fold_in(k, j), x.shape[1:], x.dtype))(keys)
         for j, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def make_batch_restore(module, randomize_noise: bool) -> Callable[..., jax.Array]:
  """`restore(variables, images uint8 [B, S, S, 3], indices int32 [B], key) -> uint8 [B, S, S, 3]`.

  With `randomize_noise`, face i's decoder noise is drawn from
  `fold_in(key, indices[i])` and given to the generator as its per-face
  'noises' maps; the network itself runs on the whole batch. A generator
  without noise maps (RestoreFormer) ignores the key.
  """
  stored = inference.make_restore_fn(module, randomize_noise=False)

  def restore(variables, images, indices, key):
    if randomize_noise and 'noises' in variables:
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
      variables = {**variables, 'noises': per_face_noise(variables['noises'], keys)}
    return stored(variables, images, key)

  return restore


def make_parse_fn(module) -> Callable[..., jax.Array]:
  """`parse(variables, faces uint8 [B, S, S, 3]) -> uint8 [B, 512, 512]`: ParseNet's class map (first argmax)."""

  def parse(variables, faces):
    logits, _ = module.apply(variables, paste_lib.parse_net_input(faces))
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8)

  return parse


@dataclasses.dataclass
class BatchResult:
  """restored: uint8 [n, S, S, 3]; classes: uint8 [n, 512, 512] or None; failed: whether the generator failed."""
  restored: np.ndarray
  classes: np.ndarray | None
  failed: bool = False


class FaceBatcher:
  """Runs the generator (and the parser) on fixed-size, sharded batches of aligned faces.

  Args:
    generator: (module, variables), or None with `exported`.
    batch_size: faces per call over all devices (rounded up to a multiple of the mesh size).
    mesh: a 1-D mesh (`local_mesh()` if None).
    randomize_noise: fresh decoder noise (official) or the stored buffers.
    seed: the noise key's seed.
    parser: (ParseNet module, variables) or None (the square mask is used then).
    exported: `run(images, key) -> restored` from `export.load_restore`, instead of `generator`.
    face_size: S (default: the generator's size, `generator_size`; required with `exported`).
  """

  def __init__(self, generator, *, batch_size: int = 4, mesh=None, randomize_noise: bool = True, seed: int = 0,
               parser=None, exported: Callable | None = None, face_size: int | None = None):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1; got {batch_size}')
    self.mesh = mesh if mesh is not None else local_mesh()
    self.batch_size = round_batch(batch_size, self.mesh)
    if face_size is None:
      if generator is None:
        raise ValueError('face_size is required with an exported function')
      face_size = generator_size(generator[0])
    self.face_size = int(face_size)
    self.key = jax.random.key(seed)
    self.randomize_noise = randomize_noise
    self._batched = NamedSharding(self.mesh, P(AXIS))
    replicated = NamedSharding(self.mesh, P())
    self._exported = exported
    if exported is None:
      module, variables = generator
      self._variables = jax.device_put(variables, replicated)
      fn = make_batch_restore(module, randomize_noise)
      self._restore = xla_options.jit(fn, out_shardings=self._batched)
    self._parser = None
    if parser is not None:
      pmodule, pvars = parser
      self._parser_vars = jax.device_put(pvars, replicated)
      self._parser = xla_options.jit(make_parse_fn(pmodule), out_shardings=self._batched)

  @property
  def has_parser(self) -> bool:
    return self._parser is not None

  def bucket(self, n: int) -> int:
    """The padded size of a batch of n faces: the next power of two (a multiple of the mesh), at most batch_size.

    Full batches are `batch_size`; a last, partial one (the end of the input)
    is padded only to its bucket, so a single photo's few faces do not pay
    for a whole batch. One compilation per bucket.
    """
    return min(self.batch_size, round_batch(1 << max(int(n) - 1, 0).bit_length(), self.mesh))

  def _pad(self, faces: np.ndarray, first_index: int) -> tuple[jax.Array, jax.Array]:
    n, b = len(faces), self.bucket(len(faces))
    batch = np.zeros((b,) + faces.shape[1:], np.uint8)
    batch[:n] = faces
    indices = np.arange(first_index, first_index + b, dtype=np.int32)
    return jax.device_put(batch, self._batched), jax.device_put(indices, self._batched)

  def _generate(self, images: jax.Array, indices: jax.Array, first_index: int) -> jax.Array:
    if self._exported is not None:
      return self._exported(images, jax.random.fold_in(self.key, first_index))
    return self._restore(self._variables, images, indices, self.key)

  def run(self, faces: np.ndarray, first_index: int, names: Any = (), timers=None) -> BatchResult:
    """Restores up to `batch_size` faces.

    Args:
      faces: uint8 [n, S, S, 3] RGB aligned crops, n <= batch_size.
      first_index: the global index of faces[0] (the noise key of face i is
        `fold_in(key, first_index + i)`).
      names: labels of the faces, for the error message.
      timers: a `faces.timing.Timers` for the 'restore' and 'parse' stages.

    Returns:
      `BatchResult` with the n restored faces (the crops themselves where the
      generator failed) and their class maps (None without a parser, or when
      parsing failed).
    """
    n = len(faces)
    if n == 0:
      return BatchResult(np.zeros((0,) + faces.shape[1:], np.uint8), None)
    if n > self.batch_size:
      raise ValueError(f'{n} faces for a batch of {self.batch_size}')
    timers = timers if timers is not None else timing.Timers()
    t0 = time.perf_counter()
    images, indices = self._pad(np.asarray(faces, np.uint8), first_index)
    failed = False
    try:
      restored = self._generate(images, indices, first_index)
      restored_np = np.asarray(restored)[:n]
    except RuntimeError as e:  # what GFPGANer.enhance does: keep the cropped face
      log.error('failed inference for the faces %s (%s: %s); their cropped faces are used unchanged',
                ', '.join(map(str, names)) or f'{first_index}..{first_index + n - 1}', type(e).__name__,
                str(e).splitlines()[0] if str(e) else '')
      restored, restored_np, failed = images, np.asarray(faces, np.uint8), True
    t1 = time.perf_counter()
    timers.add('restore', t1 - t0)
    classes = None
    if self._parser is not None:
      try:
        classes = np.asarray(self._parser(self._parser_vars, restored))[:n]
      except RuntimeError as e:
        log.error('face parsing failed for the faces %s (%s); the square mask is used for them',
                  ', '.join(map(str, names)) or first_index, type(e).__name__)
      timers.add('parse', time.perf_counter() - t1)
    return BatchResult(restored_np, classes, failed)
