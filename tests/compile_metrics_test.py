"""Compile logging and caching, interval-mean metrics, metrics.jsonl on resume, and the progress line."""

import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from configs import ffhq
from gfpgan_jax import checkpointing
from gfpgan_jax import metrics_io
from gfpgan_jax import trainer
from gfpgan_jax import xla_options


def _rows(workdir, prefix='train/'):
  """The rows of metrics.jsonl with scalars under `prefix` (the training rows; the validation rows are apart)."""
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r for r in rows if any(k.startswith(prefix) for k in r)]


def test_interval_means_average_each_scalar_over_the_steps_that_returned_it():
  add = jax.jit(lambda sums, m: jax.tree.map(jnp.add, sums, m))
  calls = []
  means = metrics_io.IntervalMeans(lambda kind, sums, m: calls.append(kind) or add(sums, m))
  rng = np.random.default_rng(0)
  plain = [{'g/l1': np.float32(v), 'd/d': np.float32(w)} for v, w in rng.random((3, 2))]
  r1 = [{'g/l1': np.float32(v), 'd/d': np.float32(w), 'd/r1': np.float32(x)} for v, w, x in rng.random((2, 3))]
  for kind, m in [('plain', plain[0]), ('r1', r1[0]), ('plain', plain[1]), ('plain', plain[2]), ('r1', r1[1])]:
    means.add(kind, jax.device_put(m))
  assert means.steps == 5
  assert calls == ['plain', 'plain', 'r1']  # the first step of each kind is kept, later ones are added
  out = means.pop()
  for name in ('g/l1', 'd/d'):
    np.testing.assert_allclose(out[name], np.mean([m[name] for m in plain + r1], dtype=np.float64), rtol=1e-6)
  np.testing.assert_allclose(out['d/r1'], np.mean([m['d/r1'] for m in r1], dtype=np.float64), rtol=1e-6)
  assert means.steps == 0  # a new interval
  means.add('plain', plain[2])
  assert means.pop() == {k: np.float64(v) for k, v in plain[2].items()}


class _Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_rate_and_eta_leave_out_compile_time(caplog):
  caplog.set_level(logging.INFO, logger='gfpgan_jax.train')
  clock, compiled = _Clock(), {'s': 30.0}  # 30 s of compiling before the progress clock starts: not counted
  progress = metrics_io.Progress(110, 4, 10, compile_seconds=lambda: compiled['s'], clock=clock)
  clock.now += 300.0  # 300 s, of which 280 s compiling: 10 steps in 20 s of training
  compiled['s'] += 280.0
  perf = progress.report(20, {'train/g/total': 1.5, 'train/data/num_skipped_total': 0.0})
  assert perf['perf/steps_per_s'] == 0.5 and perf['perf/images_per_s'] == 2.0
  assert 'ETA 3m00s' in caplog.text  # 90 steps at 0.5 steps/s
  assert 'skipped' not in caplog.text
  clock.now += 5.0  # no compile in between: the rate is over the wall time
  perf = progress.report(30, {'train/g/total': 1.5, 'train/data/num_skipped_total': 3.0})
  assert perf['perf/steps_per_s'] == 2.0
  assert 'ETA 0m40s' in caplog.text and 'skipped=3 unreadable files' in caplog.text


def test_resume_drops_the_rows_past_the_restored_step(tmp_path):
  writer = metrics_io.MetricWriter(tmp_path)
  for step in range(1, 6):
    writer.write_scalars(step, {'train/g/total': float(step)})
  writer.write_scalars(4, {'val/psnr': 20.0})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', 'a', encoding='utf-8') as f:
    f.write('{"step": 6, "train/g/to')  # a line cut short by a kill
  writer = metrics_io.MetricWriter(tmp_path)
  writer.resume(3)
  writer.write_scalars(4, {'train/g/total': 40.0})
  writer.close()
  assert [(r['step'], r.get('train/g/total')) for r in _rows(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  assert not list(tmp_path.glob('*.tmp'))


def test_compilation_cache_default_and_precedence(tmp_path):
  chosen = jax.config.jax_compilation_cache_dir
  assert chosen  # tests/conftest.py sets one: it wins over the workdir's
  assert xla_options.enable_compilation_cache(True, tmp_path) == chosen
  assert not (tmp_path / 'xla_cache').exists()
  try:
    jax.config.update('jax_compilation_cache_dir', None)
    assert xla_options.enable_compilation_cache(False, tmp_path) is None
    assert not (tmp_path / 'xla_cache').exists()
    assert xla_options.enable_compilation_cache(True, tmp_path) == str(tmp_path / 'xla_cache')
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'xla_cache')
    assert (tmp_path / 'xla_cache').is_dir()
  finally:
    jax.config.update('jax_compilation_cache_dir', chosen)


def test_compiles_logged_and_cached_metrics_averaged_and_deduplicated_on_resume(tmp_path, caplog):
  """A tiny run logging every step, killed (its last two checkpoints lost) and resumed logging every 3 steps."""
  caplog.set_level(logging.INFO, logger='gfpgan_jax.train')
  config = ffhq.get_config('tiny')  # as tests/trainer_test.py's runs (the same compiled steps, cached)
  config.loss.d_reg_every = 2  # R1 on even steps
  config.update(total_steps=6, checkpoint_every_steps=2, keep_checkpoints=5, image_every_steps=1000,
                eval_every_steps=1000, log_every_steps=1)
  trainer.train_and_evaluate(config, tmp_path)
  log = caplog.text
  for name in ('train_step', 'train_step_r1'):  # compiled ahead of time, each logged
    assert f'compiling {name} …' in log and f'compiled {name} in ' in log
  assert log.index('compiled train_step_r1 in') < log.index('step 1/6')
  first = _rows(tmp_path)
  assert [r['step'] for r in first] == [1, 2, 3, 4, 5, 6]
  assert [r['step'] for r in _rows(tmp_path, 'val/')] == [6]  # the final validation
  # As if killed after logging step 6 but before checkpoints 4 and 6 were written.
  for step in (4, 6):
    shutil.rmtree(tmp_path / 'checkpoints' / str(step))
  assert checkpointing.Checkpointer(tmp_path).latest_step() == 2

  caplog.clear()
  config.log_every_steps = 3  # rows at 3 (step 3) and 6 (the means of steps 4-6)
  _, info = trainer.train_and_evaluate(config, tmp_path)
  assert info['compiles']['accumulate_train_step'] == info['compiles']['accumulate_train_step_r1'] == 1
  # A resumed run loads its steps from the persistent compilation cache.
  assert 'compiled train_step in' in caplog.text
  assert caplog.text.count('(from the persistent compilation cache)') >= 2, caplog.text
  rows = _rows(tmp_path)
  assert [r['step'] for r in rows] == [1, 2, 3, 6]  # steps 3-6 of the killed run dropped, no duplicates
  assert [r['step'] for r in _rows(tmp_path, 'val/')] == [6]
  assert rows[:2] == first[:2]
  # Row 6 holds the means over steps 4-6 (the replayed steps equal the killed run's: resume is bit-exact);
  # d/r1 over the R1 steps 4 and 6 (d_reg_every=2); the learning rate at step 6.
  interval = first[3:]
  for name, value in rows[3].items():
    if name.startswith(('train/g/', 'train/d/')):
      expected = np.mean([r[name] for r in interval if name in r])
      np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=name)
  assert 'train/d/r1' in rows[3] and [r['step'] for r in interval if 'train/d/r1' in r] == [4, 6]
  assert rows[3]['train/lr/g'] == first[5]['train/lr/g']
  assert rows[3]['train/g/total'] != first[5]['train/g/total']  # a mean, not the last step's value
  np.testing.assert_allclose(rows[2]['train/g/total'], first[2]['train/g/total'], rtol=1e-6)  # one step: itself
