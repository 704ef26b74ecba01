"""scripts/bf16_curves.py on two hand-written workdirs: metrics read back, s/step without eval intervals, the PNG."""

import argparse
import json

import pytest

from gfpgan_jax.testing import scripts

@pytest.fixture(scope='module')
def curves():
  return scripts.load('bf16_curves')


def _workdir(root, dtype, loss_scale):
  workdir = root / dtype
  workdir.mkdir(parents=True)
  config = {'eval_every_steps': 20, 'image_every_steps': 50, 'checkpoint_every_steps': 100, 'log_every_steps': 10}
  (workdir / 'config.json').write_text(json.dumps(config))
  rows = []
  for step in range(10, 61, 10):
    # Intervals starting at a validation step (20, 40) are slow: they must not count.
    rate = 0.1 if (step - 10) % 20 == 0 and step > 10 else 0.5
    rows.append({'step': step, 'train/g/total': loss_scale / step, 'train/d/d': 1.0, 'perf/steps_per_s': rate})
    if step % 20 == 0:
      rows.append({'step': step, 'val/psnr': 10 + step / 10})
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return workdir


def test_read_metrics_and_seconds_per_step(curves, tmp_path):
  workdir = _workdir(tmp_path, 'float32', 1.0)
  series = curves.read_metrics(workdir)
  assert series['val/psnr'] == [(20, 12.0), (40, 14.0), (60, 16.0)]
  assert [s for s, _ in series['train/g/total']] == [10, 20, 30, 40, 50, 60]
  # Clean: the intervals ending at 20, 40, 60; those ending at 30, 50 start at validations; the first is dropped.
  assert curves.seconds_per_step(workdir, series) == pytest.approx(2.0)
  with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
    curves.read_metrics(tmp_path / 'missing')


def test_reuse_writes_the_png_and_the_table(curves, tmp_path, capsys):
  _workdir(tmp_path, 'float32', 1.0)
  _workdir(tmp_path, 'bfloat16', 1.1)
  parser = argparse.ArgumentParser()
  curves.add_arguments(parser)
  out = tmp_path / 'curves.png'
  results = curves.run(parser.parse_args(['--root', str(tmp_path), '--reuse', '--output', str(out)]))
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert results['final']['train/g/total'] == {'step': 60, 'float32': 1 / 60, 'bfloat16': pytest.approx(1.1 / 60)}
  assert results['final']['val/psnr']['bfloat16'] == 16.0
  assert '+10.0%' in capsys.readouterr().out  # g/total's relative difference
