"""Synthetic faces and a throughput probe for the host input pipeline."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from gfpgan_jax.data import input_pipeline
from gfpgan_jax.data import landmarks as landmarks_lib


def synthetic_face(rng: np.random.Generator, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """A face-sized test image and its landmarks.

  Smooth random colour fields plus mild pixel noise, so that its PNG is about
  as large as a real FFHQ face's (a few hundred KB at 512 px), with three
  distinct blobs at the eyes and mouth.

  Returns:
    `(image, locations)`: uint8 [R, R, 3] and float64 [3, 3] (see `landmarks`).
  """
  r = resolution
  coarse = rng.uniform(40, 215, (8, 8, 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((r, r), Image.Resampling.BICUBIC), np.float32)
  image += rng.normal(0, 6, image.shape)
  locations = np.array([[0.35 * r, 0.42 * r, 0.05 * r], [0.65 * r, 0.42 * r, 0.05 * r], [0.5 * r, 0.72 * r, 0.08 * r]])
  locations[:, :2] += rng.uniform(-0.02 * r, 0.02 * r, (3, 2))
  yy, xx = np.mgrid[:r, :r] + 0.5
  for (x, y, h), colour in zip(locations, ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
    image[(xx - x)**2 + (yy - y)**2 <= (0.6 * h)**2] = colour
  return np.clip(image, 0, 255).astype(np.uint8), locations


def write_synthetic_faces(directory: str | os.PathLike[str],
                          num_images: int,
                          resolution: int = 512,
                          seed: int = 0) -> str:
  """Writes `00000.png`... and their `landmarks.json` into `directory`.

  Returns:
    The landmarks path (coordinates in `resolution` pixels).
  """
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  table = {}
  for i in range(num_images):
    image, table[i] = synthetic_face(rng, resolution)
    Image.fromarray(image).save(os.path.join(directory, f'{i:05d}.png'))
  path = os.path.join(directory, 'landmarks.json')
  landmarks_lib.save_landmarks(table, path)
  return path


def measure_host_rate(config: ml_collections.ConfigDict,
                      num_batches: int = 20,
                      warmup_batches: int = 3,
                      process_index: int = 0,
                      process_count: int = 1) -> dict[str, Any]:
  """Measures decode + flip + boxes + batch throughput of the training pipeline.

  Args:
    config: experiment config; `config.data` sets the source, resolution,
      batch size and `worker_count`.
    num_batches: batches timed, after `warmup_batches` untimed ones (these
      cover the worker start-up and fill the buffers).
    process_index: simulated process.
    process_count: simulated processes (the batch is split as in training).

  Returns:
    `{'images_per_s', 'batches_per_s', 'seconds', 'images', 'batch_size',
    'worker_count', 'read_threads', 'resolution', 'startup_s'}`.
  """
  threads_before = set(threading.enumerate())
  t0 = time.perf_counter()
  iterator = input_pipeline.make_train_iterator(config, process_index, process_count)
  try:
    for _ in range(warmup_batches):
      batch = next(iterator)
    startup = time.perf_counter() - t0
    batch_size = 0
    t1 = time.perf_counter()
    for _ in range(num_batches):
      batch = next(iterator)
      batch_size = len(batch['gt'])
    seconds = time.perf_counter() - t1
  finally:
    iterator.close()
    # close() does not wait for batches in flight: let them finish (their files may be deleted next).
    for thread in set(threading.enumerate()) - threads_before:
      if not thread.daemon:  # the read threads; grain's multiprocessing helpers are daemons
        thread.join(timeout=30)
  images = num_batches * batch_size
  return {
      'images_per_s': images / seconds,
      'batches_per_s': num_batches / seconds,
      'seconds': seconds,
      'images': images,
      'batch_size': batch_size,
      'worker_count': int(config.data.worker_count),
      'read_threads': int(config.data.read_threads),
      'resolution': int(config.data.resolution),
      'startup_s': startup,
  }
