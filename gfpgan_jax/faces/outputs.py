"""The output files of the restore command, named as the official `inference_gfpgan.py` names them.

Per image (basename = the input's stem):
* `cropped_faces/{basename}_{idx:02d}.png`: the aligned input faces;
* `restored_faces/{basename}_{idx:02d}.png` (`..._{idx:02d}_{suffix}.png` with a suffix);
* `cmp/{basename}_{idx:02d}.png`: cropped | restored, side by side;
* `restored_imgs/{basename}.{ext}` (`{basename}_{suffix}.{ext}`), not with `--aligned`.
`ext` is the input's extension for `--ext auto`, else png or jpg.

Every file is encoded (OpenCV, as the official `imwrite`) and written by a
background thread, to a temporary file in the same folder that is renamed
into place: an interrupted run never leaves a half-written output. 16-bit
results are written as 16-bit PNG/TIFF; a format that cannot hold them (JPEG)
gets the 8-bit version, and one that cannot hold alpha drops it (logged once).
"""

import concurrent.futures
import logging
import os
import pathlib
import tempfile
import threading

import cv2
import numpy as np

from gfpgan_jax.faces import timing

log = logging.getLogger('gfpgan_jax.restore')

FOLDERS = ('cropped_faces', 'restored_faces', 'cmp', 'restored_imgs')
_ALPHA_FORMATS = ('png', 'tif', 'tiff', 'webp', 'exr')
_DEEP_FORMATS = ('png', 'tif', 'tiff')


def atomic_write(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file in the same folder and a rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise


def _bgr(image: np.ndarray) -> np.ndarray:
  if image.ndim == 3 and image.shape[2] == 3:
    return np.ascontiguousarray(image[..., ::-1])
  if image.ndim == 3 and image.shape[2] == 4:
    return np.ascontiguousarray(image[..., [2, 1, 0, 3]])
  return image


def writable_extension(ext: str) -> str:
  """`ext` if OpenCV can write it, else 'png'."""
  ext = ext.lower().lstrip('.')
  try:
    ok = bool(cv2.haveImageWriter(f'x.{ext}'))
  except cv2.error:
    ok = False
  return ext if ok else 'png'


class Encoder:
  """RGB(A) arrays -> encoded bytes, adapting depth and alpha to the format (warns once per kind)."""

  def __init__(self):
    self._warned = set()
    self._lock = threading.Lock()

  def _warn_once(self, key: str, msg: str, *args) -> None:
    with self._lock:
      if key in self._warned:
        return
      self._warned.add(key)
    log.warning(msg, *args)

  def encode(self, image: np.ndarray, ext: str) -> bytes:
    ext = ext.lower()
    if image.ndim == 3 and image.shape[2] == 4 and ext not in _ALPHA_FORMATS:
      self._warn_once(f'alpha-{ext}', 'the .%s format has no alpha channel: the alpha is dropped (use --ext png)', ext)
      image = image[..., :3]
    if image.dtype == np.uint16 and ext not in _DEEP_FORMATS:
      self._warn_once(f'deep-{ext}', 'the .%s format has no 16-bit mode: 16-bit results are written in 8 bits', ext)
      image = (image.astype(np.uint32) * 255 + 32767) // 65535
      image = image.astype(np.uint8)
    ok, buf = cv2.imencode(f'.{ext}', _bgr(image))
    if not ok:
      raise ValueError(f'OpenCV could not encode a {image.dtype} {image.shape} image as .{ext}')
    return buf.tobytes()


class OutputWriter:
  """Writes the official output files of each result, on background threads.

  Args:
    root: the output folder.
    suffix: the official `--suffix` (None: none).
    ext: 'auto' (the input's extension), 'png' or 'jpg'.
    save_faces: write cropped_faces/, restored_faces/ and cmp/.
    workers: encoding threads.
    timers: the 'encode' stage time (encode + write).
    max_pending: results queued before `write` blocks (bounds the memory).
  """

  def __init__(self, root: pathlib.Path, *, suffix: str | None = None, ext: str = 'auto', save_faces: bool = True,
               workers: int = 2, timers: timing.Timers | None = None, max_pending: int = 8):
    self.root, self.suffix, self.ext, self.save_faces = pathlib.Path(root), suffix, ext, save_faces
    self.timers = timers if timers is not None else timing.Timers()
    self.encoder = Encoder()
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix='write')
    self._slots = threading.BoundedSemaphore(max(1, max_pending))
    self._futures = []
    self.errors: list[str] = []
    self.written: list[pathlib.Path] = []
    self._lock = threading.Lock()

  def image_extension(self, source_ext: str) -> str:
    ext = source_ext if self.ext == 'auto' else self.ext
    return writable_extension(ext)

  def face_paths(self, name: str, idx: int) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    stem = f'{name}_{idx:02d}'
    restored = f'{stem}_{self.suffix}.png' if self.suffix is not None else f'{stem}.png'
    return (self.root / 'cropped_faces' / f'{stem}.png', self.root / 'restored_faces' / restored,
            self.root / 'cmp' / f'{stem}.png')

  def image_path(self, name: str, source_ext: str) -> pathlib.Path:
    stem = f'{name}_{self.suffix}' if self.suffix is not None else name
    return self.root / 'restored_imgs' / f'{stem}.{self.image_extension(source_ext)}'

  def _job(self, files: list[tuple[pathlib.Path, np.ndarray]], label: str) -> None:
    try:
      with self.timers.time('encode'):
        for path, image in files:
          atomic_write(path, self.encoder.encode(image, path.suffix[1:]))
          with self._lock:
            self.written.append(path)
    except (OSError, ValueError, cv2.error) as e:
      msg = f'{label}: could not write its outputs: {type(e).__name__}: {e}'
      log.error('%s', msg)
      with self._lock:
        self.errors.append(msg)
    finally:
      self._slots.release()

  def submit(self, files: list[tuple[pathlib.Path, np.ndarray]], label: str) -> None:
    """Queues files (path, RGB(A) image) to encode and write atomically."""
    self._slots.acquire()
    self._futures.append(self._pool.submit(self._job, files, label))
    self._futures = [f for f in self._futures if not f.done()]

  def write(self, result, name: str, source_ext: str, label: str) -> None:
    """Queues the official files of one `pipeline.Result`."""
    files = []
    if self.save_faces:
      for idx, (crop, face) in enumerate(zip(result.cropped, result.restored)):
        crop_path, face_path, cmp_path = self.face_paths(name, idx)
        files += [(crop_path, crop), (face_path, face), (cmp_path, np.concatenate([crop, face], axis=1))]
    if result.image is not None:
      files.append((self.image_path(name, source_ext), result.image))
    if files:
      self.submit(files, label)

  def close(self) -> None:
    """Waits for every queued write."""
    self._pool.shutdown(wait=True)
