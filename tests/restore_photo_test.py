"""The restore command on whole photos: faces found and pasted back, official outputs, devices, bad inputs.

A small generator (64 px faces) keeps it fast; the pipeline aligns to the
generator's size. The photos are composed (`gfpgan_jax.testing.composed`), so
the true landmarks are known and given with `--landmarks`.
"""

import json
import logging
import os
import pathlib
import sys

import cv2
import jax
import numpy as np
import pytest

from gfpgan_jax import faces as F
from gfpgan_jax import inference
from gfpgan_jax import restore
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.faces import batching
from gfpgan_jax.faces import inputs as inputs_lib
from gfpgan_jax.faces import pipeline as pipeline_lib
from gfpgan_jax.testing import composed
from gfpgan_jax.testing import procs

KW = dict(out_size=64, channel_multiplier=1, narrow=0.25)
S = 64
SIZE = (160, 240)


def _noisy(variables):
  """Noise strengths start at zero; make the decoder noise matter."""
  return jax.tree_util.tree_map_with_path(lambda p, v: v + 0.5 if p[-1].key == 'weight' and v.shape == (1,) else v,
                                          variables)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  variables = _noisy(archs.init('gfpganv1clean', jax.random.key(0), **KW))
  path = checkpoint.save(tmp_path_factory.mktemp('w') / 'g64', variables, 'gfpganv1clean', KW)
  module, _ = archs.build('gfpganv1clean', **KW)
  return path, module, variables


def _imwrite(path, rgb):
  bgr = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
  if rgb.ndim == 3 and rgb.shape[2] == 4:
    bgr = rgb[..., [2, 1, 0, 3]]
  assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))


def _imread(path):
  img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  assert img is not None, path
  return img[..., ::-1] if img.ndim == 3 and img.shape[2] == 3 else img[..., [2, 1, 0, 3]] if img.ndim == 3 else img


def _footprints(landmarks, image_hw, upscale):
  """bool [H s, W s]: where each face's warped S x S square lands on the canvas (dilated by 2 px)."""
  affines = F.estimate_affines(landmarks, S)
  inv = F.inverse_affines(affines, upscale)
  h, w = F.output_size(*image_hw, upscale)
  masks = [cv2.warpAffine(np.ones((S, S), np.float32), m, (w, h)) > 0 for m in inv]
  return [cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in masks]


def test_photo_with_landmarks(model, tmp_path, caplog):
  path, module, variables = model
  photo = composed.group_photo(3, size=SIZE, seed=1)
  src = tmp_path / 'in'
  src.mkdir()
  _imwrite(src / 'photo.png', photo.image)
  plain = cv2.resize(photo.image, (70, 50), interpolation=cv2.INTER_AREA)
  _imwrite(src / 'plain.jpg', plain)  # not in the landmarks file: no faces, written through upscaled
  lm_file = tmp_path / 'lm.json'
  lm_file.write_text(json.dumps({'photo.png': photo.landmarks.tolist()}))
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO):
    rc = restore.main(['-i', str(src), '-o', str(out), '--weights', str(path), '--landmarks', str(lm_file),
                       '--noise', 'stored', '--batch-size', '2'])
  assert rc == 0
  names = lambda d: sorted(p.name for p in (out / d).iterdir())
  faces = ['photo_00.png', 'photo_01.png', 'photo_02.png']
  assert names('cropped_faces') == faces and names('restored_faces') == faces and names('cmp') == faces
  assert names('restored_imgs') == ['photo.png', 'plain.jpg']
  assert 'plain.jpg: not in the --landmarks file' in caplog.text and '1 image(s) had no face' in caplog.text

  # The crops are align_faces of the photo; the restored faces are the generator's output on them.
  crops, _ = F.align_faces(photo.image, photo.landmarks, face_size=S)
  want = np.asarray(xla_restore(module)(variables, np.asarray(crops), jax.random.key(0)))
  for i, name in enumerate(faces):
    np.testing.assert_array_equal(_imread(out / 'cropped_faces' / name), np.asarray(crops)[i])
    got = _imread(out / 'restored_faces' / name).astype(int)
    diff = np.abs(got - want[i].astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3  # rare one-level flips: XLA sums depend on the batch
    cmp = _imread(out / 'cmp' / name)
    assert cmp.shape == (S, 2 * S, 3)

  # Output size right; pixels change only inside the pasted face regions, and in each of them.
  result = _imread(out / 'restored_imgs' / 'photo.png')
  h, w = SIZE
  assert result.shape == (2 * h, 2 * w, 3)
  background = cv2.resize(photo.image, (2 * w, 2 * h), interpolation=cv2.INTER_LANCZOS4)
  changed = np.any(result != background, axis=2)
  regions = _footprints(photo.landmarks, SIZE, 2)
  assert not np.any(changed & ~np.any(regions, axis=0))
  for region in regions:
    assert changed[region].mean() > 0.5
  np.testing.assert_array_equal(_imread(out / 'restored_imgs' / 'plain.jpg').shape, (100, 140, 3))


def xla_restore(module):
  from gfpgan_jax import xla_options  # pylint: disable=g-import-not-at-top
  return xla_options.jit(inference.make_restore_fn(module, randomize_noise=False))


def _run_pipeline(module, variables, mesh, batch_size, items, landmarks):
  batcher = batching.FaceBatcher((module, variables), batch_size=batch_size, mesh=mesh, randomize_noise=True, seed=3)
  pipe = pipeline_lib.PhotoPipeline(batcher, landmarks=lambda item: landmarks[item.source.key], upscale=2)
  return list(pipe.run(items))


def test_one_device_equals_eight(model):
  _, module, variables = model
  assert jax.device_count() == 8
  photos = [composed.group_photo(n, size=SIZE, seed=10 + n) for n in (3, 1, 2)]
  sources = [inputs_lib.Source(f'p{i}', 'png', None, 'image', p.image, f'p{i}.png') for i, p in enumerate(photos)]
  landmarks = {s.key: p.landmarks for s, p in zip(sources, photos)}
  items = lambda: [inputs_lib.Item(s, s.image, i) for i, s in enumerate(sources)]
  one = _run_pipeline(module, variables, batching.local_mesh(jax.devices()[:1]), 3, items(), landmarks)
  eight = _run_pipeline(module, variables, batching.local_mesh(), 8, items(), landmarks)
  assert [len(r.restored) for r in one] == [3, 1, 2] == [len(r.restored) for r in eight]
  for a, b in zip(one, eight):
    diff = np.abs(a.restored.astype(int) - b.restored.astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (diff.max(), np.mean(diff > 0))
    assert a.image.shape == b.image.shape and np.mean(a.image != b.image) < 1e-3
  # Fresh noise: a different seed changes the faces (the noise is not ignored).
  other = batching.FaceBatcher((module, variables), batch_size=8, randomize_noise=True, seed=4)
  crops = np.stack([f for r in one for f in r.cropped])
  assert np.mean(other.run(crops, 0).restored != np.stack([f for r in one for f in r.restored])) > 0.1


def test_bad_inputs_are_reported_and_the_rest_written(model, tmp_path, caplog, monkeypatch):
  path, _, _ = model
  photo = composed.group_photo(2, size=SIZE, seed=5)
  src = tmp_path / 'in'
  src.mkdir()
  gray = cv2.cvtColor(photo.image, cv2.COLOR_RGB2GRAY)
  rgba = np.concatenate([photo.image, np.full(SIZE + (1,), 200, np.uint8)], axis=2)
  deep = photo.image.astype(np.uint16) * 257
  _imwrite(src / 'gray.png', gray)
  _imwrite(src / 'rgba.png', rgba)
  _imwrite(src / 'deep.png', deep)
  _imwrite(src / 'big.png', cv2.resize(photo.image, (1200, 800)))  # refused below (limit lowered)
  (src / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  (src / 'notes.txt').write_text('not an image')
  (src / 'clip.mp4').write_bytes(b'not a video at all')
  table = {k: photo.landmarks.tolist() for k in ('gray.png', 'rgba.png', 'deep.png')}
  (tmp_path / 'lm.json').write_text(json.dumps(table))
  monkeypatch.setattr(pipeline_lib, 'MAX_OUTPUT_PIXELS', 1_000_000)
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO):
    rc = restore.main(['-i', str(src), '-o', str(out), '--weights', str(path), '--landmarks', str(tmp_path / 'lm.json'),
                       '--suffix', 'x', '--ext', 'png'])
  assert rc == 0
  for name in ('broken.png', 'notes.txt', 'clip.mp4: not a readable video', 'big.png: too large'):
    assert f'skipped {name}' in caplog.text, name
  imgs = sorted(p.name for p in (out / 'restored_imgs').iterdir())
  assert imgs == ['deep_x.png', 'gray_x.png', 'rgba_x.png']
  assert sorted(p.name for p in (out / 'restored_faces').iterdir())[:2] == ['deep_00_x.png', 'deep_01_x.png']
  assert _imread(out / 'restored_imgs' / 'rgba_x.png').shape == (2 * SIZE[0], 2 * SIZE[1], 4)  # alpha carried
  np.testing.assert_array_equal(_imread(out / 'restored_imgs' / 'rgba_x.png')[..., 3], 200)
  assert _imread(out / 'restored_imgs' / 'gray_x.png').shape == (2 * SIZE[0], 2 * SIZE[1], 3)
  assert _imread(out / 'restored_imgs' / 'deep_x.png').shape == (2 * SIZE[0], 2 * SIZE[1], 3)
  assert not any(p.name.startswith('.') for p in out.rglob('*'))  # no temporary files left
  assert not (out / 'restored_videos').exists() or not any((out / 'restored_videos').iterdir())


def test_aligned_and_errors(model, tmp_path, caplog):
  path, _, _ = model
  face = np.random.RandomState(0).randint(0, 256, (100, 80, 3), np.uint8)
  _imwrite(tmp_path / 'face.jpg', face)
  out = tmp_path / 'out'
  assert restore.main(['-i', str(tmp_path / 'face.jpg'), '-o', str(out), '--weights', str(path), '--aligned']) == 0
  assert sorted(p.name for p in (out / 'restored_faces').iterdir()) == ['face_00.png']
  assert not (out / 'restored_imgs').exists()
  # A face larger than the model (100x80 > 64): its outputs come back at its size; the crop is the input.
  np.testing.assert_array_equal(_imread(out / 'cropped_faces' / 'face_00.png'), _imread(tmp_path / 'face.jpg'))
  assert _imread(out / 'restored_faces' / 'face_00.png').shape == (100, 80, 3)
  assert _imread(out / 'cmp' / 'face_00.png').shape == (100, 160, 3)
  (tmp_path / 'bad.json').write_text('{"face.jpg": [[1, 2]]}')
  assert restore.main(['-i', str(tmp_path / 'face.jpg'), '-o', str(out), '--weights', str(path), '--landmarks',
                       str(tmp_path / 'bad.json')]) == 2
  assert 'expected a list of faces, each 5 [x, y] points' in caplog.text


def test_no_weights_default_runs_on_the_builtin_photo(tmp_path):
  """`python -m gfpgan_jax.restore -o out`: random generator, Haar detection, square mask, LANCZOS background."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(pathlib.Path(jax.config.jax_compilation_cache_dir)))
  proc = procs.run([sys.executable, '-m', 'gfpgan_jax.restore', '-o', str(tmp_path / 'out')], cwd=tmp_path,
                   env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  log_text = proc.stderr + proc.stdout
  assert 'RANDOM weights' in log_text and 'HaarDetector' in log_text and 'square erosion mask' in log_text
  out = tmp_path / 'out'
  assert sorted(p.name for p in (out / 'restored_faces').iterdir()) == [f'group_photo_0{i}.png' for i in range(3)]
  assert _imread(out / 'restored_imgs' / 'group_photo.png').shape == (1024, 1536, 3)
