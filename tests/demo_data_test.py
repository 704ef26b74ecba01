"""The demo dataset's degraded evaluation faces: what the README restores."""

import shutil

import numpy as np
from PIL import Image

from gfpgan_jax.data import demo


def _psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64))**2)
  return 10 * np.log10(255.0**2 / mse)


def test_eval_faces_get_degraded_copies_next_to_them(tmp_path):
  paths = demo.write_demo_dataset(tmp_path / 'd', 64, num_train=4, num_eval=3)
  names = sorted(p.name for p in (tmp_path / 'd' / 'eval').glob('*.png'))
  assert sorted(p.name for p in (tmp_path / 'd' / 'eval_lq').glob('*.png')) == names == ['00000.png', '00001.png',
                                                                                         '00002.png']
  assert paths['eval_lq_dir'] == str(tmp_path / 'd' / 'eval_lq')
  for name in names:
    clean = np.asarray(Image.open(tmp_path / 'd' / 'eval' / name))
    lq = np.asarray(Image.open(tmp_path / 'd' / 'eval_lq' / name))
    assert lq.shape == clean.shape == (64, 64, 3) and lq.dtype == np.uint8
    assert 15 < _psnr(lq, clean) < 32  # visibly degraded, still the same face
    # Blurred: less high-frequency energy than the clean face.
    assert np.abs(np.diff(lq.astype(float), axis=1)).mean() < np.abs(np.diff(clean.astype(float), axis=1)).mean()
  # Fixed seed: the same files again; a dataset written before eval_lq/ existed gets them on the next call.
  shutil.rmtree(tmp_path / 'd' / 'eval_lq')
  demo.write_demo_dataset(tmp_path / 'd', 64, num_train=4, num_eval=3)
  again = demo.write_demo_dataset(tmp_path / 'e', 64, num_train=4, num_eval=3)
  for name in names:
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'd' / 'eval_lq' / name)),
                                  np.asarray(Image.open(f'{again["eval_lq_dir"]}/{name}')))
