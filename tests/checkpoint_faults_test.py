"""Damaged checkpoints and a full disk: verified fallback, --strict_resume, one-line messages.

One tiny run (steps 2 and 4 saved, with manifests) is trained once; each case
damages a copy of its workdir.
"""

import errno
import logging
import pathlib
import shutil

from absl.testing import flagsaver
import jax
import numpy as np
import pytest

from gfpgan_jax import checkpoint_manifest as manifest
from gfpgan_jax import checkpointing
from gfpgan_jax import interrupts
from gfpgan_jax import resume
from gfpgan_jax import sharding
from gfpgan_jax import train
from gfpgan_jax import train_state as ts
from gfpgan_jax import trainer
from gfpgan_jax.data import input_pipeline
from trainer_test import _flat_state, load_config


def _config(total_steps=4):
  return load_config(total_steps=total_steps, checkpoint_every_steps=2, image_every_steps=1000)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny run's workdir with checkpoints 2 and 4 (the uninterrupted reference)."""
  workdir = tmp_path_factory.mktemp('trained')
  trainer.train_and_evaluate(_config(), workdir)
  return workdir


def _copy(trained, tmp_path) -> pathlib.Path:
  workdir = tmp_path / 'w'
  shutil.copytree(trained, workdir)
  return workdir


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((step_dir / 'state').rglob('ocdbt.process_0/d/*'), key=lambda p: p.stat().st_size)


def _flip_byte(step_dir):
  f = _largest_data_file(step_dir)
  data = bytearray(f.read_bytes())
  data[len(data) // 2] ^= 0x40
  f.write_bytes(bytes(data))
  return f


def _truncate(step_dir):
  f = _largest_data_file(step_dir)
  with open(f, 'r+b') as fh:
    fh.truncate(f.stat().st_size // 2)
  return f


def _delete(step_dir):
  f = _largest_data_file(step_dir)
  f.unlink()
  return f


def _garbage_metadata(step_dir):
  f = step_dir / 'state' / '_METADATA'
  f.write_bytes(b'\xff\xfe garbage \x00' * 64)
  return f


def _garbage_iterator(step_dir):
  f = next((step_dir / 'data_iter').glob('*.json'))
  f.write_text('{"next_index": ')
  return f


CORRUPTIONS = {'flipped_byte': _flip_byte, 'truncated': _truncate, 'deleted': _delete,
               'garbage_metadata': _garbage_metadata, 'garbage_iterator': _garbage_iterator}


def _restore_target(config, workdir):
  """What `trainer._train` restores into: the abstract state with its shardings, and a fresh data iterator."""
  config = trainer._resolve_demo_data(config, workdir)  # pylint: disable=protected-access
  mesh = sharding.make_mesh(config)
  nets = ts.build_networks(config)
  abstract = jax.eval_shape(lambda k: ts.init_state(nets, config, k), jax.random.key(config.seed))
  state_sh = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
  return target, input_pipeline.make_train_iterator(config)


def test_every_step_has_a_manifest_that_verifies(trained):
  ckpt = checkpointing.Checkpointer(trained)
  assert ckpt.all_steps() == [2, 4]
  for step in (2, 4):
    assert manifest.verify(ckpt.step_dir(step), step)
    listed = manifest.json.loads((ckpt.step_dir(step) / manifest.MANIFEST_NAME).read_text())['files']
    assert 'data_iter/process_0-of-1.json' in listed and 'state/_METADATA' in listed
  ckpt.close()


@pytest.mark.parametrize('case', sorted(CORRUPTIONS))
def test_damaged_latest_step_falls_back_to_the_previous_one(trained, tmp_path, caplog, case):
  workdir = _copy(trained, tmp_path)
  damaged = CORRUPTIONS[case](workdir / 'checkpoints' / '4')
  target, data_iter = _restore_target(_config(), workdir)
  ckpt = checkpointing.Checkpointer(workdir)
  with caplog.at_level(logging.ERROR, logger='gfpgan_jax.train'):
    state, step = ckpt.restore_latest(target, data_iter)
  assert step == 2
  assert f'CHECKPOINT STEP 4 IS UNUSABLE: {damaged}' in caplog.text, caplog.text
  assert 'FELL BACK from checkpoint step 4 to step 2' in caplog.text
  # The restored state is step 2's, and the iterator is at step 2's position.
  pristine = checkpointing.Checkpointer(trained)
  reference = pristine.restore(2, target)
  pristine.close()
  for (k, v), r in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(reference), strict=True):
    np.testing.assert_array_equal(np.asarray(v), np.asarray(r), err_msg=jax.tree_util.keystr(k))
  assert data_iter.get_state() == manifest.json.loads(
      next((trained / 'checkpoints' / '2' / 'data_iter').glob('*.json')).read_text())
  # The bad step is moved aside, never deleted: its damaged file is still there.
  kept = workdir / checkpointing.REJECTED_DIR / '4'
  assert (kept / damaged.relative_to(workdir / 'checkpoints' / '4')).exists() == (case != 'deleted')
  assert not (workdir / 'checkpoints' / '4').exists() and ckpt.all_steps() == [2]
  ckpt.close()


@pytest.mark.parametrize('case', sorted(CORRUPTIONS))
def test_strict_resume_names_the_step_and_file(trained, tmp_path, case):
  workdir = _copy(trained, tmp_path)
  damaged = CORRUPTIONS[case](workdir / 'checkpoints' / '4')
  with pytest.raises(manifest.CorruptCheckpointError) as e:
    trainer.train_and_evaluate(_config(), workdir, strict_resume=True)
  assert e.value.step == 4 and e.value.path == str(damaged)
  assert f'checkpoint step 4 is unusable: {damaged}' in str(e.value) and '--strict_resume' in str(e.value)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']  # nothing moved
  assert not (workdir / checkpointing.REJECTED_DIR).exists()


def test_step_without_manifest_is_restored_unverified_and_falls_back_on_error(trained, tmp_path, caplog):
  workdir = _copy(trained, tmp_path)
  step_dir = workdir / 'checkpoints' / '4'
  (step_dir / manifest.MANIFEST_NAME).unlink()  # as written by an older version
  _truncate(step_dir)
  target, data_iter = _restore_target(_config(), workdir)
  ckpt = checkpointing.Checkpointer(workdir)
  with caplog.at_level(logging.WARNING, logger='gfpgan_jax.train'):
    _, step = ckpt.restore_latest(target, data_iter)
  assert step == 2
  assert 'checkpoint step 4 has no checksum manifest' in caplog.text
  assert 'CHECKPOINT STEP 4 IS UNUSABLE' in caplog.text and 'restore failed' in caplog.text
  ckpt.close()


def test_no_usable_step_stops_and_moves_nothing(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in (2, 4):
    _garbage_iterator(workdir / 'checkpoints' / str(step))
  target, data_iter = _restore_target(_config(), workdir)
  with pytest.raises(resume.NoUsableCheckpointError, match=r'no checkpoint in .* restores: step 4: .*step 2: '):
    checkpointing.Checkpointer(workdir).restore_latest(target, data_iter)
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['2', '4']


def test_resume_after_fallback_is_bit_exact(trained, tmp_path):
  """A flipped byte in step 4: the run resumes from step 2 and ends equal to the uninterrupted run."""
  workdir = _copy(trained, tmp_path)
  _flip_byte(workdir / 'checkpoints' / '4')
  _, info = trainer.train_and_evaluate(_config(), workdir)
  assert info['step'] == 4
  a, b = _flat_state(workdir, 4), _flat_state(trained, 4)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert manifest.verify(workdir / 'checkpoints' / '4', 4)


def test_last_good_step_skips_a_step_damaged_after_its_save(trained, tmp_path, caplog):
  """The non-finite-loss message names a step that verifies, not the newest one."""
  workdir = _copy(trained, tmp_path)
  ckpt = checkpointing.Checkpointer(workdir)
  assert ckpt.last_good_step() == 4
  damaged = _flip_byte(workdir / 'checkpoints' / '4')
  with caplog.at_level(logging.ERROR, logger='gfpgan_jax.train'):
    assert ckpt.last_good_step() == 2
  assert str(damaged) in caplog.text
  assert ckpt.describe_last_good(verify=True) == f'step 2 in {workdir / "checkpoints"}'
  ckpt.close()


def test_full_disk_gives_one_line_and_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
  workdir = _copy(trained, tmp_path)
  from grain._src.python.checkpoint import handler as grain_handler  # pylint: disable=g-import-not-at-top

  def no_space(self, directory, *args, **kwargs):
    del self, args, kwargs
    raise OSError(errno.ENOSPC, 'No space left on device', str(directory))

  monkeypatch.setattr(grain_handler.CheckpointHandler, 'save', no_space)
  with pytest.raises(checkpointing.DiskFullError) as e:
    trainer.train_and_evaluate(_config(total_steps=6), workdir)
  message = str(e.value)
  assert '\n' not in message
  needed = manifest.directory_bytes(workdir / 'checkpoints' / '4')
  assert message.startswith(f'no space left on the device of {workdir / "checkpoints"} while writing checkpoint '
                            f'step 6: it needs about {needed} bytes')
  assert 'bytes' in message.split(' are free')[0].rsplit(',', 1)[1]
  assert 'the last good checkpoint is step 4 (intact)' in message
  # The previous checkpoint is intact: it verifies, and holds the uninterrupted run's state.
  assert checkpointing.Checkpointer(workdir).committed_steps() == [2, 4]
  assert manifest.verify(workdir / 'checkpoints' / '4', 4)
  a, b = _flat_state(workdir, 4), _flat_state(trained, 4)
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cli_reports_a_fault_in_one_line(monkeypatch, tmp_path):
  """`gfpgan_jax.train` prints `error: <the message>` and exits 1, with no traceback."""
  exits = []
  monkeypatch.setattr(interrupts, 'exit_now', lambda message, code=130: exits.append((message, code)))
  monkeypatch.setattr(interrupts, 'install', lambda sigint=True: interrupts.StopSignals(sigint=False))
  fault = checkpointing.DiskFullError(errno.ENOSPC, 'no space left on the device of X: ...')

  def raise_fault(*args, **kwargs):
    raise fault

  monkeypatch.setattr(trainer, 'train_and_evaluate', raise_fault)
  monkeypatch.setattr(train, 'initialize_distributed', lambda: None)
  with flagsaver.flagsaver(workdir=str(tmp_path)), pytest.raises(UnboundLocalError):
    train.main(['train'])  # exit_now is mocked out, so main goes on to read the missing info
  assert exits == [('error: no space left on the device of X: ...', 1)]
