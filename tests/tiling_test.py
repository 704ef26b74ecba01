"""Tiled RRDBNet against Real-ESRGAN's `RealESRGANer` (tiling, pads, crop, enhance) on the same weights."""

import cv2
import numpy as np
import pytest
import torch

from gfpgan_jax import convert
from gfpgan_jax.convert import archs
from gfpgan_jax.models import tiling
from gfpgan_jax.testing import parity

# Small enough to be quick, two blocks (the scanned trunk); with the trunk weights scaled up (`Pair`) the receptive
# field is wider than the tile context, so tiling changes the result and the tile arithmetic is tested.
NET = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, num_grow_ch=4)
H, W = 70, 53  # not a multiple of the tile size
TILE = dict(tile=32, tile_pad=4, pre_pad=3)


class Pair:
  """The official RRDBNet inside a RealESRGANer (loaded from a .pth file) and ours with the same weights."""

  def __init__(self, official, tmp_path, scale, **tile_kw):
    torch.manual_seed(scale)
    tm = parity.randomize_torch_module(official.rrdbnet_arch.RRDBNet(scale=scale, **NET).eval(), scale)
    with torch.no_grad():  # a trunk strong enough to reach beyond the tile context (official init: 0.1 x kaiming)
      for name, p in tm.named_parameters():
        p.mul_(20 if '.rdb' in name and name.endswith('weight') else 3 if 'conv_body' in name else 1)
    path = tmp_path / f'rrdbnet_x{scale}.pth'
    torch.save({'params_ema': tm.state_dict()}, path)
    self.upsampler = official.realesrgan_utils.RealESRGANer(scale, str(path), model=tm, device=torch.device('cpu'),
                                                            **tile_kw)
    self.module, _ = archs.build('rrdbnet', scale=scale, **NET)
    self.variables = convert.torch_to_flax(parity.state_dict_numpy(tm), 'rrdbnet', scale=scale, **NET)
    self.fn = tiling.network_fn(self.module, self.variables)  # the jit cache upsample uses
    self.scale = scale

  def official_float(self, rgb: np.ndarray) -> np.ndarray:
    """pre_process -> tile_process / process -> post_process on one float RGB image; [H', W', C]."""
    up = self.upsampler
    up.pre_process(rgb)
    if up.tile_size > 0:
      up.tile_process()
    else:
      up.process()
    with torch.no_grad():
      return parity.nchw_to_nhwc(up.post_process())[0]

  def ours_float(self, rgb_batch: np.ndarray, **kw) -> np.ndarray:
    up = self.upsampler
    kw = dict(dict(tile=up.tile_size, tile_pad=up.tile_pad, pre_pad=up.pre_pad), **kw)
    return tiling.tiled_apply(self.fn, rgb_batch, self.scale, **kw)


def _image(seed, h=H, w=W, c=3):
  """A smooth random image with some texture, float32 in [0, 1]."""
  rs = np.random.RandomState(seed)
  coarse = rs.uniform(0, 1, (h // 8 + 2, w // 8 + 2, c)).astype(np.float32)
  smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, c)
  return np.clip(smooth + rs.normal(0, 0.05, (h, w, c)).astype(np.float32), 0, 1)


def _max_abs(a, b):
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(np.asarray(a, np.float64) - b).max())


@pytest.mark.parametrize('scale', [2, 4])
def test_tiled_matches_realesrganer_tile_process(official, tmp_path, scale):
  pair = Pair(official, tmp_path, scale, **TILE)
  images = np.stack([_image(1), _image(2)])
  ref = [pair.official_float(im) for im in images]
  ours = pair.ours_float(images)  # each tile of both images in one call
  assert ours.shape == (2, H * scale, W * scale, 3)
  for i in range(2):
    err = _max_abs(ours[i], ref[i])
    print(f'x{scale} tiled image {i}: max |diff| {err:.2e} (peak {np.abs(ref[i]).max():.3g})')
    assert err <= 1e-5
  # The tiles matter: the official whole-image result differs (so the tile arithmetic above was tested).
  pair.upsampler.tile_size = 0
  assert _max_abs(pair.official_float(images[0]), ref[0]) > 1e-3


@pytest.mark.parametrize('scale', [1, 2])
def test_whole_image_matches_realesrganer_process(official, tmp_path, scale):
  pair = Pair(official, tmp_path, scale, tile=0, tile_pad=10, pre_pad=5)  # mod pads 75x58 -> 76x60 / 76x58
  image = _image(3)
  err = _max_abs(pair.ours_float(image[None])[0], pair.official_float(image))
  print(f'x{scale} whole image: max |diff| {err:.2e}')
  assert err <= 1e-5


@pytest.mark.parametrize('scale', [1, 2, 4])
def test_tiling_arithmetic_on_many_tiles(official, tmp_path, scale):
  """RealESRGANer running a cheap stand-in network (a box filter, then nearest x scale) on many tiles.

  Many tiles share a shape here, so the batching into chunks of `max_batch` (mixing tile positions and images)
  is exercised; the filter depends on the tile borders, so a wrong crop or offset shows.
  """
  pair = Pair(official, tmp_path, scale, tile=16, tile_pad=3, pre_pad=2)
  up = pair.upsampler
  up.model = lambda t: torch.nn.functional.interpolate(
      torch.nn.functional.avg_pool2d(t, 5, stride=1, padding=2), scale_factor=scale, mode='nearest')

  def box(x):  # the same in numpy, on a batch [n, h, w, c]
    xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    h, w = x.shape[1:3]
    y = sum(xp[:, i:i + h, j:j + w] for i in range(5) for j in range(5)) / np.float32(25)
    return y.repeat(scale, axis=1).repeat(scale, axis=2)

  images = np.stack([_image(8, 150, 97), _image(9, 150, 97)])
  ours = tiling.tiled_apply(box, images, scale, tile=16, tile_pad=3, pre_pad=2, max_batch=3)
  for i in range(2):
    assert _max_abs(ours[i], pair.official_float(images[i])) <= 1e-6
  assert _max_abs(ours[0], box(images[:1])[0]) > 1e-2  # the tiles matter


def test_tiles_cover_the_image_once():
  boxes = tiling.tiles(74, 56, 32, 4)
  assert len(boxes) == 6
  count = np.zeros((74, 56), int)
  for t in boxes:
    count[t.y0:t.y1, t.x0:t.x1] += 1
    assert t.py0 == max(t.y0 - 4, 0) and t.px1 == min(t.x1 + 4, 56)
  assert (count == 1).all()
  assert sorted({t.padded_shape for t in boxes}) == [(14, 28), (14, 36), (36, 28), (36, 36), (40, 28), (40, 36)]


def _assert_rounding_only(ours, ref_float, what):
  """ours == round(255 * ref_float), except by one where 255 * ref_float is within 1e-3 of a .5 boundary.

  The network outputs agree to ~1e-6 (float32 summation order), so uint8 values can differ only where the
  official value sits on a rounding boundary; elsewhere the two must be identical.
  """
  v = ref_float.astype(np.float32) * np.float32(255.0)
  expected = v.round().astype(np.int64)
  diff = ours.astype(np.int64) - expected
  near_half = np.abs(v - np.floor(v) - 0.5) < 1e-3
  assert np.abs(diff).max() <= 1, what
  assert not np.any((diff != 0) & ~near_half), f'{what}: {np.sum((diff != 0) & ~near_half)} unexplained mismatches'
  print(f'{what}: {np.count_nonzero(diff)} of {diff.size} values differ by one, all at a rounding boundary')


@pytest.mark.parametrize('mode', ['RGB', 'L', 'RGBA'])
def test_upsample_matches_enhance(official, tmp_path, mode):
  pair = Pair(official, tmp_path, 2, **TILE)
  rgb = _image(4)
  if mode == 'RGB':
    ours_in, bgr_in = rgb, rgb[..., ::-1]
  elif mode == 'L':
    ours_in = bgr_in = rgb[..., 0]
  else:
    rgba = np.concatenate([rgb, _image(5, c=1)], axis=2)
    ours_in, bgr_in = rgba, rgba[..., [2, 1, 0, 3]]
  ours_in = (ours_in * 255).round().astype(np.uint8)
  bgr_in = np.ascontiguousarray((bgr_in * 255).round().astype(np.uint8))
  kw = dict(tile=TILE['tile'], tile_pad=TILE['tile_pad'], pre_pad=TILE['pre_pad'])
  ours = tiling.upsample(pair.module, pair.variables, ours_in, **kw)
  ref, ref_mode = pair.upsampler.enhance(bgr_in)
  assert ref_mode == mode
  ref = ref[..., [2, 1, 0, 3] if mode == 'RGBA' else slice(None, None, -1)] if mode != 'L' else ref
  assert ours.shape == ref.shape == (H * 2, W * 2, *ours_in.shape[2:]) and ours.dtype == np.uint8

  # enhance's float result, rebuilt from its own steps (and checked against its uint8 output).
  to_gray = lambda f: cv2.cvtColor(np.ascontiguousarray(f[..., ::-1]), cv2.COLOR_BGR2GRAY)
  x = ours_in.astype(np.float32) / 255
  if mode == 'L':
    ref_float = to_gray(np.clip(pair.official_float(np.repeat(x[..., None], 3, 2)), 0, 1))
  else:
    ref_float = np.clip(pair.official_float(x[..., :3]), 0, 1)
  if mode == 'RGBA':
    alpha = to_gray(np.clip(pair.official_float(np.repeat(x[..., 3:], 3, 2)), 0, 1))
    ref_float = np.concatenate([ref_float, alpha[..., None]], axis=2)
  np.testing.assert_array_equal((ref_float * 255.0).round().astype(np.uint8), ref)
  _assert_rounding_only(ours, ref_float, f'upsample {mode}')

  # outscale != scale: both resize their uint8 result with cv2 LANCZOS4 to int(size * outscale), so any
  # difference is the one above, resized.
  ours3 = tiling.upsample(pair.module, pair.variables, ours_in, outscale=3, **kw)
  ref3 = pair.upsampler.enhance(bgr_in, outscale=3)[0]
  ref3 = ref3[..., [2, 1, 0, 3] if mode == 'RGBA' else slice(None, None, -1)] if mode != 'L' else ref3
  assert ours3.shape == ref3.shape == (H * 3, W * 3, *ours_in.shape[2:])
  lanczos = lambda u: cv2.resize(u, (W * 3, H * 3), interpolation=cv2.INTER_LANCZOS4)
  np.testing.assert_array_equal(ours3, lanczos(ours))
  np.testing.assert_array_equal(ref3, lanczos(ref))
  if np.array_equal(ours, ref):
    np.testing.assert_array_equal(ours3, ref3)


def test_upsample_bicubic_alpha_and_pre_pad_zero(official, tmp_path):
  pair = Pair(official, tmp_path, 2, tile=32, tile_pad=4, pre_pad=0)  # GFP-GAN's bg upsampler uses pre_pad 0
  # 73x56 with no pre-pad tiles into the same shapes as 70x53 with pre_pad 3 (compiled already).
  rgba = (np.concatenate([_image(6, 73, 56), _image(7, 73, 56, c=1)], axis=2) * 255).round().astype(np.uint8)
  ours = tiling.upsample(pair.module, pair.variables, rgba, tile=32, tile_pad=4, pre_pad=0, alpha_upsampler='bicubic')
  ref = pair.upsampler.enhance(np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]), alpha_upsampler='bicubic')[0]
  ref = ref[..., [2, 1, 0, 3]]
  # The alpha is cv2's INTER_LINEAR of the input alpha on both sides: identical.
  np.testing.assert_array_equal(ours[..., 3], ref[..., 3])
  assert np.abs(ours[..., :3].astype(int) - ref[..., :3]).max() <= 1


def test_bad_arguments_raise_one_clear_error():
  module, _ = archs.build('rrdbnet', scale=2, **NET)
  variables = parity.random_variables('rrdbnet', 0, scale=2, **NET)
  f = lambda x: x  # the checks come before any network call
  img = np.zeros((1, 20, 20, 3), np.float32)
  with pytest.raises(ValueError, match='tile_pad'):
    tiling.tiled_apply(f, img, 2, tile=8, tile_pad=8)
  with pytest.raises(ValueError, match='tile must be'):
    tiling.tiled_apply(f, img, 2, tile=-1)
  with pytest.raises(ValueError, match='pre_pad must be'):
    tiling.tiled_apply(f, img, 2, pre_pad=-2)
  with pytest.raises(ValueError, match='floating'):
    tiling.tiled_apply(f, img.astype(np.uint8), 2)
  with pytest.raises(ValueError, match=r'\[N, H, W, C\]'):
    tiling.tiled_apply(f, img[0], 2)
  with pytest.raises(ValueError, match='too small'):
    tiling.tiled_apply(f, img[:, :4], 2, pre_pad=10)
  with pytest.raises(ValueError, match='fn returned shape'):
    tiling.tiled_apply(f, img, 4, pre_pad=2)  # a x1 network called as a x4 one
  with pytest.raises(ValueError, match='RRDBNet: expected input'):
    module.apply(variables, np.zeros((1, 21, 20, 3), np.float32))  # odd size for scale 2
  with pytest.raises(ValueError, match='RRDBNet: expected input'):
    module.apply(variables, np.zeros((1, 20, 20, 4), np.float32))
  u8 = np.zeros((20, 20, 3), np.uint8)
  with pytest.raises(ValueError, match='uint8'):
    tiling.upsample(module, variables, u8.astype(np.float32))
  with pytest.raises(ValueError, match='RGBA'):
    tiling.upsample(module, variables, np.zeros((20, 20, 2), np.uint8))
  with pytest.raises(ValueError, match='tile_pad'):
    tiling.upsample(module, variables, u8, tile=8, tile_pad=10)
