"""OpenCV/numpy reference of the official degradations, per image (tests and benchmark).

This is `FFHQDegradationDataset.__getitem__`'s LQ branch (gfpgan.md 3.1 steps
3-12) written with the same library calls as the official code: basicsr's
kernel formula in float64 numpy, `cv2.filter2D`, `cv2.resize(INTER_LINEAR)`,
numpy noise, `cv2.imencode/imdecode` JPEG at the integer quality the config's
`jpeg_quality_rounding` gives (OpenCV <= 4.5.2 rounded the float), the numpy
colour shift, `cv2.cvtColor(BGR2GRAY)`, torchvision's tensor colour jitter
(its own `_functional_tensor.py`, loaded from the official sources that
`gfpgan_jax.testing.official.fetch` caches) and torch rounding. It works in
BGR until step 10 like the original.

Two entry points:

* `degrade_one(img, p, cfg, noise)` runs the ops with given parameters (the
  per-sample dict of `gfpgan_jax.data.degradations.sample_params`, converted by
  `sample_params_at`), so tests can compare with the JAX ops exactly;
* `degrade_official(img, cfg, rng)` also draws the parameters the way the
  official code does (numpy/python generators), for the benchmark.
"""

import importlib.util
import math
import random

import cv2
import numpy as np

_TV_OPS = None


def torchvision_ops():
  """torchvision's `transforms/_functional_tensor.py` (pure torch), loaded by file path."""
  global _TV_OPS
  if _TV_OPS is None:
    from gfpgan_jax.testing import official  # pylint: disable=g-import-not-at-top
    path = official.fetch() / 'torchvision' / 'transforms' / '_functional_tensor.py'
    spec = importlib.util.spec_from_file_location('gfpgan_jax_reference_tv_functional_tensor', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _TV_OPS = module
  return _TV_OPS


def bivariate_gaussian(kernel_size: int, sig_x: float, sig_y: float, theta: float,
                       isotropic: bool) -> np.ndarray:
  """basicsr `bivariate_Gaussian` (float64, normalised)."""
  ax = np.arange(-kernel_size // 2 + 1., kernel_size // 2 + 1.)
  xx, yy = np.meshgrid(ax, ax)
  grid = np.stack([xx, yy], axis=-1)
  if isotropic:
    sigma = np.array([[sig_x**2, 0], [0, sig_x**2]])
  else:
    d = np.array([[sig_x**2, 0], [0, sig_y**2]])
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    sigma = u @ d @ u.T
  inv = np.linalg.inv(sigma)
  k = np.exp(-0.5 * np.sum(np.dot(grid, inv) * grid, 2))
  return k / np.sum(k)


def sample_params_at(params: dict, i: int) -> dict:
  """Sample i of a batched `sample_params` dict as numpy values (PRNG keys dropped)."""
  return {k: np.asarray(v[i]) for k, v in params.items() if k != 'noise_key'}


def _enabled(cfg, name: str) -> bool:
  value = cfg.get(name, None)
  return bool(value)


def jpeg_quality_int(quality: float, rounding: str = 'round') -> int:
  """The integer quality OpenCV gets: 'round' = `saturate_cast<int>` (cvRound, half to even), 'floor' = int()."""
  if rounding not in ('round', 'floor'):
    raise ValueError(f"JPEG quality rounding must be 'round' or 'floor', got {rounding!r}")
  return int(np.rint(quality)) if rounding == 'round' else int(math.floor(quality))


def jpeg_roundtrip(img_bgr: np.ndarray, quality: float, rounding: str = 'round') -> np.ndarray:
  """basicsr `add_jpg_compression` at `jpeg_quality_int(quality, rounding)` (float image in [0, 1])."""
  img = np.clip(img_bgr, 0, 1)
  # cv2.imencode converts the float image with saturate_cast (round half even).
  img8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
  q = jpeg_quality_int(quality, rounding)
  _, enc = cv2.imencode('.jpg', img8, [int(cv2.IMWRITE_JPEG_QUALITY), q])
  return np.float32(cv2.imdecode(enc, 1)) / 255.0


def _color_jitter_pt(img, order, factors, cfg):
  """`FFHQDegradationDataset.color_jitter_pt` with given order and factors."""
  tv = torchvision_ops()
  fns = (tv.adjust_brightness, tv.adjust_contrast, tv.adjust_saturation, tv.adjust_hue)
  names = ('brightness', 'contrast', 'saturation', 'hue')
  for fn_id in order:
    fn_id = int(fn_id)
    if cfg.get(names[fn_id], None) is not None:
      img = fns[fn_id](img, float(factors[fn_id]))
  return img


def degrade_one(img_rgb: np.ndarray, p: dict, cfg, noise: np.ndarray | None = None) -> np.ndarray:
  """The official LQ pipeline on one image with given parameters.

  Args:
    img_rgb: float32 [H, W, 3] RGB in [0, 1].
    p: per-sample parameters (`sample_params_at`).
    cfg: the degradation config.
    noise: float32 standard normal field, RGB, at least the shrunk size
      (only its top-left part is used); required when noise is on.

  Returns:
    float32 [H, W, 3] RGB LQ image in [0, 1].
  """
  import torch  # pylint: disable=g-import-not-at-top

  h, w, _ = img_rgb.shape
  img = np.ascontiguousarray(img_rgb[..., ::-1], dtype=np.float32)  # BGR
  kernel = bivariate_gaussian(int(cfg.blur_kernel_size), float(p['sigma_x']), float(p['sigma_y']),
                              float(p['theta']), bool(p['kernel_iso']))
  img = cv2.filter2D(img, -1, kernel)
  scale = float(p['scale'])
  img = cv2.resize(img, (int(w // scale), int(h // scale)), interpolation=cv2.INTER_LINEAR)
  if cfg.get('noise_range', None) is not None:
    hs, ws, _ = img.shape
    n = np.ascontiguousarray(noise[:hs, :ws, ::-1], dtype=np.float32)
    img = np.clip(img + n * np.float32(float(p['noise_sigma']) / 255.0), 0, 1)
  if cfg.get('jpeg_range', None) is not None:
    img = jpeg_roundtrip(img, float(p['jpeg_quality']), cfg.get('jpeg_quality_rounding', None) or 'round')
  img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
  if _enabled(cfg, 'color_jitter_prob') and bool(p['shift_apply']):
    img = np.clip(img + np.asarray(p['shift'], np.float32)[::-1], 0, 1)
  if _enabled(cfg, 'gray_prob') and bool(p['gray_apply']):
    img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    img = np.tile(img[:, :, None], [1, 1, 3])
  t = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))  # RGB CHW
  if _enabled(cfg, 'color_jitter_pt_prob') and bool(p['jitter_apply']):
    t = _color_jitter_pt(t, p['jitter_order'], p['jitter_factors'], cfg)
  t = torch.clamp((t * 255.0).round(), 0, 255) / 255.0
  return t.numpy().transpose(1, 2, 0)


def sample_official(cfg, rng: np.random.Generator, py_rng: random.Random) -> dict:
  """Draws one sample's parameters the way `FFHQDegradationDataset` does."""
  kind = py_rng.choices(list(cfg.kernel_list), list(cfg.kernel_prob))[0]
  lo, hi = cfg.blur_sigma
  sigma_x = rng.uniform(lo, hi)
  iso = kind == 'iso'
  sigma_y = sigma_x if iso else rng.uniform(lo, hi)
  theta = 0.0 if iso else rng.uniform(-math.pi, math.pi)
  p = {'kernel_iso': iso, 'sigma_x': sigma_x, 'sigma_y': sigma_y, 'theta': theta,
       'scale': rng.uniform(*cfg.downsample_range)}
  p['noise_sigma'] = rng.uniform(*cfg.noise_range) if cfg.get('noise_range', None) else 0.0
  p['jpeg_quality'] = rng.uniform(*cfg.jpeg_range) if cfg.get('jpeg_range', None) else 100.0
  shift_255 = cfg.get('color_jitter_shift', 20)
  shift = (20.0 if shift_255 is None else float(shift_255)) / 255.0
  p['shift_apply'] = _enabled(cfg, 'color_jitter_prob') and rng.uniform() < cfg.color_jitter_prob
  p['shift'] = rng.uniform(-shift, shift, 3).astype(np.float32)
  p['gray_apply'] = _enabled(cfg, 'gray_prob') and rng.uniform() < cfg.gray_prob
  p['jitter_apply'] = _enabled(cfg, 'color_jitter_pt_prob') and rng.uniform() < cfg.color_jitter_pt_prob
  factors = []
  for name, neutral in (('brightness', 1.0), ('contrast', 1.0), ('saturation', 1.0), ('hue', 0.0)):
    bounds = cfg.get(name, None)
    factors.append(rng.uniform(*bounds) if bounds is not None else neutral)
  p['jitter_factors'] = np.asarray(factors, np.float32)
  p['jitter_order'] = rng.permutation(4)
  return p


def degrade_official(img_rgb: np.ndarray, cfg, rng: np.random.Generator,
                     py_rng: random.Random) -> np.ndarray:
  """Samples parameters and noise like the official code, then `degrade_one`."""
  p = sample_official(cfg, rng, py_rng)
  h, w, _ = img_rgb.shape
  hs, ws = int(h // p['scale']), int(w // p['scale'])
  noise = np.float32(rng.standard_normal((hs, ws, 3))) if cfg.get('noise_range', None) else None
  return degrade_one(img_rgb, p, cfg, noise)
