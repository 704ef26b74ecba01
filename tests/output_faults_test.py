"""Output faults and reruns of the commands: one clear line each, nothing written, nothing half-replaced.

restore, export and both converters on a read-only output folder and on an
output under a regular file; a `.pth` with torch missing; a junk `.pth`; the
.pth permissions; restore's rerun refusal and --overwrite; the quiet backend
probe.
"""

import errno
import logging
import os
import pathlib
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from gfpgan_jax import cli_common
from gfpgan_jax import export as export_lib
from gfpgan_jax import restore
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.convert import cli
from gfpgan_jax.convert import pth
from gfpgan_jax.convert import state_dict as sd_lib
from gfpgan_jax.testing import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = dict(out_size=32, channel_multiplier=1, narrow=0.25, num_style_feat=64, num_mlp=2)
S = TINY['out_size']


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  """(converted checkpoint dir, official .pth) of a tiny GFPGANv1Clean."""
  root = tmp_path_factory.mktemp('model')
  variables = jax.tree.map(np.asarray, archs.init('gfpganv1clean', jax.random.key(0), **TINY))
  ckpt = checkpoint.save(root / 'ckpt', variables, 'gfpganv1clean', TINY)
  path = root / 'g.pth'
  pth.write_pth(path, sd_lib.flax_to_torch(variables, 'gfpganv1clean', **TINY), 'params_ema')
  return ckpt, path


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
  """A folder where creating files fails with EACCES: chmod 0555, or, as root (who ignores the mode bits), the
  os calls that create entries in it fail as the kernel makes them fail for other users."""
  d = tmp_path / 'readonly'
  d.mkdir()
  if os.geteuid() != 0:
    d.chmod(0o555)
    yield d
    d.chmod(0o755)
    return
  inside = lambda p: os.path.abspath(os.fspath(p)).startswith(str(d) + os.sep)
  real_open, real_mkdir = os.open, os.mkdir

  def fake_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & os.O_CREAT and inside(path):
      raise PermissionError(errno.EACCES, 'Permission denied', os.fspath(path))
    return real_open(path, flags, mode, dir_fd=dir_fd)

  def fake_mkdir(path, mode=0o777, *, dir_fd=None):
    if inside(path):
      raise PermissionError(errno.EACCES, 'Permission denied', os.fspath(path))
    return real_mkdir(path, mode, dir_fd=dir_fd)

  monkeypatch.setattr(os, 'open', fake_open)
  monkeypatch.setattr(os, 'mkdir', fake_mkdir)
  yield d


def _face(path: pathlib.Path, size=S, seed=0):
  Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), np.uint8)).save(path)
  return path


def _errors(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _exit_message(fn, argv, monkeypatch) -> str:
  """The one-line message a converter's entry point exits with (sys.exit(str): exit code 1)."""
  monkeypatch.setattr(sys, 'argv', ['convert', *argv])
  with pytest.raises(SystemExit) as e:
    fn()
  assert isinstance(e.value.code, str), e.value.code
  return e.value.code


def _commands(model, src_face, out):
  """name -> callable(out) returning the one error line of that command writing to `out`."""
  ckpt, path = model
  return {
      'restore': ['restore', ['--weights', str(ckpt), '-i', str(src_face), '-o', str(out), '--aligned']],
      'export': ['export', ['--from', str(ckpt), '--output', str(out / 'exp'), '--platforms', 'cpu']],
      'torch_to_jax': [cli.main_torch_to_jax, ['--input', str(path), '--output', str(out / 'ckpt')]],
      'jax_to_torch': [cli.main_jax_to_torch, ['--input', str(ckpt), '--output', str(out / 'G.pth')]],
  }


def _error_of(kind, argv, caplog, monkeypatch) -> str:
  if kind in ('restore', 'export'):
    caplog.clear()
    main = restore.main if kind == 'restore' else export_lib.main
    with caplog.at_level(logging.ERROR):
      assert main(argv) == 2
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    return errors[0]
  return _exit_message(kind, argv, monkeypatch)


@pytest.mark.parametrize('command', ['restore', 'export', 'torch_to_jax', 'jax_to_torch'])
def test_a_read_only_output_folder_gives_one_line(model, readonly_dir, tmp_path, caplog, monkeypatch, command):
  face = _face(tmp_path / 'face.png')
  kind, argv = _commands(model, face, readonly_dir)[command]
  msg = _error_of(kind, argv, caplog, monkeypatch)
  assert msg.startswith('error: ') and '\n' not in msg, msg
  assert 'cannot write there: permission denied' in msg and str(readonly_dir) in msg, msg
  assert 'make it writable' in msg
  assert sorted(os.listdir(readonly_dir)) == []  # nothing written, no probe or staging files left


@pytest.mark.parametrize('command', ['restore', 'export', 'torch_to_jax', 'jax_to_torch'])
def test_an_output_under_a_regular_file_gives_one_line(model, tmp_path, caplog, monkeypatch, command):
  face = _face(tmp_path / 'face.png')
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('a file, not a folder')
  kind, argv = _commands(model, face, a_file / 'out')[command]
  msg = _error_of(kind, argv, caplog, monkeypatch)
  assert msg.startswith('error: ') and '\n' not in msg, msg
  assert f'{a_file} is a file, not a folder' in msg, msg
  assert a_file.read_text() == 'a file, not a folder'


@pytest.mark.parametrize('command', ['restore', 'export', 'torch_to_jax', 'jax_to_torch'])
def test_torch_missing_gives_the_install_hint(model, tmp_path, caplog, monkeypatch, command):
  ckpt, path = model
  face = _face(tmp_path / 'face.png')
  out = tmp_path / 'out'
  kind, argv = {
      'restore': ['restore', ['--weights', str(path), '-i', str(face), '-o', str(out), '--aligned']],
      'export': ['export', ['--from', str(path), '--output', str(out), '--platforms', 'cpu']],
      'torch_to_jax': [cli.main_torch_to_jax, ['--input', str(path), '--output', str(out)]],
      'jax_to_torch': [cli.main_jax_to_torch, ['--input', str(ckpt), '--output', str(out / 'G.pth')]],
  }[command]
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError, as without the extra
  msg = _error_of(kind, argv, caplog, monkeypatch)
  assert 'needs PyTorch, which is not installed' in msg and pth.TORCH_HINT in msg, msg
  assert not out.exists()


def test_torch_missing_as_a_command_prints_no_traceback(model, tmp_path):
  _, path = model
  code = ('import runpy, sys; sys.modules["torch"] = None; '
          f'sys.argv = ["convert_torch_to_jax.py", "--input", {str(path)!r}, "--output", {str(tmp_path / "o")!r}]; '
          'runpy.run_path("scripts/convert_torch_to_jax.py", run_name="__main__")')
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  r = procs.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1
  assert 'Traceback' not in r.stderr and r.stderr.strip().splitlines() == [
      f'error: {path}: reading or writing .pth files needs PyTorch, which is not installed; {pth.TORCH_HINT}'], r.stderr


def _zip_without_data_pkl() -> bytes:
  import io, zipfile  # pylint: disable=g-import-not-at-top,multiple-imports
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as z:
    z.writestr('weights/readme.txt', 'a zip, not torch.save output')
  return buf.getvalue()


@pytest.mark.parametrize('content', [b'', b'hello, this is not a checkpoint\n' * 20, bytes(range(256)) * 8,
                                     b'\x80\x04' + bytes(range(256)) * 8,  # a pickle, not torch's
                                     _zip_without_data_pkl()])
def test_a_junk_pth_is_named_as_not_a_pytorch_checkpoint(tmp_path, monkeypatch, content):
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(content)
  msg = _exit_message(cli.main_torch_to_jax, ['--input', str(junk), '--output', str(tmp_path / 'o')], monkeypatch)
  assert msg.startswith(f'error: {junk} is not a PyTorch checkpoint'), msg
  assert '\n' not in msg


def test_a_corrupt_pth_gives_one_line(model, tmp_path, monkeypatch):
  _, path = model
  cut = tmp_path / 'cut.pth'
  cut.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  msg = _exit_message(cli.main_torch_to_jax, ['--input', str(cut), '--output', str(tmp_path / 'o')], monkeypatch)
  assert msg.startswith(f'error: {cut} is not a readable PyTorch checkpoint (truncated or corrupt?): a damaged'), msg
  assert '\n' not in msg
  # A legacy-format file cut short: torch's magic number is there, the rest is not.
  legacy = tmp_path / 'legacy.pth'
  pth.write_pth(legacy, {'w': np.zeros((4, 4), np.float32)}, 'params', legacy_format=True)
  legacy.write_bytes(legacy.read_bytes()[:40])
  msg = _exit_message(cli.main_torch_to_jax, ['--input', str(legacy), '--output', str(tmp_path / 'o')], monkeypatch)
  assert msg.startswith(f'error: {legacy} is not a readable PyTorch checkpoint (truncated or corrupt?)'), msg
  assert '\n' not in msg


def test_jax_to_torch_writes_with_umask_permissions_and_needs_overwrite(model, tmp_path, monkeypatch):
  ckpt, _ = model
  out = tmp_path / 'G.pth'
  old = os.umask(0o022)
  try:
    cli.jax_to_torch(['--input', str(ckpt), '--output', str(out)])
    assert out.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    os.umask(0o027)
    before = out.read_bytes()
    msg = _exit_message(cli.main_jax_to_torch, ['--input', str(ckpt), '--output', str(out)], monkeypatch)
    assert 'exists; pass --overwrite to replace it' in msg and out.read_bytes() == before
    cli.jax_to_torch(['--input', str(ckpt), '--output', str(out), '--overwrite'])
    assert out.stat().st_mode & 0o777 == 0o640
  finally:
    os.umask(old)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['G.pth']  # no temporary file left


def test_restore_refuses_to_replace_earlier_results_without_overwrite(model, tmp_path, caplog):
  ckpt, _ = model
  src = tmp_path / 'in'
  src.mkdir()
  _face(src / 'a.png', seed=1)
  _face(src / 'b.png', seed=2)
  out = tmp_path / 'out'
  argv = ['--weights', str(ckpt), '-i', str(src), '-o', str(out), '--aligned', '--noise', 'stored']
  assert restore.main(argv) == 0
  # An earlier run of another input left a second face of b: --overwrite removes it with the rest of b's faces.
  stale = out / 'restored_faces' / 'b_01.png'
  stale.write_bytes((out / 'restored_faces' / 'b_00.png').read_bytes())
  (out / 'restored_faces' / 'other_00.png').write_bytes(b'another input: never touched')
  files = {p: p.read_bytes() for p in out.rglob('*') if p.is_file()}
  caplog.clear()
  with caplog.at_level(logging.ERROR):
    assert restore.main(argv) == 2
  errors = _errors(caplog)
  assert len(errors) == 1 and 'holds 7 result file(s) of an earlier run' in errors[0], errors
  assert 'pass --overwrite' in errors[0]
  assert {p: p.read_bytes() for p in out.rglob('*') if p.is_file()} == files  # untouched
  assert restore.main(argv + ['--overwrite']) == 0
  assert not stale.exists()
  assert (out / 'restored_faces' / 'other_00.png').read_bytes() == b'another input: never touched'
  assert sorted(p.name for p in (out / 'restored_faces').iterdir()) == ['a_00.png', 'b_00.png', 'other_00.png']
  assert (out / 'restored_faces' / 'a_00.png').read_bytes() == files[out / 'restored_faces' / 'a_00.png']


def test_aligned_outputs_of_a_larger_input_come_back_at_its_size(model, tmp_path):
  ckpt, _ = model
  face = _face(tmp_path / 'big.png', size=4 * S, seed=3)
  out = tmp_path / 'out'
  assert restore.main(['--weights', str(ckpt), '-i', str(face), '-o', str(out), '--aligned']) == 0
  restored = np.asarray(Image.open(out / 'restored_faces' / 'big_00.png'))
  assert restored.shape == (4 * S, 4 * S, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(out / 'cropped_faces' / 'big_00.png')),
                                np.asarray(Image.open(face)))
  assert np.asarray(Image.open(out / 'cmp' / 'big_00.png')).shape == (4 * S, 8 * S, 3)


def test_setup_logging_hides_the_tpu_backend_info_line(caplog):
  cli_common.setup_logging(logging.getLogger('gfpgan_jax.restore'))
  with caplog.at_level(logging.INFO):
    logging.getLogger('jax._src.xla_bridge').info("Unable to initialize backend 'tpu': no libtpu.so")
    logging.getLogger('jax._src.xla_bridge').warning('a real warning')
    logging.getLogger('gfpgan_jax.restore').info('ours')
  text = caplog.text
  assert "backend 'tpu'" not in text and 'a real warning' in text and 'ours' in text
