"""Host-side grain input pipeline: read, decode, flip and batch HQ faces.

The degradations that make the LQ input run on the accelerator
(`gfpgan_jax/data/degradations.py`); the host only does what the official
`FFHQDegradationDataset` does to the GT (gfpgan.md 3.1, steps 1, 2 and 14):

    source (folder | BasicSR LMDB | TFDS ArrayRecord, decoded with PIL to RGB uint8 [R, R, 3])
      -> seed -> shuffle -> repeat
      -> RandomHorizontalFlip (p=0.5; image and landmarks)
      -> ComponentBoxes (official eye/mouth boxes)
      -> this process's block of every global batch -> batch(global_batch / process_count)
      -> to_iter_dataset (read threads) -> mp_prefetch (worker processes)

Train batches (`make_train_iterator`) are dicts of numpy arrays, B = per-process
batch = `config.data.batch_size // process_count`:

    'gt':            uint8   [B, R, R, 3]  RGB, 0..255
    'loc_left_eye':  float32 [B, 4]  (x1, y1, x2, y2), only with crop_components
    'loc_right_eye': float32 [B, 4]  image left/right, after the flip
    'loc_mouth':     float32 [B, 4]
    'num_skipped':   int32   [B]  1 where the sampled file was unreadable (replaced)
    'lq':            uint8   [B, R, R, 3]  only with data.train_lq_dir: the given LQ input of each GT (same
                     flip); the training step then skips the degradations

Sharding: the shuffled, flipped *global* stream is the same on every process.
Cut into global batches of G = `config.data.batch_size`, process p takes rows
[p G/P, (p+1) G/P) of each, so the per-process batches of step k, concatenated
in process order (as `jax.make_array_from_process_local_data` does), are exactly
global batch k, whatever P is. Processes thus read
disjoint images (within each epoch), together they cover the dataset, and the
union of the P per-process batches of step k is the same set of samples whatever
P is. All per-sample randomness (shuffle order, flip) is a function of the
global position, drawn from grain's per-element `np.random.Generator`.

Without landmarks: with `crop_components=True` building the pipeline fails
(the recipe needs the boxes); with `crop_components=False` the `loc_*` keys are
absent.

Bad data: see `sources.DecodedSource`. Unreadable files are replaced by the
next readable one and flagged in `num_skipped`, which travels with the batch
and so counts across grain worker processes and hosts; the trainer can log
the running total of `batch['num_skipped'].sum()` (each bad file counts once
per epoch). Files in other modes (grey, RGBA, palette, 16-bit) are converted to
RGB uint8. Both are logged once per file and process, naming the file. A
missing path or an empty folder raises when the pipeline is built.

Checkpointing: `iterator.get_state()` / `set_state()` round-trip, and the
iterator can be saved with Orbax through `grain.checkpoint.CheckpointSave` /
`CheckpointRestore`. The state depends on `worker_count`: restore with the
same value. The batches themselves do not: they are formed before the split
over worker processes, so any `worker_count` yields the same stream.

Worker processes are started with `spawn`, so the program's entry point must
be guarded by `if __name__ == '__main__'` (as `absl.app.run` programs are).
Turn the numpy batches into global arrays with
`jax.make_array_from_process_local_data(sharding, batch)`.
"""

from __future__ import annotations

import logging
import math
import grain
import jax
import ml_collections
import numpy as np

from gfpgan_jax.data import landmarks as landmarks_lib
from gfpgan_jax.data import lmdb_source
from gfpgan_jax.data import sources

logger = logging.getLogger(__name__)


# ---------------------------------------------------------- transforms -----


class RandomHorizontalFlip(grain.transforms.RandomMap):
  """Flips the face and its landmarks with probability `prob` (official step 2).

  Landmarks follow the official dataset: left and right eyes are swapped and x
  becomes `width - x` (512 - x at 512 px). New arrays are returned; the input
  element is not modified.
  """

  def __init__(self, prob: float = 0.5, width: int = 512):
    self.prob = prob
    self.width = width

  def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    if rng.random() >= self.prob:
      return element
    element = dict(element)
    element['gt'] = np.ascontiguousarray(element['gt'][:, ::-1])
    if 'lq' in element:  # a paired LQ flips with its GT
      element['lq'] = np.ascontiguousarray(element['lq'][:, ::-1])
    if 'locations' in element:
      element['locations'] = landmarks_lib.flip_locations(element['locations'], self.width)
    return element


class ComponentBoxes(grain.transforms.Map):
  """Landmarks [3, 3] -> the official `loc_left_eye`/`loc_right_eye`/`loc_mouth` float32 [4]."""

  def __init__(self, eye_enlarge_ratio: float = 1.4):
    self.eye_enlarge_ratio = eye_enlarge_ratio

  def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    element = dict(element)
    boxes = landmarks_lib.component_boxes(element.pop('locations'), self.eye_enlarge_ratio)
    for part, box in zip(landmarks_lib.COMPONENTS, boxes):
      element[f'loc_{part}'] = box
    return element


# -------------------------------------------------------------- sources ----


def _process_index_and_count(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')
  return process_index, process_count


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  """`global_batch_size / process_count`; raises if it does not divide."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} is not a positive multiple of the '
                     f'process count {process_count}')
  return global_batch_size // process_count


def _load_landmarks(data: ml_collections.ConfigDict) -> dict[int, np.ndarray] | None:
  return landmarks_lib.load_landmarks(data.landmarks_path) if data.landmarks_path else None


def make_train_source(config: ml_collections.ConfigDict) -> sources.DecodedSource:
  """The decoded training source of `config.data` (fails fast on bad paths).

  Raises:
    FileNotFoundError: missing folder, TFDS dataset or landmarks file.
    ValueError: empty folder or dataset, unset path, unknown source type,
      `crop_components=True` without landmarks, images without landmarks.
  """
  data = config.data
  landmarks = _load_landmarks(data) if data.crop_components else None
  if data.source == 'folder':
    if not data.train_dir:
      raise ValueError("config.data.train_dir is not set (source='folder')")
    raw = sources.ImageFolderSource(data.train_dir, landmarks, data.landmarks_resolution)
  elif data.source == 'lmdb':
    if not data.train_dir:
      raise ValueError("config.data.train_dir is not set (source='lmdb': the BasicSR .lmdb folder)")
    raw = lmdb_source.LmdbSource(data.train_dir, landmarks, data.landmarks_resolution)
  elif data.source == 'tfds':
    if not data.tfds_data_dir:
      raise ValueError("config.data.tfds_data_dir is not set (source='tfds')")
    raw = sources.TfdsSource(data.tfds_data_dir, data.tfds_name, data.tfds_split, landmarks,
                             data.landmarks_resolution)
  else:
    raise ValueError(f"config.data.source must be 'folder', 'lmdb' or 'tfds', got {data.source!r}")
  if data.get('train_lq_dir', ''):
    raw = sources.PairedSource(raw, data.train_lq_dir)
  if data.crop_components and not raw.has_components:
    raise ValueError(
        f'config.data.crop_components=True needs eye/mouth landmarks for {raw!r}: set '
        'config.data.landmarks_path (scripts/convert_landmarks.py output) or prepare the TFDS dataset '
        'with scripts/prepare_ffhq.py --landmarks; or set config.data.crop_components=False')
  return sources.DecodedSource(raw, data.resolution, with_components=data.crop_components)


# ------------------------------------------------------------ training -----


class ProcessBlocks(grain.MapDataset):
  """Process p's rows of every global batch: element i is parent[k G + p b + j], (k, j) = divmod(i, b).

  G is the global batch and b = G / P the per-process batch; batching this
  dataset by b gives process p's share of each global batch, in order.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int, process_count: int):
    super().__init__(parent)
    self._global = global_batch
    self._local = per_process_batch_size(global_batch, process_count)
    self._offset = process_index * self._local
    self._length = len(parent) // global_batch * self._local

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    k, j = divmod(index, self._local)
    return k * self._global + self._offset + j

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._parent_index(i) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    return f'ProcessBlocks(global={self._global}, local={self._local}, offset={self._offset})'


def make_train_dataset(config: ml_collections.ConfigDict,
                       process_index: int | None = None,
                       process_count: int | None = None) -> grain.IterDataset:
  """The infinite, shuffled, per-process batched training dataset.

  Args:
    config: the experiment config; reads `config.data`.
    process_index: this process; default `jax.process_index()`.
    process_count: number of processes; default `jax.process_count()`.

  Returns:
    An `IterDataset` of batches (see the module docstring).
  """
  data = config.data
  process_index, process_count = _process_index_and_count(process_index, process_count)
  batch_size = per_process_batch_size(data.batch_size, process_count)
  source = make_train_source(config)
  logger.info('Training source %r: %d images, process %d/%d, batch %d', source, len(source), process_index,
              process_count, batch_size)

  ds = grain.MapDataset.source(source).seed(data.seed)
  if data.shuffle:
    ds = ds.shuffle()
  ds = ds.repeat()
  if data.use_hflip:
    ds = ds.random_map(RandomHorizontalFlip(0.5, data.resolution))
  if data.crop_components:
    ds = ds.map(ComponentBoxes(data.eye_enlarge_ratio))
  ds = ProcessBlocks(ds, data.batch_size, process_index, process_count)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch_size))
  if data.worker_count:
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=data.worker_count, per_worker_buffer_size=data.worker_buffer_size))
  return ds


def make_train_iterator(config: ml_collections.ConfigDict,
                        process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator over `make_train_dataset` batches.

  Its `get_state()`/`set_state()` round-trip; save it with Orbax as
  `grain.checkpoint.CheckpointSave(iterator)` next to the train state. Close it
  (`iterator.close()`) to stop worker processes.
  """
  return iter(make_train_dataset(config, process_index, process_count))


# ---------------------------------------------------------------- eval -----


class _EvalShard:
  """One process's slice of the eval set, padded to a whole number of batches.

  Elements are `{'gt', 'index', 'mask'}`; padding and unreadable files have
  mask False, a zero image and index -1 (padding) or their index (unreadable).
  """

  def __init__(self, decoded: sources.DecodedSource, indices: np.ndarray, length: int, paired: bool = False):
    self.decoded = decoded
    self.indices = indices
    self.length = length
    self.paired = paired

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, j: int) -> dict[str, np.ndarray]:
    index = int(self.indices[j]) if j < len(self.indices) else -1
    element = self.decoded.read(index) if index >= 0 else None
    res = self.decoded.resolution
    zeros = np.zeros((res, res, 3), np.uint8)
    out = {
        'gt': zeros if element is None else element['gt'],
        'index': np.int32(index),
        'mask': np.bool_(element is not None),
        'num_skipped': np.int32(index >= 0 and element is None),
    }
    if self.paired:
      out['lq'] = zeros if element is None else element['lq']
    return out


def make_eval_dataset(config: ml_collections.ConfigDict,
                      process_index: int | None = None,
                      process_count: int | None = None) -> grain.IterDataset:
  """The finite, unshuffled, unflipped validation set of `config.data.eval_dir`.

  Process p gets the images p, p + P, ... of the sorted file list, padded so
  that every process yields the same number of full batches of
  `eval_batch_size / P` (no process waits for another at the last batch).

  Batches: `gt` uint8 [B, R, R, 3]; `index` int32 [B] (position in
  `sources.list_image_files(eval_dir)`, -1 for padding); `mask` bool [B]
  (False for padding and unreadable files, whose `gt` is zeros);
  `num_skipped` int32 [B]; with `data.eval_lq_dir` (real pairs such as
  CelebA-Test), `lq` uint8 [B, R, R, 3], the given LQ of each face (matched by
  name, see `sources.PairedSource`). No component boxes.

  Raises:
    ValueError: `eval_dir` unset or without images.
    FileNotFoundError: `eval_dir` missing.
  """
  data = config.data
  if not data.eval_dir:
    raise ValueError('config.data.eval_dir is not set')
  process_index, process_count = _process_index_and_count(process_index, process_count)
  batch_size = per_process_batch_size(data.eval_batch_size, process_count)
  raw = sources.ImageFolderSource(data.eval_dir)
  paired = bool(data.get('eval_lq_dir', ''))
  if paired:
    raw = sources.PairedSource(raw, data.eval_lq_dir)
  decoded = sources.DecodedSource(raw, data.resolution)
  indices = np.arange(process_index, len(decoded), process_count)
  num_batches = math.ceil(math.ceil(len(decoded) / process_count) / batch_size)
  ds = grain.MapDataset.source(_EvalShard(decoded, indices, num_batches * batch_size, paired))
  ds = ds.batch(batch_size)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch_size))


def make_eval_iterator(config: ml_collections.ConfigDict,
                       process_index: int | None = None,
                       process_count: int | None = None) -> grain.DatasetIterator:
  """A fresh iterator over `make_eval_dataset` (one pass, then StopIteration)."""
  return iter(make_eval_dataset(config, process_index, process_count))
