"""scripts/bench_profile.py: a profiler trace of a compiled function is summed per op and attributed."""

import jax
import jax.numpy as jnp
import pytest

from gfpgan_jax import xla_options
from gfpgan_jax.models import vgg as vgg_lib
from gfpgan_jax.testing import scripts

@pytest.fixture(scope='module')
def bench():
  return scripts.load('bench_profile')


def test_attribute_names_network_pass_and_kind(bench):
  line = ('%convolution.3 = f32[4,8,8,64]{3,2,1,0} convolution(%a, %b), metadata={op_name='
          '"jit(train_step)/transpose(jvp(VGGFeatureExtractor))/vgg_net/conv1_2/conv_general_dilated"}')
  assert bench.attribute('convolution.3', line) == ('VGG19', 'backward', 'convolution')
  copy = '%transpose_copy_fusion.1 = f32[3,3,64,64]{3,2,1,0} fusion(%frozen__arcface____params____w__.1), kind=kLoop'
  assert bench.attribute('transpose_copy_fusion.1', copy) == ('ArcFace', '?', 'frozen weight copy')
  assert bench.attribute('add.1', '%add.1 = f32[2] add(%x, %y)') == ('?', '?', 'other')


def test_summarize_a_traced_vgg_forward(bench, tmp_path):
  net = vgg_lib.VGGFeatureExtractor(layer_name_list=('conv2_2',))
  variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  fn = jax.jit(lambda v, x: net.apply(v, x)['conv2_2'])
  x = jnp.ones((2, 32, 32, 3))
  compiled = fn.lower(variables, x).compile(compiler_options=xla_options.compiler_options())  # as the step
  jax.block_until_ready(compiled(variables, x))
  jax.profiler.start_trace(str(tmp_path))
  for _ in range(2):
    jax.block_until_ready(compiled(variables, x))
  jax.profiler.stop_trace()
  result = bench.summarize(str(tmp_path), compiled.as_text(), calls=2)
  assert result['total_ms'] > 0
  assert {g['kind'] for g in result['groups']} >= {'convolution'}
  convs = [o for o in result['ops'] if o['kind'] == 'convolution']
  assert convs and all(o['network'] == 'VGG19' and o['pass'] == 'forward' for o in convs)
  assert abs(sum(g['share'] for g in result['groups']) - 1.0) < 1e-6
  with pytest.raises(FileNotFoundError, match='no profiler trace'):
    bench.summarize(str(tmp_path / 'empty'), compiled.as_text(), calls=1)
