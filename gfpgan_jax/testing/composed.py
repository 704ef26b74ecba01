"""A group photo composed from a package-shipped face, with known boxes and 5-point landmarks.

`group_photo(n_faces)` places copies of the face in `skimage.data.astronaut()`
(Eileen Collins, public domain) on a smooth textured canvas. Each copy gets its
own similarity transform (scale, a small rotation, optionally a mirror image)
and a slight colour change; a feathered ellipse around the head blends it in.
Faces never overlap: each one gets its own cell of a grid.

The ground truth is exact by construction:
* landmarks: the hand-picked 5 points of the source face (`ASTRONAUT_LANDMARKS`,
  pupil centres, nose tip, mouth corners; RetinaFace's order) mapped by each
  transform. A mirrored copy swaps left and right, so point 0 is always the eye
  on the image's left, as RetinaFace reports it.
* boxes: the axis-aligned bounds of the transformed source face box
  (`ASTRONAUT_BOX`, roughly hairline to chin and cheek to cheek, about the box
  RetinaFace draws).

Coordinates are pixel centres at integers (`cv2.warpAffine`'s convention). The
photo is deterministic for a given (n_faces, size, seed).
"""

import functools
import math
from typing import NamedTuple

import cv2
import numpy as np

# (x, y) in skimage.data.astronaut(): left eye, right eye, nose tip, left and right mouth corner (image left first).
ASTRONAUT_LANDMARKS = np.array([[203.3, 101.1], [246.1, 102.8], [223.3, 127.0], [203.9, 140.6], [243.3, 141.3]])
# (x1, y1, x2, y2) of the source face, hairline to chin.
ASTRONAUT_BOX = np.array([180.0, 66.0, 268.0, 184.0])
# The blended head region: an ellipse (centre, semi-axes) around face and hair, feathered by _FEATHER px.
_HEAD_CENTER = (222.0, 116.0)
_HEAD_AXES = (66.0, 80.0)
_FEATHER = 6.0
_HEAD_RADIUS = 88.0  # bounds the feathered ellipse under any rotation (source px)
_MIN_EYE_DISTANCE = 12.0  # output px; smaller faces are too small to be detected reliably


class GroupPhoto(NamedTuple):
  """A composed photo and its ground truth (unpacks as `image, boxes, landmarks`).

  Attributes:
    image: uint8 [H, W, 3] RGB.
    boxes: float32 [n, 4] (x1, y1, x2, y2) face boxes, in reading order (row by row).
    landmarks: float32 [n, 5, 2] (x, y): left eye, right eye, nose, left and right mouth corner.
  """
  image: np.ndarray
  boxes: np.ndarray
  landmarks: np.ndarray


@functools.cache
def _source() -> tuple[np.ndarray, np.ndarray]:
  """(astronaut float32 [512, 512, 3], feathered head mask float32 [512, 512])."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  img = skimage.data.astronaut().astype(np.float32)
  yy, xx = np.mgrid[:img.shape[0], :img.shape[1]].astype(np.float32)
  r = np.sqrt(((xx - _HEAD_CENTER[0]) / _HEAD_AXES[0])**2 + ((yy - _HEAD_CENTER[1]) / _HEAD_AXES[1])**2)
  # 1 inside the ellipse, a linear ramp over _FEATHER px (measured along the minor axis) outside it.
  mask = np.clip(1.0 - (r - 1.0) * (_HEAD_AXES[0] / _FEATHER), 0.0, 1.0).astype(np.float32)
  return img, mask


def _similarity(scale: float, angle_deg: float, src_center, dst_center) -> np.ndarray:
  """[2, 3] x -> scale * R(angle) (x - src_center) + dst_center."""
  a = math.radians(angle_deg)
  r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  t = np.asarray(dst_center, np.float64) - r @ np.asarray(src_center, np.float64)
  return np.concatenate([r, t[:, None]], axis=1)


def _background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """A soft two-colour gradient with low-frequency mottling and fine grain: float32 [H, W, 3]."""
  h, w = size
  c0, c1 = rng.uniform(70, 200, 3), rng.uniform(70, 200, 3)
  angle = rng.uniform(0, math.pi)
  yy, xx = np.mgrid[:h, :w].astype(np.float64)
  t = ((xx - w / 2) * math.cos(angle) + (yy - h / 2) * math.sin(angle)) / max(h, w) + 0.5
  img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
  coarse = rng.normal(0, 1, (max(2, h // 32), max(2, w // 32), 3))
  img += 10 * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
  img += rng.normal(0, 2.0, (h, w, 3))
  return img.astype(np.float32)


def _grid(n: int, h: int, w: int) -> tuple[int, int]:
  """(rows, cols) with about square cells for n faces."""
  cols = max(1, min(n, round(math.sqrt(n * w / h))))
  rows = math.ceil(n / cols)
  while (rows - 1) * cols >= n:
    rows -= 1
  return rows, cols


def group_photo(n_faces: int = 4, size: tuple[int, int] = (512, 768), seed: int = 0) -> GroupPhoto:
  """Composes a photo of `n_faces` copies of the astronaut's face at known similarity transforms.

  Args:
    n_faces: number of faces (>= 1).
    size: (H, W) of the photo.
    seed: the random layout (cell jitter, scale in [0.7, 1] of the cell's
      largest, rotation in [-12, 12] degrees, mirror, colour), background and grain.

  Returns:
    `GroupPhoto(image uint8 [H, W, 3] RGB, boxes float32 [n, 4], landmarks float32 [n, 5, 2])`,
    faces in reading order.

  Raises:
    ValueError: bad arguments, or cells too small for a detectable face (eye
      distance under 12 px): use a larger `size` or fewer faces.
  """
  if not isinstance(n_faces, (int, np.integer)) or isinstance(n_faces, bool) or n_faces < 1:
    raise ValueError(f'n_faces must be an int >= 1; got {n_faces!r}')
  try:
    h, w = (int(v) for v in size)
  except (TypeError, ValueError) as e:
    raise ValueError(f'size must be (H, W) ints; got {size!r}') from e
  if h < 32 or w < 32:
    raise ValueError(f'size must be at least (32, 32); got {(h, w)}')
  rng = np.random.default_rng(seed)
  src, src_mask = _source()
  src_w = src.shape[1]
  eye_dist = float(np.linalg.norm(ASTRONAUT_LANDMARKS[1] - ASTRONAUT_LANDMARKS[0]))
  rows, cols = _grid(int(n_faces), h, w)
  cell_h, cell_w = h / rows, w / cols
  max_scale = 0.5 * min(cell_h, cell_w) / _HEAD_RADIUS
  if max_scale * 0.7 * eye_dist < _MIN_EYE_DISTANCE:
    raise ValueError(f'{n_faces} faces in a {h}x{w} photo are too small to detect (a {rows}x{cols} grid gives eye '
                     f'distances under {_MIN_EYE_DISTANCE:g} px): use a larger size or fewer faces')
  canvas = _background((h, w), rng)
  boxes, landmarks = [], []
  corners = ASTRONAUT_BOX[[0, 1, 2, 1, 2, 3, 0, 3]].reshape(4, 2)
  for k in range(int(n_faces)):
    row, col = divmod(k, cols)
    scale = max_scale * rng.uniform(0.7, 1.0)
    angle = rng.uniform(-12.0, 12.0)
    slack_y, slack_x = cell_h / 2 - scale * _HEAD_RADIUS, cell_w / 2 - scale * _HEAD_RADIUS
    center = ((col + 0.5) * cell_w + rng.uniform(-slack_x, slack_x),
              (row + 0.5) * cell_h + rng.uniform(-slack_y, slack_y))
    mirror = bool(rng.integers(2))
    tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    img, mask, lm, box_corners = src, src_mask, ASTRONAUT_LANDMARKS, corners
    head = np.asarray(_HEAD_CENTER)
    if mirror:
      img, mask = img[:, ::-1], mask[:, ::-1]
      flip = lambda p: np.stack([(src_w - 1) - p[..., 0], p[..., 1]], axis=-1)
      lm, box_corners, head = flip(lm)[[1, 0, 2, 4, 3]], flip(box_corners), flip(head)
    t = _similarity(scale, angle, head, center)
    warped = cv2.warpAffine(np.ascontiguousarray(img), t, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT101)
    alpha = cv2.warpAffine(np.ascontiguousarray(mask), t, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    canvas = alpha * (warped * tint) + (1 - alpha) * canvas
    landmarks.append(lm @ t[:, :2].T + t[:, 2])
    bc = box_corners @ t[:, :2].T + t[:, 2]
    boxes.append([bc[:, 0].min(), bc[:, 1].min(), bc[:, 0].max(), bc[:, 1].max()])
  image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
  return GroupPhoto(image, np.asarray(boxes, np.float32), np.asarray(landmarks, np.float32))
