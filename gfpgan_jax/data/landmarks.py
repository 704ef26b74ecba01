"""Eye and mouth landmarks of FFHQ faces and the component boxes built from them.

The official file `FFHQ_eye_mouth_landmarks_512.pth` (gfpgan.md 2.5) is a dict
keyed by the zero-padded image index (`'00000042'`). Each value is
`{'left_eye': [x, y, half_len], 'right_eye': [...], 'mouth': [...]}` of numpy
float64 numbers in 512-pixel coordinates, with image left/right and the eye
half length *before* the 1.4 enlargement. `scripts/convert_landmarks.py`
turns it once into the same structure as plain JSON, so that training needs no
PyTorch.

In memory a face's landmarks are one float64 array `[3, 3]`: rows follow
`COMPONENTS` (left eye, right eye, mouth) and columns are `(x, y, half_len)`.
Faces are matched to landmarks by **file name** (`00042.png` -> index 42),
never by position in a folder listing (official pitfall 2), and nothing here
mutates a stored entry (official pitfall 1): every function returns new arrays.
"""

from collections.abc import Mapping
import json
import os
import pathlib
import re
from typing import Any

import numpy as np

COMPONENTS = ('left_eye', 'right_eye', 'mouth')
# Landmark tables map the image index (int) to a float64 [3, 3] array.
LandmarkTable = dict[int, np.ndarray]

_DIGITS = re.compile(r'\d+')


def index_from_name(name: str | os.PathLike[str]) -> int | None:
  """Returns the FFHQ index of an image file name, or None if it has none.

  The stem (file name without directory and extension) must be all digits:
  `'00042'`, `'00000042'`, `'ffhq/00042.png'` -> 42; `'face_42.png'` -> None.
  """
  stem = pathlib.PurePath(os.fspath(name)).name.split('.')[0]
  return int(stem) if _DIGITS.fullmatch(stem) else None


def key_from_index(index: int) -> str:
  """The official key of image `index`: zero-padded to 8 digits."""
  return f'{index:08d}'


def entry_to_array(entry: Mapping[str, Any]) -> np.ndarray:
  """One `{left_eye, right_eye, mouth}` entry -> a new float64 array [3, 3]."""
  rows = []
  for part in COMPONENTS:
    row = np.asarray(entry[part], dtype=np.float64).reshape(-1)
    if row.shape != (3,):
      raise ValueError(f'landmark {part!r} must be [x, y, half_len], got {entry[part]!r}')
    rows.append(row)
  return np.stack(rows)


def array_to_entry(locations: np.ndarray) -> dict[str, list[float]]:
  """A [3, 3] array -> a plain `{left_eye: [x, y, h], ...}` dict of Python floats."""
  locations = np.asarray(locations, dtype=np.float64)
  return {part: [float(v) for v in locations[i]] for i, part in enumerate(COMPONENTS)}


def _table_from_mapping(raw: Mapping[Any, Any], path: str) -> LandmarkTable:
  table = {}
  for key, entry in raw.items():
    index = index_from_name(str(key))
    if index is None:
      raise ValueError(f'{path}: landmark key {key!r} is not an image index')
    if index in table:
      raise ValueError(f'{path}: image index {index} appears twice (key {key!r})')
    table[index] = entry_to_array(entry)
  return table


def load_torch_landmarks(path: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads the official `.pth` landmarks file with PyTorch (an optional dependency).

  `weights_only=False` is needed since torch 2.6: the file pickles numpy
  scalars. Only load files you trust.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs PyTorch (pip install gfpgan_jax[torch]); or convert it once with '
        'scripts/convert_landmarks.py and point the config at the JSON file.') from e
  raw = torch.load(os.fspath(path), map_location='cpu', weights_only=False)
  if not isinstance(raw, Mapping):
    raise ValueError(f'{path}: expected a dict keyed by image index, got {type(raw).__name__}')
  return dict(raw)


def load_landmarks(path: str | os.PathLike[str]) -> LandmarkTable:
  """Loads a landmarks file into `{image index: float64 [3, 3]}`.

  Args:
    path: `.json` (written by `scripts/convert_landmarks.py`: `{"00000042":
      {"left_eye": [x, y, h], ...}}`), `.npz` (arrays `index` int [N] and
      `locations` float [N, 3, 3]) or the official `.pth` (needs PyTorch).

  Returns:
    A new dict; callers may keep it, nothing mutates its arrays.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: on an unknown extension or a malformed entry.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'landmarks file not found: {path}')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.json':
    with open(path, encoding='utf-8') as f:
      return _table_from_mapping(json.load(f), path)
  if ext == '.npz':
    with np.load(path) as data:
      index, locations = data['index'], data['locations'].astype(np.float64)
    if locations.shape != (len(index), 3, 3):
      raise ValueError(f'{path}: locations must be [N, 3, 3], got {locations.shape}')
    return {int(i): locations[n].copy() for n, i in enumerate(index)}
  if ext in ('.pth', '.pt'):
    return _table_from_mapping(load_torch_landmarks(path), path)
  raise ValueError(f'{path}: unknown landmarks format {ext!r} (expected .json, .npz or .pth)')


def save_landmarks(table: Mapping[int, np.ndarray], path: str | os.PathLike[str]) -> None:
  """Writes `{index: [3, 3]}` as `.json` (official key/value layout) or `.npz`."""
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  indices = sorted(table)
  if ext == '.json':
    plain = {key_from_index(i): array_to_entry(table[i]) for i in indices}
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(plain, f)
  elif ext == '.npz':
    locations = np.stack([np.asarray(table[i], np.float64) for i in indices]) if indices else np.zeros((0, 3, 3))
    np.savez(path, index=np.asarray(indices, np.int64), locations=locations)
  else:
    raise ValueError(f'{path}: unknown landmarks format {ext!r} (expected .json or .npz)')


def match_by_name(names: list[str], table: Mapping[int, np.ndarray]) -> tuple[np.ndarray, list[str]]:
  """Looks up every image's landmarks by its file name.

  Args:
    names: image file names or paths; the stem gives the index.
    table: `{index: [3, 3]}`, e.g. from `load_landmarks`.

  Returns:
    `(locations, missing)`: float64 [len(names), 3, 3] (NaN rows where an image
    has no entry) and the names without an entry.
  """
  locations = np.full((len(names), 3, 3), np.nan)
  missing = []
  for n, name in enumerate(names):
    index = index_from_name(name)
    if index is None or index not in table:
      missing.append(name)
    else:
      locations[n] = table[index]
  return locations, missing


def scale_locations(locations: np.ndarray, scale: float) -> np.ndarray:
  """Scales x, y and the half length (landmarks of a resized face). New array."""
  return np.asarray(locations, np.float64) * scale


def flip_locations(locations: np.ndarray, width: float) -> np.ndarray:
  """Landmarks of the horizontally flipped face, as the official dataset does.

  Left and right eyes are swapped and x becomes `width - x` for every part
  (`512 - x` at 512 px, not 511). The half lengths are unchanged.

  Args:
    locations: float [3, 3] (rows `COMPONENTS`, columns x, y, half_len).
    width: the image width in the landmarks' pixel frame.

  Returns:
    A new float64 array [3, 3]; the input is not modified.
  """
  flipped = np.asarray(locations, np.float64)[[1, 0, 2]].copy()
  flipped[:, 0] = width - flipped[:, 0]
  return flipped


def component_boxes(locations: np.ndarray, eye_enlarge_ratio: float = 1.4) -> np.ndarray:
  """The official `get_component_coordinates` boxes (after any flip).

  For each part with centre (x, y) and half length h (eyes: h *=
  `eye_enlarge_ratio`), the box is `[x - h + 1, y - h + 1, x + h, y + h]`
  (x1, y1, x2, y2), computed in float64 and cast to float32 like the official
  `torch.from_numpy(loc).float()`.

  Args:
    locations: float [3, 3] (rows `COMPONENTS`, columns x, y, half_len).
    eye_enlarge_ratio: enlargement of the eyes' half length.

  Returns:
    float32 [3, 4], rows `COMPONENTS`.
  """
  locations = np.asarray(locations, np.float64)
  centre = locations[:, :2]
  half = locations[:, 2:3] * np.array([[eye_enlarge_ratio], [eye_enlarge_ratio], [1.0]])
  return np.concatenate([centre - half + 1, centre + half], axis=1).astype(np.float32)
