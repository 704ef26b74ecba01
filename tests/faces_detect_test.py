"""gfpgan_jax.faces.detect against facexlib 0.3.0's `FaceRestoreHelper.get_face_landmarks_5`, and the Haar detector.

Both sides run the same random-weight official RetinaFace mobile0.25 (ours
converted with `torch_to_flax`). Random weights would give thousands of
saturated scores above 0.97, or none, so the network is conditioned
(`testing.cases.retinaface.condition`, unit-RMS activations), its BatchNorm
statistics randomised, and its class head scaled by 0.42 (a few dozen faces
pass the official 0.97 after NMS) and landmark head by 0.2 (some faces have an
eye distance under 5 px and are dropped). The threshold stays the official 0.97.
"""

import logging

import jax
import numpy as np
import pytest
import skimage.data
import torch

from gfpgan_jax import convert
from gfpgan_jax.convert import archs
from gfpgan_jax.faces import detect
from gfpgan_jax.faces import haar
from gfpgan_jax.testing import composed
from gfpgan_jax.testing import official_faces
from gfpgan_jax.testing import parity
from gfpgan_jax.testing.cases import retinaface as rcase

ASTRONAUT = skimage.data.astronaut()
CROP = np.ascontiguousarray(ASTRONAUT[120:420, 40:491])  # 300 x 451: odd width, faces cut by the border
ARCH = 'retinaface_mobilenet0.25'
BATCH = 2


@pytest.fixture(scope='module')
def nets(official):
  """(official torch RetinaFace, our module, our variables) with the same conditioned random weights."""
  torch.manual_seed(0)
  net = official.retinaface.RetinaFace(network_name='mobile0.25', phase='test', device='cpu').eval()
  rcase.condition(net)
  parity.randomize_torch_module(net, 0)
  with torch.no_grad():
    for heads, factor in ((net.ClassHead, 0.42), (net.LandmarkHead, 0.2)):
      for head in heads:
        head.conv1x1.weight.mul_(factor)
        head.conv1x1.bias.mul_(factor)
  variables = convert.torch_to_flax(parity.state_dict_numpy(net), ARCH)
  module, _ = archs.build(ARCH)
  return net, module, variables


@pytest.fixture(scope='module')
def helper(nets):
  h = official_faces.make_helper(1, use_parse=False)
  h.face_det = nets[0]
  return h


@pytest.fixture(scope='module')
def detector(nets):
  return detect.RetinaFaceDetector(nets[1], nets[2], batch_size=BATCH)


def facexlib(helper, rgb, **kwargs):
  """facexlib's (boxes [n,4], scores [n], landmarks [n,5,2]) after `get_face_landmarks_5(eye_dist_threshold=5)`."""
  helper.clean_all()
  helper.read_image(np.ascontiguousarray(rgb[..., ::-1]))
  helper.get_face_landmarks_5(eye_dist_threshold=5, **kwargs)
  det = np.asarray(helper.det_faces, np.float32).reshape(-1, 5)
  return det[:, :4], det[:, 4], np.asarray(helper.all_landmarks_5, np.float32).reshape(-1, 5, 2)


def assert_same(faces: detect.FaceSet, ref, score_scale=1.0):
  boxes, scores, lms = ref
  assert len(faces) == len(scores), (len(faces), len(scores))
  # Float32 network differences (XLA vs PyTorch convolutions, ~1e-6 relative) move coordinates by ~1e-4 px.
  np.testing.assert_allclose(faces.boxes, boxes, rtol=1e-5, atol=2e-3)
  np.testing.assert_allclose(faces.scores * np.float32(score_scale), scores, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(faces.landmarks, lms, rtol=1e-5, atol=2e-3)


@pytest.fixture(scope='module')
def ours(detector):
  faces = detector([ASTRONAUT, CROP])
  return {'astronaut': faces[0], 'crop': faces[1]}


@pytest.mark.parametrize('name', ['astronaut', 'crop'])
def test_matches_facexlib(helper, ours, name):
  image = {'astronaut': ASTRONAUT, 'crop': CROP}[name]
  faces = ours[name]
  ref = facexlib(helper, image)
  assert len(ref[1]) >= 10  # a real test: many faces, several dropped by the eye-distance filter
  with torch.no_grad():
    unfiltered = helper.face_det.detect_faces(np.ascontiguousarray(image[..., ::-1]), 0.97)
  assert len(unfiltered) > len(ref[1])
  assert_same(faces, ref)
  for kw in (dict(only_center_face=True), dict(only_keep_largest=True), dict(only_center_face=True,
                                                                             only_keep_largest=True)):
    mine = detect.select_faces(faces, image.shape, only_center_face=kw.get('only_center_face', False),
                               largest=kw.get('only_keep_largest', False))
    assert len(mine) == 1
    assert_same(mine, facexlib(helper, image, **kw))


def test_detect_size_matches_facexlib_resize(nets, helper):
  det = detect.RetinaFaceDetector(nets[1], nets[2], detect_size=320, batch_size=BATCH)
  (faces,) = det([ASTRONAUT])
  scale = 512 / 320
  ref = facexlib(helper, ASTRONAUT, resize=320)
  assert len(ref[1]) >= 5
  assert_same(faces, ref, score_scale=scale)  # facexlib multiplies its whole row, the score too, by the scale
  assert detect.detect_shape(CROP.shape, 320) == ((320, 481), 300 / 320)


def test_batches_equal_one_at_a_time(detector, ours):
  images = [ASTRONAUT, CROP, CROP[::-1].copy(), ASTRONAUT[:, ::-1].copy(), CROP]
  batched = detector(images)
  singles = [detector([im])[0] for im in images]
  for a, b in zip(batched, singles):  # singles run as batches of 1: another program, float32 rounding apart
    assert len(a) == len(b)
    for x, y in ((a.boxes, b.boxes), (a.scores, b.scores), (a.landmarks, b.landmarks)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-3)
  # The third crop runs alone in a batch of 1, as in `ours`: the same program, the same bits.
  np.testing.assert_array_equal(batched[4].boxes, ours['crop'].boxes)
  np.testing.assert_array_equal(batched[4].landmarks, ours['crop'].landmarks)
  assert len(detector._fns) == 2  # one jitted function per image size  # pylint: disable=protected-access
  assert [detector.padded_batch(n) for n in (1, 2)] == [1, 2]


def test_mesh_of_8_devices_equals_one_device(nets, detector):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ('data',))
  sharded = detect.RetinaFaceDetector(nets[1], nets[2], batch_size=8, mesh=mesh)
  images = [CROP, CROP[::-1].copy(), CROP[:, ::-1].copy()]
  for a, b in zip(sharded(images), detector(images)):
    assert len(a) == len(b) and len(a) > 0
    # A different partitioning of the convolutions: float32 rounding, ~1e-6 relative.
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_allclose(a.landmarks, b.landmarks, rtol=1e-5, atol=1e-3)
  assert [sharded.padded_batch(n) for n in (1, 3, 8)] == [8, 8, 8]
  big = detect.RetinaFaceDetector(nets[1], nets[2], batch_size=32, mesh=mesh)
  assert [big.padded_batch(n) for n in (1, 9, 17, 32)] == [8, 16, 32, 32]
  with pytest.raises(ValueError, match='multiple of the 8 devices'):
    detect.RetinaFaceDetector(nets[1], nets[2], batch_size=4, mesh=mesh)


def test_load_detector_reads_a_pth_and_rejects_other_networks(tmp_path, nets, ours, official, caplog):
  path = tmp_path / 'detection_mobilenet0.25.pth'
  torch.save(nets[0].state_dict(), path)
  det = detect.load_detector(path, batch_size=BATCH)
  assert isinstance(det, detect.RetinaFaceDetector) and det.module.network_name == 'mobile0.25'
  np.testing.assert_array_equal(det([CROP])[0].boxes, ours['crop'].boxes)
  other = tmp_path / 'RealESRGAN_tiny.pth'
  torch.save({'params_ema': official.rrdbnet_arch.RRDBNet(3, 3, scale=4, num_feat=8, num_block=1,
                                                          num_grow_ch=4).state_dict()}, other)
  with pytest.raises(ValueError, match=r"holds a 'rrdbnet' network, not a RetinaFace detector"):
    detect.load_detector(other)
  junk = tmp_path / 'junk.pth'
  torch.save({'foo.weight': torch.zeros(2)}, junk)
  with pytest.raises(ValueError, match='not a RetinaFace detection checkpoint'):
    detect.load_detector(junk)
  with pytest.raises(FileNotFoundError):
    detect.load_detector(tmp_path / 'missing.pth')
  with caplog.at_level(logging.WARNING, logger=detect.__name__):
    haar_det = detect.load_detector(None, batch_size=8, detect_size=None)
  assert isinstance(haar_det, haar.HaarDetector)
  assert any('detection_Resnet50_Final.pth' in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
  with pytest.raises(ValueError, match='unknown detector options'):
    detect.load_detector(None, min_size=3)


def _matched(faces: detect.FaceSet, boxes: np.ndarray) -> list[int]:
  """For each detection, the index of the true face whose box centre is within 0.25 box width; -1 if none."""
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  out = []
  for b in faces.boxes:
    d = np.linalg.norm(centres - (b[:2] + b[2:]) / 2, axis=1)
    out.append(int(d.argmin()) if d.min() < 0.25 * (b[2] - b[0]) else -1)
  return out


def _assert_plausible_landmarks(faces: detect.FaceSet):
  for b, lm in zip(faces.boxes, faces.landmarks):
    x1, y1, x2, y2 = b
    eyes = lm[:2]
    assert np.all((eyes[:, 0] > x1) & (eyes[:, 0] < x2) & (eyes[:, 1] > y1) & (eyes[:, 1] < (y1 + y2) / 2)), (b, lm)
    assert eyes[0, 0] < eyes[1, 0]  # left eye (image left) first
    assert lm[3:, 1].min() > lm[2, 1] > eyes[:, 1].max()  # mouth below the nose, nose below the eyes
    assert lm[3, 0] < lm[4, 0]


@pytest.mark.parametrize('backend', haar.available_backends())
def test_haar_finds_every_composed_face(backend):
  photo = composed.group_photo(5, (512, 768), seed=0)
  (faces,) = haar.HaarDetector(backend=backend)([photo.image])
  matched = _matched(faces, photo.boxes)
  assert sorted(matched) == list(range(5)), matched  # every face once, nothing else
  assert np.all(np.diff(faces.scores) <= 0)
  _assert_plausible_landmarks(faces)
  eye_dist = np.linalg.norm(photo.landmarks[:, 1] - photo.landmarks[:, 0], axis=1)
  err = np.linalg.norm(faces.landmarks[:, :2] - photo.landmarks[matched, :2], axis=2) / eye_dist[matched, None]
  assert err.max() < 0.25, err  # eyes within a quarter of the eye distance


@pytest.mark.parametrize('backend', haar.available_backends())
def test_haar_on_the_astronaut(backend):
  (faces,) = haar.HaarDetector(backend=backend)([ASTRONAUT])
  assert len(faces) == 1
  _assert_plausible_landmarks(faces)
  err = np.linalg.norm(faces.landmarks[0, :2] - composed.ASTRONAUT_LANDMARKS[:2], axis=1)
  assert err.max() < 5, err  # pixels; the eye distance is 43


def test_haar_pieces():
  rects = np.array([[10, 10, 40, 40], [11, 10, 40, 40], [10, 11, 41, 41], [12, 12, 39, 39], [100, 100, 30, 30],
                    [20, 20, 10, 10]])
  grouped, counts = haar.group_rectangles(rects, min_neighbors=2)
  assert grouped.tolist() == [[11, 11, 40, 40]] and counts.tolist() == [4]
  lm = haar.landmarks_from_eyes(haar.align.FFHQ_TEMPLATE_512[None, :2])
  np.testing.assert_allclose(lm[0], haar.align.FFHQ_TEMPLATE_512, atol=1e-9)
  with pytest.raises(ValueError, match='backend must be one of'):
    haar.HaarDetector(backend='dnn')
  if 'opencv' not in haar.available_backends():
    with pytest.raises(ValueError, match='OpenCV 4.x'):
      haar.HaarDetector(backend='opencv')


def test_group_photo():
  a, b = composed.group_photo(3, (300, 500), seed=1), composed.group_photo(3, (300, 500), seed=1)
  np.testing.assert_array_equal(a.image, b.image)
  image, boxes, landmarks = a
  assert image.shape == (300, 500, 3) and image.dtype == np.uint8
  assert boxes.shape == (3, 4) and landmarks.shape == (3, 5, 2)
  inside = (landmarks >= boxes[:, None, :2]) & (landmarks <= boxes[:, None, 2:])
  assert inside.all()
  assert (landmarks[:, 0, 0] < landmarks[:, 1, 0]).all()
  with pytest.raises(ValueError, match='too small to detect'):
    composed.group_photo(40, (200, 200))


def test_bad_inputs(detector, nets):
  with pytest.raises(ValueError, match=r'images\[1\] must be a uint8 RGB \[H, W, 3\] array; got dtype float32'):
    detector([ASTRONAUT, ASTRONAUT.astype(np.float32)])
  with pytest.raises(ValueError, match=r'got dtype uint8, shape \(512, 512\)'):
    detector([ASTRONAUT[..., 0]])
  with pytest.raises(ValueError, match='wrap a single image in a list'):
    detector(ASTRONAUT)
  with pytest.raises(ValueError, match='must be a uint8 RGB'):
    haar.HaarDetector()([np.zeros((40, 40, 4), np.uint8)])
  with pytest.raises(ValueError, match='module must be a gfpgan_jax RetinaFace'):
    detect.RetinaFaceDetector(object(), nets[2])
  with pytest.raises(ValueError, match='detect_size must be an int >= 16'):
    detect.RetinaFaceDetector(nets[1], nets[2], detect_size=8)
  assert detector([]) == []


def test_faceset():
  f = detect.FaceSet(np.arange(8).reshape(2, 4), [0.9, 0.8], np.zeros((2, 10)))
  assert len(f) == 2 and f.landmarks.shape == (2, 5, 2) and f.boxes.dtype == np.float32
  assert len(f.select(1)) == 1 and f.select(1).scores.tolist() == [np.float32(0.8)]
  assert len(f.select(np.array([False, False]))) == 0
  empty = detect.FaceSet.empty()
  assert len(detect.select_faces(empty, (10, 10), only_center_face=True)) == 0
  with pytest.raises(ValueError, match='FaceSet needs boxes'):
    detect.FaceSet(np.zeros((2, 4)), np.zeros(3), np.zeros((2, 5, 2)))
