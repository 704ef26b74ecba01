"""The weight-free face detector: OpenCV cascades, with the 5 landmarks estimated from the eyes.

No download: the cascades ship with the installed packages. Two backends:

* 'opencv' (OpenCV 4.x): `cv2.CascadeClassifier` with the bundled
  `haarcascade_frontalface_default.xml` on the equalised grayscale image
  (`detectMultiScale3(..., outputRejectLevels=True)`), then
  `haarcascade_eye.xml` in the upper part of each face box (rows 0.1 h to
  0.6 h; the eye centres must lie in the upper half). The eyes come from the
  eye detections when a plausible pair is found (one on each side of the box's
  middle, 0.25 w to 0.7 w apart, tilted by under ~20 degrees, sizes within
  1.8x; of several, the pair nearest the expected positions), else from the
  box with the calibrated proportions. Score: the level weight of the last
  cascade stage (larger is more face-like).
* 'lbp' (OpenCV 5 dropped the cascade classifier and its data files from its
  wheels): scikit-image's bundled copy of OpenCV's
  `lbpcascade_frontalface.xml`, run by `skimage.feature.Cascade` on the
  grayscale image (no histogram equalisation: the LBP codes compare block
  means, and equalising mostly amplifies grain in flat regions into false
  detections), with OpenCV's `groupRectangles` (eps 0.2) on its raw windows.
  There is no eye cascade, so the eyes always come from the box proportions
  (this backend does not see in-plane rotation). Score: the number of raw
  windows merged into the face.

Nose and mouth corners: the similarity that maps the FFHQ template's eyes
(`gfpgan_jax.faces.align.FFHQ_TEMPLATE_512`) onto the two eyes, applied to the
template's nose and mouth points. The box proportions of the eyes were
measured per backend on `gfpgan_jax.testing.composed.group_photo` faces.

Faces are sorted like RetinaFace's output, best first: by score, then larger
box, then top-to-bottom, left-to-right. Everything is deterministic.

Measured on 12 `group_photo(n, (560, 800), seed)` photos (48 faces, rotated up
to 12 degrees, eye distances 17 to 60 px): 'lbp' found all 48 with 1 false
detection, eyes off by 0.09 of the eye distance on average (0.18 at most);
'opencv' (4.12) found 45 with 4 false detections, eyes off by 0.03 to 0.06
(0.12 at most). The mouth corners are off by ~0.18 eye distances for both: the
source face smiles, the template does not. So the landmarks are coarser than
RetinaFace's and alignment is looser; RetinaFace weights (`load_detector(path)`)
find more faces and align them better.
"""

import functools
import os

import cv2
import numpy as np

from gfpgan_jax.faces import align

BACKENDS = ('auto', 'opencv', 'lbp')
# Eye centres as fractions (x, y) of the face box, per backend: (left eye, right eye).
EYE_PROPORTIONS = {'opencv': ((0.292, 0.372), (0.711, 0.372)), 'lbp': ((0.278, 0.362), (0.702, 0.362))}
GROUP_EPS = 0.2  # OpenCV's detectMultiScale grouping


def _opencv_cascade_dir() -> str | None:
  """The folder of OpenCV's bundled Haar cascades, if this OpenCV has the classifier and the files."""
  if not hasattr(cv2, 'CascadeClassifier'):
    return None
  folder = getattr(getattr(cv2, 'data', None), 'haarcascades', None)
  if folder and os.path.isfile(os.path.join(folder, 'haarcascade_frontalface_default.xml')):
    return folder
  return None


def available_backends() -> tuple[str, ...]:
  """The backends usable here ('lbp' always; 'opencv' with an OpenCV that ships its cascades)."""
  return (('opencv',) if _opencv_cascade_dir() else ()) + ('lbp',)


@functools.cache
def _opencv_cascades() -> tuple:
  folder = _opencv_cascade_dir()
  face = cv2.CascadeClassifier(os.path.join(folder, 'haarcascade_frontalface_default.xml'))
  eye = cv2.CascadeClassifier(os.path.join(folder, 'haarcascade_eye.xml'))
  if face.empty() or eye.empty():
    raise ValueError(f'OpenCV could not load its bundled cascades from {folder}; use backend="lbp"')
  return face, eye


@functools.cache
def _lbp_cascade():
  import skimage.data  # pylint: disable=g-import-not-at-top
  import skimage.feature  # pylint: disable=g-import-not-at-top
  return skimage.feature.Cascade(skimage.data.lbp_frontal_face_cascade_filename())


def group_rectangles(rects: np.ndarray, min_neighbors: int, eps: float = GROUP_EPS) -> tuple[np.ndarray, np.ndarray]:
  """OpenCV's `groupRectangles`: clusters of similar windows, averaged; small ones inside big ones dropped.

  Args:
    rects: [n, 4] int (x, y, w, h) raw detection windows.
    min_neighbors: a cluster needs more than this many windows.
    eps: similarity: corners within eps * (mean of the smaller sides) of each other.

  Returns:
    (int [m, 4] (x, y, w, h) grouped rectangles, int [m] windows per rectangle), in cluster order.
  """
  r = np.asarray(rects, np.int64).reshape(-1, 4)
  n = r.shape[0]
  if n == 0:
    return np.zeros((0, 4), np.int64), np.zeros((0,), np.int64)
  # Similar windows (OpenCV's SimilarRects); classes are the connected components, as cv::partition finds them.
  delta = eps * (np.minimum(r[:, None, 2], r[None, :, 2]) + np.minimum(r[:, None, 3], r[None, :, 3])) * 0.5
  x2, y2 = r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]
  close = lambda v: np.abs(v[:, None] - v[None, :]) <= delta
  similar = close(r[:, 0]) & close(r[:, 1]) & close(x2) & close(y2)
  labels = np.arange(n)
  while True:  # label propagation to the smallest index in each component
    new = np.min(np.where(similar, labels[None, :], n), axis=1)
    new = np.minimum(new, labels)
    new = new[new]
    if np.array_equal(new, labels):
      break
    labels = new
  classes = np.unique(labels)
  counts = np.array([(labels == c).sum() for c in classes])
  means = np.array([np.rint(r[labels == c].sum(0) / (labels == c).sum()) for c in classes]).astype(np.int64)
  keep = []
  for i in range(len(classes)):
    n1 = counts[i]
    if n1 <= min_neighbors:
      continue
    x, y, w, h = means[i]
    inside = False
    for j in range(len(classes)):
      n2 = counts[j]
      if j == i or n2 <= min_neighbors:
        continue
      bx, by, bw, bh = means[j]
      dx, dy = int(np.rint(bw * eps)), int(np.rint(bh * eps))
      if (x >= bx - dx and y >= by - dy and x + w <= bx + bw + dx and y + h <= by + bh + dy and
          (n2 > max(3, n1) or n1 < 3)):
        inside = True
        break
    if not inside:
      keep.append(i)
  return means[keep].reshape(-1, 4), counts[keep]


def landmarks_from_eyes(eyes: np.ndarray) -> np.ndarray:
  """float64 [n, 5, 2]: the template's 5 points under the similarity mapping its eyes onto `eyes` [n, 2, 2]."""
  t = align.FFHQ_TEMPLATE_512
  eyes = np.asarray(eyes, np.float64).reshape(-1, 2, 2)
  tz = t[:, 0] + 1j * t[:, 1]
  ez = eyes[..., 0] + 1j * eyes[..., 1]
  a = (ez[:, 1] - ez[:, 0]) / (tz[1] - tz[0])
  z = a[:, None] * (tz[None, :] - tz[0]) + ez[:, :1]
  return np.stack([z.real, z.imag], axis=-1)


def box_eyes(boxes_xywh: np.ndarray, backend: str) -> np.ndarray:
  """float64 [n, 2, 2]: the expected eye centres of (x, y, w, h) boxes (the backend's proportions)."""
  b = np.asarray(boxes_xywh, np.float64).reshape(-1, 1, 4)
  p = np.asarray(EYE_PROPORTIONS[backend], np.float64)[None]
  return b[..., :2] + p * b[..., 2:]


def _eye_pair(gray: np.ndarray, box, expected: np.ndarray, eye_cascade) -> np.ndarray | None:
  """The two eye centres [2, 2] (image left first) found by the eye cascade in the face `box`, or None."""
  x, y, w, h = (int(v) for v in box)
  top, bottom = y + int(0.1 * h), y + int(0.6 * h)
  region = gray[max(top, 0):max(bottom, 0), max(x, 0):max(x + w, 0)]
  if region.size == 0:
    return None
  m = max(8, w // 10)
  found = eye_cascade.detectMultiScale(region, scaleFactor=1.1, minNeighbors=3, minSize=(m, m),
                                       maxSize=(max(m, w // 2), max(m, w // 2)))
  if len(found) < 2:
    return None
  e = np.asarray(found, np.float64)
  centres = e[:, :2] + e[:, 2:] / 2 + [max(x, 0), max(top, 0)]
  size = e[:, 2]
  best, best_cost = None, np.inf
  mid = x + w / 2
  for i in range(len(e)):
    for j in range(len(e)):
      a, b = centres[i], centres[j]
      dx, dy = b[0] - a[0], b[1] - a[1]
      plausible = (a[0] < mid < b[0] and 0.25 * w <= dx <= 0.7 * w and abs(dy) <= 0.35 * dx and
                   max(a[1], b[1]) < y + 0.5 * h and max(size[i], size[j]) <= 1.8 * min(size[i], size[j]))
      if plausible:
        cost = np.linalg.norm(a - expected[0]) + np.linalg.norm(b - expected[1])
        if cost < best_cost:
          best, best_cost = np.stack([a, b]), cost
  return best


class HaarDetector:
  """Faces and 5 landmarks from OpenCV's cascades, without weights (see the module docstring).

  Args:
    min_face_size: the smallest face side searched, in pixels of the detected image.
    scale_factor: the cascade's window scale step.
    min_neighbors: a face needs more than this many raw windows (default 5).
    eye_dist_threshold: drop faces whose eye distance is < this (as RetinaFaceDetector; None: keep all).
    max_faces: the most faces kept per image (the best ones).
    detect_size: None, or detect on a copy resized so that its shorter side
      is this (INTER_AREA down, INTER_LINEAR up; boxes and landmarks scaled
      back): bounds the time on big photos.
    backend: 'auto' ('opencv' where available, else 'lbp'), 'opencv' or 'lbp'.
  """

  def __init__(self, *, min_face_size: int = 32, scale_factor: float = 1.1, min_neighbors: int | None = None,
               eye_dist_threshold: float | None = 5.0, max_faces: int = 100, detect_size: int | None = None,
               backend: str = 'auto'):
    if backend not in BACKENDS:
      raise ValueError(f'backend must be one of {BACKENDS}; got {backend!r}')
    if backend == 'auto':
      backend = available_backends()[0]
    elif backend == 'opencv' and not _opencv_cascade_dir():
      raise ValueError(f'backend "opencv" needs cv2.CascadeClassifier and its bundled cascades (OpenCV 4.x); this '
                       f'OpenCV {cv2.__version__} has none: use backend="lbp" or "auto"')
    for name, v, lo in (('min_face_size', min_face_size, 8), ('max_faces', max_faces, 1)):
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f'{name} must be an int >= {lo}; got {v!r}')
    if not isinstance(scale_factor, (int, float)) or not scale_factor > 1:
      raise ValueError(f'scale_factor must be a number > 1; got {scale_factor!r}')
    if min_neighbors is None:
      min_neighbors = 5
    if detect_size is not None and (isinstance(detect_size, bool) or not isinstance(detect_size, (int, np.integer))
                                    or detect_size < 16):
      raise ValueError(f'detect_size must be None or an int >= 16; got {detect_size!r}')
    self.backend = backend
    self.min_face_size, self.scale_factor, self.min_neighbors = int(min_face_size), float(scale_factor), int(
        min_neighbors)
    self.eye_dist_threshold, self.max_faces, self.detect_size = eye_dist_threshold, int(max_faces), detect_size

  def detect_one(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes float64 [n, 4] (x1, y1, x2, y2), scores [n], landmarks [n, 5, 2]) of one uint8 RGB image, best first."""
    h, w = rgb.shape[:2]
    scale = 1.0
    if self.detect_size is not None and min(h, w) != self.detect_size:
      scale = min(h, w) / self.detect_size
      size = (max(1, int(w / scale)), max(1, int(h / scale)))
      rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if self.backend == 'opencv':
      face_cascade, eye_cascade = _opencv_cascades()
      gray = cv2.equalizeHist(gray)
      rects, _, weights = face_cascade.detectMultiScale3(
          gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
          minSize=(self.min_face_size, self.min_face_size), outputRejectLevels=True)
      rects = np.asarray(rects, np.float64).reshape(-1, 4)
      scores = np.asarray(weights, np.float64).reshape(-1)
    else:
      raw = _lbp_cascade().detect_multi_scale(img=gray.astype(np.float32) / 255, scale_factor=self.scale_factor,
                                               step_ratio=1, min_size=(self.min_face_size, self.min_face_size),
                                               max_size=gray.shape, min_neighbor_number=0,
                                               intersection_score_threshold=2.0)  # > 1: skimage merges nothing
      windows = np.array([(d['c'], d['r'], d['width'], d['height']) for d in raw], np.int64).reshape(-1, 4)
      rects, counts = group_rectangles(windows, self.min_neighbors)
      rects, scores = rects.astype(np.float64), counts.astype(np.float64)
    order = np.lexsort((rects[:, 0], rects[:, 1], -rects[:, 2] * rects[:, 3], -scores))
    rects, scores = rects[order], scores[order]
    eyes = box_eyes(rects, self.backend)
    if self.backend == 'opencv':
      for k, box in enumerate(rects):
        pair = _eye_pair(gray, box, eyes[k], eye_cascade)
        if pair is not None:
          eyes[k] = pair
    landmarks = landmarks_from_eyes(eyes) * scale
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) * scale
    if self.eye_dist_threshold is not None:
      keep = np.linalg.norm(landmarks[:, 0] - landmarks[:, 1], axis=1) >= self.eye_dist_threshold
      boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
    return boxes[:self.max_faces], scores[:self.max_faces], landmarks[:self.max_faces]

  def __call__(self, images):
    """Detects the faces of each uint8 RGB [H, W, 3] image; returns one `detect.FaceSet` per image."""
    from gfpgan_jax.faces import detect  # pylint: disable=g-import-not-at-top  (detect imports this module)
    return [detect.FaceSet(*self.detect_one(img)) for img in detect.check_images(images)]
