"""Video in and out for the restore command (imageio + imageio-ffmpeg, which ships its own ffmpeg).

`frames(source)` decodes a video into RGB uint8 frames for `inputs.read_items`
(events 'start' with the metadata, 'frame', 'end'). A video that cannot be
opened or breaks while decoding ends with an 'end' event that carries the
error. `VideoSink` encodes the restored frames (H.264, yuv420p) at the source
frame rate to a temporary file, then copies the source's audio track into it
(stream copy; AAC when the container refuses the codec; without audio, with a
warning, when both fail) and renames the result into place:
`restored_videos/{name}.mp4`. `Progress` logs frames/s and the ETA.
"""

from collections.abc import Iterator
import concurrent.futures
import fractions
import logging
import os
import pathlib
import subprocess
import tempfile
import time

import numpy as np

from gfpgan_jax.faces.inputs import Source

log = logging.getLogger('gfpgan_jax.restore')
FOLDER = 'restored_videos'


def ffmpeg_exe() -> str:
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  return imageio_ffmpeg.get_ffmpeg_exe()


def _short(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'


def frames(source: Source) -> Iterator[tuple[str, object]]:
  """('start', info), ('frame', uint8 [H, W, 3] RGB)..., ('end', info) for one video file.

  info: fps, frames (the expected count, or None), audio_codec (or None),
  size (W, H); the 'end' event adds frames_read and, on failure, error.
  """
  import imageio.v2 as iio  # pylint: disable=g-import-not-at-top
  name = source.key or source.name
  try:
    reader = iio.get_reader(str(source.path), format='FFMPEG')
    meta = reader.get_meta_data()
  except Exception as e:  # pylint: disable=broad-except  (imageio raises many kinds)
    info = {'error': f'{name}: not a readable video ({_short(e)})'}
    yield 'start', info
    yield 'end', dict(info, frames_read=0)
    return
  fps = float(meta.get('fps') or 0) or 25.0
  expected = meta.get('nframes')
  if not isinstance(expected, int) or expected <= 0:
    duration = meta.get('duration')
    expected = int(round(duration * fps)) if duration else None
  info = {'fps': fps, 'frames': expected, 'audio_codec': meta.get('audio_codec'), 'size': tuple(meta.get('size', ()))}
  yield 'start', info
  n = 0
  try:
    for frame in reader:
      yield 'frame', np.ascontiguousarray(frame[..., :3])
      n += 1
  except Exception as e:  # pylint: disable=broad-except
    yield 'end', dict(info, frames_read=n, error=f'{name}: the video broke after {n} frames ({_short(e)})')
    return
  finally:
    reader.close()
  if n == 0:
    yield 'end', dict(info, frames_read=0, error=f'{name}: the video has no frames')
    return
  yield 'end', dict(info, frames_read=n)


def to_video_frame(image: np.ndarray) -> np.ndarray:
  """uint8 RGB for the encoder (alpha dropped, 16-bit scaled to 8 bits)."""
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=2)
  image = image[..., :3]
  if image.dtype == np.uint16:
    image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  return np.ascontiguousarray(image)


def has_audio(path: pathlib.Path) -> bool:
  """Whether ffmpeg sees an audio stream in the file."""
  out = subprocess.run([ffmpeg_exe(), '-hide_banner', '-i', str(path)], capture_output=True, text=True, check=False)
  return any('Audio:' in line and 'Stream #' in line for line in out.stderr.splitlines())


def _mux_audio(video: pathlib.Path, source: pathlib.Path, out: pathlib.Path) -> str:
  """Copies the source's audio into `video`, writing `out`; returns how ('copied', 'aac') or raises."""
  errors = []
  for how, codec in (('copied', ['-c:a', 'copy']), ('re-encoded to AAC', ['-c:a', 'aac'])):
    cmd = [ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-y', '-i', str(video), '-i', str(source),
           '-map', '0:v:0', '-map', '1:a?', '-c:v', 'copy', *codec, '-shortest', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
      return how
    errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f'exit {proc.returncode}')
  raise RuntimeError('; '.join(errors))


class VideoSink:
  """Encodes the restored frames of one video, then adds its audio and renames it into place.

  Frames are encoded on a background thread (in order). Nothing appears at
  the final path until `finish` succeeds; `abort` removes the temporary files.

  Args:
    root: the output folder (the video goes to root/restored_videos/).
    source: the input video.
    info: its metadata from `frames` (fps, audio_codec).
    quality: imageio's 0..10 quality (8: H.264 CRF 10).
  """

  def __init__(self, root: pathlib.Path, source: Source, info: dict, quality: float = 8):
    self.source, self.info, self.quality = source, info, quality
    self.path = pathlib.Path(root) / FOLDER / f'{source.name}.mp4'
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{self.path.stem}.', suffix='.tmp.mp4', dir=self.path.parent)
    os.close(fd)
    self._tmp = pathlib.Path(tmp)
    self._writer = None
    self._size = None
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='video')
    self._pending = []
    self.frames = 0

  def _open(self, size):
    import imageio.v2 as iio  # pylint: disable=g-import-not-at-top
    fps = fractions.Fraction(self.info.get('fps') or 25.0).limit_denominator(1001)
    self._writer = iio.get_writer(str(self._tmp), format='FFMPEG', fps=float(fps), codec='libx264',
                                  quality=self.quality, pixelformat='yuv420p', macro_block_size=2,
                                  ffmpeg_log_level='error')
    self._size = size

  def _append(self, frame: np.ndarray) -> None:
    if self._writer is None:
      self._open(frame.shape[:2])
    if frame.shape[:2] != self._size:
      raise ValueError(f'frame of size {frame.shape[:2]} in a video of {self._size}')
    self._writer.append_data(frame)

  def append(self, frame: np.ndarray) -> None:
    """Queues one restored frame (any dtype/channels `to_video_frame` takes)."""
    frame = to_video_frame(frame)
    self._pending.append(self._pool.submit(self._append, frame))
    while len(self._pending) > 8 or (self._pending and self._pending[0].done()):
      self._pending.pop(0).result()  # raises the first encoding error
    self.frames += 1

  def finish(self) -> tuple[pathlib.Path, str]:
    """Closes the encoder, adds the audio, renames into place; returns (path, audio note)."""
    try:
      for f in self._pending:
        f.result()
      self._pool.shutdown(wait=True)
      if self._writer is None:
        raise ValueError('no frames to write')
      self._writer.close()
      self._writer = None
      note = 'no audio track'
      final = self._tmp
      if self.info.get('audio_codec'):
        fd, muxed = tempfile.mkstemp(prefix=f'.{self.path.stem}.', suffix='.mux.mp4', dir=self.path.parent)
        os.close(fd)
        muxed = pathlib.Path(muxed)
        try:
          note = f'audio ({self.info["audio_codec"]}) ' + _mux_audio(self._tmp, self.source.path, muxed)
          final = muxed
        except RuntimeError as e:
          muxed.unlink(missing_ok=True)
          log.warning('%s: the audio track could not be copied (%s); the video is written without it',
                      self.source.key, e)
          note = 'audio dropped'
      os.replace(final, self.path)
      return self.path, note
    finally:
      self.abort()

  def abort(self) -> None:
    """Stops the encoder and removes the temporary files (the final path is left alone)."""
    self._pool.shutdown(wait=True, cancel_futures=True)
    if self._writer is not None:
      try:
        self._writer.close()
      except Exception:  # pylint: disable=broad-except
        pass
      self._writer = None
    self._tmp.unlink(missing_ok=True)


class Progress:
  """A progress line per video: frames done, frames/s and the ETA (every `every` seconds and at the end)."""

  def __init__(self, name: str, total: int | None, every: float = 5.0):
    self.name, self.total, self.every = name, total, every
    self.start = self.last = time.perf_counter()
    self.done = 0

  def step(self, n: int = 1) -> None:
    self.done += n
    now = time.perf_counter()
    if now - self.last >= self.every:
      self.last = now
      log.info('%s', self.line())

  def line(self) -> str:
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    rate = self.done / elapsed
    total = f'/{self.total}' if self.total else ''
    eta = ''
    if self.total and rate > 0 and self.done < self.total:
      left = (self.total - self.done) / rate
      eta = f', ETA {int(left // 60)}:{int(left % 60):02d}'
    return f'{self.name}: {self.done}{total} frames, {rate:.2f} frames/s{eta}'
