"""Conversion of the inference networks' released files: their layouts, `--arch auto`, `load_network`, bad input.

The released files are not downloadable here; each test writes a file in the
layout of its release (official class, random weights):
* facexlib detection_{Resnet50,mobilenet0.25}_Final.pth: a bare state dict,
  every key prefixed `module.` (facexlib strips it);
* facexlib parsing_parsenet.pth: a bare state dict;
* RealESRGAN_x{2,4}plus.pth: `{'params_ema': ...}` or `{'params': ...}`;
* RestoreFormer.pth and GFP-GAN files: `{'params_ema': ...}`.
"""

import dataclasses

from flax import traverse_util
import jax
import numpy as np
import pytest
import torch

import gfpgan_jax
from gfpgan_jax import convert
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.convert import cli
from gfpgan_jax.convert import pth
from gfpgan_jax.testing import parity


@dataclasses.dataclass(frozen=True)
class Released:
  name: str
  arch: str
  kwargs: dict
  build: object  # official modules -> torch module
  layout: str  # 'module_prefix' | 'bare' | 'params' | 'params_ema'
  auto: bool = True  # the keys name the arch (GFPGANBilinear's are GFPGANv1's)


_SMALL_RRDB = dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=1, num_grow_ch=8)
_SMALL_RF = dict(n_embed=32, embed_dim=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                 resolution=32, z_channels=16, head_size=8)
_SMALL_BILINEAR = dict(out_size=32, channel_multiplier=1, narrow=0.25, num_style_feat=32, num_mlp=2,
                       input_is_latent=True, different_w=True, sft_half=True)

RELEASED = [
    Released('detection_mobilenet0.25', 'retinaface_mobilenet0.25', {},
             lambda o: o.retinaface.RetinaFace('mobile0.25', phase='test', device='cpu'), 'module_prefix'),
    Released('parsing_parsenet', 'parsenet', dict(in_size=64, out_size=64, res_depth=1),
             lambda o: o.parsenet.ParseNet(64, 64, res_depth=1, parsing_ch=19), 'bare'),
    Released('realesrgan_x2', 'rrdbnet', dict(_SMALL_RRDB, scale=2),
             lambda o: o.rrdbnet_arch.RRDBNet(scale=2, **_SMALL_RRDB), 'params'),
    Released('realesrgan_x4', 'rrdbnet', dict(_SMALL_RRDB, scale=4),
             lambda o: o.rrdbnet_arch.RRDBNet(scale=4, **_SMALL_RRDB), 'params_ema'),
    Released('restoreformer', 'restoreformer', _SMALL_RF, lambda o: o.restoreformer_arch.RestoreFormer(**_SMALL_RF),
             'params_ema'),
    Released('gfpganbilinear', 'gfpganbilinear', _SMALL_BILINEAR,
             lambda o: o.gfpgan_bilinear_arch.GFPGANBilinear(**_SMALL_BILINEAR), 'params_ema', auto=False),
]


def _save_released(case: Released, tm, path):
  sd = {k: v.clone() for k, v in tm.state_dict().items()}
  if case.layout == 'module_prefix':
    torch.save({f'module.{k}': v for k, v in sd.items()}, path)
  elif case.layout == 'bare':
    torch.save(sd, path)
  else:
    torch.save({case.layout: sd}, path)


def _flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize('case', RELEASED, ids=lambda c: c.name)
def test_released_layout_converts_and_round_trips(official, tmp_path, case):
  tm = parity.randomize_torch_module(case.build(official).eval(), seed=3)
  src = tmp_path / f'{case.name}.pth'
  _save_released(case, tm, src)
  argv = ['--input', str(src), '--output', str(tmp_path / 'jax')]
  if not case.auto:
    argv += ['--arch', case.arch]
  out = cli.torch_to_jax(argv)
  meta = checkpoint.read_meta(out)
  assert meta['arch'] == case.arch
  assert meta['source_key'] == (case.layout if case.layout.startswith('params') else None)
  assert {k: meta['kwargs'][k] for k in case.kwargs} == {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in case.kwargs.items()}

  # load_network: the same module and bit-identical variables from the directory and from the .pth.
  module_dir, vars_dir = gfpgan_jax.load_network(out)
  module_pth, vars_pth = gfpgan_jax.load_network(src, arch=None if case.auto else case.arch)
  assert module_dir == module_pth
  fa, fb = _flat(vars_dir), _flat(vars_pth)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)

  # Back to .pth: the official class loads it strictly, tensor for tensor.
  back = cli.jax_to_torch(['--input', str(out), '--output', str(tmp_path / 'back.pth')])
  obj = torch.load(back, map_location='cpu', weights_only=True)
  key = archs.get(case.arch).torch_key
  loaded = obj[key] if key else obj
  tm2 = case.build(official)
  tm2.load_state_dict(loaded, strict=True)
  for k, v in tm.state_dict().items():
    assert torch.equal(v, tm2.state_dict()[k]), k


def _state_dict(official, name):
  case = next(c for c in RELEASED if c.name == name)
  return parity.state_dict_numpy(case.build(official))


@pytest.mark.parametrize('name,wrong_arch', [
    ('detection_mobilenet0.25', 'retinaface_resnet50'),
    ('parsing_parsenet', 'rrdbnet'),
    ('realesrgan_x2', 'parsenet'),
    ('restoreformer', 'gfpganv1clean'),
    ('gfpganbilinear', 'restoreformer'),
])
def test_wrong_arch_is_one_clear_error(official, tmp_path, name, wrong_arch):
  case = next(c for c in RELEASED if c.name == name)
  sd = _state_dict(official, name)
  with pytest.raises(convert.ConversionError) as e:
    convert.torch_to_flax(sd, wrong_arch)
  msg = str(e.value)
  assert f'arch {wrong_arch!r}' in msg and 'nothing was converted' in msg
  assert 'missing keys' in msg or 'shape mismatches' in msg
  hint_arch = case.arch if case.auto else 'gfpganv1'
  assert f"the keys look like arch {hint_arch!r}" in msg
  # The command line writes nothing and exits with the message.
  src = tmp_path / 'm.pth'
  pth.write_pth(src, sd, None)
  with pytest.raises(convert.ConversionError):
    cli.torch_to_jax(['--arch', wrong_arch, '--input', str(src), '--output', str(tmp_path / 'out')])
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name,kwargs,expect', [
    ('realesrgan_x2', dict(_SMALL_RRDB, scale=4), "'scale': 2"),  # x2 weights read as x4
    ('realesrgan_x4', dict(_SMALL_RRDB, scale=4, num_block=2), 'missing keys'),
    ('parsing_parsenet', dict(in_size=128, out_size=128, res_depth=1), 'missing keys'),
    ('restoreformer', dict(_SMALL_RF, n_embed=64), 'shape mismatches'),
    ('gfpganbilinear', dict(_SMALL_BILINEAR, narrow=0.5), 'shape mismatches'),
])
def test_wrong_option_is_one_clear_error(official, name, kwargs, expect):
  case = next(c for c in RELEASED if c.name == name)
  with pytest.raises(convert.ConversionError, match=expect):
    convert.torch_to_flax(_state_dict(official, name), case.arch, **kwargs)


@pytest.mark.parametrize('arch,option', [
    ('retinaface_resnet50', 'phase'), ('parsenet', 'insize'), ('rrdbnet', 'scale_factor'),
    ('restoreformer', 'n_embeds'), ('gfpganbilinear', 'resample_kernel'), ('stylegan2bilinear', 'resample_kernel'),
])
def test_unknown_option_names_the_valid_ones(arch, option):
  with pytest.raises(ValueError, match=rf"unknown option\(s\) \['{option}'\] for arch '{arch}'; valid options"):
    archs.get(arch).config(**{option: 1})


def test_load_network_errors(official, tmp_path):
  v = archs.init('rrdbnet', jax.random.key(0), **dict(_SMALL_RRDB, scale=2))
  d = checkpoint.save(tmp_path / 'x2', v, 'rrdbnet', dict(_SMALL_RRDB, scale=2))
  module, _ = gfpgan_jax.load_network(d, arch='rrdbnet')
  assert module.scale == 2 and module.num_block == 1
  with pytest.raises(convert.ConversionError, match="holds a 'rrdbnet', not a 'parsenet'"):
    gfpgan_jax.load_network(d, arch='parsenet')
  with pytest.raises(ValueError, match='apply to a .pth only'):
    gfpgan_jax.load_network(d, scale=4)
  with pytest.raises(convert.ConversionError, match='not a generator'):
    gfpgan_jax.load_generator(d)
  with pytest.raises(FileNotFoundError):
    gfpgan_jax.load_network(tmp_path / 'nope.pth')
