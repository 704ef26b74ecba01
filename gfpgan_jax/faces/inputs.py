"""The inputs of the photo pipeline: which files, their decoding, and a prefetching reader.

`list_inputs(path)` is the official `-i` rule: a file, or every file of a
folder (sorted; hidden files skipped). Each file is an image or, by its
extension, a video. `decode_image` reads an image as the official helper sees
it before `read_image`, but in RGB and without loss: 8- or 16-bit, gray, RGB
or RGBA (OpenCV's IMREAD_UNCHANGED, PIL for the formats OpenCV lacks).

`Item` is one unit of work of the pipeline: a photo, or a frame of a video.
`read_items` yields them in input order, decoding images on a small thread
pool ahead of the consumer (and video frames from the video's own decoder),
so host decoding overlaps the device work.
"""

import collections
from collections.abc import Callable, Iterable, Iterator
import concurrent.futures
import dataclasses
import io
import logging
import pathlib
import queue
import threading
import warnings

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger('gfpgan_jax.restore')

VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv', '.ts')


class UnreadableInput(ValueError):
  """A file that is not a readable image or video."""


@dataclasses.dataclass
class Source:
  """One input file (or the built-in sample).

  Attributes:
    name: the output basename (the file stem; `stem_ext` when two inputs share a stem).
    ext: the input's extension without the dot ('png' for the built-in sample).
    path: the file, or None for an in-memory image.
    kind: 'image' or 'video'.
    image: the decoded image for an in-memory source.
    key: the file name, as used by the `--landmarks` file.
  """
  name: str
  ext: str
  path: pathlib.Path | None
  kind: str
  image: np.ndarray | None = None
  key: str = ''


@dataclasses.dataclass
class Item:
  """One image of the stream: a photo or a video frame.

  Attributes:
    source: where it comes from.
    image: uint8/uint16 [H, W], [H, W, 3] RGB or [H, W, 4] RGBA; None when it
      could not be read (`error` says why) or for a marker.
    index: the position in the stream (0, 1, ...).
    frame: the frame number within a video (0 for a photo).
    error: why the image is missing, or ''.
    marker: '' for an image; 'video_start' / 'video_end' around a video's
      frames (their `info` carries the video's metadata or failure).
    info: extra data of a marker (fps, frame count, audio codec, error).
  """
  source: Source
  image: np.ndarray | None
  index: int = 0
  frame: int = 0
  error: str = ''
  marker: str = ''
  info: dict = dataclasses.field(default_factory=dict)


def is_video(path: pathlib.Path) -> bool:
  return path.suffix.lower() in VIDEO_EXTENSIONS


def list_inputs(path: pathlib.Path | None, sample: Callable[[], np.ndarray] | None = None) -> list[Source]:
  """The sources for `-i PATH`: the file, or the visible files of the folder in sorted order.

  Args:
    path: a file or folder; None for the built-in sample.
    sample: returns the built-in image (called only when `path` is None).

  Raises:
    FileNotFoundError: `path` does not exist, or is a folder without files.
  """
  if path is None:
    return [Source('group_photo', 'png', None, 'image', sample(), 'group_photo.png')]
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'input not found: {path}')
  if path.is_file():
    files = [path]
  else:
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith('.'))
    if not files:
      raise FileNotFoundError(f'no files in input folder {path}')
  stems = collections.Counter(f.stem for f in files)
  out = []
  for f in files:
    name = f.stem if stems[f.stem] == 1 else f.name.replace('.', '_')
    out.append(Source(name, f.suffix[1:] or 'png', f, 'video' if is_video(f) else 'image', key=f.name))
  return out


def _from_cv2(arr: np.ndarray) -> np.ndarray:
  """OpenCV's BGR(A) / gray -> RGB(A) / gray, dtype kept."""
  if arr.ndim == 3 and arr.shape[2] == 1:
    arr = arr[..., 0]
  if arr.ndim == 3 and arr.shape[2] == 3:
    arr = arr[..., ::-1]
  elif arr.ndim == 3 and arr.shape[2] == 4:
    arr = arr[..., [2, 1, 0, 3]]
  return np.ascontiguousarray(arr)


def _from_pil(data: bytes, name: str) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        arr = np.asarray(im).astype(np.uint16)
      elif im.mode in ('L', 'RGB', 'RGBA'):
        arr = np.asarray(im)
      elif im.mode in ('LA', 'PA') or 'transparency' in im.info or im.mode == 'P' and 'A' in im.palette.mode:
        arr = np.asarray(im.convert('RGBA'))
      else:
        arr = np.asarray(im.convert('RGB'))
  if arr.dtype not in (np.uint8, np.uint16):
    raise UnreadableInput(f'{name}: unsupported pixel type {arr.dtype}')
  return arr


def decode_image(data: bytes, name: str) -> np.ndarray:
  """Decodes image bytes without loss: uint8 or uint16, [H, W] gray, [H, W, 3] RGB or [H, W, 4] RGBA.

  Raises:
    UnreadableInput: empty, truncated or not an image (the message names the file).
  """
  if not data:
    raise UnreadableInput(f'{name}: empty file')
  arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if arr is not None and arr.dtype in (np.uint8, np.uint16) and arr.size:
    return _from_cv2(arr)
  try:
    arr = _from_pil(data, name)
  except Image.UnidentifiedImageError as e:
    raise UnreadableInput(f'{name}: not an image, or a format neither OpenCV nor PIL reads') from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, UnreadableInput):
      raise
    raise UnreadableInput(f'{name}: {type(e).__name__}: {e}') from e
  if not arr.size:
    raise UnreadableInput(f'{name}: empty image')
  return arr


def read_image_file(path: pathlib.Path) -> np.ndarray:
  """`decode_image` of a file; OSError and decoding failures become UnreadableInput."""
  try:
    data = path.read_bytes()
  except OSError as e:
    raise UnreadableInput(f'{path.name}: {type(e).__name__}: {e}') from e
  return decode_image(data, path.name)


def _image_items(sources: list[Source], pool: concurrent.futures.Executor, ahead: int, read) -> Iterator[tuple]:
  """(source, future of the image) in order, with at most `ahead` decodes in flight."""
  pending = collections.deque()
  for src in sources:
    fut = None if src.image is not None else pool.submit(read, src.path)
    pending.append((src, fut))
    if len(pending) > ahead:
      yield pending.popleft()
  yield from pending


def read_items(sources: Iterable[Source], video_frames: Callable[[Source], Iterator] | None = None,
               workers: int = 2, ahead: int = 8, timers=None) -> Iterator[Item]:
  """The stream of items, in input order, decoded ahead of the consumer.

  A background thread produces the items into a bounded queue: images are
  decoded by a pool of `workers` threads, `ahead` images in advance; a video
  becomes `video_start`, its frames and `video_end` (from `video_frames`,
  see `faces.video.frames`). Unreadable images come as items with `error`.

  Args:
    sources: from `list_inputs`.
    video_frames: `source -> iterator` of ('start', info) / ('frame', image) /
      ('end', info) events; required when there are videos.
    workers: decoding threads.
    ahead: images decoded in advance (and the queue's size).
    timers: a `faces.timing.Timers` for the 'decode' stage.

  Yields:
    `Item`s with consecutive `index` values.
  """
  q: queue.Queue = queue.Queue(maxsize=max(2, ahead))
  read = read_image_file if timers is None else lambda path: timers.call('decode', read_image_file, path)
  done = object()
  stop = threading.Event()

  def put(x):
    while not stop.is_set():
      try:
        q.put(x, timeout=0.2)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    index = 0
    try:
      with concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix='decode') as pool:
        sources_list = list(sources)
        i = 0
        while i < len(sources_list):
          j = i
          while j < len(sources_list) and sources_list[j].kind == 'image':
            j += 1
          for src, fut in _image_items(sources_list[i:j], pool, ahead, read):
            if fut is None:
              item = Item(src, src.image, index)
            else:
              try:
                item = Item(src, fut.result(), index)
              except UnreadableInput as e:
                item = Item(src, None, index, error=str(e))
            if not put(item):
              return
            index += 1
          if j < len(sources_list):  # a video
            src = sources_list[j]
            frame = 0
            for kind, payload in video_frames(src):
              if kind == 'frame':
                item = Item(src, payload, index, frame=frame)
                frame += 1
              else:
                item = Item(src, None, index, frame=frame, marker=f'video_{kind}', info=payload,
                            error=payload.get('error', ''))
              if not put(item):
                return
              index += 1
            j += 1
          i = j
    except BaseException as e:  # pylint: disable=broad-except
      put(e)
      return
    put(done)

  thread = threading.Thread(target=produce, name='read_items', daemon=True)
  thread.start()
  try:
    while True:
      x = q.get()
      if x is done:
        return
      if isinstance(x, BaseException):
        raise x
      yield x
  finally:
    stop.set()
    thread.join(timeout=5)


# ------------------------------------------------------------------------------ --landmarks FILE.json


def _faces_array(value, where: str) -> np.ndarray:
  try:
    lm = np.asarray(value, np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{where}: expected a list of faces, each 5 [x, y] points; got {str(value)[:80]}') from e
  if lm.size == 0:
    return np.zeros((0, 5, 2))
  if lm.ndim != 3 or lm.shape[1:] != (5, 2):
    raise ValueError(f'{where}: expected a list of faces, each 5 [x, y] points (left eye, right eye, nose, left '
                     f'and right mouth corner); got an array of shape {lm.shape}')
  if not np.all(np.isfinite(lm)):
    raise ValueError(f'{where}: landmarks contain NaN or infinity')
  return lm


class LandmarksFile:
  """User landmarks from `--landmarks FILE.json` (replaces detection).

  The file maps input file names to their faces, each face the 5 points
  (x, y) in pixels, in RetinaFace's order: left eye, right eye, nose, left and
  right mouth corner ("left" = the image's left). A video maps frame numbers
  (from 0, as strings) to the faces of that frame:

      {"photo.jpg": [[[x, y], [x, y], [x, y], [x, y], [x, y]], ...],
       "clip.mp4": {"0": [[[x, y], ...]], "1": []}}

  Names are matched by file name, then by stem. An image that is not in the
  file, or a frame that is not listed, has no faces (it is written through
  upscaled; the log says so for images).
  """

  def __init__(self, path: pathlib.Path):
    import json  # pylint: disable=g-import-not-at-top
    path = pathlib.Path(path)
    try:
      table = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f'cannot read --landmarks {path}: {e}') from e
    except json.JSONDecodeError as e:
      raise ValueError(f'--landmarks {path} is not valid JSON: {e}') from e
    if not isinstance(table, dict):
      raise ValueError(f'--landmarks {path}: expected an object {{"file name": [faces...]}}; got '
                       f'{type(table).__name__}')
    self.path = path
    self.table = {}
    for key, value in table.items():
      where = f'--landmarks {path.name}, "{key}"'
      if isinstance(value, dict):
        frames = {}
        for frame, faces in value.items():
          try:
            number = int(frame)
          except ValueError as e:
            raise ValueError(f'{where}: frame keys must be frame numbers; got "{frame}"') from e
          frames[number] = _faces_array(faces, f'{where}, frame {frame}')
        self.table[key] = frames
      else:
        self.table[key] = _faces_array(value, where)
    self.stems = {pathlib.Path(k).stem: k for k in self.table}

  def lookup(self, source: Source, frame: int = 0) -> np.ndarray | None:
    """float64 [n, 5, 2] for this image or frame; None when the file does not list the input."""
    key = source.key if source.key in self.table else self.stems.get(pathlib.Path(source.key).stem)
    if key is None:
      return None
    value = self.table[key]
    if isinstance(value, dict):
      return value.get(frame, np.zeros((0, 5, 2)))
    return value
