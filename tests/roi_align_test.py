"""`gfpgan_jax.ops.roi_align` against torchvision (official pure-PyTorch code and its C++ kernel)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfpgan_jax.ops import roi_align

import torch  # pylint: disable=g-import-not-at-top,wrong-import-order


def _official(official, images_nhwc, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
  """torchvision's pure-PyTorch `_roi_align` (uncompiled), NHWC in and out, one box per image."""
  fn = getattr(official.roi_align, '__wrapped__', official.roi_align)  # skip the lazy torch.compile
  x = torch.from_numpy(np.ascontiguousarray(np.transpose(images_nhwc, (0, 3, 1, 2))))
  idx = np.arange(len(boxes), dtype=np.float32)[:, None]
  rois = torch.from_numpy(np.concatenate([idx, np.asarray(boxes, np.float32)], 1))
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  out = fn(x, rois, spatial_scale, oh, ow, sampling_ratio, aligned)
  return np.transpose(out.numpy(), (0, 2, 3, 1))


def _kernel_reference(images_nhwc, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
                      zero_outside=True):
  """Direct float32 transcription of torchvision's C++ kernel (`roi_align_common.h`, `roi_align_kernel.cpp`).

  With `zero_outside=False` the out-of-range test is dropped, which is what
  the pure-PyTorch `_roi_align` does.
  """
  f = np.float32
  n, h, w, c = images_nhwc.shape
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  out = np.zeros((n, oh, ow, c), np.float32)
  for b in range(n):
    img = images_nhwc[b]
    off = f(0.5) if aligned else f(0.0)
    x1, y1, x2, y2 = (f(v) * f(spatial_scale) - off for v in boxes[b])
    rw, rh = f(x2 - x1), f(y2 - y1)
    if not aligned:
      rw, rh = max(rw, f(1)), max(rh, f(1))
    bh, bw = f(rh / f(oh)), f(rw / f(ow))
    gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(f(rh / f(oh))))
    gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(f(rw / f(ow))))
    count = f(max(gh * gw, 1))
    if gh <= 0 or gw <= 0:
      continue
    ph, iy = np.arange(oh, dtype=f)[:, None], np.arange(gh, dtype=f)[None, :]
    pw, ix = np.arange(ow, dtype=f)[:, None], np.arange(gw, dtype=f)[None, :]
    yy = y1 + ph * bh + (iy + f(0.5)) * bh / f(gh)  # [oh, gh]
    xx = x1 + pw * bw + (ix + f(0.5)) * bw / f(gw)  # [ow, gw]
    y = np.broadcast_to(yy[:, None, :, None], (oh, ow, gh, gw)).astype(f)
    x = np.broadcast_to(xx[None, :, None, :], (oh, ow, gh, gw)).astype(f)
    inside = (y >= -1) & (y <= h) & (x >= -1) & (x <= w) if zero_outside else np.ones(y.shape, bool)
    y, x = np.maximum(y, 0), np.maximum(x, 0)
    y_low, x_low = y.astype(np.int64), x.astype(np.int64)
    y_end, x_end = y_low >= h - 1, x_low >= w - 1
    y_low, x_low = np.where(y_end, h - 1, y_low), np.where(x_end, w - 1, x_low)
    y_high, x_high = np.where(y_end, h - 1, y_low + 1), np.where(x_end, w - 1, x_low + 1)
    y, x = np.where(y_end, y_low.astype(f), y), np.where(x_end, x_low.astype(f), x)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    val = ((hy * hx)[..., None] * img[y_low, x_low] + (hy * lx)[..., None] * img[y_low, x_high] +
           (ly * hx)[..., None] * img[y_high, x_low] + (ly * lx)[..., None] * img[y_high, x_high])
    val = np.where(inside[..., None], val, 0)
    out[b] = val.sum((2, 3)) / count
  return out


# Boxes on a 24 (H) x 20 (W) map: inside, sub-pixel (size clamped to 1), crossing each border,
# entirely outside, much larger than the output (several samples per bin), degenerate (x2 < x1).
_SMALL_BOXES = np.array([
    [2.3, 3.1, 15.7, 18.2],
    [5.2, 6.1, 5.5, 6.3],
    [-3.5, -2.2, 10.1, 9.7],
    [12.4, 15.2, 25.3, 30.1],
    [-10.0, -10.0, -2.0, -3.0],
    [18.0, 22.0, 30.0, 35.0],
    [-6.0, 1.0, 26.0, 23.5],
    [9.0, 8.0, 4.0, 2.0],
], np.float32)


@pytest.fixture(scope='module')
def small_images():
  return np.random.default_rng(0).normal(size=(len(_SMALL_BOXES), 24, 20, 3)).astype(np.float32)


@pytest.mark.parametrize('output_size', [7, (5, 3), 2])
def test_matches_official_pure_pytorch(official, small_images, output_size):
  want = _official(official, small_images, _SMALL_BOXES, output_size)
  got = roi_align(jnp.asarray(small_images), jnp.asarray(_SMALL_BOXES), output_size, zero_outside=False)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs', [dict(sampling_ratio=2), dict(aligned=True), dict(spatial_scale=0.5),
                                    dict(spatial_scale=0.75, sampling_ratio=3, aligned=True)])
def test_options_match_official(official, small_images, kwargs):
  want = _official(official, small_images, _SMALL_BOXES, 6, **kwargs)
  got = roi_align(jnp.asarray(small_images), jnp.asarray(_SMALL_BOXES), 6, zero_outside=False, **kwargs)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_kernel_transcription_matches_official(official, small_images):
  """Validates the numpy transcription: without the out-of-range rule it is the pure-PyTorch code."""
  want = _official(official, small_images, _SMALL_BOXES, 7)
  ref = _kernel_reference(small_images, _SMALL_BOXES, 7, zero_outside=False)
  np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('output_size', [7, (5, 3)])
def test_out_of_range_rule_matches_kernel(small_images, output_size):
  want = _kernel_reference(small_images, _SMALL_BOXES, output_size)
  got = roi_align(jnp.asarray(small_images), jnp.asarray(_SMALL_BOXES), output_size)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # The two torchvision variants differ only for boxes reaching beyond [-1, H] x [-1, W].
  clamped = np.asarray(roi_align(jnp.asarray(small_images), jnp.asarray(_SMALL_BOXES), output_size,
                                 zero_outside=False))
  inside = np.array([0, 1, 7])
  np.testing.assert_allclose(np.asarray(got)[inside], clamped[inside], rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(got)[3] - clamped[3]).max() > 0.1
  np.testing.assert_array_equal(np.asarray(got)[4], 0.0)  # entirely outside: every sample is dropped


def test_out_of_range_rule_hand_case():
  """A 1-bin crop with 2x2 samples at x = -1.5 (dropped), -0.5 (clamped to 0): mean = 2 * img[0, 0] / 4."""
  img = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
  box = jnp.array([[-2.0, 0.0, 0.0, 2.0]])  # width 2, one bin, grid 2: x samples -1.5, -0.5; y 0.5, 1.5
  got = roi_align(img, box, 1)
  # y = 0.5 -> rows 0/1 half-half; y = 1.5 -> rows 1/2; at x clamped to 0: (1+4)/2 and (4+7)/2.
  np.testing.assert_allclose(np.asarray(got).ravel(), [((1 + 4) / 2 + (4 + 7) / 2) / 4], rtol=1e-6)
  legacy = roi_align(img, box, 1, zero_outside=False)
  np.testing.assert_allclose(np.asarray(legacy).ravel(), [((1 + 4) / 2 + (4 + 7) / 2) / 2], rtol=1e-6)


def _gfpgan_box(x, y, half):
  """The dataset's component box [x - h + 1, y - h + 1, x + h, y + h] (square: equal grids on both axes)."""
  return [x - half + 1, y - half + 1, x + half, y + half]


def test_512_component_boxes(official):
  """GFP-GAN sized crops at 512 px, including border-crossing and very large boxes.

  The pure-PyTorch adaptive path materialises [K, C, out, out, H, W], too large
  at 512 px; a square box has grid g on both axes, and adaptive sampling then
  equals `sampling_ratio=g` exactly, so the official code is run per box that way.

  Tolerances: the images are smooth (like faces; sums of sinusoids of
  period >= 22 px, values up to 3). At 512 px a float32 sample position has
  an ulp of 3e-5 px and XLA (FMA contraction) rounds it one ulp differently
  from PyTorch/numpy, which moves values by up to ~2.6e-5 here (~1e-4 on
  white noise), hence atol 3e-5.

  Beyond the right/bottom border (boxes 4 and 5) the pure-PyTorch
  `_roi_align` is itself inexact: where a floor index snaps to H - 1 it keeps
  `y` instead of setting it to H - 1 as the C++ kernel does (`y =
  torch.where(y_low >= height - 1, y.to(input.dtype), y)`), so its two
  bilinear weights become large and cancel (e.g. -29.7 and 30.7) and it is
  off by up to ~3e-4. There we compare with a looser tolerance, and exactly
  (to rounding) with the kernel transcription.
  """
  rng = np.random.default_rng(1)
  boxes = np.array([
      _gfpgan_box(180.3, 250.7, 1.4 * 21.2),  # a typical eye, grid 1
      _gfpgan_box(330.0, 260.0, 1.4 * 35.0),  # a large eye, grid 2 at 80
      _gfpgan_box(256.2, 380.9, 75.0),  # a large mouth, grid 2 at 120
      _gfpgan_box(12.0, 30.0, 40.0),  # crosses the left and top borders
      _gfpgan_box(500.0, 505.0, 60.0),  # crosses the right and bottom borders
      _gfpgan_box(256.0, 256.0, 300.0),  # larger than the image: grid 8 at 80
  ], np.float32)
  yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
  freq = rng.uniform(-0.2, 0.2, size=(len(boxes), 2, 3, 2))
  phase = rng.uniform(0, 2 * np.pi, size=(len(boxes), 2, 3))
  images = np.sin(freq[..., 0, None, None] * yy + freq[..., 1, None, None] * xx + phase[..., None, None])
  images = images.sum(2).transpose(0, 2, 3, 1).astype(np.float32)  # [N, 512, 512, 2]
  fn = getattr(official.roi_align, '__wrapped__', official.roi_align)
  crop = jax.jit(roi_align, static_argnames=('output_size', 'zero_outside'))
  for size in (80, 120):
    want = []
    for b, box in enumerate(boxes):
      g = int(math.ceil(np.float32(box[2] - box[0]) / np.float32(size)))
      assert g == int(math.ceil(np.float32(box[3] - box[1]) / np.float32(size)))
      x = torch.from_numpy(np.ascontiguousarray(images[b:b + 1].transpose(0, 3, 1, 2)))
      rois = torch.tensor([[0.0, *box]], dtype=torch.float32)
      want.append(fn(x, rois, 1.0, size, size, g, False).numpy().transpose(0, 2, 3, 1))
    want = np.concatenate(want)
    got = np.asarray(crop(jnp.asarray(images), jnp.asarray(boxes), output_size=size, zero_outside=False))
    np.testing.assert_allclose(got[:4], want[:4], rtol=1e-5, atol=3e-5)
    np.testing.assert_allclose(got[4:], want[4:], rtol=1e-5, atol=5e-4)
    ref = _kernel_reference(images, boxes, size, zero_outside=False)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=3e-5)
    got = np.asarray(crop(jnp.asarray(images), jnp.asarray(boxes), output_size=size))
    np.testing.assert_allclose(got, _kernel_reference(images, boxes, size), rtol=1e-5, atol=3e-5)


def test_sample_bound_caps_the_grid(official, small_images):
  """A grid above `max_samples` uses `max_samples` evenly spaced samples (= sampling_ratio)."""
  boxes = np.tile(np.array([[1.0, 2.0, 19.0, 23.0]], np.float32), (len(small_images), 1))  # grid 5/6 at out 4
  got = roi_align(jnp.asarray(small_images), jnp.asarray(boxes), 4, max_samples=2, zero_outside=False)
  want = _official(official, small_images, boxes, 4, sampling_ratio=2)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  exact = roi_align(jnp.asarray(small_images), jnp.asarray(boxes), 4, max_samples=6, zero_outside=False)
  np.testing.assert_allclose(np.asarray(exact), _official(official, small_images, boxes, 4), rtol=1e-5, atol=1e-5)


def test_gradient_matches_official(official, small_images):
  cot = np.random.default_rng(2).normal(size=(len(_SMALL_BOXES), 7, 7, 3)).astype(np.float32)

  def loss(x):
    return jnp.sum(roi_align(x, jnp.asarray(_SMALL_BOXES), 7, zero_outside=False) * cot)

  got = jax.jit(jax.grad(loss))(jnp.asarray(small_images))
  fn = getattr(official.roi_align, '__wrapped__', official.roi_align)
  x = torch.from_numpy(np.ascontiguousarray(small_images.transpose(0, 3, 1, 2))).requires_grad_(True)
  rois = torch.from_numpy(np.concatenate([np.arange(len(_SMALL_BOXES), dtype=np.float32)[:, None], _SMALL_BOXES],
                                         1))
  out = fn(x, rois, 1.0, 7, 7, -1, False)
  (out * torch.from_numpy(cot.transpose(0, 3, 1, 2))).sum().backward()
  # atol 5e-5: torchvision's backward scatters hundreds of sample weights into the corner pixel of a box
  # beyond the border and is 1.6e-5 off there (ours agrees with a float64 evaluation to 2e-7).
  np.testing.assert_allclose(np.asarray(got), x.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=5e-5)


def test_dtype_and_shape_checks(small_images):
  got = roi_align(jnp.asarray(small_images, jnp.bfloat16), jnp.asarray(_SMALL_BOXES), (4, 6))
  assert got.shape == (len(_SMALL_BOXES), 4, 6, 3) and got.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='one box per image'):
    roi_align(jnp.asarray(small_images), jnp.asarray(_SMALL_BOXES[:2]), 4)
