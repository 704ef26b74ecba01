"""Restores the faces of many photos (or video frames): GFPGANer.enhance, batched across images.

For each image, as `GFPGANer.enhance(img, has_aligned, only_center_face, paste_back=True)`
does (gfpgan.md 4):
1. faces: the detector (`faces.detect`) or the user's landmarks, then
   `only_center_face`;
2. `align_faces` to S x S crops (S = the generator's size, 512 for the
   released models);
3. restoration of the crops of MANY images together, in fixed-size batches
   sharded over the devices (`faces.batching.FaceBatcher`), and ParseNet's
   class maps of the restored faces when a parser is given (else the square
   erosion mask);
4. the background: Real-ESRGAN (tiled, `outscale` = the upscale) when an
   upsampler is given, else the LANCZOS4 resize inside `paste_faces`;
5. `paste_faces`.
With `aligned`, the input is resized to S x S (cv2 INTER_LINEAR) and only
restored, with no paste-back. An input larger than S (e.g. 512 px faces and a
64 px model) gets its outputs back at its own size: the restored face resized
with LANCZOS4, and the input itself as the cropped face (as the official
aligned mode, whose 512 model writes 512 px outputs for 512 px inputs).

Images. The official helper's normalisation (`faces.image_io.to_rgb8`):
gray is expanded to RGB, RGBA loses its alpha for the faces, and a 16-bit
image (max > 256) is scaled by 255 / 65535. Differences, on purpose: the
alpha channel is carried to the output (the Real-ESRGAN output's alpha, as
the official helper does, or else the input's alpha resized with LANCZOS4;
the official CLI reads with IMREAD_COLOR and drops it), and the detector,
the background upsampler and the generator see the 8-bit version of a 16-bit
image (rounded); the paste-back works on the official float values.

Results come out in input order. Markers and unreadable items pass through.
A failure while finishing one image (e.g. out of memory on a huge photo) is
reported for that image, and the rest go on.
"""

from collections.abc import Callable, Iterable, Iterator
import collections
import dataclasses
import logging

import cv2
import numpy as np

from gfpgan_jax.faces import align as align_lib
from gfpgan_jax.faces import image_io
from gfpgan_jax.faces import paste as paste_lib
from gfpgan_jax.faces import resize as resize_lib
from gfpgan_jax.faces import select as select_lib
from gfpgan_jax.faces import timing
from gfpgan_jax.faces.batching import FaceBatcher
from gfpgan_jax.faces.inputs import Item

log = logging.getLogger('gfpgan_jax.restore')

# An output canvas above this many pixels is refused (float64 paste canvas: 24 bytes a pixel).
MAX_OUTPUT_PIXELS = 1 << 28


def _larger(image: np.ndarray, size: int) -> bool:
  """Whether an aligned input is larger than the model's faces (its outputs are then written at its size)."""
  return image.shape[0] > size or image.shape[1] > size


@dataclasses.dataclass
class Result:
  """The outcome for one item, in input order.

  Attributes:
    item: the input.
    cropped: uint8 [n, S, S, 3] the aligned input faces (`aligned` with an
      input larger than S: the input, [1, H, W, 3]).
    restored: uint8 [n, S, S, 3] the restored faces (the crops where inference
      failed); [1, H, W, 3] as `cropped`.
    image: the restored whole image, uint8 (or uint16) [H s, W s, C]; None
      with `aligned`, for markers and failed items.
    error: why the item failed, or ''.
    failed_faces: faces whose restoration failed (their crops were used).
    no_faces: no face was found (the image is written through upscaled).
  """
  item: Item
  cropped: np.ndarray
  restored: np.ndarray
  image: np.ndarray | None = None
  error: str = ''
  failed_faces: int = 0
  no_faces: bool = False


@dataclasses.dataclass
class _Record:
  item: Item
  label: str
  rgb: np.ndarray | None = None  # the official 3-channel image: uint8, or float64 for 16-bit
  rgb8: np.ndarray | None = None  # uint8 3-channel (for the detector)
  alpha: np.ndarray | None = None  # an RGBA input's alpha, in 8 bits
  crops: np.ndarray | None = None
  affines: np.ndarray | None = None
  restored: list = dataclasses.field(default_factory=list)
  classes: list = dataclasses.field(default_factory=list)
  failed: int = 0
  error: str = ''
  done: int = 0

  @property
  def n(self) -> int:
    return 0 if self.crops is None else len(self.crops)


def label(item: Item) -> str:
  """The name the log uses for an item: the file name, with the frame for a video."""
  name = item.source.key or item.source.name
  return f'{name} frame {item.frame}' if item.source.kind == 'video' and not item.marker else name


def to_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 of `to_rgb8`-style data: uint8 as is, float [0, 255] rounded."""
  if image.dtype == np.uint8:
    return image
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def alpha8(alpha: np.ndarray, bit_depth: int) -> np.ndarray:
  """An alpha channel in 8 bits (a 16-bit image's alpha scaled like its colours)."""
  if alpha.dtype == np.uint8:
    return alpha
  if bit_depth == 16:
    return to_uint8(alpha / 65535 * 255)
  return np.minimum(alpha, 255).astype(np.uint8)


class Background:
  """The Real-ESRGAN background: `tiling.upsample(module, variables, image, outscale=upscale, tile, 10, 0)`.

  GFP-GAN's inference runs RealESRGAN_x2plus with tile 400, tile_pad 10, pre_pad 0.
  """

  def __init__(self, module, variables, upscale: float, tile: int = 400, tile_pad: int = 10, pre_pad: int = 0):
    import jax  # pylint: disable=g-import-not-at-top
    self.module, self.variables = module, jax.device_put(variables)
    self.upscale, self.tile, self.tile_pad, self.pre_pad = upscale, tile, tile_pad, pre_pad

  def __call__(self, image8: np.ndarray) -> np.ndarray:
    from gfpgan_jax.models import tiling  # pylint: disable=g-import-not-at-top
    return tiling.upsample(self.module, self.variables, image8, outscale=self.upscale, tile=self.tile,
                           tile_pad=self.tile_pad, pre_pad=self.pre_pad)


class PhotoPipeline:
  """Restores the faces of a stream of images (see the module docstring).

  Args:
    batcher: the restorer of aligned faces (its `face_size` is S).
    detector: `images (list of uint8 RGB) -> list of FaceSet` (`faces.detect`); unused with `landmarks`.
    landmarks: `(item) -> float [n, 5, 2] or None` user landmarks instead of
      detection (None: the image has no entry; it gets no faces).
    upscale: the output scale s.
    only_center_face: keep only the face nearest the image centre.
    aligned: the inputs are aligned faces (resize, restore, no paste-back).
    background: a `Background` (Real-ESRGAN), or None for the LANCZOS4 resize.
    keep_alpha: carry an RGBA input's alpha to the output (see the module docstring).
    exact: OpenCV's float64 arithmetic in align/paste (`faces.numerics`).
    timers: where the stage times go.
    detect_chunk: images detected per detector call (the detector batches them).
  """

  def __init__(self, batcher: FaceBatcher, *, detector: Callable | None = None,
               landmarks: Callable[[Item], np.ndarray | None] | None = None, upscale: float = 2,
               only_center_face: bool = False, aligned: bool = False, background: Background | None = None,
               keep_alpha: bool = True, exact: bool = True, timers: timing.Timers | None = None,
               detect_chunk: int = 4):
    if not aligned and detector is None and landmarks is None:
      raise ValueError('PhotoPipeline needs a detector or landmarks (or aligned=True)')
    self.batcher, self.detector, self.landmarks = batcher, detector, landmarks
    self.upscale, self.only_center_face, self.aligned = upscale, only_center_face, aligned
    self.background, self.keep_alpha, self.exact = background, keep_alpha, exact
    self.timers = timers if timers is not None else timing.Timers()
    self.detect_chunk = max(1, int(detect_chunk))
    self.face_size = batcher.face_size
    self._next_face = 0

  # ---------------------------------------------------------------- stages

  def _prepare(self, item: Item) -> _Record:
    rec = _Record(item, label(item))
    if item.image is None:
      rec.error = item.error
      return rec
    try:
      rgb, alpha, bit_depth = image_io.to_rgb8(item.image)
    except ValueError as e:
      rec.error = f'{rec.label}: unsupported image ({e})'
      return rec
    h, w = rgb.shape[:2]
    if not self.aligned and h * self.upscale * w * self.upscale > MAX_OUTPUT_PIXELS:
      rec.error = (f'{rec.label}: too large: {w}x{h} at upscale {self.upscale:g} gives a '
                   f'{int(w * self.upscale)}x{int(h * self.upscale)} output, over {MAX_OUTPUT_PIXELS >> 20} '
                   'megapixels; downscale it or lower -s')
      return rec
    rec.rgb, rec.rgb8 = rgb, to_uint8(rgb)
    rec.alpha = None if alpha is None else alpha8(alpha, bit_depth)
    return rec

  def _detect(self, records: list[_Record]) -> dict[int, np.ndarray]:
    """{id(record): float [n, 5, 2]} for the records that need faces."""
    todo = [r for r in records if r.rgb is not None and not self.aligned]
    found = {}
    if not todo:
      return found
    if self.landmarks is not None:
      for r in todo:
        lm = self.landmarks(r.item)
        if lm is None:
          if r.item.source.kind == 'image':
            log.warning('%s: not in the --landmarks file; no faces restored', r.label)
          lm = np.zeros((0, 5, 2))
        if self.only_center_face and len(lm):
          boxes = np.concatenate([lm.min(axis=1), lm.max(axis=1)], axis=1)
          lm = lm[[select_lib.center_face(boxes, *r.rgb.shape[:2])[1]]]
        found[id(r)] = lm
      return found
    from gfpgan_jax.faces import detect as detect_lib  # pylint: disable=g-import-not-at-top
    with self.timers.time('detect'):
      sets = self.detector([r.rgb8 for r in todo])
    for r, faces in zip(todo, sets):
      faces = detect_lib.select_faces(faces, r.rgb.shape[:2], only_center_face=self.only_center_face)
      found[id(r)] = np.asarray(faces.landmarks, np.float64).reshape(-1, 5, 2)
    return found

  def _align(self, rec: _Record, landmarks: np.ndarray | None) -> None:
    s = self.face_size
    with self.timers.time('align'):
      if self.aligned:
        img = rec.rgb8
        if img.shape[:2] != (s, s):
          back = f'; the outputs are written back at {img.shape[1]}x{img.shape[0]}' if _larger(img, s) else ''
          log.info('%s: resized from %dx%d to %dx%d (an aligned face, as the official code)%s', rec.label,
                   img.shape[1], img.shape[0], s, s, back)
          img = cv2.resize(img, (s, s), interpolation=cv2.INTER_LINEAR)
        rec.crops, rec.affines = img[None], np.zeros((1, 2, 3))
        return
      affines, kept = [], []
      for i, points in enumerate(np.asarray(landmarks, np.float64).reshape(-1, 5, 2)):
        try:
          affines.append(align_lib.estimate_affines(points[None], s)[0])
          kept.append(i)
        except ValueError as e:
          log.warning('%s: face %d skipped: %s', rec.label, i, e)
      rec.affines = np.asarray(affines, np.float64).reshape(-1, 2, 3)
      if not kept:
        rec.crops = np.zeros((0, s, s, 3), np.uint8)
        return
      crops = np.asarray(align_lib.warp_crops(rec.rgb, rec.affines, s, self.exact))
      rec.crops = to_uint8(crops)  # 16-bit input: the official float crops, rounded for the generator

  def _run_batch(self, entries: list[tuple[_Record, int]]) -> None:
    faces = np.stack([r.crops[i] for r, i in entries])
    names = [f'{r.label}#{i}' for r, i in entries]
    out = self.batcher.run(faces, self._next_face, names, timers=self.timers)
    self._next_face += len(entries)
    for k, (r, i) in enumerate(entries):
      r.restored.append(out.restored[k])
      r.classes.append(None if out.classes is None else out.classes[k])
      r.failed += int(out.failed)
      r.done += 1

  def _finish(self, rec: _Record) -> Result:
    s = self.face_size
    empty = np.zeros((0, s, s, 3), np.uint8)
    if rec.error or rec.rgb is None:
      return Result(rec.item, empty, empty, error=rec.error)
    crops = rec.crops if rec.crops is not None else empty
    restored = np.stack(rec.restored) if rec.restored else empty
    if self.aligned and len(restored) and _larger(rec.rgb8, s):  # back at the input's size
      h, w = rec.rgb8.shape[:2]
      crops = rec.rgb8[None]
      restored = cv2.resize(restored[0], (w, h), interpolation=cv2.INTER_LANCZOS4)[None]
    result = Result(rec.item, crops, restored, failed_faces=rec.failed, no_faces=len(crops) == 0)
    if self.aligned:
      return result
    try:
      result.image = self._paste(rec, restored)
    except (RuntimeError, MemoryError, ValueError) as e:
      result.error = f'{rec.label}: paste-back failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    return result

  def _paste(self, rec: _Record, restored: np.ndarray) -> np.ndarray:
    image, alpha = rec.item.image, rec.alpha
    bg = None
    if self.background is not None:
      with self.timers.time('background'):
        bg = self.background(rec.rgb8 if alpha is None else np.concatenate([rec.rgb8, alpha[..., None]], axis=2))
    classes = None
    if len(restored) and all(c is not None for c in rec.classes):
      classes = np.stack(rec.classes).astype(np.int32)
    with self.timers.time('paste'):
      out = paste_lib.paste_faces(image, restored, rec.affines, self.upscale, parse_masks=classes, background=bg,
                                  exact=self.exact)
      if alpha is not None and bg is None and self.keep_alpha:
        a = np.asarray(resize_lib.resize_lanczos4(alpha[..., None], out.shape[:2]))
        a = a.astype(np.uint16) * 257 if out.dtype == np.uint16 else a
        out = np.concatenate([out, a.reshape(*out.shape[:2], 1)], axis=2)
    return out

  # ---------------------------------------------------------------- the stream

  def _drain(self, pending: collections.deque, final: bool = False) -> Iterator[Result]:
    while pending and (final or pending[0].done == pending[0].n):
      rec = pending.popleft()
      yield self._finish(rec)

  def run(self, items: Iterable[Item]) -> Iterator[Result]:
    """Yields one `Result` per item, in order; faces are restored in batches across items."""
    pending: collections.deque[_Record] = collections.deque()
    queue: list[tuple[_Record, int]] = []
    b = self.batcher.batch_size
    chunk: list[Item] = []
    it = iter(items)
    exhausted = False
    while not exhausted:
      try:
        chunk.append(next(it))
        if len(chunk) < self.detect_chunk:
          continue
      except StopIteration:
        exhausted = True
      records = [self._prepare(x) for x in chunk]
      chunk = []
      try:
        found = self._detect(records)
      except (RuntimeError, ValueError) as e:  # a detector failure costs these images only
        for r in records:
          if r.rgb is not None and not self.aligned:
            r.error = f'{r.label}: face detection failed: {type(e).__name__}: {e}'
        found = {}
      for r in records:
        if r.rgb is not None and not r.error:
          self._align(r, found.get(id(r)))
          queue.extend((r, i) for i in range(r.n))
        pending.append(r)
      while len(queue) >= b:
        self._run_batch(queue[:b])
        del queue[:b]
      yield from self._drain(pending)
    while queue:
      self._run_batch(queue[:b])
      del queue[:b]
    yield from self._drain(pending, final=True)
