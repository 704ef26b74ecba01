"""Weight conversion: round trips, strict loading by the official classes, errors, files and CLIs."""

import re
import sys

from flax import traverse_util
import jax
import numpy as np
import pytest
import torch

from gfpgan_jax import convert
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.convert import cli
from gfpgan_jax.convert import pth
from gfpgan_jax.testing import parity
from gfpgan_jax.testing import parity_cases
from gfpgan_jax.testing import procs

SMALL_CASES = [c.name for c in parity_cases.CASES if not c.heavy]
# The official released-config shapes (no forward pass, just keys and layouts).
HEAVY_CASES = [c.name for c in parity_cases.CASES if c.heavy]


def _flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _assert_bit_exact(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


@pytest.mark.parametrize('name', SMALL_CASES + HEAVY_CASES)
def test_flax_torch_flax_round_trip_and_strict_official_load(official, tmp_path, name):
  case = parity_cases.CASES_BY_NAME[name]
  if name in SMALL_CASES:
    variables = jax.tree.map(np.asarray, archs.init(case.arch, jax.random.key(1), **case.kwargs))
  else:  # layout only: random values in the exact tree, no 512 px forward pass
    variables = parity.random_variables(case.arch, 1, **case.kwargs)
  sd = convert.flax_to_torch(variables, case.arch, **case.kwargs)
  path = tmp_path / 'model.pth'
  pth.write_pth(path, sd, archs.get(case.arch).torch_key)

  # The official class loads our file strictly (as basicsr's load_network reads it).
  obj = torch.load(path, map_location='cpu', weights_only=True)
  key = archs.get(case.arch).torch_key
  loaded = obj[key] if key else obj
  tm = case.official(official, dict(case.kwargs)).eval()
  tm.load_state_dict(loaded, strict=True)
  if hasattr(tm, 'vgg_net'):  # the extractor is rebuilt from our file; buffers included
    assert set(loaded) == set(tm.state_dict())

  # Bit-exact round trip through the file.
  back_sd, used = pth.read_pth(path)
  assert used == key
  _assert_bit_exact(convert.torch_to_flax(back_sd, case.arch, **case.kwargs), variables)

  if name in SMALL_CASES:  # and the official network computes what ours computes with these weights
    inputs = case.inputs(np.random.RandomState(0))
    with torch.no_grad():
      ref = case.run_torch(tm, inputs)
    module, _ = archs.build(case.arch, **case.kwargs)
    out = case.run_flax(module, variables, jax.tree.map(np.asarray, inputs))
    for k in ref:
      parity.assert_parity(out[k], ref[k], f'{name}/{k}')


def _clean_sd(official, **kw):
  m = official.gfpganv1_clean_arch.GFPGANv1Clean(
      64, channel_multiplier=kw.get('channel_multiplier', 2), narrow=0.5, input_is_latent=True, different_w=True,
      sft_half=True)
  return parity.state_dict_numpy(m)


def test_wrong_arch_lists_missing_and_unexpected_keys(official):
  sd = _clean_sd(official)
  with pytest.raises(convert.ConversionError) as e:
    convert.torch_to_flax(sd, 'gfpganv1', out_size=64, narrow=0.5)
  msg = str(e.value)
  assert 'missing keys' in msg and 'unexpected keys' in msg
  assert 'conv_body_down.0.conv1.0.weight' in msg  # expected by gfpganv1, absent
  assert 'conv_body_down.0.conv1.weight' in msg  # present, unknown to gfpganv1
  assert "arch 'gfpganv1clean'" in msg  # the hint names the right arch
  assert 'nothing was converted' in msg


def test_wrong_kwargs_lists_shape_mismatches(official):
  sd = _clean_sd(official)
  with pytest.raises(convert.ConversionError) as e:
    convert.torch_to_flax(sd, 'gfpganv1clean', out_size=64, narrow=0.5, channel_multiplier=1)
  msg = str(e.value)
  assert 'shape mismatches' in msg
  assert re.search(r'conv_body_down\.0\.conv2\.weight: \(128, 128, 3, 3\) vs \(128, 64, 3, 3\)', msg), msg
  assert "hint: the keys look like arch 'gfpganv1clean'" in msg and "'channel_multiplier': 2" in msg
  with pytest.raises(convert.ConversionError, match='missing keys'):
    convert.torch_to_flax(sd, 'gfpganv1clean', out_size=128, narrow=0.5)  # one level more
  with pytest.raises(ValueError, match="unknown option"):
    convert.torch_to_flax(sd, 'gfpganv1clean', out_size=64, chanel_multiplier=2)
  with pytest.raises(ValueError, match='unknown arch'):
    convert.torch_to_flax(sd, 'gfpganv2')


def test_missing_or_extra_single_key_is_rejected(official):
  sd = _clean_sd(official)
  kw = dict(out_size=64, narrow=0.5)
  convert.torch_to_flax(sd, 'gfpganv1clean', **kw)  # the intact dict converts
  dropped = dict(sd)
  del dropped['stylegan_decoder.noises.noise3']
  with pytest.raises(convert.ConversionError, match=r'missing keys \(1\)'):
    convert.torch_to_flax(dropped, 'gfpganv1clean', **kw)
  extra = dict(sd, **{'final_linear.extra': np.zeros(3, np.float32)})
  with pytest.raises(convert.ConversionError, match=r'unexpected keys \(1\)'):
    convert.torch_to_flax(extra, 'gfpganv1clean', **kw)
  prefixed = {f'module.{k}': v for k, v in sd.items()}  # DDP prefix is stripped
  _assert_bit_exact(convert.torch_to_flax(prefixed, 'gfpganv1clean', **kw), convert.torch_to_flax(sd, 'gfpganv1clean',
                                                                                                  **kw))


def test_flax_to_torch_rejects_foreign_variables():
  v = archs.init('facial_component_discriminator', jax.random.key(0))
  with pytest.raises(convert.ConversionError, match='missing keys'):
    convert.flax_to_torch(v, 'stylegan2_discriminator', out_size=64, narrow=0.25)


@pytest.mark.parametrize('legacy', [False, True])
@pytest.mark.parametrize('key', ['params_ema', 'params', None])
def test_read_pth_formats_and_keys(official, tmp_path, legacy, key):
  sd = _clean_sd(official)
  path = tmp_path / 'x.pth'
  tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
  if key == 'params':  # basicsr net_g files hold both; params_ema wins when present
    obj = {'params': tensors}
  elif key == 'params_ema':
    obj = {'params': {k: t * 0 for k, t in tensors.items()}, 'params_ema': tensors}
  else:
    obj = tensors
  torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
  got, used = pth.read_pth(path)
  assert used == key
  assert got.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(got[k], sd[k])


def test_read_pth_rejects_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError):
    pth.read_pth(tmp_path / 'nope.pth')
  bad = tmp_path / 'bad.pth'
  bad.write_bytes(b'not a checkpoint at all')
  with pytest.raises(convert.ConversionError, match='is not a PyTorch checkpoint'):
    pth.read_pth(bad)
  odd = tmp_path / 'odd.pth'
  torch.save({'params': {'a': torch.zeros(1)}, 'iter': 3}, odd)
  with pytest.raises(convert.ConversionError, match="no 'params_ema'"):
    pth.read_pth(odd, 'params_ema')


@pytest.mark.parametrize('name', [c.name for c in parity_cases.CASES if 'mixing' not in c.name])
def test_detect_arch(official, name):
  case = parity_cases.CASES_BY_NAME[name]
  tm = case.official(official, dict(case.kwargs))
  sd = getattr(tm, 'torchvision_state_dict', None) or parity.state_dict_numpy(tm)
  arch, kwargs = convert.detect_arch(sd)
  assert arch == (case.detected_as or case.arch)
  # The detected options build exactly this network.
  convert.torch_to_flax(sd, arch, **kwargs)


def test_cli_round_trip_and_load_generator(official, tmp_path):
  tm = official.gfpganv1_arch.GFPGANv1(64, channel_multiplier=1, narrow=0.5, input_is_latent=True, different_w=True,
                                       sft_half=True)
  parity.randomize_torch_module(tm)
  src = tmp_path / 'v1.pth'
  torch.save({'params_ema': tm.state_dict()}, src, _use_new_zipfile_serialization=False)  # legacy, as released
  out_dir = cli.torch_to_jax(['--input', str(src), '--output', str(tmp_path / 'ckpt')])  # arch detected
  meta = checkpoint.read_meta(out_dir)
  assert meta['arch'] == 'gfpganv1' and meta['kwargs']['out_size'] == 64 and meta['source_key'] == 'params_ema'
  with pytest.raises(FileExistsError):
    cli.torch_to_jax(['--input', str(src), '--output', str(out_dir)])
  back = cli.jax_to_torch(['--input', str(out_dir), '--output', str(tmp_path / 'back.pth')])
  obj = torch.load(back, weights_only=True)
  assert list(obj) == ['params_ema']
  tm2 = official.gfpganv1_arch.GFPGANv1(64, channel_multiplier=1, narrow=0.5, input_is_latent=True, different_w=True,
                                        sft_half=True)
  tm2.load_state_dict(obj['params_ema'], strict=True)
  for k, v in tm.state_dict().items():
    assert torch.equal(v, tm2.state_dict()[k]), k

  module_a, vars_a = convert.load_generator(out_dir)
  module_b, vars_b = convert.load_generator(src)
  assert module_a == module_b
  _assert_bit_exact(vars_a, vars_b)


def test_checkpoint_dir_errors(tmp_path):
  with pytest.raises(convert.ConversionError, match='not a gfpgan_jax checkpoint'):
    checkpoint.load(tmp_path)
  v = archs.init('facial_component_discriminator', jax.random.key(0))
  d = checkpoint.save(tmp_path / 'd', v, 'facial_component_discriminator')
  arch, _, loaded = checkpoint.load(d)
  assert arch == 'facial_component_discriminator'
  _assert_bit_exact(loaded, jax.tree.map(np.asarray, v))
  with pytest.raises(convert.ConversionError, match='not a generator'):
    convert.load_generator(d)
  # A truncated variables directory gives one clear error.
  for f in sorted((d / 'variables').rglob('*')):
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(f.read_bytes()[:100])
  with pytest.raises(convert.ConversionError, match='cannot read the variables'):
    checkpoint.load(d)


def test_convert_scripts_run_as_commands(official, tmp_path):
  tm = official.gfpganv1_arch.FacialComponentDiscriminator()
  src = tmp_path / 'd_mouth.pth'
  torch.save({'params': tm.state_dict()}, src)
  run = lambda *a: procs.run([sys.executable, *a], capture_output=True, text=True, timeout=300, check=False)
  r = run('scripts/convert_torch_to_jax.py', '--arch', 'stylegan2_discriminator', '--input', str(src), '--output',
          str(tmp_path / 'wrong'))
  assert r.returncode != 0 and 'missing keys' in r.stderr and 'facial_component_discriminator' in r.stderr
  assert not (tmp_path / 'wrong').exists()  # nothing half-written
  r = run('scripts/convert_torch_to_jax.py', '--arch', 'facial_component_discriminator', '--input', str(src),
          '--output', str(tmp_path / 'ok'))
  assert r.returncode == 0, r.stderr
  r = run('scripts/convert_jax_to_torch.py', '--input', str(tmp_path / 'ok'), '--output', str(tmp_path / 'back.pth'))
  assert r.returncode == 0, r.stderr
  back = torch.load(tmp_path / 'back.pth', weights_only=True)
  tm.load_state_dict(back['params'], strict=True)
