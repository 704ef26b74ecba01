"""Serving export: the exported function vs the module, plain-JAX loading, sources, .pth, restore, errors."""

import functools
import logging
import os
import pathlib
import re
import shutil
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import torch

from configs import ffhq

from gfpgan_jax import checkpointing
from gfpgan_jax import export as export_lib
from gfpgan_jax import inference
from gfpgan_jax import restore
from gfpgan_jax import train_state as ts
from gfpgan_jax import xla_options
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.convert import cli
from gfpgan_jax.convert import pth
from gfpgan_jax.convert import state_dict as sd_lib
from gfpgan_jax.testing import parity
from gfpgan_jax.testing import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A small GFPGANv1Clean (released options otherwise: input_is_latent, different_w, sft_half).
CLEAN = dict(out_size=32, channel_multiplier=1, narrow=0.25, num_style_feat=64, num_mlp=2)
SIZE = 32
STEPS = (3, 5)  # the workdir holds two checkpoints; the latest is exported by default


def _flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _assert_same_variables(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


def _with_noise_strength(variables):
  """Noise strengths start at zero: make the decoder noise matter (else noise modes would look alike)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, v: np.asarray(v) + 0.5 if p[-1].key == 'weight' and np.shape(v) == (1,) else np.asarray(v),
      variables)


def _images(n, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)


def _module_restore(arch, kwargs, variables, images, noise='stored', dtype='float32', seed=0, compiler_options=None):
  """The module's restore, compiled as the exported function is called here (XLA's defaults unless given)."""
  module, _ = archs.build(arch, dtype=jnp.dtype(dtype), **kwargs)
  fn = jax.jit(inference.make_restore_fn(module, randomize_noise=noise == 'random'), compiler_options=compiler_options)
  return np.asarray(fn(variables, images, jax.random.key(np.uint32(seed))))


def _load_exported(directory):
  exported = jax.export.deserialize(bytearray((directory / export_lib.FUNCTION_FILE).read_bytes()))
  return exported, checkpoint.load(directory)[2]


def _subprocess_env():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  env.pop('PYTHONPATH', None)
  return env


def _no_leftovers(parent: pathlib.Path, name: str):
  assert not [p.name for p in parent.iterdir() if p.name.startswith(f'.{name}.')], 'staging directory left behind'


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope='module')
def clean(tmp_path_factory):
  """A converted GFPGANv1Clean checkpoint and its stored-noise export."""
  root = tmp_path_factory.mktemp('clean')
  variables = _with_noise_strength(archs.init('gfpganv1clean', jax.random.key(0), **CLEAN))
  ckpt = checkpoint.save(root / 'ckpt', variables, 'gfpganv1clean', CLEAN)
  out = export_lib.export(ckpt, root / 'export')
  return ckpt, out, variables


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A training workdir of configs/ffhq.py:tiny (GFPGANv1), its state sharded over the 8 devices, two steps.

  Returns (workdir, {step: (g_params, g_ema_params, g_noises)}), with a G-EMA that differs from G.
  """
  config = ffhq.get_config('tiny')
  config.model.use_components = False  # not needed to read a G-EMA; faster to initialise
  nets = ts.build_networks(config)
  state = jax.jit(functools.partial(ts.init_state, nets, config))(jax.random.key(0))
  mesh = jax.make_mesh((8,), ('data',))
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  wd = tmp_path_factory.mktemp('workdir')
  checkpointing.write_model_info(wd, nets.g_arch, nets.g_kwargs)
  ckptr = checkpointing.Checkpointer(wd)
  saved = {}
  for step in STEPS:
    ema = jax.tree.map(lambda p, s=step: p * (1 + 0.01 * s) + 0.01 * s, state.g_params)
    state = state.replace(step=state.step * 0 + step, g_ema_params=ema,
                          g_noises=jax.tree.map(lambda n, s=step: n + s, state.g_noises))
    ckptr.save(step, state)
    saved[step] = jax.tree.map(np.asarray, (state.g_params, ema, state.g_noises))
  ckptr.wait()
  ckptr.close()
  return wd, nets.g_kwargs, saved


# ------------------------------------------------------------------------------ the exported function


def test_exported_function_equals_the_module_for_batch_1_and_3(clean):
  _, out, variables = clean
  exported, stored = _load_exported(out)
  _assert_same_variables(stored, variables)  # the export holds the weights, float32, exactly
  assert exported.platforms == export_lib.DEFAULT_PLATFORMS
  assert str(exported.in_avals[-1].shape[0]) == 'b'  # one artifact, any batch size
  meta = checkpoint.read_meta(out)
  assert (meta['arch'], meta['noise'], meta['dtype'], meta['image_size']) == ('gfpganv1clean', 'stored', 'float32',
                                                                            SIZE)
  assert meta['source_kind'] == 'checkpoint' and meta['source_step'] is None
  umask = os.umask(0)
  os.umask(umask)
  assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not the 0700 of a temporary directory
  images = _images(3)
  for n in (1, 3):
    got = np.asarray(exported.call(stored, images[:n]))
    assert got.dtype == np.uint8 and got.shape == (n, SIZE, SIZE, 3)
    np.testing.assert_array_equal(got, _module_restore('gfpganv1clean', CLEAN, variables, images[:n]))
  assert got.std() > 10  # not a saturated, constant image


def test_random_noise_export_takes_a_seed(clean, tmp_path):
  ckpt, _, variables = clean
  out = export_lib.export(ckpt, tmp_path / 'random', noise='random')
  exported, stored = _load_exported(out)
  images = _images(2)
  outs = {s: np.asarray(exported.call(stored, images, np.uint32(s))) for s in (0, 1)}
  for s, got in outs.items():
    np.testing.assert_array_equal(got, _module_restore('gfpganv1clean', CLEAN, variables, images, 'random', seed=s))
  assert np.any(outs[0] != outs[1])
  assert np.any(outs[0] != _module_restore('gfpganv1clean', CLEAN, variables, images))  # not the stored noise
  assert 'restore.call(variables, images, np.uint32(seed))' in (out / export_lib.README_FILE).read_text()


def test_bfloat16_export_computes_in_bf16_from_float32_variables(clean, tmp_path):
  ckpt, _, variables = clean
  out = export_lib.export(ckpt, tmp_path / 'bf16', dtype='bfloat16', platforms=('cpu',))
  exported, stored = _load_exported(out)
  assert {v.dtype for v in jax.tree.leaves(stored)} == {np.dtype('float32')}
  assert exported.platforms == ('cpu',)
  images = _images(2)
  got = np.asarray(exported.call(stored, images))
  np.testing.assert_array_equal(got, _module_restore('gfpganv1clean', CLEAN, variables, images, dtype='bfloat16'))
  f32 = _module_restore('gfpganv1clean', CLEAN, variables, images)
  assert np.any(got != f32) and np.abs(got.astype(int) - f32).mean() < 2  # bf16 rounding, not another model


# ------------------------------------------------------------------------------ sources and .pth


def test_export_from_a_workdir_takes_the_g_ema_on_a_one_device_machine(workdir, tmp_path):
  wd, kwargs, saved = workdir
  out = tmp_path / 'from_workdir'
  # A fresh one-device process (the workdir was saved sharded over 8 devices: "train on pods, serve elsewhere").
  proc = procs.run([sys.executable, '-m', 'gfpgan_jax.export', '--from', str(wd), '--output', str(out)],
                   cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = checkpoint.read_meta(out)
  assert (meta['source_kind'], meta['source_step'], meta['arch']) == ('workdir', STEPS[-1], 'gfpganv1')
  g, ema, noises = saved[STEPS[-1]]
  _, stored = _load_exported(out)
  _assert_same_variables(stored, {'params': ema, 'noises': noises})
  assert not np.array_equal(jax.tree.leaves(stored['params'])[0], jax.tree.leaves(g)[0])  # G-EMA, not G
  # --step picks an older checkpoint (API).
  source = export_lib.load_source(wd, step=STEPS[0])
  assert source.step == STEPS[0]
  _assert_same_variables(source.variables, {'params': saved[STEPS[0]][1], 'noises': saved[STEPS[0]][2]})
  images = _images(2)
  exported, _ = _load_exported(out)
  np.testing.assert_array_equal(np.asarray(exported.call(stored, images)),
                                _module_restore('gfpganv1', kwargs, stored, images))


def test_export_from_a_pth(clean, official, tmp_path):
  _, out, variables = clean
  path = tmp_path / 'g.pth'
  pth.write_pth(path, sd_lib.flax_to_torch(variables, 'gfpganv1clean', **CLEAN), 'params_ema')
  out_pth = export_lib.export(path, tmp_path / 'from_pth', platforms=('cpu',))
  meta = checkpoint.read_meta(out_pth)
  assert meta['source_kind'] == 'pth' and meta['kwargs'] == checkpoint.read_meta(out)['kwargs']
  exported, stored = _load_exported(out_pth)
  _assert_same_variables(stored, variables)
  reference, _ = _load_exported(out)
  for avals in ('in_avals', 'out_avals'):  # (symbolic dims compare by scope: compare their text)
    assert list(map(str, getattr(exported, avals))) == list(map(str, getattr(reference, avals)))


def _official_output(official, arch, kwargs, pth_path, x):
  cls = official.gfpganv1_clean_arch.GFPGANv1Clean if arch == 'gfpganv1clean' else official.gfpganv1_arch.GFPGANv1
  model = cls(**kwargs).eval()
  obj = torch.load(pth_path, map_location='cpu', weights_only=True)
  assert list(obj) == ['params_ema']
  model.load_state_dict(obj['params_ema'], strict=True)
  with torch.no_grad():
    image, _ = model(torch.from_numpy(parity.nhwc_to_nchw(x)), return_rgb=False, randomize_noise=False)
  return parity.nchw_to_nhwc(image)


@pytest.mark.parametrize('source', ['clean_export', 'workdir_export', 'workdir'])
def test_export_to_pth_loads_strictly_in_the_official_class(official, clean, workdir, tmp_path, source):
  if source == 'clean_export':
    directory, arch, kwargs = clean[1], 'gfpganv1clean', CLEAN
  else:
    wd, kwargs, _ = workdir
    directory, arch = wd, 'gfpganv1'
    if source == 'workdir_export':
      directory = export_lib.export(wd, tmp_path / 'export', platforms=('cpu',))
  out = tmp_path / 'G.pth'
  proc = procs.run([sys.executable, 'scripts/convert_jax_to_torch.py', '--input', str(directory), '--output',
                    str(out)], cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=300,
                   check=False) if source == 'workdir' else None
  if proc is None:
    cli.jax_to_torch(['--input', str(directory), '--output', str(out)])
  else:
    assert proc.returncode == 0, proc.stderr[-3000:]
  arch_found, cfg, variables = checkpoint.load_any(directory)
  assert arch_found == arch
  x = np.random.RandomState(2).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  ref = _official_output(official, arch, dict(cfg), out, x)
  module, _ = archs.build(arch, **cfg)
  ours, _ = jax.jit(lambda v, x: module.apply(v, x, return_rgb=False, randomize_noise=False))(variables, x)
  parity.assert_parity(ours, ref, f'{source} -> .pth -> official')


# ------------------------------------------------------------------------------ restore CLI


@pytest.mark.parametrize('exported', [False, True])
def test_restore_reads_an_export_dir(clean, tmp_path, exported):
  _, out, variables = clean
  face = _images(1, seed=3)[0]
  Image.fromarray(face).save(tmp_path / 'face.png')
  dst = tmp_path / 'restored'
  argv = ['--weights', str(out), '--input', str(tmp_path / 'face.png'), '--output', str(dst), '--batch-size', '1',
          '--aligned']
  argv += ['--exported'] if exported else ['--noise', 'stored']
  assert restore.main(argv) == 0
  got = np.asarray(Image.open(dst / 'restored_faces' / 'face_00.png'))
  # The restore command compiles with gfpgan_jax's compiler options (both paths): so does the reference.
  want = _module_restore('gfpganv1clean', CLEAN, variables, face[None], compiler_options=xla_options.compiler_options())
  np.testing.assert_array_equal(got, want[0])


def test_restore_exported_rejects_conflicting_flags(clean, tmp_path, caplog):
  ckpt, out, _ = clean
  argv = ['--weights', str(out), '--output', str(tmp_path / 'o'), '--exported']
  assert restore.main(argv + ['--noise', 'random']) == 2
  assert 'the export was made with --noise stored' in caplog.text
  assert restore.main(['--weights', str(ckpt), '--output', str(tmp_path / 'o'), '--exported']) == 2
  assert 'without a serialized function' in caplog.text


# ------------------------------------------------------------------------------ bad input and atomic writes


def _bad_sources(root: pathlib.Path, clean, workdir):
  """name -> (argv extra, exception, message) for each bad --from."""
  ckpt = clean[0]
  empty_wd = root / 'empty_workdir'
  (empty_wd / checkpointing.CHECKPOINT_DIR).mkdir(parents=True)
  checkpointing.write_model_info(empty_wd, 'gfpganv1clean', CLEAN)
  disc_kw = dict(out_size=SIZE, channel_multiplier=1, narrow=0.125)
  disc = checkpoint.save(root / 'disc', parity.random_variables('stylegan2_discriminator', 0, **disc_kw),
                         'stylegan2_discriminator', disc_kw)
  good_pth = root / 'good.pth'
  pth.write_pth(good_pth, sd_lib.flax_to_torch(clean[2], 'gfpganv1clean', **CLEAN), 'params_ema')
  truncated = root / 'truncated.pth'
  truncated.write_bytes(good_pth.read_bytes()[:good_pth.stat().st_size // 2])
  corrupt = root / 'corrupt_ckpt'
  shutil.copytree(ckpt, corrupt)
  for f in (corrupt / checkpoint.VARIABLES_DIR).rglob('*'):
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(f.read_bytes()[:100])
  (root / 'not_a_model').mkdir()
  return {
      'missing path': ([str(root / 'nope')], FileNotFoundError, 'not found'),
      'workdir without checkpoints': ([str(empty_wd)], FileNotFoundError, 'no checkpoint in'),
      'workdir without that step': ([str(workdir[0]), '--step', '4'], FileNotFoundError,
                                    r'no checkpoint of step 4 .*steps: \[3, 5\]'),
      'discriminator checkpoint': ([str(disc)], sd_lib.ConversionError,
                                   "holds a 'stylegan2_discriminator'; export needs a GFP-GAN generator"),
      'truncated .pth': ([str(truncated)], sd_lib.ConversionError, 'not a readable PyTorch checkpoint'),
      'corrupt converted dir': ([str(corrupt)], sd_lib.ConversionError, 'cannot read the variables'),
      'directory of something else': ([str(root / 'not_a_model')], sd_lib.ConversionError,
                                      'not a gfpgan_jax checkpoint directory'),
      '--step with a .pth': ([str(good_pth), '--step', '3'], sd_lib.ConversionError,
                             'applies to training workdirs only'),
  }


def test_bad_inputs_give_one_clear_error(clean, workdir, tmp_path, caplog):
  cases = _bad_sources(tmp_path / 'src', clean, workdir)
  for name, (extra, exc, message) in cases.items():
    out = tmp_path / 'out'
    caplog.clear()
    with caplog.at_level(logging.ERROR):
      assert export_lib.main(['--from', *extra, '--output', str(out)]) == 2, name
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith('error: '), (name, errors)
    assert re.search(message, errors[0]), (name, errors[0])
    step = int(extra[2]) if len(extra) > 2 else None
    with pytest.raises(exc, match=message):
      export_lib.export(extra[0], out, step=step)
    assert not out.exists(), name
    _no_leftovers(tmp_path, 'out')
  # The .pth converter says the same about a workdir without checkpoints.
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    cli.jax_to_torch(['--input', cases['workdir without checkpoints'][0][0], '--output', str(tmp_path / 'G.pth')])


def test_existing_output_needs_overwrite_and_is_replaced_atomically(clean, tmp_path, caplog, monkeypatch):
  ckpt = clean[0]
  out = tmp_path / 'export'
  out.mkdir()
  (out / 'precious.txt').write_text('keep me')
  assert export_lib.main(['--from', str(ckpt), '--output', str(out)]) == 2
  assert 'exists; pass overwrite=True (--overwrite)' in caplog.text
  assert sorted(p.name for p in out.iterdir()) == ['precious.txt']

  # A failure while the new export is assembled leaves the old directory as it was, and no staging directory.
  def boom(meta):
    raise RuntimeError('disk full')

  monkeypatch.setattr(export_lib, 'readme_text', boom)
  with pytest.raises(RuntimeError, match='disk full'):
    export_lib.export(ckpt, out, overwrite=True, platforms=('cpu',))
  assert sorted(p.name for p in out.iterdir()) == ['precious.txt']
  with pytest.raises(RuntimeError, match='disk full'):
    export_lib.export(ckpt, tmp_path / 'fresh', platforms=('cpu',))
  assert not (tmp_path / 'fresh').exists()
  _no_leftovers(tmp_path, 'export')
  _no_leftovers(tmp_path, 'fresh')
  monkeypatch.undo()

  assert export_lib.main(['--from', str(ckpt), '--output', str(out), '--overwrite', '--platforms', 'cpu']) == 0
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [checkpoint.META_FILE, checkpoint.VARIABLES_DIR, export_lib.FUNCTION_FILE, export_lib.README_FILE])
  _no_leftovers(tmp_path, 'export')
