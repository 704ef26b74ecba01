"""Tests of the on-device degradations against OpenCV/torchvision and their sampling."""

import functools
import itertools
import math
import pathlib
import sys

import cv2
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
import skimage.data
import torch

from gfpgan_jax.data import colour
from gfpgan_jax.data import degradations
from gfpgan_jax.data import kernels
from gfpgan_jax.data import resize
from gfpgan_jax.testing import cv2_degradations as ref

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from configs import ffhq  # pylint: disable=g-import-not-at-top,wrong-import-position

H, W = 64, 80  # small, non-square test images
N = 6


def _cfg(**overrides):
  cfg = ffhq.get_config().data.degradation
  for name, value in overrides.items():
    setattr(cfg, name, value)
  return cfg


# Variants, by name, so that each is traced and compiled once per session.
VARIANTS = {
    'default': {},
    # Only blur, shrink and enlarge (+ the final quantisation).
    'geometry': dict(noise_range=None, jpeg_range=None, color_jitter_prob=None, gray_prob=0.0,
                     color_jitter_pt_prob=None),
    # The colour ops off in both ways the config allows (None and 0).
    'no_colour': dict(color_jitter_prob=None, gray_prob=0.0, color_jitter_pt_prob=0.0),
    # Geometry and JPEG, with each rounding of the float JPEG quality.
    **{f'jpeg_{r}': dict(noise_range=None, color_jitter_prob=None, gray_prob=0.0, color_jitter_pt_prob=None,
                         jpeg_quality_rounding=r) for r in ('round', 'floor')},
}


@functools.lru_cache(maxsize=None)
def _apply(variant):
  cfg = _cfg(**VARIANTS[variant])
  return jax.jit(lambda x, p: degradations.apply(x, p, cfg))


@functools.lru_cache(maxsize=None)
def _degrade(variant):
  cfg = _cfg(**VARIANTS[variant])
  return jax.jit(lambda k, x: degradations.degrade(k, x, cfg))


def _faces(n=N, h=H, w=W):
  """Natural images resized to [n, h, w, 3] float32 RGB in [0, 1]."""
  names = ('astronaut', 'chelsea', 'coffee')
  imgs = [cv2.resize(getattr(skimage.data, names[i % 3])(), (w, h), interpolation=cv2.INTER_AREA)
          for i in range(n)]
  return np.stack(imgs).astype(np.float32) / 255.0


def _psnr(a, b):
  mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64))**2)
  return float('inf') if mse == 0 else 10 * np.log10(1.0 / mse)


def _level_mismatch(a, b):
  """Fraction of values on different 1/255 levels."""
  return np.mean(np.round(np.asarray(a) * 255) != np.round(np.asarray(b) * 255))


def _fixed_params(n, **values):
  """`sample_params` output with some entries replaced by constants."""
  p = degradations.sample_params(jax.random.key(123), n, _cfg())
  for name, value in values.items():
    p[name] = jnp.broadcast_to(jnp.asarray(value, p[name].dtype), p[name].shape)
  return p


# ------------------------------------------------------------------ blur ----


def test_kernels_match_basicsr_formula():
  sx = np.array([0.1, 0.5, 2.0, 10.0, 3.0, 9.5, 0.3, 4.0], np.float32)
  sy = np.array([0.1, 0.5, 2.0, 10.0, 0.2, 0.1, 7.0, 4.5], np.float32)
  th = np.array([0.0, 0.0, 0.0, 0.0, 0.7, -2.9, 3.1, -1.0], np.float32)
  ours = np.asarray(kernels.gaussian_kernels(jnp.asarray(sx), jnp.asarray(sy), jnp.asarray(th), 41))
  assert ours.shape == (8, 41, 41) and ours.dtype == np.float32
  for i in range(8):
    iso = i < 4
    want = ref.bivariate_gaussian(41, sx[i], sy[i], th[i], iso)
    np.testing.assert_allclose(ours[i], want, atol=2e-7, rtol=1e-4, err_msg=f'kernel {i}')
  np.testing.assert_allclose(ours.sum(axis=(1, 2)), 1.0, atol=1e-5)


@pytest.mark.parametrize('method', ['fft', 'conv'])
def test_blur_matches_filter2d(method):
  x = _faces(4)
  k = kernels.gaussian_kernels(jnp.asarray([0.3, 2.0, 6.0, 10.0]), jnp.asarray([0.3, 0.5, 9.0, 1.0]),
                               jnp.asarray([0.0, 1.0, -0.4, 2.5]), 41)
  ours = np.asarray(kernels.blur(jnp.asarray(x), k, method=method))
  for i in range(4):
    want = cv2.filter2D(x[i], -1, np.asarray(k[i], np.float64))  # correlation, BORDER_REFLECT_101
    assert _psnr(ours[i], want) >= 90, method
    np.testing.assert_allclose(ours[i], want, atol=2e-5)


# ---------------------------------------------------------------- resize ----


def test_resize_matches_cv2_inter_linear():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
  # (h, w) targets: shrink by non-integer, integer (2x: OpenCV's INTER_AREA
  # path) and large factors, identity, and enlarge (scale < 1).
  targets = [(25, 31), (32, 40), (8, 10), (64, 80), (80, 100), (71, 99)]
  n = len(targets)
  out_shape = (80, 100)
  x = jnp.broadcast_to(jnp.asarray(src), (n, H, W, 3))
  full = jnp.broadcast_to(jnp.asarray([H, W]), (n, 2))
  small = jnp.asarray(targets, jnp.int32)
  down = resize.resize_linear(x, full, small, out_shape=out_shape)
  assert down.shape == (n,) + out_shape + (3,)
  back = np.asarray(resize.resize_linear(down, small, full, out_shape=(H, W)))
  down = np.asarray(down)
  for i, (h, w) in enumerate(targets):
    want = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(down[i, :h, :w], want, atol=2e-6, err_msg=f'{(h, w)}')
    # Beyond the valid region: the last row/column replicated.
    np.testing.assert_array_equal(down[i, h:, :w], np.broadcast_to(down[i, h - 1:h, :w], down[i, h:, :w].shape))
    np.testing.assert_array_equal(down[i, :, w:], np.broadcast_to(down[i, :, w - 1:w], down[i, :, w:].shape))
    want_back = cv2.resize(want, (W, H), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(back[i], want_back, atol=2e-6, err_msg=f'back from {(h, w)}')


def test_shrunk_size_is_exact_floor_division():
  scales = jax.random.uniform(jax.random.key(0), (20000,), jnp.float32, 0.8, 8.0)
  tricky = jnp.asarray([0.8, 1.6, 3.2, 2.56, 6.4, 5.12, 1.28, 4.0, 8.0, 1.0, 2.5, 7.3], jnp.float32)
  scales = np.asarray(jnp.concatenate([scales, tricky]))
  for h, w in ((512, 512), (64, 80), (100, 37)):
    got = np.asarray(degradations.shrunk_size(h, w, jnp.asarray(scales)))
    want = np.array([[int(h // float(s)), int(w // float(s))] for s in scales])
    np.testing.assert_array_equal(got, want)
  # float32 division alone gets 128 / float32(0.8) wrong (160, not 159).
  assert int(degradations.shrunk_size(128, 128, jnp.asarray([0.8], jnp.float32))[0, 0]) == 159


# ------------------------------------------------ whole pipeline vs OpenCV ----


def test_fixed_kernel_and_scales_match_opencv():
  """One kernel, several scales (non-integer, integer, < 1), no noise: blur, shrink, enlarge."""
  scales = np.array([0.8, 1.0, 1.37, 2.0, 2.7, 3.3, 5.5, 8.0], np.float32)
  n = len(scales)
  x = _faces(n)
  p = _fixed_params(n, kernel_iso=False, sigma_x=2.5, sigma_y=0.7, theta=0.6, scale=scales)
  cfg = _cfg(**VARIANTS['geometry'])
  ours = np.asarray(_apply('geometry')(jnp.asarray(x), p))
  for i in range(n):
    want = ref.degrade_one(x[i], ref.sample_params_at(p, i), cfg)
    psnr = _psnr(ours[i], want)
    assert psnr >= 40.0, f'scale {scales[i]}: {psnr:.1f} dB'
    assert _level_mismatch(ours[i], want) < 0.01  # identical 8-bit levels but for rare ties


def test_all_ops_with_fixed_params_match_reference():
  """Every op on (noise, JPEG, shift, gray, torchvision jitter in various orders)."""
  x = _faces(N)
  p = degradations.sample_params(jax.random.key(7), N, _cfg())
  p['scale'] = jnp.asarray([0.9, 1.5, 2.0, 3.1, 4.7, 7.9], jnp.float32)
  p['shift_apply'] = jnp.asarray([True, False, True, False, True, True])
  p['gray_apply'] = jnp.asarray([False, False, False, False, True, False])
  p['jitter_apply'] = jnp.asarray([True, True, False, True, False, True])
  p['jitter_order'] = jnp.asarray([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1],
                                   [0, 2, 1, 3], [3, 0, 1, 2]], jnp.int32)
  ours = np.asarray(_apply('default')(jnp.asarray(x), p))
  cfg = _cfg()
  noise = np.asarray(degradations.noise_field(p['noise_key'], degradations.buffer_shape(H, W, cfg) + (3,)))
  for i in range(N):
    want = ref.degrade_one(x[i], ref.sample_params_at(p, i), cfg, noise[i])
    psnr = _psnr(ours[i], want)
    assert psnr >= 40.0, f'sample {i}: {psnr:.1f} dB'
    assert _level_mismatch(ours[i], want) < 0.01


@pytest.mark.parametrize('op', range(4))
def test_colour_jitter_ops_match_torchvision(op):
  tv = ref.torchvision_ops()
  rng = np.random.default_rng(op)
  img = rng.uniform(0, 1, (16, 24, 3)).astype(np.float32)
  img[0, :4] = [[0.2, 0.2, 0.2], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.1]]  # ties, gray
  ours_fn = (colour.adjust_brightness, colour.adjust_contrast, colour.adjust_saturation, colour.adjust_hue)[op]
  tv_fn = (tv.adjust_brightness, tv.adjust_contrast, tv.adjust_saturation, tv.adjust_hue)[op]
  factors = [(0.5, 1.0, 1.5), (0.5, 1.2, 1.5), (0.0, 0.7, 1.5), (-0.1, 0.03, 0.1)][op]
  for f in factors:
    ours = np.asarray(ours_fn(jnp.asarray(img), jnp.float32(f)))
    want = tv_fn(torch.from_numpy(img.transpose(2, 0, 1).copy()), f).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(ours, want, atol=2e-6, err_msg=f'{colour.JITTER_OPS[op]} {f}')


def test_jitter_every_order_matches_torchvision_sequence():
  tv = ref.torchvision_ops()
  orders = np.array(list(itertools.permutations(range(4))), np.int32)  # all 24
  n = len(orders)
  rng = np.random.default_rng(5)
  imgs = rng.uniform(0, 1, (n, 12, 16, 3)).astype(np.float32)
  factors = np.stack([rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n), rng.uniform(0, 1.5, n),
                      rng.uniform(-0.1, 0.1, n)], axis=1).astype(np.float32)
  apply = np.arange(n) % 5 != 0
  ours = np.asarray(jax.jit(colour.jitter)(jnp.asarray(imgs), jnp.asarray(orders), jnp.asarray(factors),
                                           jnp.asarray(apply)))
  # Contrast and hue off (their config ranges None): skipped wherever they fall.
  partial = np.asarray(jax.jit(functools.partial(colour.jitter, enabled=(True, False, True, False)))(
      jnp.asarray(imgs), jnp.asarray(orders), jnp.asarray(factors), jnp.asarray(apply)))
  fns = (tv.adjust_brightness, tv.adjust_contrast, tv.adjust_saturation, tv.adjust_hue)
  for got, enabled in ((ours, (0, 1, 2, 3)), (partial, (0, 2))):
    for i in range(n):
      t = torch.from_numpy(imgs[i].transpose(2, 0, 1).copy())
      if apply[i]:
        for op in orders[i]:
          if op in enabled:
            t = fns[op](t, float(factors[i, op]))
      np.testing.assert_allclose(got[i], t.numpy().transpose(1, 2, 0), atol=3e-6,
                                 err_msg=f'order {orders[i]}, enabled {enabled}')


# ---------------------------------------------------------------- sampling ----


def test_sampled_parameters_follow_the_config():
  n = 20000
  cfg = _cfg()
  p = jax.device_get(jax.jit(lambda k: degradations.sample_params(k, n, cfg))(jax.random.key(0)))

  def check_uniform(v, lo, hi, name):
    assert v.min() >= lo and v.max() <= hi, name
    sd = (hi - lo) / math.sqrt(12)
    assert abs(v.mean() - (lo + hi) / 2) < 5 * sd / math.sqrt(v.size), name
    assert abs(v.std() - sd) < 0.05 * sd, name

  def check_freq(flags, prob, name):
    assert abs(flags.mean() - prob) < 5 * math.sqrt(prob * (1 - prob) / flags.size), name

  iso = p['kernel_iso']
  check_freq(iso, 0.5, 'kernel_iso')
  check_uniform(p['sigma_x'], 0.1, 10, 'sigma_x')
  check_uniform(p['sigma_y'][~iso], 0.1, 10, 'sigma_y')
  check_uniform(p['theta'][~iso], -math.pi, math.pi, 'theta')
  np.testing.assert_array_equal(p['sigma_y'][iso], p['sigma_x'][iso])
  np.testing.assert_array_equal(p['theta'][iso], 0.0)
  check_uniform(p['scale'], 0.8, 8, 'scale')
  check_uniform(p['noise_sigma'], 0, 20, 'noise_sigma')
  check_uniform(p['jpeg_quality'], 60, 100, 'jpeg_quality')
  check_freq(p['shift_apply'], 0.3, 'shift_apply')
  check_uniform(p['shift'].ravel(), -20 / 255, 20 / 255, 'shift')
  check_freq(p['gray_apply'], 0.01, 'gray_apply')
  check_freq(p['jitter_apply'], 0.3, 'jitter_apply')
  for i, (lo, hi) in enumerate([(0.5, 1.5), (0.5, 1.5), (0.0, 1.5), (-0.1, 0.1)]):
    check_uniform(p['jitter_factors'][:, i], lo, hi, colour.JITTER_OPS[i])
  order = p['jitter_order']
  np.testing.assert_array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(4), order.shape))
  for pos in range(4):
    for op in range(4):
      check_freq(order[:, pos] == op, 0.25, f'order[{pos}] == {op}')
  # The flags are independent draws.
  both = p['shift_apply'] & p['jitter_apply']
  check_freq(both, 0.09, 'shift and jitter')


@pytest.mark.parametrize('rounding', ['round', 'floor'])
def test_jpeg_quality_histogram(rounding):
  """The integer qualities the codec gets from U(60, 100) draws.

  'round' (the official run's OpenCV): 60..100, 1/40 each, but 1/80 at 60 and
  100. 'floor' (int(quality)): 60..99, 1/40 each, never 100.
  """
  n = 200_000
  cfg = _cfg(jpeg_quality_rounding=rounding)
  q = jax.jit(lambda k: degradations.codec_quality(degradations.sample_params(k, n, cfg)['jpeg_quality'], cfg))(
      jax.random.key(5))
  counts = np.bincount(np.asarray(q), minlength=102)
  want = np.zeros(102)
  if rounding == 'round':
    want[61:100] = 1 / 40
    want[[60, 100]] = 1 / 80
  else:
    want[60:100] = 1 / 40
  assert counts[want == 0].sum() == 0, np.nonzero(counts * (want == 0))
  bins = want > 0
  sd = np.sqrt(n * want[bins] * (1 - want[bins]))
  assert np.all(np.abs(counts[bins] - n * want[bins]) < 5 * sd), counts[bins]
  # The ends are really half bins (a 5-sigma bar cannot confuse 1/80 with 1/40 at this n).
  end = counts[60] / n
  assert (end < 0.75 / 40) == (rounding == 'round'), end


@pytest.mark.parametrize('rounding', ['round', 'floor'])
def test_degradations_hand_the_codec_the_rounded_quality(rounding):
  """`apply` at quality 74.6 is `apply` at 75 ('round') or at 74 ('floor'), the two of which differ."""
  x = jnp.asarray(_faces(N))
  p = degradations.sample_params(jax.random.key(9), N, _cfg())
  fn = _apply(f'jpeg_{rounding}')
  out = {q: np.asarray(fn(x, dict(p, jpeg_quality=jnp.full((N,), q, jnp.float32)))) for q in (74.6, 74.0, 75.0)}
  near = 75.0 if rounding == 'round' else 74.0
  np.testing.assert_array_equal(out[74.6], out[near])
  assert np.abs(out[74.0] - out[75.0]).max() > 0
  with pytest.raises(ValueError, match='jpeg_quality_rounding must be one of'):
    degradations.apply(x, p, _cfg(jpeg_quality_rounding='trunc'))


def test_disabled_ops_are_identities():
  x = jnp.asarray(_faces(N))
  key = jax.random.key(3)
  # Probabilities of 0 / None: nothing drawn.
  p = degradations.sample_params(key, N, _cfg(**VARIANTS['no_colour']))
  for name in ('shift_apply', 'gray_apply', 'jitter_apply'):
    assert not np.asarray(p[name]).any(), name
  # With the ops off in the config, forcing their flags on changes nothing.
  on = dict(p, shift_apply=jnp.ones(N, bool), gray_apply=jnp.ones(N, bool), jitter_apply=jnp.ones(N, bool))
  off = np.asarray(_apply('no_colour')(x, on))
  np.testing.assert_array_equal(off, np.asarray(_apply('no_colour')(x, p)))
  # The full config with the flags off gives the same images (another XLA
  # program: float rounding may move a rare JPEG input across a level).
  flags_off = np.asarray(_apply('default')(x, p))
  assert _level_mismatch(off, flags_off) < 2e-3 and _psnr(off, flags_off) > 50
  # The colour ops themselves are exact identities where their flag is off.
  no = jnp.zeros(N, bool)
  np.testing.assert_array_equal(colour.color_shift(x, p['shift'], no), x)
  np.testing.assert_array_equal(colour.to_gray(x, no), x)
  np.testing.assert_array_equal(colour.jitter(x, p['jitter_order'], p['jitter_factors'], no), x)
  # Noise and JPEG off (ranges None): blur, shrink, enlarge, quantise only.
  cfg = _cfg(**VARIANTS['geometry'])
  geo = np.asarray(_apply('geometry')(x, on))
  k = kernels.gaussian_kernels(p['sigma_x'], p['sigma_y'], p['theta'], 41)
  full = jnp.broadcast_to(jnp.asarray([H, W]), (N, 2))
  small = degradations.shrunk_size(H, W, p['scale'])
  y = resize.resize_linear(kernels.blur(x, k), full, small, degradations.buffer_shape(H, W, cfg))
  y = colour.quantize(resize.resize_linear(y, small, full, (H, W)))
  np.testing.assert_allclose(geo, np.asarray(y), atol=1.01 / 255)
  assert _level_mismatch(geo, y) < 1e-3


# ------------------------------------------------------ jit, vmap, randomness ----


def test_degrade_shapes_determinism_and_per_sample_randomness():
  x = jnp.broadcast_to(jnp.asarray(_faces(1)), (N, H, W, 3))  # the same face N times
  f = _degrade('default')
  a = f(jax.random.key(0), x)
  assert a.shape == (N, H, W, 3) and a.dtype == jnp.float32
  a = np.asarray(a)
  assert a.min() >= 0 and a.max() <= 1
  np.testing.assert_allclose(a * 255, np.round(a * 255), atol=1e-4)  # 1/255 levels
  np.testing.assert_array_equal(a, np.asarray(f(jax.random.key(0), x)))  # deterministic
  assert not np.array_equal(a, np.asarray(f(jax.random.key(1), x)))  # key matters
  # Every sample its own parameters, hence its own LQ image.
  p = degradations.sample_params(jax.random.key(0), N, _cfg())
  for name in ('sigma_x', 'scale', 'noise_sigma', 'jpeg_quality'):
    assert len(np.unique(np.asarray(p[name]))) == N, name
  for i in range(N):
    for j in range(i):
      assert not np.array_equal(a[i], a[j]), (i, j)


def test_degrade_under_vmap_equals_batched_apply():
  """vmap over per-sample keys (a batch of 1 each) = the batched op with those parameters."""
  cfg = _cfg()
  x = jnp.asarray(_faces(N))
  keys = jax.random.split(jax.random.key(11), N)
  vmapped = jax.jit(jax.vmap(lambda k, img: degradations.degrade(k, img[None], cfg)[0]))
  out = np.asarray(vmapped(keys, x))
  params = jax.vmap(lambda k: degradations.sample_params(k, 1, cfg))(keys)
  params = jax.tree.map(lambda v: v[:, 0], params)
  want = np.asarray(_apply('default')(x, params))
  np.testing.assert_allclose(out, want, atol=1.01 / 255)
  assert _level_mismatch(out, want) < 1e-3


def test_batch_sharded_degrade_is_local_to_each_device():
  """Sharded over the batch, no collectives (XLA would all-gather around FFTs) and the same images."""
  mesh = jax.make_mesh((3,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:3])
  x = jnp.asarray(_faces(N))
  xs = jax.device_put(x, NamedSharding(mesh, P('data')))
  f = _degrade('default')
  with jax.set_mesh(mesh):  # as the trainer runs its steps
    hlo = f.lower(jax.random.key(4), xs).compile().as_text()
    out = f(jax.random.key(4), xs)
  for op in ('all-gather', 'all-reduce', 'all-to-all', 'collective-permute', 'reduce-scatter'):
    assert f'{op}(' not in hlo, op
  assert out.sharding.spec == P('data')
  want = f(jax.random.key(4), x)
  assert _level_mismatch(out, want) < 1e-3 and _psnr(out, want) > 50


def test_degrade_pair_gt_gray():
  cfg = _cfg(gray_prob=1.0, gt_gray=True, jpeg_range=None, color_jitter_pt_prob=None)
  x = jnp.asarray(_faces(2))
  gt, lq = jax.jit(lambda k, x: degradations.degrade_pair(k, x, cfg))(jax.random.key(0), x)
  gt, lq = np.asarray(gt), np.asarray(lq)
  want_gt = np.stack([np.tile(cv2.cvtColor(np.ascontiguousarray(im[..., ::-1]), cv2.COLOR_BGR2GRAY)[..., None],
                              (1, 1, 3)) for im in np.asarray(x)])
  np.testing.assert_allclose(gt, want_gt, atol=1e-6)
  assert np.all(lq[..., 0] == lq[..., 1]) and np.all(lq[..., 1] == lq[..., 2])  # gray LQ
