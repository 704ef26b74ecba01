"""Face selection: facexlib's `get_largest_face` and `get_center_face`, on detection boxes."""

import numpy as np


def _boxes(det_faces) -> np.ndarray:
  b = np.asarray(det_faces, np.float64)
  if b.ndim != 2 or b.shape[0] == 0 or b.shape[1] < 4:
    raise ValueError(f'det_faces must be a non-empty [N, >=4] array of (x1, y1, x2, y2, ...) boxes; got {b.shape}')
  return b


def largest_face(det_faces, h: int, w: int) -> tuple[np.ndarray, int]:
  """The face whose box, clipped to the image, has the largest area (the first one on ties).

  Args:
    det_faces: [N, >=4] boxes (x1, y1, x2, y2, ...), e.g. RetinaFace's [N, 5] with the score.
    h, w: image height and width.

  Returns:
    (det_faces[i], i), like facexlib.
  """
  b = _boxes(det_faces)
  left, right = np.clip(b[:, 0], 0, w), np.clip(b[:, 2], 0, w)
  top, bottom = np.clip(b[:, 1], 0, h), np.clip(b[:, 3], 0, h)
  idx = int(np.argmax((right - left) * (bottom - top)))
  return np.asarray(det_faces)[idx], idx


def center_face(det_faces, h: int = 0, w: int = 0, center=None) -> tuple[np.ndarray, int]:
  """The face whose box centre is nearest `center` (default: the image centre (w / 2, h / 2)).

  Returns:
    (det_faces[i], i), like facexlib (the first one on ties).
  """
  b = _boxes(det_faces)
  c = np.asarray(center, np.float64) if center is not None else np.array([w / 2, h / 2])
  centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
  idx = int(np.argmin(np.linalg.norm(centres - c, axis=1)))
  return np.asarray(det_faces)[idx], idx
