"""The windowed paste (each face's work limited to its window of the canvas) equals the whole-canvas paste."""

import numpy as np
import pytest

from gfpgan_jax import faces as F
from gfpgan_jax.faces import paste as paste_lib
from gfpgan_jax.testing import composed


def _random_faces(n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, 512, 512, 3), np.uint8)


def _class_maps(n, seed):
  rng = np.random.default_rng(seed)
  maps = rng.integers(0, 19, (n, 16, 16)).repeat(32, axis=1).repeat(32, axis=2).astype(np.int32)
  maps[:, 96:448, 112:400] = 1  # a face-like blob, so that the soft masks are not all 0
  return maps


@pytest.fixture(scope='module')
def photo():
  """A photo whose faces touch the borders (parts of their crops fall outside) and one face that is large."""
  image, _, landmarks = composed.group_photo(6, size=(180, 260), seed=3)
  shift = np.array([[-30.0, -25.0], [0, -30], [35, 0], [0, 0], [0, 28], [-28, 20]])[:, None, :]
  landmarks = landmarks + shift
  big = composed.group_photo(1, size=(180, 260), seed=4).landmarks * 1.1
  return image, np.concatenate([landmarks, big]).astype(np.float64)


@pytest.mark.parametrize('upscale', [1, 1.5, 2, 3])
@pytest.mark.parametrize('use_parse', [False, True])
def test_windowed_equals_whole_canvas(photo, upscale, use_parse):
  image, landmarks = photo
  _, affines = F.align_faces(image, landmarks)
  faces = _random_faces(len(landmarks), int(upscale * 10))
  maps = _class_maps(len(landmarks), 1) if use_parse else None
  got = F.paste_faces(image, faces, affines, upscale, parse_masks=maps)
  want = F.paste_faces(image, faces, affines, upscale, parse_masks=maps, windowed=False)
  assert got.dtype == want.dtype and got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  assert np.any(got != F.paste_faces(image, faces[:0], affines[:0], upscale))  # the faces were pasted


def test_windowed_16bit_and_float32_mode(photo):
  image, landmarks = photo
  img16 = image.astype(np.uint16) * 257
  _, affines = F.align_faces(img16, landmarks)
  faces = _random_faces(len(landmarks), 5)
  for kwargs in (dict(), dict(parse_masks=_class_maps(len(landmarks), 2)), dict(exact=False)):
    got = F.paste_faces(img16 if kwargs.get('exact', True) else image, faces, affines, 2, **kwargs)
    want = F.paste_faces(img16 if kwargs.get('exact', True) else image, faces, affines, 2, windowed=False, **kwargs)
    np.testing.assert_array_equal(got, want)


def test_windows_cover_the_warped_square():
  inv = F.inverse_affines(np.array([[[0.5, 0.0, -10.0], [0.0, 0.5, 300.0]]]), 2)  # crop -> canvas: x4, off-canvas
  (wh, ww), origins = paste_lib.face_windows(inv, 512, (700, 1000), margin=8)
  assert wh <= 700 and ww <= 1000 and wh >= 700 - origins[0, 0] - 1
  assert origins[0, 1] == 0 and origins[0, 0] + wh <= 700
  assert [paste_lib.window_bucket(n) for n in (1, 16, 17, 128, 129, 600, 1024, 1025)] == [
      16, 16, 32, 128, 160, 640, 1024, 1280]
