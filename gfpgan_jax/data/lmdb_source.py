"""BasicSR LMDB datasets (`io_backend: lmdb`) as a random-access source of HQ faces.

A BasicSR LMDB is a folder (by convention named `*.lmdb`, e.g. `ffhq_512.lmdb`)
written by `basicsr.utils.lmdb_util.make_lmdb_from_imgs`:

    ffhq_512.lmdb/
      data.mdb        the LMDB: key = image name without extension (ASCII),
                      value = the encoded image (`cv2.imencode('.png', ...)`)
      lock.mdb
      meta_info.txt   one line per image: `NAME.png (H,W,C) COMPRESS_LEVEL`

The images are read in `meta_info.txt` order, with the key the official
`FFHQDegradationDataset` uses (`line.split('.')[0]`). Records carry the listed
name (e.g. `00042.png`), so landmarks are matched by file name as for a
folder. Needs the `lmdb` package (`pip install gfpgan_jax[lmdb]`); the
environment is opened read-only without locking, once per process and path
(grain workers open their own), as basicsr's `LmdbBackend` does.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
import logging
import os
from typing import Any

import numpy as np

from gfpgan_jax.data import landmarks as landmarks_lib

logger = logging.getLogger(__name__)

META_INFO = 'meta_info.txt'
DATA_FILE = 'data.mdb'


def is_lmdb_dir(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a folder holding an LMDB (`data.mdb`), or a folder named `*.lmdb`."""
  path = os.fspath(path)
  return os.path.isdir(path) and (os.path.isfile(os.path.join(path, DATA_FILE)) or
                                  path.rstrip('/\\').endswith('.lmdb'))


def not_a_folder_message(path: str | os.PathLike[str]) -> str:
  """The error for an LMDB given where a folder of images is expected: what to do instead."""
  path = os.fspath(path)
  return (f'{path} is a BasicSR LMDB ({DATA_FILE} + {META_INFO}), not a folder of image files: train on it with '
          f"config.data.source='lmdb' (config.data.train_dir={path}), or convert it with "
          f'scripts/prepare_ffhq.py --input {path} --output DIR')


def read_meta_info(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
  """`(names, keys)` from `root/meta_info.txt` (lines `NAME (H,W,C) LEVEL`; the key is NAME up to its first '.').

  Raises:
    FileNotFoundError: no meta_info.txt.
    ValueError: no entries, a malformed line, or a duplicate key.
  """
  path = os.path.join(os.fspath(root), META_INFO)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: a BasicSR LMDB lists its images in {META_INFO} '
                            '(basicsr.utils.lmdb_util.make_lmdb_from_imgs writes it)')
  names, keys = [], []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      name = line.split()[0]
      key = name.split('.')[0]
      if not key:
        raise ValueError(f'{path}:{n}: expected "NAME.png (H,W,C) LEVEL", got {line.strip()!r}')
      names.append(name)
      keys.append(key)
  if not names:
    raise ValueError(f'{path} lists no images')
  dup = sorted(k for k, c in collections.Counter(keys).items() if c > 1)
  if dup:
    raise ValueError(f'{path} lists {len(dup)} keys more than once: {dup[:5]}')
  return names, keys


# Read-only environments of this process by real path: lmdb allows one per path and process, which every
# LmdbSource of that path (copies in grain workers included) shares.
_ENVS: dict[str, tuple[int, Any]] = {}


def _env(root: str):
  """The process's read-only environment of `root` (opened on first use, as basicsr's LmdbBackend opens it)."""
  path = os.path.realpath(root)
  pid, env = _ENVS.get(path, (None, None))
  if pid != os.getpid():  # never an environment inherited across a fork
    try:
      import lmdb  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("reading a BasicSR LMDB needs the lmdb package: pip install 'gfpgan_jax[lmdb]' "
                        "(or pip install 'lmdb>=1.4')") from e
    env = lmdb.open(path, readonly=True, lock=False, readahead=False, max_readers=512)
    _ENVS[path] = (os.getpid(), env)
  return env


class LmdbSource:
  """The images of a BasicSR LMDB, for grain (see the module doc).

  Elements are `{'data': encoded bytes, 'name': str}` plus `'locations'`
  (float64 [3, 3], in `landmarks_resolution` pixels) when a landmark table is
  given. A key missing from the database reads as empty data, which
  `DecodedSource` replaces and counts like an unreadable file.
  """

  def __init__(self,
               root: str | os.PathLike[str],
               landmarks: Mapping[int, np.ndarray] | None = None,
               landmarks_resolution: int = 512):
    """Reads meta_info.txt and checks the database.

    Args:
      root: the `.lmdb` folder.
      landmarks: `{FFHQ index: [3, 3]}`; every listed image must have an entry.
      landmarks_resolution: the pixel frame of the landmark coordinates.

    Raises:
      FileNotFoundError: no such folder, no data.mdb or no meta_info.txt.
      ValueError: see `read_meta_info`; the database holds fewer records than
        listed; an image has no landmarks.
      ImportError: the lmdb package is not installed.
    """
    self.root = os.fspath(root)
    if not os.path.isdir(self.root):
      raise FileNotFoundError(f'LMDB folder not found: {self.root}')
    if not os.path.isfile(os.path.join(self.root, DATA_FILE)):
      raise FileNotFoundError(f'{self.root} has no {DATA_FILE}: not an LMDB (for a folder of image files use '
                              "config.data.source='folder')")
    self.names, self._keys = read_meta_info(self.root)
    env = _env(self.root)
    entries = env.stat()['entries']
    with env.begin(write=False) as txn:
      first_missing = txn.get(self._keys[0].encode('ascii')) is None
    if entries < len(self._keys) or first_missing:
      raise ValueError(f'{self.root}: {META_INFO} lists {len(self._keys)} images but {DATA_FILE} holds {entries} '
                       f'records{" and not key " + repr(self._keys[0]) if first_missing else ""}')
    self.landmarks_resolution = landmarks_resolution
    self._locations = None
    if landmarks is not None:
      self._locations, missing = landmarks_lib.match_by_name(self.names, landmarks)
      if missing:
        raise ValueError(f'{len(missing)} of {len(self.names)} images in {self.root} have no landmarks entry '
                         f'(matched by name: the stem must be the FFHQ index, e.g. 00042.png): {missing[:5]}')

  @property
  def has_components(self) -> bool:
    return self._locations is not None

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> dict[str, Any]:
    name, key = self.names[index], self._keys[index]
    with _env(self.root).begin(write=False) as txn:
      data = txn.get(key.encode('ascii'))
    if data is None:
      logger.warning('%s: key %r (listed in %s) is not in the database', self.root, key, META_INFO)
      data = b''
    element = {'data': bytes(data), 'name': name}
    if self._locations is not None:
      element['locations'] = self._locations[index].copy()
    return element

  def location(self, name: str) -> str:
    """Where record `name` is, for messages."""
    return f'{self.root}:{name.split(".")[0]}'

  def __repr__(self) -> str:
    return f'LmdbSource(root={self.root!r}, len={len(self)}, components={self.has_components})'
