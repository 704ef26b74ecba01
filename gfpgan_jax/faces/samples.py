"""The built-in photo that `python -m gfpgan_jax.restore` restores without `-i`: no download needed."""

import numpy as np

SAMPLE_FACES = 3
SAMPLE_SIZE = (512, 768)


def group_photo(n_faces: int = SAMPLE_FACES, size: tuple[int, int] = SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
  """uint8 [H, W, 3] RGB: a group picture composed from the face in scikit-image's `astronaut()`.

  The composition (known similarity transforms, feathered heads on a textured
  background) is `gfpgan_jax.testing.composed.group_photo`, which also gives
  the true boxes and landmarks.
  """
  from gfpgan_jax.testing import composed  # pylint: disable=g-import-not-at-top
  return composed.group_photo(n_faces, size=size, seed=seed).image
