"""Face alignment: the FFHQ 5-point template, the similarity estimate, and the batched crop warp.

This is facexlib 0.3.0's `FaceRestoreHelper.align_warp_face` (gfpgan.md 4, step
5). For each face, `cv2.estimateAffinePartial2D(landmarks, template,
method=cv2.LMEDS)` fits a similarity transform on the host. A small robust
fit on 5 points is exactly what the official code runs, so this step is
bit-exact by construction. The image is then warped to `face_size` squares
with `cv2.warpAffine` semantics (bilinear, constant border (132, 133, 135) in
RGB) on the device, in one jitted call for all faces.
"""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax.faces import image_io
from gfpgan_jax.faces import numerics
from gfpgan_jax.faces import warp

# Standard 5 landmarks of FFHQ faces at 512 x 512: left eye, right eye, nose, left and right mouth corners.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]])
# The official border value (135, 133, 132) is BGR; these are the same numbers in RGB.
BORDER_RGB = (132.0, 133.0, 135.0)


def face_template(face_size: int = 512) -> np.ndarray:
  """float64 [5, 2]: the FFHQ template scaled to `face_size` (crop_ratio (1, 1), 5 points)."""
  return FFHQ_TEMPLATE_512 * (face_size / 512.0)


def check_landmarks(landmarks) -> np.ndarray:
  """Validates landmarks and returns them as float64 [N, 5, 2]; raises ValueError otherwise."""
  try:
    lm = np.asarray(landmarks, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'landmarks must be a numeric array [N, 5, 2]; got {type(landmarks).__name__}') from e
  if lm.ndim != 3 or lm.shape[1:] != (5, 2):
    raise ValueError(f'landmarks must have shape [N, 5, 2] (x, y of 5 points per face); got {lm.shape}')
  if not np.all(np.isfinite(lm)):
    raise ValueError('landmarks contain NaN or infinity')
  return lm


def estimate_affines(landmarks, face_size: int = 512) -> np.ndarray:
  """The official similarity transforms from image to aligned face.

  Args:
    landmarks: [N, 5, 2] (x, y) in image pixels, ordered as `FFHQ_TEMPLATE_512`.
    face_size: the side of the aligned face.

  Returns:
    float64 [N, 2, 3]: `cv2.estimateAffinePartial2D(landmarks, template,
    method=cv2.LMEDS)[0]` per face. A face whose fit fails (OpenCV returns None)
    raises ValueError.
  """
  lm = check_landmarks(landmarks)
  template = face_template(face_size)
  out = np.zeros((lm.shape[0], 2, 3), np.float64)
  for i, points in enumerate(lm):
    m = cv2.estimateAffinePartial2D(points, template, method=cv2.LMEDS)[0]
    if m is None:
      raise ValueError(f'face {i}: cv2.estimateAffinePartial2D found no transform for landmarks {points.tolist()}')
    out[i] = m
  return out


def bucket(n: int) -> int:
  """The padded batch size for n faces: the next power of two (so face counts share compilations)."""
  return 1 << max(0, int(n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=('face_size', 'exact'))
def _warp_crops(image: jax.Array, minv: jax.Array, *, face_size: int, exact: bool) -> jax.Array:
  """[H, W, 3] uint8 (IPP kernel) or hp (fixed-point kernel), [Nb, 6] -> [Nb, S, S, 3]."""
  hp = numerics.hp_dtype(exact)
  if image.dtype == jnp.uint8:
    fn = lambda m: warp.warp_ipp(image, m, (face_size, face_size), BORDER_RGB, hp)
  else:
    fn = lambda m: warp.warp_fixed(image, m, (face_size, face_size), BORDER_RGB, hp)
  return jax.vmap(fn)(minv)


def warp_crops(rgb: np.ndarray, affines: np.ndarray, face_size: int = 512, exact: bool = True) -> jax.Array:
  """Warps prepared 3-channel images to aligned crops (`cv2.warpAffine(img, M, (S, S), ...)` per face).

  Args:
    rgb: [H, W, 3] uint8, or float64 in [0, 255] (the official 16-bit path).
    affines: [N, 2, 3] forward affines (image -> crop).
    face_size: S.
    exact: float64 coordinates as OpenCV uses (see `numerics`).

  Returns:
    [N, S, S, 3]: uint8 for uint8 input, else float32 (the official crops are
    float64; here they are rounded to float32).
  """
  n = affines.shape[0]
  nb = bucket(n)
  minv = np.zeros((nb, 6), np.float64)
  minv[:n] = warp.inverse_maps(affines)
  with numerics.precision_scope(exact):
    img = jnp.asarray(rgb if rgb.dtype == np.uint8 else rgb.astype(numerics.hp_dtype(exact)))
    crops = _warp_crops(img, jnp.asarray(minv, numerics.hp_dtype(exact)), face_size=face_size, exact=exact)
    crops = crops[:n]
    if crops.dtype != jnp.uint8:
      crops = crops.astype(jnp.float32)
  return crops


def align_faces(image, landmarks, face_size: int = 512, exact: bool = True) -> tuple[jax.Array, np.ndarray]:
  """Aligns every face of an image to the FFHQ template, like `FaceRestoreHelper.align_warp_face`.

  Args:
    image: [H, W, 3] RGB, [H, W, 4] RGBA (alpha ignored), or [H, W] / [H, W, 1]
      grayscale; uint8, or uint16 (scaled as `read_image` does: `img / 65535 *
      255` when its max exceeds 256). See `image_io.to_rgb8`.
    landmarks: [N, 5, 2] (x, y) image coordinates of left eye, right eye, nose,
      left and right mouth corners (RetinaFace order).
    face_size: side of the aligned crops.
    exact: reproduce OpenCV's double-precision coordinates (float64 on the
      device under `jax.enable_x64`). False keeps everything in float32.

  Returns:
    crops: jax.Array [N, S, S, 3] RGB, uint8 (float32 in [0, 255], unrounded,
      for 16-bit input, whose official crops are float64).
    affines: float64 [N, 2, 3], the forward similarity transforms (image -> crop),
      equal to the official `affine_matrices`.

  Raises:
    ValueError: on a bad image, bad landmarks or bad face_size.
  """
  if not isinstance(face_size, (int, np.integer)) or face_size < 1:
    raise ValueError(f'face_size must be a positive int; got {face_size!r}')
  rgb, _, _ = image_io.to_rgb8(image)
  affines = estimate_affines(landmarks, face_size)
  if affines.shape[0] == 0:
    dtype = jnp.uint8 if rgb.dtype == np.uint8 else jnp.float32
    return jnp.zeros((0, face_size, face_size, 3), dtype), affines
  return warp_crops(rgb, affines, int(face_size), exact), affines
