"""Paired LQ/GT data (official `dataroot_lq`): training without degradations, and paired validation."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import ffhq
from gfpgan_jax import steps
from gfpgan_jax import trainer
from gfpgan_jax.data import demo
from gfpgan_jax.data import input_pipeline

RES = 32


def _lq_of(gt: np.ndarray) -> np.ndarray:
  """A given 'real' LQ: 4x down and up again (bilinear)."""
  small = Image.fromarray(gt).resize((RES // 4, RES // 4), Image.Resampling.BILINEAR)
  return np.asarray(small.resize((RES, RES), Image.Resampling.BILINEAR))


@pytest.fixture(scope='module')
def paired_data(tmp_path_factory):
  """The demo faces at 32 px (16 train, 4 eval) with an LQ folder each (train LQs are BMPs: matched by stem)."""
  root = tmp_path_factory.mktemp('paired')
  paths = demo.write_demo_dataset(root / 'data', RES, num_train=16, num_eval=4)
  for sub in ('train', 'eval'):
    (root / f'{sub}_lq').mkdir()
    for f in sorted(pathlib.Path(paths[f'{sub}_dir']).iterdir()):
      lq = _lq_of(np.asarray(Image.open(f).convert('RGB')))
      ext = '.bmp' if sub == 'train' else '.png'  # lossless either way; matched by stem
      Image.fromarray(lq).save(root / f'{sub}_lq' / (f.stem + ext))
  return root, paths


def _config(root, paths, **updates):
  config = ffhq.get_config('tiny')
  config.data.update(dict(source='folder', train_dir=paths['train_dir'], eval_dir=paths['eval_dir'],
                          landmarks_path=paths['landmarks_path'], landmarks_resolution=512,
                          train_lq_dir=str(root / 'train_lq'), eval_lq_dir=str(root / 'eval_lq')))
  config.update_from_flattened_dict(updates)
  return config


def _load(path):
  return np.asarray(Image.open(path).convert('RGB'))


def test_paired_batches_carry_their_lq_flipped_with_the_gt(paired_data):
  root, paths = paired_data
  config = _config(root, paths, **{'data.batch_size': 16})
  batch = next(input_pipeline.make_train_iterator(config, 0, 1))
  assert batch['lq'].shape == batch['gt'].shape == (16, RES, RES, 3) and batch['lq'].dtype == np.uint8
  gts = {f.stem: _load(f) for f in pathlib.Path(paths['train_dir']).iterdir()}
  flips = 0
  for gt, lq in zip(batch['gt'], batch['lq']):
    stem = next(s for s, g in gts.items() if np.array_equal(g, gt) or np.array_equal(g[:, ::-1], gt))
    flipped = not np.array_equal(gts[stem], gt)
    want = _load(root / 'train_lq' / f'{stem}.bmp')
    np.testing.assert_array_equal(lq, want[:, ::-1] if flipped else want)  # the same flip as its GT
    flips += flipped
  assert 0 < flips < 16
  # The step takes the given LQ (in [-1, 1]) instead of degrading.
  gt, lq = steps.batch_pair(None, {k: jnp.asarray(v) for k, v in batch.items()}, config, 3)
  np.testing.assert_allclose(np.asarray(lq), batch['lq'][:3] / 127.5 - 1, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gt), batch['gt'][:3] / 127.5 - 1, atol=1e-6)

  eval_batch = next(input_pipeline.make_eval_iterator(config, 0, 1))
  names = sorted(f.stem for f in pathlib.Path(paths['eval_dir']).iterdir())
  for i, index in enumerate(eval_batch['index'][:4]):
    np.testing.assert_array_equal(eval_batch['lq'][i], _load(root / 'eval_lq' / f'{names[index]}.png'))


def test_missing_lq_is_one_clear_error(paired_data, tmp_path):
  root, paths = paired_data
  (tmp_path / 'lq').mkdir()
  Image.fromarray(np.zeros((RES, RES, 3), np.uint8)).save(tmp_path / 'lq' / '00000.png')
  config = _config(root, paths, **{'data.train_lq_dir': str(tmp_path / 'lq')})
  with pytest.raises(ValueError, match=r'15 of 16 GT images have no LQ file of the same name in .*00001\.png'):
    input_pipeline.make_train_source(config)


def test_paired_run_writes_val_images_and_the_lq_metrics(paired_data, tmp_path):
  root, paths = paired_data
  config = _config(root, paths, total_steps=2, image_every_steps=2, checkpoint_every_steps=2, eval_every_steps=2,
                   **{'loss.d_reg_every': 1000, 'data.eval_batch_size': 8})
  trainer.train_and_evaluate(config, tmp_path)
  # Validation rows LQ | output | GT, named after the eval files; the LQ is the given one.
  val_dir = tmp_path / 'images' / 'val' / '00000002'
  names = sorted(f.stem for f in pathlib.Path(paths['eval_dir']).iterdir())
  assert sorted(p.name for p in val_dir.iterdir()) == [f'{n}.png' for n in names]
  psnrs = []
  for n in names:
    row = _load(val_dir / f'{n}.png')
    assert row.shape == (RES, 3 * RES, 3)
    lq, gt = _load(root / 'eval_lq' / f'{n}.png'), _load(pathlib.Path(paths['eval_dir']) / f'{n}.png')
    np.testing.assert_array_equal(row[:, :RES], lq)
    np.testing.assert_array_equal(row[:, 2 * RES:], gt)
    psnrs.append(10 * np.log10(255.0**2 / np.mean((lq.astype(np.float64) - gt)**2)))
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  val = next(r for r in rows if 'val/psnr' in r)
  assert val['val/lq_psnr'] == pytest.approx(np.mean(psnrs), abs=1e-3)
  assert 0 < val['val/lq_ssim'] < 1 and np.isfinite(val['val/psnr'])
  # Training ran on the given LQs: the preview's LQ column is the given LQ of each previewed face (or its flip).
  preview = _load(tmp_path / 'images' / 'train_lq_out_gt_0000002.png')
  lqs = [_load(f) for f in (root / 'train_lq').iterdir()]
  for k in range(config.num_preview_images):
    cell = preview[k * RES:(k + 1) * RES, :RES]
    assert any(np.array_equal(cell, lq) or np.array_equal(cell, lq[:, ::-1]) for lq in lqs), k
