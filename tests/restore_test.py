"""The restore command: outputs, resizing, bad files, and equality with the module."""

import logging

import jax
import numpy as np
from PIL import Image
import pytest

from gfpgan_jax import inference
from gfpgan_jax import restore
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint

KW = dict(out_size=64, channel_multiplier=1, narrow=0.25)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  variables = archs.init('gfpganv1clean', jax.random.key(0), **KW)
  # Noise strengths start at zero; make the decoder noise matter.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.5 if p[-1].key == 'weight' and v.shape == (1,) else v, variables)
  return checkpoint.save(tmp_path_factory.mktemp('w') / 'g', variables, 'gfpganv1clean', KW), variables


def test_to_uint8_is_tensor2img():
  x = np.array([-1.5, -1.0, -0.2, 0.0, 0.49, 1.0, 3.0], np.float32).reshape(1, 1, 7, 1)
  expected = np.round((np.clip(x, -1, 1) + 1) / 2 * 255).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(inference.to_uint8(x)), expected)
  u = np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1)
  np.testing.assert_array_equal(np.asarray(inference.to_uint8(inference.to_model_range(u))), u)


def test_restore_folder(ckpt, tmp_path, caplog):
  path, variables = ckpt
  src = tmp_path / 'in'
  src.mkdir()
  rs = np.random.RandomState(0)
  face = rs.randint(0, 256, (64, 64, 3), np.uint8)
  Image.fromarray(face).save(src / 'a.png')
  Image.fromarray(rs.randint(0, 256, (100, 80), np.uint8)).save(src / 'gray_big.jpg')  # resized, converted
  (src / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  (src / 'notes.txt').write_text('not an image')
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO):
    rc = restore.main(['--weights', str(path), '--input', str(src), '--output', str(out), '--batch-size', '3',
                       '--noise', 'stored', '--aligned'])
  assert rc == 0
  assert sorted(p.name for p in (out / 'restored_faces').iterdir()) == ['a_00.png', 'gray_big_00.png']
  assert not (out / 'restored_imgs').exists()  # aligned faces are not pasted back
  assert 'skipped broken' in caplog.text and 'skipped notes' in caplog.text
  assert 'gray_big.jpg: resized from 80x100 to 64x64' in caplog.text
  cmp = np.asarray(Image.open(out / 'cmp' / 'a_00.png'))
  assert cmp.shape == (64, 128, 3)
  np.testing.assert_array_equal(cmp[:, :64], face)
  # The written image is the module's output, clamped and rounded (stored noise: deterministic).
  module, _ = archs.build('gfpganv1clean', **KW)
  expected = inference.make_restore_fn(module, randomize_noise=False)(variables, face[None], jax.random.key(0))[0]
  got = np.asarray(Image.open(out / 'restored_faces' / 'a_00.png')).astype(int)
  diff = np.abs(got - np.asarray(expected, int))
  # Equal up to a rare one-level rounding flip: XLA's float sums depend on the batch size (3 here).
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3
  np.testing.assert_array_equal(cmp[:, 64:], got.astype(np.uint8))


def test_random_noise_is_seeded(ckpt, tmp_path):
  path, _ = ckpt
  src = tmp_path / 'f.png'
  Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(src)
  outs = []
  for seed in (0, 0, 1):
    out = tmp_path / f'o{len(outs)}'
    argv = ['--weights', str(path), '--input', str(src), '--output', str(out), '--seed', str(seed), '--aligned']
    assert restore.main(argv) == 0
    outs.append(np.asarray(Image.open(out / 'restored_faces' / 'f_00.png')))
  np.testing.assert_array_equal(outs[0], outs[1])
  assert np.any(outs[0] != outs[2])


def test_bad_arguments(ckpt, tmp_path, caplog):
  path, _ = ckpt
  assert restore.main(['--weights', str(path), '--input', str(tmp_path / 'missing'), '--output', str(tmp_path)]) == 2
  assert 'input not found' in caplog.text
  assert restore.main(['--weights', str(tmp_path / 'nope.pth'), '--output', str(tmp_path)]) == 2
  assert 'no checkpoint at' in caplog.text
