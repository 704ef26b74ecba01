"""RetinaFace post-processing on the device: priors, box/landmark decoding, threshold, top-k and greedy NMS.

What facexlib 0.3.0 `RetinaFace.detect_faces` does after the network, with
static shapes so that it jits and batches:

1. `boxes = decode(loc, priors) * [W, H, W, H] / resize`,
   `landmarks = decode_landm(landmarks, priors) * [W, H] * 5 / resize`,
   `scores = conf[..., 1]` (`PriorBox` of the network input size, variances
   (0.1, 0.2), no clipping);
2. keep `scores > conf_threshold`, order by score, descending;
3. greedy NMS (torchvision's CPU kernel): a candidate is dropped when its IoU
   with an already kept box is `> nms_threshold`; IoU = inter / (area_a +
   area_b - inter) with areas `(x2 - x1) * (y2 - y1)` (no +1), in float32.

Static shapes: step 2 keeps the `max_candidates` best candidates (`lax.top_k`)
and the NMS returns at most `max_detections` boxes, padded with zeros, plus
the number of valid ones per image. Greedy NMS decides a candidate from the
higher-ranked ones only, so the result is exactly the first `count`
detections facexlib returns (all of them when fewer than `max_detections`
survive and none comes from beyond the `max_candidates` best scores).

Tie rule. Equal scores are ordered by prior index, **higher index first**.
That is the order facexlib's `scores.argsort()[::-1]` gives with a stable
argsort, which torchvision's descending sort then keeps. facexlib does not
itself guarantee it: NumPy's default argsort is not stable (NumPy >= 2 with
AVX-512/AVX2 dispatch reorders ties even in 5-element arrays) and
torchvision's CPU `nms` sorts with `stable=False` (PyTorch's CPU sort keeps
ties only up to 16 elements), so with ties facexlib's order depends on the
NumPy build and the CPU; ours is this documented, deterministic rule.

Threshold rule. torchvision compares the float32 IoU with the threshold as a
C++ double (`ovr > iou_threshold`); we compare in float32 with the largest
float32 not above the threshold, which decides every float32 IoU the same way.
"""

from collections.abc import Callable, Sequence
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Array = jax.Array

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
MEAN_BGR = (104.0, 117.0, 123.0)
# facexlib `detect_faces` defaults; FaceRestoreHelper detects with conf 0.97 (gfpgan.md section 4).
CONF_THRESHOLD = 0.8
NMS_THRESHOLD = 0.4


class Detections(NamedTuple):
  """Detections of a batch, best first, padded with zeros past `count`.

  Attributes:
    boxes: [N,K,4] (x1, y1, x2, y2) in input-image pixels.
    scores: [N,K] face probabilities.
    landmarks: [N,K,10] five (x, y) points: left eye, right eye, nose, left
      and right mouth corner.
    count: [N] int32, the number of valid detections of each image.
  """
  boxes: Array
  scores: Array
  landmarks: Array
  count: Array


def preprocess(images_bgr: Array) -> Array:
  """`detect_faces` input: BGR [N,H,W,3] (uint8 or float) -> float32 minus the mean (104, 117, 123)."""
  return jnp.asarray(images_bgr).astype(jnp.float32) - jnp.asarray(MEAN_BGR, jnp.float32)


def feature_sizes(image_size: Sequence[int]) -> list[tuple[int, int]]:
  """The (rows, cols) of the three prior levels: ceil(H/s), ceil(W/s) for s in 8, 16, 32."""
  h, w = image_size
  return [(math.ceil(h / s), math.ceil(w / s)) for s in STEPS]


def num_priors(image_size: Sequence[int]) -> int:
  return sum(len(m) * r * c for m, (r, c) in zip(MIN_SIZES, feature_sizes(image_size)))


def prior_boxes(image_size: Sequence[int]) -> np.ndarray:
  """facexlib `PriorBox(cfg, image_size).forward()` (clip False): [P,4] float32 (cx, cy, w, h), relative.

  Order: level, row i, column j, min size; computed in float64 as the
  official Python floats are, then rounded to float32 as `torch.Tensor` does.
  """
  h, w = (int(v) for v in image_size)
  out = []
  for min_sizes, step, (rows, cols) in zip(MIN_SIZES, STEPS, feature_sizes((h, w))):
    i, j, k = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(len(min_sizes)), indexing='ij')
    size = np.asarray(min_sizes, np.float64)[k]
    cx = (j + 0.5) * step / w
    cy = (i + 0.5) * step / h
    out.append(np.stack([cx, cy, size / w, size / h], axis=-1).reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def _unfused(x: Array) -> Array:
  """`x` (a product), kept from being contracted with the following add into an FMA.

  XLA's LLVM back end always allows FMA contraction (`c + a * b` rounded once),
  which moves 1-2% of the decoded values by an ulp away from PyTorch's separate
  multiply and add; `optimization_barrier` and `reduce_precision` do not stop it
  (both are removed before fusion). A NaN-preserving select, the identity on
  every value, does.
  """
  return jnp.where(x == x, x, jnp.nan)  # pylint: disable=comparison-with-itself


def decode(loc: Array, priors: Array, variances: Sequence[float] = VARIANCES) -> Array:
  """facexlib `decode`: [...,P,4] offsets -> (x1, y1, x2, y2), relative.

  The official float32 operations in the official order, each rounded (no
  FMA), so the result is bit-identical to PyTorch's up to its `exp`.
  """
  p_xy, p_wh = priors[..., :2], priors[..., 2:]
  cxcy = p_xy + _unfused(loc[..., :2] * variances[0] * p_wh)
  wh = p_wh * jnp.exp(loc[..., 2:] * variances[1])
  xy1 = cxcy - _unfused(wh / 2)
  return jnp.concatenate([xy1, wh + xy1], axis=-1)


def decode_landm(pre: Array, priors: Array, variances: Sequence[float] = VARIANCES) -> Array:
  """facexlib `decode_landm`: [...,P,10] offsets -> five (x, y) points, relative (bit-identical, no FMA)."""
  p_xy, p_wh = priors[..., :2], priors[..., 2:]
  return jnp.concatenate(
      [p_xy + _unfused(pre[..., 2 * k:2 * k + 2] * variances[0] * p_wh) for k in range(5)], axis=-1)


def float32_threshold(threshold: float) -> np.float32:
  """The largest float32 <= `threshold`: for float32 x, `x > it` iff `x > threshold` in double precision."""
  t = np.float32(threshold)
  if float(t) > float(threshold):
    t = np.nextafter(t, np.float32(-np.inf))
  return t


def greedy_nms(boxes: Array, valid: Array, iou_threshold: float, max_output: int) -> tuple[Array, Array]:
  """torchvision's greedy NMS over candidates already in priority order.

  Args:
    boxes: [M,4] (x1, y1, x2, y2), best candidate first.
    valid: [M] bool, which rows are candidates at all.
    iou_threshold: a candidate whose IoU with a kept box is > this is dropped.
    max_output: static maximum number of kept boxes.

  Returns:
    `(keep [max_output] int32 row indices, padded with 0; count int32)`.
    Iterates once per kept box (a `while_loop`), not once per candidate.
  """
  thr = float32_threshold(iou_threshold)
  x1, y1, x2, y2 = (boxes[:, c] for c in range(4))
  areas = (x2 - x1) * (y2 - y1)

  def cond(state):
    alive, _, n = state
    return jnp.any(alive) & (n < max_output)

  def body(state):
    alive, keep, n = state
    i = jnp.argmax(alive)  # the best remaining candidate: every better one is kept or suppressed
    w = jnp.maximum(0.0, jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1))
    h = jnp.maximum(0.0, jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1))
    inter = w * h
    iou = inter / (areas[i] + areas - inter)
    alive = (alive & ~(iou > thr)).at[i].set(False)
    return alive, keep.at[n].set(i.astype(jnp.int32)), n + 1

  init = (valid, jnp.zeros((max_output,), jnp.int32), jnp.zeros((), jnp.int32))
  _, keep, count = lax.while_loop(cond, body, init)
  return keep, count


def detect(loc: Array,
           conf: Array,
           landmarks: Array,
           image_size: Sequence[int],
           *,
           conf_threshold: float = CONF_THRESHOLD,
           nms_threshold: float = NMS_THRESHOLD,
           resize: float = 1.0,
           max_candidates: int = 1000,
           max_detections: int = 100) -> Detections:
  """facexlib `detect_faces` after the network, batched (see the module docstring for the rules).

  Args:
    loc: [N,P,4] network box offsets.
    conf: [N,P,2] class probabilities (after the softmax).
    landmarks: [N,P,10] network landmark offsets.
    image_size: static (H, W) of the network input (P must be its prior count).
    conf_threshold: keep scores strictly above it (static).
    nms_threshold: NMS IoU threshold (static).
    resize: the factor the image was resized by before the network; boxes
      and landmarks are divided by it (facexlib's `self.resize`).
    max_candidates: static number of best-scoring candidates the NMS sees.
    max_detections: static number of output slots K.

  Returns:
    `Detections` with K = max_detections, in original-image pixels.

  Raises:
    ValueError: on inconsistent shapes.
  """
  h, w = (int(v) for v in image_size)
  p = num_priors((h, w))
  n = loc.shape[0]
  if loc.shape != (n, p, 4) or conf.shape != (n, p, 2) or landmarks.shape != (n, p, 10):
    raise ValueError(f'detect: expected loc [N,{p},4], conf [N,{p},2], landmarks [N,{p},10] for image size '
                     f'{(h, w)}, got {tuple(loc.shape)}, {tuple(conf.shape)}, {tuple(landmarks.shape)}')
  priors = jnp.asarray(prior_boxes((h, w)))
  scale = jnp.asarray([w, h, w, h], jnp.float32)
  scale1 = jnp.asarray([w, h] * 5, jnp.float32)
  boxes = decode(loc.astype(jnp.float32), priors) * scale
  lms = decode_landm(landmarks.astype(jnp.float32), priors) * scale1
  if resize != 1:
    boxes, lms = boxes / resize, lms / resize
  scores = conf[..., 1].astype(jnp.float32)
  m = min(int(max_candidates), p)
  k = int(max_detections)

  def one(boxes, scores, lms):
    valid = scores > conf_threshold
    masked = jnp.where(valid, scores, -jnp.inf)
    # top_k puts the lower index first among equal values; on the reversed array that is the higher prior index.
    _, ridx = lax.top_k(masked[::-1], m)
    idx = (p - 1) - ridx
    keep, count = greedy_nms(boxes[idx], valid[idx], nms_threshold, k)
    sel = idx[keep]
    ok = jnp.arange(k) < count
    return (jnp.where(ok[:, None], boxes[sel], 0.0), jnp.where(ok, scores[sel], 0.0),
            jnp.where(ok[:, None], lms[sel], 0.0), count)

  return Detections(*jax.vmap(one)(boxes, scores, lms))


def make_detector(module: Any, image_size: Sequence[int], **detect_kwargs) -> Callable[[Any, Array], Detections]:
  """`(variables, images_bgr [N,H,W,3]) -> Detections`: preprocess, the RetinaFace forward and `detect`.

  Args:
    module: a `gfpgan_jax.models.retinaface.RetinaFace`.
    image_size: the static (H, W) of the images.
    **detect_kwargs: options of `detect` (thresholds, `max_candidates`,
      `max_detections`).

  Returns:
    A pure function to `jax.jit` (e.g. with `gfpgan_jax.xla_options.jit`).
  """
  size = tuple(int(v) for v in image_size)

  def run(variables, images_bgr):
    if tuple(images_bgr.shape[1:3]) != size:
      raise ValueError(f'detector built for image size {size}, got images {tuple(images_bgr.shape)}')
    loc, conf, lms = module.apply(variables, preprocess(images_bgr))
    return detect(loc, conf, lms, size, **detect_kwargs)

  return run
