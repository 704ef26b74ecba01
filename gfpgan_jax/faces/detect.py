"""Face detection front-end of the photo pipeline: facexlib's `get_face_landmarks_5`, batched on the device.

`RetinaFaceDetector` reproduces what GFPGANer runs,
`FaceRestoreHelper.get_face_landmarks_5(only_center_face=..., eye_dist_threshold=5)`
(gfpgan.md 4, step 4):
1. optionally (`detect_size`, facexlib's `resize=` argument) the image is
   resized so that its shorter side is `detect_size`: `scale = min(h, w) /
   detect_size`, `(int(h / scale), int(w / scale))`, `cv2.INTER_LANCZOS4`;
2. `RetinaFace.detect_faces(img, 0.97)` on the BGR image (nms 0.4, original
   size): the network and `gfpgan_jax.models.retinaface_post.detect` on the
   device; boxes and landmarks are multiplied back by `scale` in float32, as
   facexlib multiplies its float32 rows;
3. faces whose eye distance (landmarks 0 and 1) is below `eye_dist_threshold`
   are dropped; the others keep facexlib's order (score, then greedy NMS).
`select_faces` then applies `only_center_face` / `only_keep_largest`.

The faces are the same as facexlib's, in the same order, with boxes, scores
and landmarks equal up to float32 rounding of the network (tests/faces_detect_test.py;
the tie rule of `retinaface_post` applies to exactly equal scores). One
difference: on the `resize=` path facexlib multiplies its whole row, the score
too, by `scale`; `FaceSet.scores` keeps the probability.

`detect_size` trade-off. None (the default) is the official gfpgan 1.3.8
behaviour: detection at the original size, one compilation per distinct image
size, and a cost that grows with the pixel count (a 12 MP photo runs ResNet-50
on 12 MP). An int bounds the cost and makes images with the same aspect ratio
share a compilation, at the price of missing faces that become too small (a
face needs about 16 px after the resize; RetinaFace's smallest prior) and of
landmarks located on a coarser image (error ~ 1 / scale px). It equals facexlib
with `get_face_landmarks_5(resize=detect_size)`, which upsamples smaller images.

Batching. Images of the same (network) size are detected together in batches
of `batch_size`; the last, partial one is padded to the next power of two
(times the device count with a mesh), at most `batch_size`, so that one photo
does not pay for a whole batch. That is at most log2(batch_size) + 1
compilations per size, cached. With `mesh`, each batch is split over all its
devices (batch_size must be a multiple of the device count) and the weights
are replicated.

`HaarDetector` (`gfpgan_jax.faces.haar`) is the no-weights detector;
`load_detector` picks one.
"""

from collections.abc import Sequence
import dataclasses
import inspect
import logging
import os
from typing import Any

import cv2
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from gfpgan_jax import xla_options
from gfpgan_jax.faces import select as select_lib
from gfpgan_jax.faces.haar import HaarDetector
from gfpgan_jax.models import retinaface
from gfpgan_jax.models import retinaface_post as post

log = logging.getLogger(__name__)

RETINAFACE_ARCHS = ('retinaface_resnet50', 'retinaface_mobilenet0.25')
CONF_THRESHOLD = 0.97  # FaceRestoreHelper.get_face_landmarks_5
EYE_DIST_THRESHOLD = 5.0  # GFPGANer.enhance


@dataclasses.dataclass
class FaceSet:
  """The faces of one image, in facexlib's order (best first).

  Attributes:
    boxes: float32 [n, 4] (x1, y1, x2, y2) in image pixels.
    scores: float32 [n] face scores (RetinaFace: the probability).
    landmarks: float32 [n, 5, 2] (x, y): left eye, right eye, nose, left and
      right mouth corner ("left" = the image's left).
  """
  boxes: np.ndarray
  scores: np.ndarray
  landmarks: np.ndarray

  def __post_init__(self):
    boxes, scores, lms = (np.asarray(a, np.float32) for a in (self.boxes, self.scores, self.landmarks))
    n = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.shape != (n, 4) or scores.size != n or lms.size != n * 10:
      raise ValueError(f'FaceSet needs boxes [n, 4], scores [n] and landmarks [n, 5, 2]; got {boxes.shape}, '
                       f'{scores.shape}, {lms.shape}')
    self.boxes, self.scores, self.landmarks = boxes, scores.reshape(n), lms.reshape(n, 5, 2)

  @classmethod
  def empty(cls) -> 'FaceSet':
    return cls(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))

  def __len__(self) -> int:
    return int(self.boxes.shape[0])

  def select(self, index) -> 'FaceSet':
    """The faces at `index` (an int, a slice, an index array or a boolean mask), as a FaceSet."""
    if not isinstance(index, slice):
      index = np.asarray(index)
      if index.ndim == 0:
        index = index[None]
    return FaceSet(self.boxes[index], self.scores[index], self.landmarks[index])


def select_faces(faces: FaceSet, image_hw: Sequence[int], only_center_face: bool = False,
                 largest: bool = False) -> FaceSet:
  """facexlib's face choice after detection: `only_keep_largest` first, else `only_center_face`.

  Args:
    faces: the detections of one image.
    image_hw: (H, W) of that image.
    only_center_face: keep the face whose box centre is nearest the image centre (`get_center_face`).
    largest: keep the face with the largest box clipped to the image (`get_largest_face`).

  Returns:
    The kept faces (all of them when neither option is set; none if there are none).
  """
  if len(faces) == 0 or not (only_center_face or largest):
    return faces
  h, w = (int(v) for v in image_hw[:2])
  if largest:
    _, idx = select_lib.largest_face(faces.boxes, h, w)
  else:
    _, idx = select_lib.center_face(faces.boxes, h, w)
  return faces.select(idx)


def check_images(images) -> list[np.ndarray]:
  """Validates a batch of uint8 RGB images ([H, W, 3] each) and returns them as a list of arrays.

  Raises:
    ValueError: not a sequence of [H, W, 3] uint8 arrays (the message names the first bad one).
  """
  if isinstance(images, np.ndarray) or hasattr(images, 'shape'):
    arr = np.asarray(images)
    if arr.ndim == 3:
      raise ValueError(f'images must be a list of [H, W, 3] images (or one [N, H, W, 3] array); got one array of '
                       f'shape {arr.shape}: wrap a single image in a list')
    images = list(arr) if arr.ndim == 4 else [arr]
  try:
    images = list(images)
  except TypeError as e:
    raise ValueError(f'images must be a list of uint8 RGB [H, W, 3] arrays; got {type(images).__name__}') from e
  out = []
  for i, img in enumerate(images):
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
      raise ValueError(f'images[{i}] must be a uint8 RGB [H, W, 3] array; got dtype {a.dtype}, shape {a.shape} '
                       '(gray or RGBA: gfpgan_jax.faces.to_rgb8; 16-bit: scale to 8 bits first)')
    out.append(a)
  return out


def detect_shape(hw: Sequence[int], detect_size: int | None) -> tuple[tuple[int, int], float]:
  """facexlib's `resize=` size: ((H', W') the network sees, scale back to the image); (hw, 1) for None."""
  h, w = (int(v) for v in hw[:2])
  if detect_size is None:
    return (h, w), 1
  scale = min(h, w) / detect_size
  return (int(h / scale), int(w / scale)), scale


def eye_distance_keep(landmarks: np.ndarray, threshold: float | None) -> np.ndarray:
  """bool [n]: faces kept by facexlib's filter `norm(eye0 - eye1) >= threshold` (float32, as facexlib)."""
  lm = np.asarray(landmarks, np.float32).reshape(-1, 10)
  if threshold is None or lm.shape[0] == 0:
    return np.ones(lm.shape[0], bool)
  d = np.linalg.norm(np.stack([lm[:, 0] - lm[:, 2], lm[:, 1] - lm[:, 3]], axis=1), axis=1)
  return ~(d < threshold)


def _positive_int(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}; got {value!r}')
  return int(value)


class RetinaFaceDetector:
  """facexlib's `get_face_landmarks_5` on the device, batched per image size (see the module docstring).

  Args:
    module: a `gfpgan_jax.models.retinaface.RetinaFace` (either backbone).
    variables: its variables (e.g. from `gfpgan_jax.load_network`).
    conf_threshold: keep scores > this (facexlib's helper: 0.97).
    nms_threshold: NMS IoU threshold (0.4).
    eye_dist_threshold: drop faces whose eye distance is < this many pixels (GFPGANer: 5; None: keep all).
    detect_size: None (detect at the original size, gfpgan 1.3.8) or the
      shorter side to resize to (facexlib's `resize=`).
    max_faces: the most faces kept per image (static; more than facexlib
      would return are dropped, with a warning).
    batch_size: images per device call.
    mesh: optional `jax.sharding.Mesh`; batches are split over all its devices.
    max_candidates: the best-scoring candidates the NMS sees (static; exact
      while no more than this many scores pass the threshold, else a warning).
  """

  def __init__(self, module, variables, *, conf_threshold: float = CONF_THRESHOLD, nms_threshold: float = 0.4,
               eye_dist_threshold: float | None = EYE_DIST_THRESHOLD, detect_size: int | None = None,
               max_faces: int = 100, batch_size: int = 4, mesh: jax.sharding.Mesh | None = None,
               max_candidates: int = 5000):
    if not isinstance(module, retinaface.RetinaFace):
      raise ValueError(f'module must be a gfpgan_jax RetinaFace; got {type(module).__name__} (load the detector with '
                       'gfpgan_jax.faces.load_detector or gfpgan_jax.load_network)')
    for name, v in (('conf_threshold', conf_threshold), ('nms_threshold', nms_threshold)):
      if not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ValueError(f'{name} must be a number in [0, 1]; got {v!r}')
    if eye_dist_threshold is not None and (not isinstance(eye_dist_threshold, (int, float)) or eye_dist_threshold < 0):
      raise ValueError(f'eye_dist_threshold must be a number >= 0 or None; got {eye_dist_threshold!r}')
    self.detect_size = None if detect_size is None else _positive_int('detect_size', detect_size, 16)
    self.max_faces = _positive_int('max_faces', max_faces)
    self.batch_size = _positive_int('batch_size', batch_size)
    self.max_candidates = _positive_int('max_candidates', max_candidates)
    self.conf_threshold, self.nms_threshold = float(conf_threshold), float(nms_threshold)
    self.eye_dist_threshold = eye_dist_threshold
    self.module = module
    if mesh is not None:
      # The networks are written for automatic sharding propagation; an Explicit mesh becomes an Auto one.
      auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
      mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
      if self.batch_size % mesh.size:
        raise ValueError(f'batch_size {self.batch_size} must be a multiple of the {mesh.size} devices of the mesh')
      self._batch_sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))
      self.variables = jax.device_put(variables, NamedSharding(mesh, P()))
    else:
      self._batch_sharding = None
      self.variables = jax.device_put(variables)
    self.mesh = mesh
    self._fns = {}

  def _function(self, hw: tuple[int, int]):
    """The jitted `(variables, rgb uint8 [B, H, W, 3]) -> (Detections, candidates [B])` for one size."""
    fn = self._fns.get(hw)
    if fn is None:
      kw = dict(conf_threshold=self.conf_threshold, nms_threshold=self.nms_threshold,
                max_candidates=self.max_candidates, max_detections=self.max_faces)
      module = self.module

      def run(variables, rgb):
        loc, conf, lms = module.apply(variables, post.preprocess(rgb[..., ::-1]))  # BGR, as facexlib
        candidates = (conf[..., 1] > self.conf_threshold).sum(axis=-1)
        return post.detect(loc, conf, lms, hw, **kw), candidates

      fn = self._fns[hw] = xla_options.jit(run)
    return fn

  def padded_batch(self, n: int) -> int:
    """The batch a chunk of n <= batch_size images runs as: the next power of two (times the mesh size), capped."""
    unit = self.mesh.size if self.mesh is not None else 1
    groups = -(-n // unit)
    return min(self.batch_size, unit * (1 << (groups - 1).bit_length()))

  def _network_inputs(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """The images the network sees (resized for detect_size) and the scales back."""
    if self.detect_size is None:
      return images, [1] * len(images)
    out, scales = [], []
    for img in images:
      (h, w), scale = detect_shape(img.shape, self.detect_size)
      out.append(img if (h, w) == img.shape[:2] else cv2.resize(img, (w, h), interpolation=cv2.INTER_LANCZOS4))
      scales.append(scale)
    return out, scales

  def __call__(self, images: Sequence[np.ndarray]) -> list[FaceSet]:
    """Detects the faces of each image.

    Args:
      images: uint8 RGB [H, W, 3] arrays (any sizes; a list or an [N, H, W, 3] array).

    Returns:
      One FaceSet per image, in the order given.

    Raises:
      ValueError: an image that is not uint8 RGB [H, W, 3].
    """
    images = check_images(images)
    inputs, scales = self._network_inputs(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(inputs):
      groups.setdefault(tuple(x.shape[:2]), []).append(i)
    pending = []  # dispatch every batch first, then read back: the device runs while the host stacks
    for hw, idx in groups.items():
      fn = self._function(hw)
      for start in range(0, len(idx), self.batch_size):
        chunk = idx[start:start + self.batch_size]
        batch = np.zeros((self.padded_batch(len(chunk)), *hw, 3), np.uint8)
        batch[:len(chunk)] = np.stack([inputs[i] for i in chunk])
        dev = jax.device_put(batch, self._batch_sharding) if self._batch_sharding is not None else batch
        pending.append((chunk, fn(self.variables, dev)))
    results: list[FaceSet | None] = [None] * len(images)
    for chunk, (det, candidates) in pending:
      det = jax.tree.map(np.asarray, det)
      candidates = np.asarray(candidates)
      for j, i in enumerate(chunk):
        results[i] = self._faces(det, j, scales[i], int(candidates[j]), i)
    return results

  def _faces(self, det: post.Detections, j: int, scale: float, candidates: int, image_index: int) -> FaceSet:
    n = int(det.count[j])
    if candidates > self.max_candidates:
      log.warning('image %d: %d scores pass %.3g, more than max_candidates=%d: some faces may be missed',
                  image_index, candidates, self.conf_threshold, self.max_candidates)
    if n == self.max_faces:
      log.warning('image %d: max_faces=%d faces found; there may be more (raise max_faces)', image_index, n)
    boxes, scores, lms = det.boxes[j, :n], det.scores[j, :n], det.landmarks[j, :n]
    if scale != 1:  # facexlib: the float32 rows times a Python float, i.e. times float32(scale)
      boxes, lms = boxes * np.float32(scale), lms * np.float32(scale)
    keep = eye_distance_keep(lms, self.eye_dist_threshold)
    return FaceSet(boxes[keep], scores[keep], lms[keep].reshape(-1, 5, 2))


def load_detector(weights: str | os.PathLike | None = None, **kwargs) -> 'RetinaFaceDetector | HaarDetector':
  """The face detector of the photo pipeline.

  Args:
    weights: an official RetinaFace `.pth` (`detection_Resnet50_Final.pth`,
      or a mobilenet0.25 one) or a converted directory; None for the
      weight-free `HaarDetector` (with a warning).
    **kwargs: options of the detector chosen. The RetinaFace-only ones
      (`conf_threshold`, `nms_threshold`, `batch_size`, `mesh`,
      `max_candidates`) are ignored by the HaarDetector, so callers can pass
      one set of options.

  Returns:
    A `RetinaFaceDetector` or a `HaarDetector`.

  Raises:
    FileNotFoundError: nothing at `weights`.
    ValueError: a file that is not a RetinaFace detector, or an unknown option.
  """
  if weights is None:
    accepted = set(inspect.signature(HaarDetector.__init__).parameters) - {'self'}
    retina_only = set(inspect.signature(RetinaFaceDetector.__init__).parameters) - accepted
    unknown = set(kwargs) - accepted - retina_only
    if unknown:
      raise ValueError(f'unknown detector options {sorted(unknown)}; HaarDetector takes {sorted(accepted)}')
    detector = HaarDetector(**{k: v for k, v in kwargs.items() if k in accepted})
    log.warning('No face detector weights given: using the weight-free %s detector (%s). RetinaFace weights '
                '(detection_Resnet50_Final.pth, --detector-weights) find more faces and align them better.',
                type(detector).__name__, detector.backend)
    return detector
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import checkpoint  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import state_dict as sd_lib  # pylint: disable=g-import-not-at-top
  try:
    arch, cfg, variables = checkpoint.read_network(weights)
  except sd_lib.ConversionError as e:
    raise ValueError(f'{weights} is not a RetinaFace detection checkpoint ({e}); pass detection_Resnet50_Final.pth '
                     '(facexlib) or a directory converted from it') from e
  if arch not in RETINAFACE_ARCHS:
    raise ValueError(f'{weights} holds a {arch!r} network, not a RetinaFace detector '
                     f'({" or ".join(RETINAFACE_ARCHS)}): pass detection_Resnet50_Final.pth (facexlib) or a directory '
                     'converted from it')
  module, _ = archs.build(arch, **cfg)
  return RetinaFaceDetector(module, variables, **kwargs)


def describe(detector: Any) -> str:
  """A one-line description of a detector, for logs."""
  if isinstance(detector, RetinaFaceDetector):
    size = 'original size' if detector.detect_size is None else f'shorter side {detector.detect_size}'
    return (f'RetinaFace-{detector.module.network_name} (conf > {detector.conf_threshold:g}, {size}, batch '
            f'{detector.batch_size}{", mesh of " + str(detector.mesh.size) if detector.mesh is not None else ""})')
  return f'{type(detector).__name__} ({getattr(detector, "backend", "?")})'

