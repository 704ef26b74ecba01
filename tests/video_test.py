"""Video through the restore command: frame count, fps, size and audio kept; faces restored per frame; bad videos."""

import json
import logging

import imageio.v2 as iio
import jax
import numpy as np
import pytest

from gfpgan_jax import restore
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.faces import video as video_lib
from gfpgan_jax.testing import composed
from gfpgan_jax.testing import procs

KW = dict(out_size=64, channel_multiplier=1, narrow=0.25)
SIZE = (96, 128)
FPS = 10
SECONDS = 2


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  variables = archs.init('gfpganv1clean', jax.random.key(0), **KW)
  return checkpoint.save(tmp_path_factory.mktemp('w') / 'g64', variables, 'gfpganv1clean', KW)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  """A 2-second 10 fps clip of a composed photo panning right by 1 px a frame, with a sine audio track.

  Returns (path, per-frame landmarks float [F, n, 5, 2]).
  """
  d = tmp_path_factory.mktemp('clip')
  photo = composed.group_photo(2, size=(SIZE[0], SIZE[1] + FPS * SECONDS), seed=7)
  frames = [np.ascontiguousarray(photo.image[:, t:t + SIZE[1]]) for t in range(FPS * SECONDS)]
  landmarks = np.stack([photo.landmarks - np.array([t, 0.0]) for t in range(FPS * SECONDS)])
  silent = d / 'silent.mp4'
  with iio.get_writer(str(silent), format='FFMPEG', fps=FPS, codec='libx264', quality=9, pixelformat='yuv420p',
                      macro_block_size=2, ffmpeg_log_level='error') as w:
    for f in frames:
      w.append_data(f)
  path = d / 'clip.mp4'
  procs.run([video_lib.ffmpeg_exe(), '-hide_banner', '-loglevel', 'error', '-y', '-i', str(silent), '-f', 'lavfi',
             '-i', f'sine=frequency=440:duration={SECONDS}', '-c:v', 'copy', '-c:a', 'aac', '-shortest',
             str(path)], timeout=300, check=True)
  return path, landmarks


def _read(path):
  reader = iio.get_reader(str(path), format='FFMPEG')
  meta = reader.get_meta_data()
  frames = np.stack([f for f in reader])  # list(reader) fails: its len() is inf
  reader.close()
  return frames, meta


def test_video_keeps_frames_fps_and_audio(weights, clip, tmp_path, caplog):
  path, landmarks = clip
  frames_in, meta_in = _read(path)
  assert len(frames_in) == FPS * SECONDS and video_lib.has_audio(path)
  lm_file = tmp_path / 'lm.json'
  lm_file.write_text(json.dumps({'clip.mp4': {str(t): lm.tolist() for t, lm in enumerate(landmarks)}}))
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO):
    rc = restore.main(['-i', str(path), '-o', str(out), '--weights', str(weights), '--landmarks', str(lm_file),
                       '--batch-size', '8'])
  assert rc == 0
  result = out / 'restored_videos' / 'clip.mp4'
  frames_out, meta_out = _read(result)
  assert len(frames_out) == len(frames_in)
  assert meta_out['fps'] == pytest.approx(meta_in['fps'], rel=1e-3)
  assert frames_out.shape[1:3] == (2 * SIZE[0], 2 * SIZE[1])
  assert video_lib.has_audio(result)
  assert f'restored {2 * FPS * SECONDS} face(s)' in caplog.text and 'frames/s' in caplog.text
  # The faces changed (random generator), the rest of each frame is the upscaled source (up to the codec).
  first = frames_out[0].astype(int)
  src = np.asarray(jax.image.resize(frames_in[0].astype(np.float32), first.shape, 'lanczos3'))
  box = np.concatenate([landmarks[0].min(axis=1), landmarks[0].max(axis=1)], axis=1) * 2
  inside = np.zeros(first.shape[:2], bool)
  for x0, y0, x1, y1 in box.astype(int):
    inside[max(y0, 0):y1, max(x0, 0):x1] = True
  err = np.abs(first - src).mean(axis=2)
  assert err[inside].mean() > 30 and np.median(err[~inside]) < 4  # outside: mostly background (the heads reach out)
  assert not any(p.name.startswith('.') for p in (out / 'restored_videos').iterdir())  # no temporary files left


def test_broken_and_truncated_videos(weights, clip, tmp_path, caplog):
  path, _ = clip
  src = tmp_path / 'in'
  src.mkdir()
  mkv = tmp_path / 'clip.mkv'  # Matroska streams: a cut file still decodes up to the cut
  procs.run([video_lib.ffmpeg_exe(), '-loglevel', 'error', '-y', '-i', str(path), '-c', 'copy', str(mkv)],
            timeout=300, check=True)
  data = mkv.read_bytes()
  (src / 'cut.mkv').write_bytes(data[:len(data) // 2])
  data = path.read_bytes()
  (src / 'headless.mp4').write_bytes(data[:len(data) // 2])  # an mp4 cut before its index: unreadable
  (src / 'junk.mov').write_bytes(b'\x00' * 1000)
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO):
    rc = restore.main(['-i', str(src), '-o', str(out), '--weights', str(weights), '--bg_upsampler', 'none'])
  assert rc == 0  # the truncated clip still gave frames
  assert 'skipped junk.mov: not a readable video' in caplog.text
  assert 'skipped headless.mp4: not a readable video' in caplog.text
  assert 'cut.mkv: the video ended after' in caplog.text
  assert sorted(p.name for p in (out / 'restored_videos').iterdir()) == ['cut.mp4']
  frames, _ = _read(out / 'restored_videos' / 'cut.mp4')
  assert 0 < len(frames) < FPS * SECONDS
