"""RestoreFormer on the restore path, its codebook lookup and its input checks (small config, random weights)."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from gfpgan_jax import convert
from gfpgan_jax import inference
from gfpgan_jax import restore
from gfpgan_jax import xla_options
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.testing import parity
from gfpgan_jax.testing.cases import restoreformer as cases

KW = cases.SMALL


@pytest.fixture(scope='module')
def model():
  module, cfg = archs.build('restoreformer', **KW)
  variables = jax.tree.map(np.array, archs.init('restoreformer', jax.random.key(0), **KW))
  # A codebook on the latents' scale, so nearest codes are well separated (see the parity cases).
  table = variables['params']['quantize']['embedding']['weight']
  table[...] = np.random.RandomState(0).randn(*table.shape) * cases.CODEBOOK_STD
  return module, cfg, variables


def _faces(batch=2, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (batch, KW['resolution'], KW['resolution'], 3)).astype(np.uint8)


def test_make_restore_fn_matches_the_forward_pipeline(model):
  module, _, variables = model
  faces = jnp.asarray(_faces())
  key = jax.random.key(3)
  got = np.asarray(xla_options.jit(inference.make_restore_fn(module))(variables, faces, key))
  # As GFPGANer calls the generator: net(x, return_rgb=False, weight=w)[0], then tensor2img.
  fwd = xla_options.jit(lambda v, x: module.apply(v, x, return_rgb=False, weight=0.5)[0])
  want = np.asarray(inference.to_uint8(fwd(variables, inference.to_model_range(faces))))
  assert got.shape == want.shape == faces.shape and got.dtype == np.uint8
  diff = np.abs(got.astype(int) - want)
  # Equal up to a rare one-level rounding flip: XLA fuses the two programs differently (as in restore_test).
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (diff.max(), np.mean(diff > 0))
  assert got.std() > 1 and len(np.unique(got)) > 10  # not a constant or saturated image
  # RestoreFormer has no noise: the stored-noise variant and another key give the same faces.
  same = xla_options.jit(inference.make_restore_fn(module, randomize_noise=False))(variables, faces, key)
  np.testing.assert_array_equal(np.asarray(same), got)


def test_restore_command_runs_a_restoreformer_checkpoint(model, tmp_path):
  module, _, variables = model
  path = checkpoint.save(tmp_path / 'rf', variables, 'restoreformer', KW)
  face = _faces(1, seed=2)[0]
  Image.fromarray(face).save(tmp_path / 'a.png')
  out = tmp_path / 'out'
  argv = ['--weights', str(path), '--input', str(tmp_path / 'a.png'), '--output', str(out), '--aligned']
  assert restore.main(argv) == 0
  got = np.asarray(Image.open(out / 'restored_faces' / 'a_00.png')).astype(int)
  want = inference.make_restore_fn(module)(variables, jnp.asarray(face[None]), jax.random.key(0))[0]
  diff = np.abs(got - np.asarray(want, int))
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3  # a rare one-level rounding flip, as above


def test_forward_returns_image_and_none_or_codes(model):
  module, cfg, variables = model
  x = inference.to_model_range(jnp.asarray(_faces(1)))
  image, second = module.apply(variables, x, return_rgb=False, randomize_noise=True)
  assert image.shape == (1, 64, 64, cfg['out_ch']) and second is None
  image2, codes = module.apply(variables, x, return_codes=True)
  np.testing.assert_array_equal(np.asarray(image2), np.asarray(image))
  r = cfg['resolution'] // 2**(len(cfg['ch_mult']) - 1)
  assert codes.shape == (1, r, r) and codes.dtype == jnp.int32
  assert 0 <= int(codes.min()) and int(codes.max()) < cfg['n_embed']


def test_quantized_latent_is_the_nearest_code(model):
  module, _, variables = model
  x = inference.to_model_range(jnp.asarray(_faces(1, seed=1)))
  quant, codes, hs = module.apply(variables, x, method='encode')
  z = module.apply(variables, hs['out'], method=lambda m, h: m.quant_conv(h))
  table = np.asarray(variables['params']['quantize']['embedding']['weight'], np.float64)
  zf = np.asarray(z, np.float64).reshape(-1, table.shape[1])
  d = ((zf[:, None, :] - table[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(codes).ravel(), d.argmin(1))
  np.testing.assert_allclose(np.asarray(quant).reshape(-1, table.shape[1]), table[d.argmin(1)], rtol=0, atol=1e-6)


@pytest.mark.parametrize('shape', [(1, 32, 32, 3), (1, 64, 64, 1), (64, 64, 3), (1, 64, 48, 3)])
def test_bad_input_shape_is_one_clear_error(model, shape):
  module, _, variables = model
  with pytest.raises(ValueError, match=r'RestoreFormer expects NHWC input \[N, 64, 64, 3\], got shape'):
    module.apply(variables, jnp.zeros(shape, jnp.float32))


def test_double_z_is_rejected_like_the_official_forward():
  module, _ = archs.build('restoreformer', **dict(KW, double_z=True))
  with pytest.raises(ValueError, match='double_z'):
    jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))


@pytest.mark.parametrize('kw', [KW, dict(KW, ch_mult=(1, 2, 2, 2), resolution=128, enable_mid=False,
                                         num_res_blocks=1, out_ch=1)])
def test_detect_reads_the_options_in_the_keys(official, kw):
  sd = parity.state_dict_numpy(official.restoreformer_arch.RestoreFormer(**kw))
  arch, got = convert.detect_arch(sd)
  assert arch == 'restoreformer'
  # head_size is not in the shapes (q, k, v are C x C 1x1 convs): the released 8 is assumed.
  assert archs.get('restoreformer').config(**got) == archs.get('restoreformer').config(**dict(kw, head_size=8))
