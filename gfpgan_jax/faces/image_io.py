"""Input checks and the official image normalisation (`FaceRestoreHelper.read_image`), in RGB.

facexlib's `read_image` does three things. If `np.max(img) > 256` (a 16-bit
image), it computes `img = img / 65535 * 255`, giving float64 in [0, 255]
that is not rounded. A 2-D image goes through `cv2.COLOR_GRAY2BGR`, and an
image with 4 channels loses its alpha. Everything downstream (crops,
background, paste) sees that 3-channel image. The input's alpha never reaches
the output. An alpha channel comes out only from an RGBA *background* (the
Real-ESRGAN output), see `faces.paste`.

`to_rgb8` mirrors this with two deliberate differences. A 16-bit grayscale
image is expanded as well (the official `cvtColor` rejects float64 and
raises). A uint16 image whose max is <= 256 keeps its values, as the official
code does, but is carried as uint8 (256 -> 255).
"""

import numpy as np

_INT_DTYPES = (np.uint8, np.uint16)


def _as_array(image, name: str) -> np.ndarray:
  try:
    arr = np.asarray(image)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{name} must be an array; got {type(image).__name__}') from e
  return arr


def check_image(image, name: str = 'image') -> np.ndarray:
  """Validates an image: [H, W] or [H, W, C] with C in {1, 3, 4}, uint8 or uint16, H, W >= 1."""
  arr = _as_array(image, name)
  if arr.dtype not in _INT_DTYPES:
    raise ValueError(f'{name} must be uint8 or uint16 (RGB[A] or gray); got dtype {arr.dtype}')
  if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
    raise ValueError(f'{name} must have shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got {arr.shape}')
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError(f'{name} is empty: shape {arr.shape}')
  return arr


def to_rgb8(image) -> tuple[np.ndarray, np.ndarray | None, int]:
  """The 3-channel image the official helper works on, in RGB.

  Args:
    image: [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA); uint8 or uint16.

  Returns:
    rgb: [H, W, 3]. For an 8-bit image (any uint8 image, or a uint16 image
      whose max is <= 256) it is uint8 with the same values. For a 16-bit image
      (max > 256) it is float64 `img / 65535 * 255`, exactly as `read_image`
      computes it.
    alpha: [H, W] in the input's dtype for RGBA input, else None. The official
      paste ignores it; it is returned for callers.
    bit_depth: 16 for the scaled 16-bit case, else 8.

  Raises:
    ValueError: wrong dtype or shape.
  """
  arr = check_image(image)
  alpha = None
  if arr.ndim == 3 and arr.shape[2] == 4:
    alpha = arr[..., 3]
  bit_depth = 16 if arr.size and int(arr.max()) > 256 else 8
  if bit_depth == 16:
    arr = arr / 65535 * 255  # float64, as the official code
  elif arr.dtype == np.uint16:
    arr = np.minimum(arr, 255).astype(np.uint8)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.shape[2] == 1:
    arr = np.repeat(arr, 3, axis=2)
  elif arr.shape[2] == 4:
    arr = arr[..., :3]
  return np.ascontiguousarray(arr), alpha, bit_depth


def split_background(background, name: str = 'background') -> tuple[np.ndarray, np.ndarray | None]:
  """A background image as (3-channel colour, alpha or None), both in its own dtype (uint8/uint16).

  A grayscale background is expanded to 3 channels. The official code
  broadcasts `[h, w, 1]` against the 3-channel face the same way.
  """
  arr = check_image(background, name)
  if arr.ndim == 2:
    arr = arr[..., None]
  alpha = None
  if arr.shape[2] == 4:
    alpha = arr[..., 3:]
    arr = arr[..., :3]
  elif arr.shape[2] == 1:
    arr = np.repeat(arr, 3, axis=2)
  return np.ascontiguousarray(arr), alpha
