"""Tests of gfpgan_jax.data.jpeg against libjpeg-turbo through PIL and OpenCV."""

import functools
import io

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import skimage.data

from gfpgan_jax.data import jpeg
from gfpgan_jax.testing import cv2_degradations

QUALITIES = np.arange(60, 101)


def _pil_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=int(quality))  # 4:2:0 by default
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64))**2)
  return float('inf') if mse == 0 else 10 * np.log10(255.0**2 / mse)


@functools.lru_cache(maxsize=None)
def _jitted(rounding='round'):
  return jax.jit(functools.partial(jpeg.jpeg_compress, rounding=rounding))


def test_quant_tables_match_libjpeg():
  q = np.arange(1, 101)
  luma, chroma = (np.asarray(t) for t in jpeg.quant_tables(jnp.asarray(q)))
  img = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
  for i, quality in enumerate(q):
    buf = io.BytesIO()
    img.save(buf, format='JPEG', quality=int(quality))
    tables = Image.open(io.BytesIO(buf.getvalue())).quantization  # natural order
    np.testing.assert_array_equal(luma[i].ravel(), tables[0], err_msg=f'luma q={quality}')
    np.testing.assert_array_equal(chroma[i].ravel(), tables[1], err_msg=f'chroma q={quality}')


@pytest.mark.parametrize('name', ['astronaut', 'chelsea', 'coffee'])
def test_matches_pil_at_every_quality(name):
  img = getattr(skimage.data, name)()
  batch = jnp.broadcast_to(jnp.asarray(img, jnp.float32) / 255.0, (len(QUALITIES),) + img.shape)
  out = np.asarray(_jitted()(batch, jnp.asarray(QUALITIES, jnp.float32)))
  ours = np.round(out * 255.0).astype(np.uint8)
  worst = np.inf
  for i, q in enumerate(QUALITIES):
    ref = _pil_roundtrip(img, q)
    psnr = _psnr(ours[i], ref)
    worst = min(worst, psnr)
    assert psnr >= 40.0, f'{name} q={q}: PSNR {psnr:.2f} dB vs PIL'
    # Integer arithmetic modelled on libjpeg-turbo's: the round trip is exact.
    np.testing.assert_array_equal(ours[i], ref, err_msg=f'{name} q={q} differs from PIL')
  assert worst == np.inf


# The integer quality of each float: 'round' is to nearest, half to even (74.5 -> 74) as OpenCV <= 4.5.2's
# saturate_cast; 'floor' is int(quality).
_FLOAT_QUALITIES = np.array([60.0, 99.9, 74.5, 100.0, 63.7, 87.0], np.float32)
_INT_QUALITIES = {'round': [60, 100, 74, 100, 64, 87], 'floor': [60, 99, 74, 100, 63, 87]}


def test_quality_to_int_rounds_or_floors():
  for rounding, want in _INT_QUALITIES.items():
    np.testing.assert_array_equal(jpeg.quality_to_int(jnp.asarray(_FLOAT_QUALITIES), rounding), want)
    assert [cv2_degradations.jpeg_quality_int(float(q), rounding) for q in _FLOAT_QUALITIES] == want
  np.testing.assert_array_equal(jpeg.quality_to_int(jnp.asarray([75.5, 0.2, 100.4, 130.0])), [76, 1, 100, 100])
  with pytest.raises(ValueError, match="rounding must be one of \\('round', 'floor'\\), got 'trunc'"):
    jpeg.quality_to_int(jnp.asarray([70.0]), 'trunc')


@pytest.mark.parametrize('rounding', ['round', 'floor'])
def test_per_sample_quality_sizes_and_rounding_under_jit(rounding):
  """One jitted call, a different quality and picture size per sample."""
  rng = np.random.default_rng(0)
  src = skimage.data.coffee()
  buf_h, buf_w = 48, 64
  sizes = [(48, 64), (37, 51), (16, 16), (9, 23), (33, 8), (3, 5)]
  qualities = _FLOAT_QUALITIES
  batch = rng.integers(0, 256, (len(sizes), buf_h, buf_w, 3)).astype(np.uint8)  # garbage padding
  for i, (h, w) in enumerate(sizes):
    batch[i, :h, :w] = src[100 + 7 * i:100 + 7 * i + h, 200:200 + w]
  out = _jitted(rounding)(jnp.asarray(batch, jnp.float32) / 255.0, jnp.asarray(qualities),
                          valid_size=jnp.asarray(sizes, jnp.int32))
  assert out.dtype == jnp.float32 and out.shape == batch.shape
  out = np.asarray(out)
  np.testing.assert_allclose(out * 255.0, np.round(out * 255.0), atol=1e-3)  # 8-bit levels
  assert out.min() >= 0.0 and out.max() <= 1.0
  for i, (h, w) in enumerate(sizes):
    crop = np.ascontiguousarray(batch[i, :h, :w])
    ours = np.round(out[i, :h, :w] * 255.0).astype(np.uint8)
    # The float quality is made an integer by `rounding`.
    np.testing.assert_array_equal(ours, _pil_roundtrip(crop, _INT_QUALITIES[rounding][i]), err_msg=f'{(h, w)}')
    # OpenCV's codec (the one the official pipeline calls) gives the same.
    cv = cv2_degradations.jpeg_roundtrip(crop[..., ::-1].astype(np.float32) / 255.0, qualities[i], rounding)
    np.testing.assert_array_equal(ours, np.round(cv[..., ::-1] * 255.0).astype(np.uint8))
  # Quality really matters per sample: 60 vs 100 on the same picture.
  same = jnp.broadcast_to(jnp.asarray(batch[:1], jnp.float32) / 255.0, (2, buf_h, buf_w, 3))
  lo_hi = np.asarray(_jitted()(same, jnp.asarray([60.0, 100.0])))
  assert _psnr(lo_hi[0] * 255, batch[0]) < _psnr(lo_hi[1] * 255, batch[0])


def test_float_input_is_rounded_like_opencv():
  """Non-integer levels are rounded as `cv2.imencode` rounds a float image (half to even)."""
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (1, 16, 24, 3)).astype(np.float32)
  x[0, 0, :4, 0] = np.array([0.5, 1.5, 2.5, 253.5], np.float32) / np.float32(255.0)
  out = np.asarray(_jitted()(jnp.asarray(x), jnp.asarray([90.0])))[0]
  # Exactly the official call: a float32 BGR image times 255 handed to OpenCV.
  _, enc = cv2.imencode('.jpg', x[0, ..., ::-1] * 255.0, [int(cv2.IMWRITE_JPEG_QUALITY), 90])
  ref = cv2.imdecode(enc, 1)[..., ::-1]
  np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), ref)
  np.testing.assert_array_equal(ref, np.round(cv2_degradations.jpeg_roundtrip(x[0, ..., ::-1], 90.0)[..., ::-1] * 255))
