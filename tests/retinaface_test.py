"""RetinaFace detection post-processing against facexlib's `detect_faces`, and the module's input checks.

facexlib's answer comes from the official `RetinaFace.detect_faces` itself,
with the network forward replaced by planted `(loc, conf, landmarks)`: its
priors, decoding, threshold, sort and NMS lines run unchanged. With tied
scores facexlib's order depends on NumPy's (unstable, SIMD) default argsort,
so for those scenes the planted `conf` hands detect_faces a NumPy array whose
`argsort` is the stable one (`_StableArgsort`); see the tie rule in
`gfpgan_jax.models.retinaface_post`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gfpgan_jax import xla_options
from gfpgan_jax.convert import archs
from gfpgan_jax.models import layers
from gfpgan_jax.models import retinaface
from gfpgan_jax.models import retinaface_post as post

SIZE = (64, 96)  # (H, W): 252 priors
P = post.num_priors(SIZE)
PRIORS = post.prior_boxes(SIZE)


class _StableArgsort(np.ndarray):
  """An ndarray whose `argsort` is NumPy's stable one (what facexlib's tie order assumes)."""

  def argsort(self, axis=-1, kind=None, order=None, **kwargs):  # pylint: disable=unused-argument
    return np.argsort(np.asarray(self), axis=axis, kind='stable')


class _StableConf(torch.Tensor):
  """A tensor whose `.numpy()` is a `_StableArgsort` (detect_faces reads the scores with `.numpy()`)."""

  def numpy(self, *args, **kwargs):
    return torch.Tensor.numpy(self.as_subclass(torch.Tensor), *args, **kwargs).view(_StableArgsort)


@pytest.fixture(scope='module')
def facexlib(official):
  """`(loc, conf, landmarks [P,k] numpy, conf_thr, nms_thr, stable) -> (boxes, scores, landmarks)` by facexlib."""
  net = official.retinaface.RetinaFace(network_name='mobile0.25', phase='test', device='cpu')
  image = np.zeros((*SIZE, 3), np.uint8)

  def run(loc, conf, lms, conf_threshold, nms_threshold, stable=False):
    c = torch.from_numpy(conf[None].copy())
    planted = (torch.from_numpy(loc[None].copy()), c.as_subclass(_StableConf) if stable else c,
               torch.from_numpy(lms[None].copy()))
    net.forward = lambda x: planted  # the instance attribute shadows the class forward
    try:
      out = np.asarray(net.detect_faces(image, conf_threshold, nms_threshold, use_origin_size=True))
    finally:
      del net.forward
    out = out.reshape(-1, 15)
    return out[:, :4], out[:, 4], out[:, 5:]

  return run


@functools.cache
def _jitted(conf_threshold, nms_threshold, max_candidates, max_detections):
  return xla_options.jit(functools.partial(post.detect, image_size=SIZE, conf_threshold=conf_threshold,
                                           nms_threshold=nms_threshold, max_candidates=max_candidates,
                                           max_detections=max_detections))


def ours(loc, conf, lms, conf_threshold, nms_threshold, max_candidates=1000, max_detections=100):
  """Batched [N,P,k] inputs through the jitted `detect`; returns numpy Detections."""
  det = _jitted(conf_threshold, nms_threshold, max_candidates, max_detections)(loc, conf, lms)
  return post.Detections(*(np.asarray(a) for a in det))


def _encode(prior, box):
  """loc offsets that `decode` turns into `box` (cx, cy, w, h in pixels) for prior index `prior`."""
  pcx, pcy, pw, ph = PRIORS[prior].astype(np.float64)
  cx, cy, w, h = np.asarray(box, np.float64) / [SIZE[1], SIZE[0], SIZE[1], SIZE[0]]
  return [(cx - pcx) / (0.1 * pw), (cy - pcy) / (0.1 * ph), np.log(w / pw) / 0.2, np.log(h / ph) / 0.2]


def scene(planted, seed=0, background=0.5):
  """Planted network outputs: `planted` = {prior index: (score, (cx, cy, w, h) px)}; others score < background."""
  rs = np.random.RandomState(seed)
  loc = (rs.randn(P, 4) * 0.3).astype(np.float32)
  lms = (rs.randn(P, 10) * 0.5).astype(np.float32)
  score = rs.uniform(0, background, P)
  for idx, (s, box) in planted.items():
    loc[idx] = _encode(idx, box)
    score[idx] = s
  conf = np.stack([1 - score, score], -1).astype(np.float32)
  conf[:, 1] = score.astype(np.float32)  # exactly the planted float32 scores
  return loc, conf, lms


def _assert_same(got: post.Detections, i, ref):
  boxes, scores, lms = ref
  n = len(scores)
  assert int(got.count[i]) == n, (int(got.count[i]), n)
  np.testing.assert_array_equal(got.scores[i, :n], scores)
  # Decoding runs the official float32 operations in the official order (no FMA): landmarks are bit-identical,
  # boxes up to exp (XLA's vs PyTorch's Sleef/libm exp differ in the last ulp of some values).
  np.testing.assert_allclose(got.boxes[i, :n], boxes, rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(got.landmarks[i, :n], lms)
  assert not got.scores[i, n:].any() and not got.boxes[i, n:].any() and not got.landmarks[i, n:].any()


# Two faces. Face A: priors 40 (0.95), 41 (0.95, tie), 46 (0.9) overlap heavily, 47 (0.9) overlaps A by
# IoU < 0.4 only. Face B (priors 150, 151, 200) repeats A's scores. 100 sits exactly at the threshold (dropped).
FACES = {
    40: (0.95, (20, 20, 16, 18)), 41: (0.95, (21, 20, 16, 18)), 46: (0.9, (20, 21, 15, 18)),
    47: (0.9, (30, 22, 16, 18)), 150: (0.95, (70, 40, 20, 20)), 151: (0.9, (71, 41, 20, 20)),
    200: (0.95, (60, 50, 12, 12)), 100: (np.float32(0.8), (50, 10, 10, 10)), 101: (0.79, (80, 10, 10, 10)),
}


def test_overlaps_and_ties_match_facexlib(facexlib):
  loc, conf, lms = scene(FACES)
  ref = facexlib(loc, conf, lms, 0.8, 0.4, stable=True)
  got = ours(loc[None], conf[None], lms[None], 0.8, 0.4)
  _assert_same(got, 0, ref)
  # The rule itself, independently of facexlib: ties go to the higher prior index, overlaps are suppressed.
  expected_order = [200, 150, 41, 47]  # 0.95 x3 (desc. index; 40 and 151/46 suppressed), then 0.9
  want = [_decoded_box(loc, i) for i in expected_order]
  np.testing.assert_allclose(got.boxes[0, :4], want, rtol=1e-6, atol=1e-5)


def _decoded_box(loc, i):
  b = np.asarray(post.decode(jnp.asarray(loc[i]), jnp.asarray(PRIORS[i])))
  return b * [SIZE[1], SIZE[0], SIZE[1], SIZE[0]]


def test_many_random_candidates_without_ties_match_unmodified_facexlib(facexlib):
  rs = np.random.RandomState(3)
  loc = (rs.randn(P, 4) * 0.5).astype(np.float32)
  lms = rs.randn(P, 10).astype(np.float32)
  score = rs.permutation(np.linspace(0.0, 1.0, P, dtype=np.float32))  # distinct: no tie anywhere
  conf = np.stack([1 - score, score], -1).astype(np.float32)
  ref = facexlib(loc, conf, lms, 0.3, 0.4)
  assert len(ref[1]) > 20  # many candidates (176 above threshold), many suppressed
  _assert_same(ours(loc[None], conf[None], lms[None], 0.3, 0.4), 0, ref)


def test_many_tied_candidates_match_facexlib(facexlib):
  rs = np.random.RandomState(4)
  loc = (rs.randn(P, 4) * 0.5).astype(np.float32)
  lms = rs.randn(P, 10).astype(np.float32)
  score = rs.choice(np.float32([0.1, 0.85, 0.9, 0.95, 0.99]), P)  # ~200 candidates in 4 tie groups
  conf = np.stack([1 - score, score], -1).astype(np.float32)
  ref = facexlib(loc, conf, lms, 0.8, 0.3, stable=True)
  assert len(ref[1]) > 10 and len(set(ref[1].tolist())) < len(ref[1])
  _assert_same(ours(loc[None], conf[None], lms[None], 0.8, 0.3), 0, ref)


def test_zero_detections(facexlib):
  loc, conf, lms = scene({}, background=0.79)
  ref = facexlib(loc, conf, lms, 0.8, 0.4)
  assert len(ref[1]) == 0
  got = ours(loc[None], conf[None], lms[None], 0.8, 0.4)
  _assert_same(got, 0, ref)


def test_more_candidates_than_outputs_is_facexlibs_prefix(facexlib):
  # Twelve separate faces on a 4 x 3 grid, distinct scores.
  faces = {j * 2 + i * 48: (0.99 - 0.01 * (i * 4 + j), (8 + 22 * j, 8 + 20 * i, 8, 8)) for i in range(3)
           for j in range(4)}
  loc, conf, lms = scene(faces)
  ref = facexlib(loc, conf, lms, 0.8, 0.4)
  assert len(ref[1]) == 12
  prefix = lambda k: tuple(r[:k] for r in ref)
  _assert_same(ours(loc[None], conf[None], lms[None], 0.8, 0.4, max_detections=5), 0, prefix(5))
  _assert_same(ours(loc[None], conf[None], lms[None], 0.8, 0.4, max_candidates=8), 0, prefix(8))


def test_batch_of_two_with_different_counts(facexlib):
  a = scene(FACES)
  b = scene({10: (0.97, (12, 12, 14, 14))}, seed=1)
  got = ours(*(np.stack([x, y]) for x, y in zip(a, b)), 0.8, 0.4)
  assert got.boxes.shape == (2, 100, 4) and got.scores.shape == (2, 100) and got.landmarks.shape == (2, 100, 10)
  assert got.count.tolist() == [4, 1]
  _assert_same(got, 0, facexlib(*a, 0.8, 0.4, stable=True))
  _assert_same(got, 1, facexlib(*b, 0.8, 0.4))


def test_detect_is_traced_once_and_checks_shapes():
  traces = []

  def f(loc, conf, lms):
    traces.append(1)
    return post.detect(loc, conf, lms, SIZE, max_detections=7)

  jf = jax.jit(f)
  for seed in range(2):
    loc, conf, lms = scene(FACES, seed=seed)
    det = jf(loc[None], conf[None], lms[None])
    assert det.boxes.shape == (1, 7, 4) and int(det.count[0]) == 4
  assert len(traces) == 1
  loc, conf, lms = scene({})
  with pytest.raises(ValueError, match=r'expected loc \[N,252,4\]'):
    post.detect(loc[None, :-1], conf[None], lms[None], SIZE)


def test_float32_threshold_decides_like_a_double_comparison():
  for t in (0.4, 0.3, 0.5, 0.97, 0.8):
    f = post.float32_threshold(t)
    xs = np.nextafter(np.float32(t), np.float32([-np.inf, np.inf])).tolist() + [float(np.float32(t))]
    for x in np.float32(xs):
      assert bool(x > f) == (float(x) > t), (t, x)


@pytest.mark.parametrize('in_size,out_size', [(5, 9), (9, 17), (7, 13), (13, 26), (34, 68), (68, 135), (4, 4)])
def test_nearest_indices_match_f_interpolate(in_size, out_size):
  x = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
  ref = torch.nn.functional.interpolate(x, size=[out_size, 1], mode='nearest').view(-1).long().numpy()
  np.testing.assert_array_equal(retinaface.nearest_indices(in_size, out_size), ref)


def test_module_rejects_bad_inputs():
  key = jax.random.key(0)
  m = retinaface.RetinaFace(network_name='mobile0.25')
  with pytest.raises(ValueError, match=r'\[N,H,W,3\].*\(64, 64, 3\)'):
    jax.eval_shape(m.init, key, jnp.zeros((64, 64, 3)))
  with pytest.raises(ValueError, match=r'\[N,H,W,3\].*\(1, 3, 64, 64\)'):  # NCHW by mistake
    jax.eval_shape(m.init, key, jnp.zeros((1, 3, 64, 64)))
  with pytest.raises(ValueError, match='network_name must be one of'):
    jax.eval_shape(retinaface.RetinaFace(network_name='resnet18').init, key, jnp.zeros((1, 64, 64, 3)))


def test_make_detector_is_preprocess_forward_detect():
  module, _ = archs.build('retinaface_mobilenet0.25')
  variables = archs.init('retinaface_mobilenet0.25', jax.random.key(0))
  images = np.random.RandomState(0).randint(0, 256, (2, *SIZE, 3)).astype(np.uint8)
  kw = dict(conf_threshold=0.5, max_detections=20)
  got = xla_options.jit(post.make_detector(module, SIZE, **kw))(variables, images)
  outs = xla_options.jit(module.apply)(variables, images.astype(np.float32) - np.float32([104, 117, 123]))
  want = xla_options.jit(functools.partial(post.detect, image_size=SIZE, **kw))(*outs)
  assert int(want.count.min()) > 0
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match='built for image size'):
    post.make_detector(module, SIZE)(variables, images[:, :32])


@pytest.mark.parametrize('stride,shape', [(1, (2, 9, 12, 8)), (2, (1, 11, 8, 16))])
def test_depthwise_taps_equal_grouped_conv2d(stride, shape):
  x = jnp.asarray(np.random.RandomState(0).randn(*shape).astype(np.float32))
  dw = retinaface.DepthwiseConv2d(3, stride)
  variables = dw.init(jax.random.key(0), x)
  assert variables['params']['weight'].shape == (3, 3, 1, shape[-1])
  grouped = layers.Conv2d(shape[-1], 3, stride=stride, padding=1, use_bias=False, groups=shape[-1])
  ref = grouped.apply(variables, x)  # the same {'weight': [3,3,1,C]} tree
  np.testing.assert_allclose(np.asarray(dw.apply(variables, x)), np.asarray(ref), rtol=1e-5, atol=1e-6)
  assert ref.shape == (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), shape[-1])
  with pytest.raises(ValueError, match='divisible by groups'):
    layers.Conv2d(6, 3, groups=4).init(jax.random.key(0), x)
