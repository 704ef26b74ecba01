"""Training logs: TensorBoard events (tensorboardX, no TensorFlow), a JSONL copy, and a progress line.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import logging
import math
import pathlib
import time
from typing import Any

import numpy as np

log = logging.getLogger('gfpgan_jax.train')


class MetricWriter:
  """Scalars and images to `WORKDIR/tb` (TensorBoard), scalars to `WORKDIR/metrics.jsonl`.

  Images are also written as PNG grids to `WORKDIR/images/{name}_{step:07d}.png`
  (the samples stacked top to bottom, `/` in the name becoming `_`), so they
  open without TensorBoard.
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      workdir = pathlib.Path(workdir)
      self._images = workdir / 'images'
      self._tb = SummaryWriter(str(workdir / 'tb'))
      self._jsonl = open(workdir / 'metrics.jsonl', 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: dict[str, float]):
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), step)
    self._jsonl.write(json.dumps({'step': step, **{k: float(v) for k, v in scalars.items()}}) + '\n')
    self._jsonl.flush()

  def write_images(self, step: int, images: dict[str, np.ndarray]):
    """images: name -> uint8 [N, H, W, 3]."""
    if not self.enabled:
      return
    from PIL import Image  # pylint: disable=g-import-not-at-top
    self._images.mkdir(exist_ok=True)
    for name, value in images.items():
      value = np.asarray(value)
      self._tb.add_images(name, value, step, dataformats='NHWC')
      path = self._images / f"{name.replace('/', '_')}_{step:07d}.png"
      tmp = path.with_name(path.name + '.tmp')
      Image.fromarray(np.concatenate(list(value), axis=0)).save(tmp, format='PNG')
      tmp.replace(path)  # never a half-written PNG under the final name

  def write_text(self, name: str, text: str):
    if self.enabled:
      self._tb.add_text(name, text, 0)

  def flush(self):
    if self.enabled:
      self._tb.flush()

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class Progress:
  """Steps/s, images/s and ETA between reports (the first report includes compilation)."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int):
    self.total = total_steps
    self.batch = global_batch
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def report(self, step: int, scalars: dict[str, Any]) -> dict[str, float]:
    now = time.perf_counter()
    steps = step - self._last_step
    rate = steps / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else math.inf
    shown = ' '.join(f'{k.split("/", 1)[-1]}={float(v):.4g}' for k, v in scalars.items()
                     if k.startswith(('train/g/total', 'train/d/d', 'train/g/l1')))
    log.info('step %d/%d  %.2f steps/s  %.1f img/s  ETA %s  %s', step, self.total, rate, rate * self.batch,
             _fmt_eta(eta), shown)
    return {'perf/steps_per_s': rate, 'perf/images_per_s': rate * self.batch}


def _fmt_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  h, rem = divmod(int(seconds), 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'
