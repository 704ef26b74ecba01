"""Config validation before compile (bad overrides, the full recipe's loss networks) and the resume comparison."""

import json
import os
import pathlib
import sys

from absl import flags
import jax
from ml_collections import config_flags
import pytest

from configs import ffhq
from gfpgan_jax import config_checks
from gfpgan_jax import trainer
from gfpgan_jax.testing import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _parse(*overrides, variant='tiny'):
  """The config as `python -m gfpgan_jax.train --config configs/ffhq.py:VARIANT OVERRIDES` builds it."""
  argv = ['train', '--config', f'{ROOT}/configs/ffhq.py' + (f':{variant}' if variant else ''), *overrides]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return holder.value


def test_the_shipped_variants_pass():
  config_checks.validate(_parse(variant='tiny'))
  config_checks.validate(_parse('--config.data.batch_size=8', variant='demo'))  # 4 does not split over 8 devices


@pytest.mark.parametrize('override, message', [
    ('--config.optim.g_lr=-2e-3', 'config.optim.g_lr must be a number > 0, got -0.002'),
    ('--config.optim.d_lr=0', 'config.optim.d_lr must be a number > 0, got 0.0'),
    ('--config.optim.dc_lr=-1', 'config.optim.dc_lr must be a number > 0'),
    ('--config.loss.pixel_weight=-0.1', 'config.loss.pixel_weight must be a number >= 0 (0 turns the term off)'),
    ('--config.loss.identity_weight=-10', 'config.loss.identity_weight must be a number >= 0'),
    ('--config.loss.vgg_layer_weights.conv3_4=-1', 'config.loss.vgg_layer_weights.conv3_4 must be a number >= 0'),
    ('--config.log_every_steps=0', 'config.log_every_steps must be a positive integer, got 0'),
    ('--config.checkpoint_every_steps=-5', 'config.checkpoint_every_steps must be a positive integer'),
    ('--config.loss.d_reg_every=0', 'config.loss.d_reg_every must be a positive integer'),
    ('--config.optim.g_betas=0.9', 'config.optim.g_betas must be a pair (beta1, beta2) of numbers with values in '
     "[0, 1), got (0.9,) (on the command line a single value becomes a 1-tuple; write all values, e.g. "
     "--config.optim.g_betas='(a, b)')"),
    ('--config.optim.d_betas=(0.5,1.5)', 'config.optim.d_betas must be a pair (beta1, beta2)'),
    ('--config.optim.milestones=(5,2)', 'config.optim.milestones must be a tuple of non-negative integers, '
     'increasing'),
    ('--config.optim.ema_decay=1.5', 'config.optim.ema_decay must be a number in [0, 1]'),
    ('--config.data.degradation.jpeg_range=None', 'gives (None,); set it to None in the config file'),
    ('--config.data.degradation.blur_sigma=(3.0,1.0)', 'config.data.degradation.blur_sigma must be a pair (low, '
     'high) of numbers, low <= high or None'),
    ('--config.model.arcface_kwargs.layers=(2,2)', 'config.model.arcface_kwargs.layers must be a tuple of 4'),
    ('--config.init.decoder=/nonexistent/prior.pth', 'pretrained weights not found: '
     'config.init.decoder=/nonexistent/prior.pth'),
    ('--config.dtype=float16', "config.dtype must be 'float32' or 'bfloat16'"),
])
def test_bad_override_is_rejected_before_compile(override, message):
  config = _parse(override)
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate(config)
  assert message in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_unknown_nested_keys_are_rejected():
  # On the command line, config_flags refuses them (the command turns that into one line; see below).
  with pytest.raises(AttributeError, match='foo'):
    _parse('--config.model.generator_kwargs.foo=1')
  # In a config file (or a config built in Python) nothing locks the kwargs: the check names the field.
  config = ffhq.get_config('tiny')
  config.model.discriminator_kwargs.stddev_grup = 4
  with pytest.raises(config_checks.ConfigError, match=r"config.model.discriminator_kwargs: unknown option\(s\) "
                     r"\['stddev_grup'\]"):
    config_checks.validate(config)
  config = ffhq.get_config('tiny')
  config.loss.vgg_layer_weights.conv9_9 = 1.0
  with pytest.raises(config_checks.ConfigError, match=r"unknown VGG19 layers \['conv9_9'\]"):
    config_checks.validate(config)


def test_the_command_reports_an_unknown_field_in_one_line(tmp_path):
  cmd = [sys.executable, '-m', 'gfpgan_jax.train', '--config', f'{ROOT}/configs/ffhq.py:tiny', '--workdir',
         str(tmp_path / 'w'), '--config.model.generator_kwargs.narow=0.5']
  proc = procs.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu'),
                   capture_output=True, text=True, timeout=120)
  out, err = proc.stdout, proc.stderr
  assert proc.returncode == 1
  assert err.strip() == ('gfpgan_jax.train: error: unknown config field \'narow\' in '
                         '--config.model.generator_kwargs.narow; Did you mean "narrow" instead of "narow"?'), out + err
  assert not (tmp_path / 'w').exists()


def test_full_recipe_needs_pretrained_loss_networks(tmp_path):
  for variant in (None, 'clean'):
    config = _parse(variant=variant)
    with pytest.raises(config_checks.ConfigError) as e:
      config_checks.validate(config)
    message = str(e.value)
    for part in ('--config.init.vgg19=vgg19-dcbb9e9d.pth', config_checks.VGG19_URL,
                 '--config.init.arcface=arcface_resnet18.pth', config_checks.ARCFACE_URL,
                 '--config.init.allow_random_loss_networks=True'):
      assert part in message, message
  # The trainer fails on it before the workdir exists.
  with pytest.raises(config_checks.ConfigError, match='need pretrained loss networks'):
    trainer.train_and_evaluate(_parse(variant=None), tmp_path / 'w')
  assert not (tmp_path / 'w').exists()
  config = _parse('--config.init.decoder=/nonexistent/prior.pth')  # tiny: missing init files, nothing written
  with pytest.raises(config_checks.ConfigError, match='pretrained weights not found'):
    trainer.train_and_evaluate(config, tmp_path / 'w')
  assert not (tmp_path / 'w').exists()
  # Only the networks a loss uses are asked for; given files (or the opt-in) pass.
  (tmp_path / 'vgg19-dcbb9e9d.pth').write_bytes(b'')
  (tmp_path / 'arcface_resnet18.pth').write_bytes(b'')
  config = _parse(f'--config.init.vgg19={tmp_path}/vgg19-dcbb9e9d.pth', variant=None)
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate(config)
  assert 'arcface_resnet18.pth' in str(e.value) and 'vgg19-dcbb9e9d' not in str(e.value)
  # 12 does not split over 8 devices; 24 does, and into the recipe's per-GPU D batches of 3.
  batch, eval_batch = '--config.data.batch_size=24', '--config.data.eval_batch_size=24'
  config_checks.validate(_parse(batch, eval_batch, '--config.model.use_identity=False',
                                f'--config.init.vgg19={tmp_path}/vgg19-dcbb9e9d.pth', variant=None))
  config_checks.validate(_parse(batch, eval_batch, f'--config.init.vgg19={tmp_path}/vgg19-dcbb9e9d.pth',
                                f'--config.init.arcface={tmp_path}/arcface_resnet18.pth', variant=None))
  config_checks.validate(_parse(batch, eval_batch, '--config.init.allow_random_loss_networks=True', variant=None))
  assert not ffhq.get_config().init.allow_random_loss_networks
  assert ffhq.get_config('tiny').init.allow_random_loss_networks
  assert ffhq.get_config('demo').init.allow_random_loss_networks


# ------------------------------------------------------------------------------ resuming


def _stored(tmp_path, config, checkpoint=True):
  tmp_path.mkdir(parents=True, exist_ok=True)
  config_checks.write_config(tmp_path, config)
  if checkpoint:
    (tmp_path / 'checkpoints' / '4').mkdir(parents=True)
  return (tmp_path / 'config.json').read_bytes()


def test_a_moved_workdir_resumes(tmp_path):
  """Paths inside the workdir (the demo's data) follow it when it is moved or copied; other paths do not."""
  old = ffhq.get_config('tiny')
  old.data.update(source='folder', train_dir=str(tmp_path / 'a' / 'demo_data' / 'train'))
  _stored(tmp_path / 'a', old)
  (tmp_path / 'a').rename(tmp_path / 'b')
  moved = ffhq.get_config('tiny')
  moved.data.update(source='folder', train_dir=str(tmp_path / 'b' / 'demo_data' / 'train'))
  assert config_checks.check_resume(moved, tmp_path / 'b').describe() == []
  moved.data.train_dir = str(tmp_path / 'b' / 'other_faces')
  with pytest.raises(config_checks.ConfigError, match='changed data stream'):
    config_checks.check_resume(moved, tmp_path / 'b')


def test_field_kinds():
  kinds = {k: config_checks.field_kind(k) for k in config_checks.flatten(json.loads(
      ffhq.get_config().to_json_best_effort()))}
  assert {k for k, v in kinds.items() if v == 'data stream'} == {
      'seed', 'data.seed', 'data.batch_size', 'data.shuffle', 'data.source', 'data.train_dir', 'data.train_lq_dir',
      'data.tfds_data_dir', 'data.tfds_name', 'data.tfds_split'}
  assert kinds['data.resolution'] == kinds['model.generator_kwargs.narrow'] == 'architecture'
  assert kinds['data.eval_dir'] == kinds['total_steps'] == kinds['optim.g_lr'] == kinds['init.vgg19'] == 'other'


def test_stream_change_is_refused_unless_allowed_and_then_recorded(tmp_path):
  old = ffhq.get_config('tiny')
  stored = _stored(tmp_path, old)
  new = ffhq.get_config('tiny')
  new.data.batch_size, new.total_steps, new.optim.g_lr = 16, 10, 1e-3
  with pytest.raises(config_checks.ConfigError, match=r'changed data stream \(data.batch_size: 8 -> 16\).*'
                     r'--allow_config_change'):
    config_checks.check_resume(new, tmp_path)
  check = config_checks.check_resume(new, tmp_path, allow_config_change=True)
  assert check.describe() == ['data.batch_size (data stream): 8 -> 16', 'optim.g_lr (other): 0.002 -> 0.001',
                              'total_steps (other): 3 -> 10']
  assert (tmp_path / 'config.json').read_bytes() == stored  # checking writes nothing
  assert not (tmp_path / config_checks.CHANGES_FILE).exists()
  check.record(tmp_path)
  rows = [json.loads(l) for l in (tmp_path / config_checks.CHANGES_FILE).read_text().splitlines()]
  assert len(rows) == 1 and rows[0]['changes'] == {'data.batch_size': [8, 16], 'optim.g_lr': [0.002, 0.001],
                                                   'total_steps': [3, 10]}
  assert rows[0]['kinds']['data.batch_size'] == 'data stream'
  assert rows[0]['previous_config'] == json.loads(stored)


def test_other_changes_pass_and_fresh_workdirs_are_not_compared(tmp_path):
  old = ffhq.get_config('tiny')
  _stored(tmp_path / 'a', old)
  same = config_checks.check_resume(ffhq.get_config('tiny'), tmp_path / 'a')
  assert same.changes == {} and same.describe() == []
  longer = ffhq.get_config('tiny')
  longer.total_steps = 100
  assert config_checks.check_resume(longer, tmp_path / 'a').describe() == ['total_steps (other): 3 -> 100']
  # config.json without any checkpoint (a run that stopped before its first save): a new run, no comparison.
  _stored(tmp_path / 'b', old, checkpoint=False)
  other = ffhq.get_config('tiny')
  other.model.generator_kwargs.narrow = 0.5
  assert config_checks.check_resume(other, tmp_path / 'b').changes == {}
  with pytest.raises(config_checks.ConfigError, match='another architecture.*model.generator_kwargs.narrow: '
                     '0.25 -> 0.5'):
    config_checks.check_resume(other, tmp_path / 'a', allow_config_change=True)
  (tmp_path / 'a' / 'config.json').write_text('{garbage')
  with pytest.raises(config_checks.ConfigError, match='config.json is unreadable'):
    config_checks.check_resume(longer, tmp_path / 'a')


def test_device_divisibility_still_checked():
  config = ffhq.get_config('tiny')
  config.data.batch_size = 12
  assert jax.device_count() == 8
  with pytest.raises(config_checks.ConfigError, match='data.batch_size=12 is not divisible by the 8 devices'):
    config_checks.validate(config)
