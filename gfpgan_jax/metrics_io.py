"""Training logs: TensorBoard events (tensorboardX, no TensorFlow), a JSONL copy, and a progress line.

Only process 0 writes; other processes get a writer that does nothing.

The training scalars are means over the log interval (`IntervalMeans`), as
flax and big_vision log them: the row of step S holds the mean of the
`log_every_steps` steps ending at S.
"""

from collections.abc import Callable
import json
import logging
import math
import os
import pathlib
import time
from typing import Any

import jax
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
      workdir = pathlib.Path(workdir)
      self._images = workdir / 'images'
      self._tb_dir = workdir / 'tb'
      self._jsonl_path = workdir / 'metrics.jsonl'
      self._tb = _summary_writer(self._tb_dir)
      self._jsonl = open(self._jsonl_path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def resume(self, step: int):
    """Forgets what an earlier run logged after `step` (the checkpoint this run resumed from).

    A run killed between two checkpoints logged steps that the resumed run
    logs again. The rows of metrics.jsonl past `step` (and a last line cut
    short by the kill) are dropped, the file rewritten atomically, and
    TensorBoard is told to hide its events past `step` (`purge_step`).
    """
    if not self.enabled:
      return
    self._jsonl.close()
    kept, dropped = [], 0
    for line in self._jsonl_path.read_text(encoding='utf-8').splitlines():
      try:
        row_step = int(json.loads(line)['step'])
      except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        row_step = None
      if row_step is not None and row_step <= step:
        kept.append(line + '\n')
      else:
        dropped += 1
    if dropped:
      tmp = self._jsonl_path.with_name(self._jsonl_path.name + '.tmp')
      tmp.write_text(''.join(kept), encoding='utf-8')
      os.replace(tmp, self._jsonl_path)
      log.info('metrics.jsonl: dropped %d rows logged after step %d (the restored checkpoint)', dropped, step)
    self._jsonl = open(self._jsonl_path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
    if step or dropped:  # (a fresh run keeps its one events file)
      self._tb.close()
      self._tb = _summary_writer(self._tb_dir, purge_step=step + 1)

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


def _summary_writer(logdir: pathlib.Path, purge_step: int | None = None):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(str(logdir), purge_step=purge_step)


class IntervalMeans:
  """Means of the per-step training scalars over a log interval, summed on the devices.

  `add` costs no host sync: the first step of an interval is kept as it is,
  later ones are summed by a jitted add, dispatched asynchronously. `pop`
  fetches the sums once and returns each scalar's mean over the steps that
  returned it. Steps of different kinds (the train step with and without R1)
  return different sets of scalars; each kind keeps its own sums and count,
  so `d/r1` is the mean over the R1 steps of the interval, and a scalar that
  both kinds return is the mean over all its steps.
  """

  def __init__(self, add: Callable[[str, Any, Any], Any]):
    """`add(kind, sums, metrics)` returns `sums + metrics` leaf by leaf (a jitted function, per kind)."""
    self._add = add
    self._sums: dict[str, Any] = {}
    self._counts: dict[str, int] = {}

  def add(self, kind: str, metrics: dict[str, Any]):
    if kind in self._sums:
      self._sums[kind] = self._add(kind, self._sums[kind], metrics)
    else:
      self._sums[kind] = metrics
    self._counts[kind] = self._counts.get(kind, 0) + 1

  @property
  def steps(self) -> int:
    """Steps added since the last `pop`."""
    return sum(self._counts.values())

  def pop(self) -> dict[str, float]:
    """The means since the last `pop` (float64 on the host); starts a new interval."""
    totals, counts = {}, {}
    for kind, sums in jax.device_get(self._sums).items():
      for name, value in sums.items():
        totals[name] = totals.get(name, 0.0) + np.float64(value)
        counts[name] = counts.get(name, 0) + self._counts[kind]
    self._sums, self._counts = {}, {}
    return {name: totals[name] / counts[name] for name in totals}


class Progress:
  """Steps/s, images/s and ETA between reports, compilation time left out.

  The rate of each report is over the wall time since the previous one
  (since construction for the first) less the seconds spent compiling in
  between, so neither the first ETA nor a late compile counts compile time.
  """

  def __init__(self, total_steps: int, global_batch: int, start_step: int,
               compile_seconds: Callable[[], float] = lambda: 0.0, clock: Callable[[], float] = time.perf_counter):
    """`compile_seconds()`: the seconds spent compiling so far in this process (a running total)."""
    self.total = total_steps
    self.batch = global_batch
    self._compile_seconds = compile_seconds
    self._clock = clock
    self._last_step = start_step
    self._last_time = clock()
    self._last_compile = compile_seconds()

  def report(self, step: int, scalars: dict[str, Any]) -> dict[str, float]:
    """Logs the progress line for `step`; returns the perf/* scalars.

    The line shows the interval means of the main losses and, when any
    training file was unreadable so far, `skipped=N` (the running total).
    """
    now, compiling = self._clock(), self._compile_seconds()
    steps = step - self._last_step
    rate = steps / max(now - self._last_time - (compiling - self._last_compile), 1e-9)
    self._last_step, self._last_time, self._last_compile = step, now, compiling
    eta = (self.total - step) / rate if rate > 0 else math.inf
    shown = ' '.join(f'{k.split("/", 1)[-1]}={float(v):.4g}' for k, v in scalars.items()
                     if k.startswith(('train/g/total', 'train/d/d', 'train/g/l1')))
    skipped = int(scalars.get('train/data/num_skipped_total', 0))
    if skipped:
      shown += f'  skipped={skipped} unreadable files'
    log.info('step %d/%d  %.2f steps/s  %.1f img/s  ETA %s  %s', step, self.total, rate, rate * self.batch,
             _fmt_eta(eta), shown)
    return {'perf/steps_per_s': rate, 'perf/images_per_s': rate * self.batch}


def _fmt_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  h, rem = divmod(int(seconds), 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'
