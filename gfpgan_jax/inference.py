"""Batched, jit-compiled restoration of aligned faces: uint8 in, uint8 out, all on the device.

The official path (`GFPGANer` with `--aligned`) does, per face:
`img/255 -> (x - 0.5)/0.5 -> G -> clamp(-1, 1) -> (x + 1)/2 -> *255 -> round -> uint8`
(`tensor2img`), one face at a time with host round trips. Here the same
arithmetic runs in one jitted function over a batch.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax.models import resample

Array = jax.Array


def to_model_range(images: Array) -> Array:
  """uint8 [N,H,W,3] RGB -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: Array) -> Array:
  """`tensor2img(min_max=(-1, 1))`: clamp, map to [0, 255], round. [N,H,W,3] -> uint8."""
  x = (jnp.clip(images.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  return jnp.round(x * 255.0).astype(jnp.uint8)


def make_restore_fn(module: nn.Module, randomize_noise: bool = True) -> Callable[..., Array]:
  """Returns `restore(variables, images, key) -> restored`, both uint8 [N, S, S, 3].

  Args:
    module: a face restorer (`GFPGANv1Clean`, `GFPGANv1`, `GFPGANBilinear` or `RestoreFormer`).
    randomize_noise: draw the decoder noise from `key` (the official
      behaviour) or use the stored noise buffers (deterministic; `key` unused).
  """

  def restore(variables: Any, images: Array, key: Array) -> Array:
    x = to_model_range(images)
    out, _ = module.apply(variables, x, return_rgb=False, randomize_noise=randomize_noise,
                          rngs={'noise': key} if randomize_noise else None)
    return to_uint8(out)

  return restore


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 [H,W,3] to [size,size,3] like `cv2.resize(INTER_LINEAR)` (the official --aligned path)."""
  if image.shape[:2] == (size, size):
    return image
  x = jnp.asarray(image, jnp.float32)[None]
  y = resample.resize_bilinear(x, (size, size))[0]
  return np.asarray(jnp.clip(jnp.round(y), 0, 255).astype(jnp.uint8))
