"""Where the time of the photo pipeline goes: seconds per stage, summed over threads."""

import collections
import contextlib
import threading
import time

STAGES = ('decode', 'detect', 'align', 'restore', 'parse', 'background', 'paste', 'encode')


class Timers:
  """Thread-safe seconds and call counts per stage (`STAGES`, or any other name)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.seconds = collections.defaultdict(float)
    self.calls = collections.defaultdict(int)

  def add(self, stage: str, seconds: float) -> None:
    with self._lock:
      self.seconds[stage] += seconds
      self.calls[stage] += 1

  @contextlib.contextmanager
  def time(self, stage: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(stage, time.perf_counter() - start)

  def call(self, stage: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), timed as `stage`."""
    with self.time(stage):
      return fn(*args, **kwargs)

  def reset(self) -> None:
    with self._lock:
      self.seconds.clear()
      self.calls.clear()

  def summary(self) -> dict[str, float]:
    """{stage: seconds}, the known stages first."""
    with self._lock:
      names = [s for s in STAGES if s in self.seconds] + sorted(set(self.seconds) - set(STAGES))
      return {s: self.seconds[s] for s in names}

  def line(self) -> str:
    return ', '.join(f'{k} {v:.2f} s' for k, v in self.summary().items())
