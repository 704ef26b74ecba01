"""Minibatch-stddev grouping: ours on a batch of 12 vs basicsr's D on 4 per-GPU batches of 3 (the official run)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfpgan_jax import convert
from gfpgan_jax.convert import archs
from gfpgan_jax.models import discriminators
from gfpgan_jax.testing import parity
from gfpgan_jax.testing import torch_train_step

import torch  # pylint: disable=g-import-not-at-top,wrong-import-order

from configs import ffhq

_ARCH = dict(out_size=16, channel_multiplier=1, narrow=1 / 16, stddev_group=4)
_GPUS, _PER_GPU = 4, 3


@pytest.fixture(scope='module')
def d_pair(official):
  """A randomised basicsr D at 16 px, our converted copy, and 12 images."""
  torch.manual_seed(0)
  d_torch = parity.randomize_torch_module(official.stylegan2_arch.StyleGAN2Discriminator(**_ARCH)).eval()
  variables = convert.torch_to_flax(parity.state_dict_numpy(d_torch), 'stylegan2_discriminator', **_ARCH)
  x = np.random.default_rng(3).uniform(-1, 1, (_GPUS * _PER_GPU, 16, 16, 3)).astype(np.float32)
  return d_torch, variables, x


def _torch_stddev_and_logits(d_torch, x):
  """basicsr D on x: (its minibatch-stddev channel [N, H, W], logits [N, 1]), read at final_conv's input."""
  seen = []
  hook = d_torch.final_conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, -1].detach()))
  with torch.no_grad():
    logits = d_torch(torch.from_numpy(parity.nhwc_to_nchw(x)))
  hook.remove()
  return seen[0].numpy(), logits.numpy()


def _official_4x3(d_torch, x):
  """The official run: each GPU's D sees its own 3 images; the 4 outputs concatenated."""
  parts = [_torch_stddev_and_logits(d_torch, s) for s in np.split(x, _GPUS)]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _ours(variables, x, per_gpu_batch):
  """Our D on the whole batch: (stddev channel [N, H, W], logits [N, 1])."""
  module, _ = archs.build('stylegan2_discriminator', **_ARCH, stddev_per_gpu_batch=per_gpu_batch)
  logits, inter = module.apply(variables, jnp.asarray(x), capture_intermediates=True)
  body = inter['intermediates']['conv_body']['__call__'][0]
  std = discriminators.minibatch_stddev(body, _ARCH['stddev_group'], per_gpu_batch)[..., -1]
  return np.asarray(std), np.asarray(logits)


def test_per_gpu_batches_of_3_match_basicsr_on_4_gpus(d_pair):
  d_torch, variables, x = d_pair
  want_std, want_logits = _official_4x3(d_torch, x)
  got_std, got_logits = _ours(variables, x, _PER_GPU)
  parity.assert_parity(got_std, want_std, 'stddev channel')
  parity.assert_parity(got_logits, want_logits, 'logits')
  # The statistic is constant over (H, W) and shared by exactly the 3 images of each GPU: 4 distinct values.
  per_image = got_std[:, 0, 0]
  np.testing.assert_allclose(got_std, np.broadcast_to(per_image[:, None, None], got_std.shape), rtol=1e-6)
  np.testing.assert_allclose(per_image.reshape(_GPUS, _PER_GPU), per_image[::_PER_GPU, None].repeat(_PER_GPU, 1),
                             rtol=1e-6)
  assert len(np.unique(np.round(per_image, 6))) == _GPUS


def test_whole_batch_grouping_is_basicsr_on_one_gpu_and_differs(d_pair):
  """stddev_per_gpu_batch=0 is basicsr on one GPU with 12 images (strided groups of 4), which the 4 x 3 run is not."""
  d_torch, variables, x = d_pair
  one_std, one_logits = _torch_stddev_and_logits(d_torch, x)
  got_std, got_logits = _ours(variables, x, 0)
  parity.assert_parity(got_std, one_std, 'stddev channel (one GPU)')
  parity.assert_parity(got_logits, one_logits, 'logits (one GPU)')
  want_std, _ = _official_4x3(d_torch, x)
  assert np.abs(got_std - want_std).max() > 1e-3 * np.abs(want_std).max()


def test_torch_train_step_discriminator_runs_per_gpu(official, d_pair):
  """The official side of the whole-step parity uses the same 4 x 3 slices (same weights and keys)."""
  d_torch, _, x = d_pair
  net = torch_train_step.per_gpu_discriminator(official, stddev_per_gpu_batch=_PER_GPU, **_ARCH).eval()
  net.load_state_dict(d_torch.state_dict())
  with torch.no_grad():
    got = net(torch.from_numpy(parity.nhwc_to_nchw(x))).numpy()
  parity.assert_parity(got, _official_4x3(d_torch, x)[1], 'per-GPU official D')
  # R1 needs the input gradient through it: the same as through 4 separate calls.
  xt = torch.from_numpy(parity.nhwc_to_nchw(x)).requires_grad_(True)
  (grad,) = torch.autograd.grad(net(xt).sum(), xt)
  parts = [torch.from_numpy(parity.nhwc_to_nchw(s)).requires_grad_(True) for s in np.split(x, _GPUS)]
  want = torch.cat(torch.autograd.grad(sum(d_torch(p).sum() for p in parts), parts))
  parity.assert_parity(grad.numpy(), want.numpy(), 'input gradient')


def test_recipe_groups_as_the_official_4_gpus_of_3():
  config = ffhq.get_config()
  d_kw = config.model.discriminator_kwargs
  assert config.data.batch_size == _GPUS * _PER_GPU
  assert d_kw.stddev_per_gpu_batch == _PER_GPU and min(d_kw.stddev_per_gpu_batch, d_kw.stddev_group) == 3
  # The arch accepts the option, and it is not a weight: D's variables are those of a released D.
  released = dict(out_size=16, channel_multiplier=1, narrow=1 / 16)
  base = archs.abstract_variables('stylegan2_discriminator', **released)
  ours = archs.abstract_variables('stylegan2_discriminator', **dict(d_kw.to_dict(), **released))
  assert jax.tree.structure(base) == jax.tree.structure(ours)
  assert jax.tree.map(lambda a: a.shape, base) == jax.tree.map(lambda a: a.shape, ours)


def test_indivisible_batches_are_one_clear_error():
  with pytest.raises(ValueError, match='not divisible by the per-GPU batch 3'):
    discriminators.minibatch_stddev(jnp.zeros((8, 4, 4, 2)), 4, 3)
  with pytest.raises(ValueError, match='per-GPU batch 6 is not divisible by the group size 4'):
    discriminators.minibatch_stddev(jnp.zeros((12, 4, 4, 2)), 4, 6)
  # A batch smaller than the per-GPU batch (initialisation's dummy input) is one GPU's: group min(2, 4) = 2.
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
  np.testing.assert_array_equal(discriminators.minibatch_stddev(x, 4, 3), discriminators.minibatch_stddev(x, 4, 0))
