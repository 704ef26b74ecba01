"""ParseNet: option and input errors, dtypes and the released variable tree (no compilation)."""

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfpgan_jax.convert import archs
from gfpgan_jax.models import layers
from gfpgan_jax.models import parsenet

_SMALL = dict(in_size=64, out_size=64, base_ch=32, parsing_ch=5, res_depth=1, ch_range=(32, 64))


def _shapes(module, size, dtype=jnp.float32):
  x = jax.ShapeDtypeStruct((2, size, size, 3), dtype)
  return jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x), x)


@pytest.mark.parametrize('option,value,valid', [('norm_type', 'batch', 'bn'), ('norm_type', 'layer', 'pixel'),
                                                ('relu_type', 'gelu', 'leakyrelu')])
def test_unknown_norm_or_relu_names_the_choices(option, value, valid):
  with pytest.raises(ValueError, match=rf"{option} must be one of \[.*'{valid}'.*\].*got '{value}'"):
    _shapes(parsenet.ParseNet(**_SMALL, **{option: value}), 64)


def test_options_are_case_insensitive():
  (out, _), _ = _shapes(parsenet.ParseNet(**_SMALL, relu_type='PRELU', norm_type='GN'), 64)
  assert out.shape == (2, 64, 64, 5)


@pytest.mark.parametrize('shape', [(2, 32, 32, 3), (2, 64, 64, 1), (64, 64, 3), (2, 3, 64, 64)])
def test_wrong_input_shape(shape):
  with pytest.raises(ValueError, match=r'ParseNet expects NHWC RGB input \[N, 64, 64, 3\]'):
    parsenet.ParseNet(**_SMALL).init(jax.random.key(0), jnp.zeros(shape))


def test_impossible_sizes_and_channels():
  with pytest.raises(ValueError, match='base_ch=16 must lie in ch_range'):
    _shapes(parsenet.ParseNet(**dict(_SMALL, base_ch=16)), 64)
  with pytest.raises(ValueError, match='min_feat_size.*<= out_size'):
    _shapes(parsenet.ParseNet(**dict(_SMALL, out_size=16)), 64)
  with pytest.raises(ValueError, match="norm_type='gn' uses 32 groups; 48 channels"):
    _shapes(parsenet.ParseNet(**dict(_SMALL, base_ch=48, ch_range=(32, 96), norm_type='gn')), 64)


@pytest.mark.parametrize('in_size,out_size,min_feat,expect', [(64, 64, 32, 64), (64, 128, 16, 128), (32, 64, 32, 64),
                                                              (128, 32, 16, 32), (16, 16, 32, 16)])
def test_output_sizes(in_size, out_size, min_feat, expect):
  m = parsenet.ParseNet(**dict(_SMALL, in_size=in_size, out_size=out_size, min_feat_size=min_feat))
  (mask, img), _ = _shapes(m, in_size)
  assert mask.shape == (2, expect, expect, 5) and img.shape == (2, expect, expect, 3)


def test_bfloat16_compute_keeps_float32_params():
  m = parsenet.ParseNet(**_SMALL, dtype=jnp.bfloat16)
  (mask, img), variables = _shapes(m, 64, jnp.bfloat16)
  assert mask.dtype == jnp.bfloat16 and img.dtype == jnp.bfloat16
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  assert {str(v.dtype) for p, v in leaves if 'num_batches_tracked' not in jax.tree_util.keystr(p)} == {'float32'}


@pytest.mark.parametrize('shape', [(2, 5, 7, 3), (1, 1, 1, 4), (1, 2, 3, 2)])
def test_upsampling_conv_equals_upsample_pad_conv(shape):
  rs = np.random.RandomState(0)
  x = rs.randn(*shape).astype(np.float32)
  w = rs.randn(3, 3, shape[-1], 6).astype(np.float32)
  up = parsenet.upsample_nearest2x(jnp.asarray(x))
  np.testing.assert_array_equal(up, x.repeat(2, 1).repeat(2, 2))
  direct = layers.conv2d(jnp.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect'), jnp.asarray(w))
  fast = parsenet.upsample_pad_conv3x3(jnp.asarray(x), jnp.asarray(w))
  assert fast.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6)
  np.testing.assert_allclose(fast, direct, rtol=1e-5, atol=1e-5)


def test_released_variable_tree():
  v = archs.abstract_variables('parsenet')
  flat = {'.'.join(k[1:]): s.shape for k, s in traverse_util.flatten_dict(v).items()}
  assert len(flat) == 238  # len(official ParseNet(512, 512, parsing_ch=19).state_dict())
  assert flat['encoder.0.conv2d.weight'] == (3, 3, 3, 64) and flat['encoder.0.conv2d.bias'] == (64,)
  assert flat['encoder.1.conv1.norm.norm.running_mean'] == (128,) and 'encoder.1.conv1.conv2d.bias' not in flat
  assert flat['encoder.1.shortcut_func.conv2d.bias'] == (128,)
  assert 'body.9.shortcut_func.conv2d.weight' not in flat and flat['body.9.conv2.conv2d.weight'] == (3, 3, 256, 256)
  assert flat['decoder.3.shortcut_func.conv2d.weight'] == (3, 3, 128, 64)
  assert flat['out_mask_conv.conv2d.weight'] == (3, 3, 64, 19) and flat['out_img_conv.conv2d.bias'] == (3,)
  params = traverse_util.flatten_dict(v['params'])
  assert sum(int(np.prod(s.shape)) for s in params.values()) == 21_303_254  # the official parameter count
