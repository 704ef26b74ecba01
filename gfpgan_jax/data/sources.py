"""Random-access sources of high-quality faces for grain, and their decoding.

Two raw sources yield `{'data': encoded image bytes, 'name': str}` plus
`'locations'` (float64 [3, 3], see `landmarks.py`) when eye/mouth landmarks are
known:

* `ImageFolderSource`: every PNG/JPEG/BMP/WebP file under a folder,
  **recursively** (FFHQ's `images1024x1024` has 1000-image subfolders, GFPGAN's
  `ffhq_512` is flat; both work), in sorted relative-path order, so the order
  never depends on the file system's listing order.
* `lmdb_source.LmdbSource`: a BasicSR LMDB (`data.mdb` + `meta_info.txt`);
  a folder source pointed at one fails with a message saying so.
* `TfdsSource`: the TFDS ArrayRecord dataset written by
  `scripts/prepare_ffhq.py`, opened with `tfds` random access and no
  TensorFlow. The image is a `tfds.features.Image` (PNG); it is read with
  `tfds.decode.SkipDecoding()` as raw bytes and decoded here with PIL, because
  the tfds numpy decoder uses OpenCV when it is installed and then wraps 16-bit
  images around instead of scaling them. `Text` and `Tensor` features decode
  with numpy only. (Checked with tensorflow-datasets 4.9.10 and array-record
  0.8.6: neither writing nor reading imports TensorFlow.)

`DecodedSource` wraps either one: it decodes with PIL, converts every mode to
RGB uint8, resizes to the training resolution and replaces unreadable records,
see its docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
import io
import logging
import os
import struct
from typing import Any
import warnings

import numpy as np
from PIL import Image

from gfpgan_jax.data import landmarks as landmarks_lib
from gfpgan_jax.data import lmdb_source

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
# Name, split and feature keys of the dataset that `scripts/prepare_ffhq.py` writes.
TFDS_NAME = 'ffhq_gfpgan'
TFDS_SPLIT = 'train'
FEATURE_IMAGE = 'image'  # tfds.features.Image(shape=(R, R, 3), encoding_format='png')
FEATURE_NAME = 'name'  # tfds.features.Text(): the file's path relative to the input folder
FEATURE_COMPONENTS = 'components'  # Tensor((3, 3), float64, Encoding.BYTES), in the stored image's pixels
# Resampling filter for HQ faces whose size is not the training resolution.
# Lanczos (antialiased) keeps the GT sharp when downscaling FFHQ 1024 -> 512.
RESAMPLE = Image.Resampling.LANCZOS
_PNG_IHDR = b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR'  # PNG signature, then the IHDR chunk's length and tag


class UnreadableImageError(ValueError):
  """An image that cannot be decoded (corrupt, truncated, empty, not an image)."""


# ------------------------------------------------------------- decoding ----


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
  """Any PIL image mode -> RGB uint8 [H, W, 3].

  16-bit and 32-bit grey ('I;16*', 'I', 'F') keep their top 8 bits (values are
  clipped to [0, 65535] and shifted right by 8), as OpenCV's `IMREAD_COLOR`
  does; PIL's own conversion would clip them to 255. 16-bit RGB(A) PNGs are
  already read by PIL as 8-bit RGB(A). Alpha is dropped (not composited),
  palette, grey, CMYK and YCbCr images are converted by PIL.
  """
  if image.mode.startswith('I') or image.mode == 'F':
    grey = np.asarray(image, dtype=np.float64)
    grey = (np.clip(grey, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image, dtype=np.uint8)


def decode_image(data: bytes, resolution: int | None = None, name: str = '<bytes>') -> tuple[np.ndarray, str]:
  """Decodes image bytes into RGB uint8 [R, R, 3].

  Args:
    data: encoded bytes (any format PIL reads).
    resolution: output side R; None keeps the decoded size. Other sizes are
      resized with `RESAMPLE` (non-square images are stretched).
    name: used in error messages.

  Returns:
    `(image, mode)`: the image and the decoded file's PIL mode ('RGB' for a
    normal face; anything else was converted).

  Raises:
    UnreadableImageError: empty, truncated, corrupt or non-image data.
  """
  if not data:
    raise UnreadableImageError(f'{name}: empty file')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # e.g. PIL's palette-transparency note
      with Image.open(io.BytesIO(data)) as image:
        image.load()  # raises on truncated data
        mode = image.mode
        array = to_rgb_uint8(image)
  except Image.UnidentifiedImageError as e:
    raise UnreadableImageError(f'{name}: not an image, or a format PIL cannot read') from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableImageError(f'{name}: {type(e).__name__}: {e}') from e
  if resolution is not None and array.shape[:2] != (resolution, resolution):
    array = np.asarray(Image.fromarray(array).resize((resolution, resolution), RESAMPLE))
  return array, mode


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
  """RGB uint8 [H, W, 3] -> PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG', compress_level=compress_level)
  return buffer.getvalue()


def prepare_image(path: str, resolution: int, compress_level: int = 6) -> tuple[bytes | None, str]:
  """Reads one file for a prepared dataset: PNG bytes of RGB uint8 [R, R, 3].

  An 8-bit RGB PNG that already is R x R is decoded (to validate it) and its
  own bytes are kept; anything else is converted, resized and re-encoded.
  Picklable by reference, for a process pool.

  Returns:
    `(png, note)`: `png` is None for an unreadable file and `note` says why;
    otherwise `note` is the decoded PIL mode.
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    return None, str(e)
  return prepare_encoded((data, path), resolution, compress_level)


def prepare_encoded(record: tuple[bytes, str], resolution: int, compress_level: int = 6) -> tuple[bytes | None, str]:
  """`prepare_image` for encoded bytes already read: `record` is `(data, name for messages)`."""
  data, name = record
  try:
    image, mode = decode_image(data, resolution, name)
  except UnreadableImageError as e:
    return None, str(e)
  # IHDR: width and height (big-endian uint32), bit depth 8, colour type 2 (RGB).
  if data[:16] == _PNG_IHDR and data[16:26] == struct.pack('>IIBB', resolution, resolution, 8, 2):
    return data, mode
  return encode_png(image, compress_level), mode


# ------------------------------------------------------------- folders -----


def list_image_files(root: str | os.PathLike[str]) -> list[str]:
  """Image files under `root`, recursively, as sorted relative '/'-paths.

  Hidden files and folders (leading '.') are ignored; symlinked folders are
  followed. Files are recognised by extension (`IMAGE_EXTENSIONS`, any case);
  whether they really are images is found out when they are decoded.

  Raises:
    FileNotFoundError: `root` does not exist.
    NotADirectoryError: `root` is not a folder.
    ValueError: no image file under `root`, or `root` is a BasicSR LMDB (the
      message says how to read it: `lmdb_source.LmdbSource`).
  """
  root = os.fspath(root)
  if not os.path.exists(root):
    raise FileNotFoundError(f'image folder not found: {root}')
  if not os.path.isdir(root):
    raise NotADirectoryError(f'not a folder of images: {root}')
  if lmdb_source.is_lmdb_dir(root):
    raise ValueError(lmdb_source.not_a_folder_message(root))
  files = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    rel = os.path.relpath(dirpath, root)
    for f in filenames:
      if not f.startswith('.') and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
        files.append(f if rel == '.' else os.path.join(rel, f).replace(os.sep, '/'))
  if not files:
    raise ValueError(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) found under {root}')
  return sorted(files)


def _attach_landmarks(names: list[str], table: Mapping[int, np.ndarray], where: str) -> np.ndarray:
  locations, missing = landmarks_lib.match_by_name(names, table)
  if missing:
    raise ValueError(
        f'{len(missing)} of {len(names)} images in {where} have no landmarks entry (matched by file '
        f'name: the stem must be the FFHQ index, e.g. 00042.png): {missing[:5]}')
  return locations


class ImageFolderSource:
  """The image files of a folder (see `list_image_files`), for grain.

  Elements are `{'data': bytes, 'name': relative path}` plus `'locations'`
  (float64 [3, 3], in `landmarks_resolution` pixels) when a landmark table is
  given. Landmarks are looked up by file name once, at construction.
  """

  def __init__(self,
               root: str | os.PathLike[str],
               landmarks: Mapping[int, np.ndarray] | None = None,
               landmarks_resolution: int = 512):
    """Lists the folder.

    Args:
      root: the folder.
      landmarks: `{FFHQ index: [3, 3]}`; every image must have an entry.
      landmarks_resolution: the pixel frame of the landmark coordinates.

    Raises:
      FileNotFoundError, NotADirectoryError, ValueError: see
      `list_image_files`; ValueError if an image has no landmarks.
    """
    self.root = os.fspath(root)
    self.names = list_image_files(self.root)
    self.landmarks_resolution = landmarks_resolution
    self._locations = None if landmarks is None else _attach_landmarks(self.names, landmarks, self.root)

  @property
  def has_components(self) -> bool:
    return self._locations is not None

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> dict[str, Any]:
    name = self.names[index]
    try:
      with open(os.path.join(self.root, name), 'rb') as f:
        data = f.read()
    except OSError as e:
      logger.warning('Cannot read %s: %s', os.path.join(self.root, name), e)
      data = b''
    element = {'data': data, 'name': name}
    if self._locations is not None:
      element['locations'] = self._locations[index].copy()
    return element

  def location(self, name: str) -> str:
    """Where record `name` is, for messages."""
    return os.path.join(self.root, name)

  def __repr__(self) -> str:
    return f'ImageFolderSource(root={self.root!r}, len={len(self)}, components={self.has_components})'


class PairedSource:
  """A GT source with given LQ inputs from a folder (official `dataroot_lq`), matched by name.

  The LQ of GT record `a/b/00042.png` is the file `a/b/00042.*` (any image
  extension) under `lq_root`. Elements are the GT source's plus `'lq_data'`
  (bytes) and `'lq_name'` (its path, for messages).
  """

  def __init__(self, gt_source, lq_root: str | os.PathLike[str]):
    """Matches every GT record with its LQ file.

    Raises:
      FileNotFoundError, NotADirectoryError, ValueError: see
      `list_image_files`; ValueError if a GT record has no LQ, or two LQ files
      share a name.
    """
    self.gt_source = gt_source
    self.lq_root = os.fspath(lq_root)
    by_stem = {}
    for f in list_image_files(self.lq_root):
      stem = os.path.splitext(f)[0]
      if stem in by_stem:
        raise ValueError(f'{self.lq_root}: two LQ files for {stem!r}: {by_stem[stem]}, {f}')
      by_stem[stem] = f
    names = list(gt_source.names) if hasattr(gt_source, 'names') else [
        gt_source[i]['name'] for i in range(len(gt_source))]
    self._lq = [by_stem.get(os.path.splitext(n)[0]) for n in names]
    missing = [n for n, lq in zip(names, self._lq) if lq is None]
    if missing:
      raise ValueError(f'{len(missing)} of {len(names)} GT images have no LQ file of the same name in '
                       f'{self.lq_root}: {missing[:5]}')

  @property
  def has_components(self) -> bool:
    return getattr(self.gt_source, 'has_components', False)

  @property
  def landmarks_resolution(self) -> int:
    return self.gt_source.landmarks_resolution

  def __len__(self) -> int:
    return len(self.gt_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    element = dict(self.gt_source[index])
    path = os.path.join(self.lq_root, self._lq[index])
    try:
      with open(path, 'rb') as f:
        element['lq_data'] = f.read()
    except OSError as e:
      logger.warning('Cannot read %s: %s', path, e)
      element['lq_data'] = b''
    element['lq_name'] = path
    return element

  def location(self, name: str) -> str:
    return self.gt_source.location(name) if hasattr(self.gt_source, 'location') else name

  def __repr__(self) -> str:
    return f'PairedSource({self.gt_source!r}, lq_root={self.lq_root!r})'


# ---------------------------------------------------------------- TFDS -----


def open_tfds_builder(data_dir: str | os.PathLike[str], name: str = TFDS_NAME):
  """The read-only tfds builder of a prepared dataset (no TensorFlow needed).

  Args:
    data_dir: either the `--output` folder of `scripts/prepare_ffhq.py`
      (holding `<name>/<version>/`) or a version folder itself (holding
      `dataset_info.json`).
    name: the dataset name.

  Raises:
    FileNotFoundError: `data_dir` or the dataset in it does not exist.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f'TFDS data_dir not found: {data_dir}')
  if os.path.isfile(os.path.join(data_dir, 'dataset_info.json')):
    return tfds.builder_from_directory(data_dir)
  if not os.path.isdir(os.path.join(data_dir, name)):
    raise FileNotFoundError(
        f'no TFDS dataset {name!r} in {data_dir} (write it with scripts/prepare_ffhq.py --output {data_dir})')
  return tfds.builder(name, data_dir=data_dir)


class TfdsSource:
  """The TFDS ArrayRecord dataset of `scripts/prepare_ffhq.py`, for grain.

  Elements are `{'data': PNG bytes, 'name': str}` plus `'locations'` (float64
  [3, 3]) from the dataset's `components` feature, or, for a dataset prepared
  without landmarks, from a landmark table matched by the stored file name.
  """

  def __init__(self,
               data_dir: str | os.PathLike[str],
               name: str = TFDS_NAME,
               split: str = TFDS_SPLIT,
               landmarks: Mapping[int, np.ndarray] | None = None,
               landmarks_resolution: int = 512):
    """Opens the dataset.

    Args:
      data_dir: see `open_tfds_builder`.
      name: dataset name.
      split: split to read.
      landmarks: used only if the dataset has no `components` feature.
      landmarks_resolution: the pixel frame of `landmarks`.

    Raises:
      FileNotFoundError: see `open_tfds_builder`.
      ValueError: empty split, or an image without landmarks.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = open_tfds_builder(data_dir, name)
    self.where = f'{builder.data_dir}[{split}]'
    self._source = builder.as_data_source(split=split, decoders={FEATURE_IMAGE: tfds.decode.SkipDecoding()})
    if not len(self._source):
      raise ValueError(f'TFDS dataset {self.where} is empty')
    metadata = dict(builder.info.metadata or {})
    self._stored_components = FEATURE_COMPONENTS in builder.info.features
    self._locations = None
    if self._stored_components:
      self.landmarks_resolution = int(metadata.get('resolution', builder.info.features[FEATURE_IMAGE].shape[0]))
    elif landmarks is not None:
      self.landmarks_resolution = landmarks_resolution
      names = [_text(self._source[i][FEATURE_NAME]) for i in range(len(self._source))]
      self._locations = _attach_landmarks(names, landmarks, self.where)
    else:
      self.landmarks_resolution = landmarks_resolution

  @property
  def has_components(self) -> bool:
    return self._stored_components or self._locations is not None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._source[index]
    element = {'data': record[FEATURE_IMAGE], 'name': _text(record[FEATURE_NAME])}
    if self._stored_components:
      element['locations'] = np.asarray(record[FEATURE_COMPONENTS], np.float64)
    elif self._locations is not None:
      element['locations'] = self._locations[index].copy()
    return element

  def location(self, name: str) -> str:
    """Where record `name` is, for messages."""
    return f'{self.where}:{name}'

  def __repr__(self) -> str:
    return f'TfdsSource({self.where}, len={len(self)}, components={self.has_components})'


def _text(value: bytes | str) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------ decoding -----


class DecodedSource:
  """Decoded RGB uint8 faces at one resolution, for grain.

  `read(i)` returns `{'gt': uint8 [R, R, 3]}` plus `'lq'` (uint8 [R, R, 3])
  for a paired source, `'locations'` (float64 [3, 3] in R-pixel coordinates)
  when `with_components`, or None when record i (either image) is unreadable.

  `__getitem__(i)` never fails on bad data: an unreadable record is replaced by
  the next readable one (i+1, i+2, ... modulo the length), so an epoch keeps
  its length and the stream stays a deterministic function of the index, also
  across grain worker processes. Each element carries `'num_skipped'` (int32):
  1 if record i itself was unreadable (and replaced), else 0. Every index is
  visited once per epoch, so summed over an epoch's batches (of all processes)
  it is exactly the number of unreadable files; a trainer's running sum counts
  each bad file once per epoch.

  Every unreadable file and every file in a mode other than RGB (converted to
  RGB uint8) is logged as a warning naming it, once per file and process.
  """

  def __init__(self, source, resolution: int, with_components: bool = False, max_consecutive_skips: int = 100):
    """Wraps a raw source.

    Args:
      source: `ImageFolderSource`, `TfdsSource`, `LmdbSource` or anything with `__len__`,
        `__getitem__` -> `{'data', 'name'[, 'locations']}` and, for
        components, `has_components` and `landmarks_resolution`.
      resolution: output side R.
      with_components: emit `'locations'` (the source must have them).
      max_consecutive_skips: give up (RuntimeError) after this many unreadable
        records in a row, which means the data is broken, not a few files.
    """
    if with_components and not getattr(source, 'has_components', False):
      raise ValueError(f'{source!r} has no eye/mouth landmarks')
    self.source = source
    self.resolution = resolution
    self.with_components = with_components
    self.max_consecutive_skips = max_consecutive_skips
    self._scale = resolution / source.landmarks_resolution if with_components else 1.0
    self._warned = set()

  def __len__(self) -> int:
    return len(self.source)

  def _warn_once(self, name: str, message: str, *args) -> None:
    if name not in self._warned:
      self._warned.add(name)
      logger.warning(message, *args)

  def read(self, index: int) -> dict[str, np.ndarray] | None:
    """Decodes record `index`; None (and a warning) if it is unreadable."""
    record = self.source[index]
    name = record['name']
    where = self.source.location(name) if hasattr(self.source, 'location') else name
    try:
      gt, mode = decode_image(record['data'], self.resolution, where)
    except UnreadableImageError as e:
      self._warn_once(name, 'Skipping unreadable image: %s', e)
      return None
    if mode != 'RGB':
      self._warn_once(name, 'Converted image %s from mode %s to RGB uint8', where, mode)
    element = {'gt': gt}
    if 'lq_data' in record:  # a paired LQ (`PairedSource`): decoded and resized like the GT
      try:
        element['lq'], _ = decode_image(record['lq_data'], self.resolution, record.get('lq_name', name))
      except UnreadableImageError as e:
        self._warn_once(name, 'Skipping unreadable image: %s', e)
        return None
    if self.with_components:
      element['locations'] = landmarks_lib.scale_locations(record['locations'], self._scale)
    return element

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    n = len(self)
    for skipped in range(min(n, self.max_consecutive_skips + 1)):
      element = self.read((index + skipped) % n)
      if element is not None:
        element['num_skipped'] = np.int32(skipped > 0)
        return element
    raise RuntimeError(
        f'{min(n, self.max_consecutive_skips + 1)} consecutive unreadable images in {self.source!r} '
        f'from index {index % n}; see the warnings above')

  def __repr__(self) -> str:
    return f'DecodedSource({self.source!r}, resolution={self.resolution})'
