"""Helpers to compare our networks with the official PyTorch ones."""

import dataclasses

import numpy as np

# The parity bar of the project: relative L2 error and max error relative to the reference peak.
REL_L2_TOL = 1e-5
MAX_ABS_REL_TOL = 1e-4


def randomize_torch_module(module, seed: int = 0, scale: float = 0.1):
  """Gives every all-zero parameter and buffer (biases, noise strengths, BN stats) random values.

  Official initialisations leave many tensors at zero (or BN running stats at
  0/1), which would hide layout or formula errors on those paths. Running
  variances stay positive. Returns the module.
  """
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
      if not p.is_floating_point():
        continue
      if name.endswith('running_var'):
        p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
      elif name.endswith('running_mean') or bool((p == 0).all()):
        p.add_(torch.randn(p.shape, generator=gen) * scale)
  return module


def state_dict_numpy(module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def nchw_to_nhwc(x) -> np.ndarray:
  x = x.detach().cpu().numpy() if hasattr(x, 'detach') else np.asarray(x)
  return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
  # A fresh C-order copy: `np.ascontiguousarray` keeps odd strides on size-1 axes,
  # which PyTorch then reads as channels-last (and propagates through convs).
  return np.array(np.transpose(np.asarray(x), (0, 3, 1, 2)), order='C', copy=True)


@dataclasses.dataclass
class Errors:
  rel_l2: float
  max_abs: float
  ref_peak: float

  @property
  def max_rel(self) -> float:
    return self.max_abs / max(self.ref_peak, 1e-30)

  def ok(self) -> bool:
    return self.rel_l2 <= REL_L2_TOL and self.max_abs <= MAX_ABS_REL_TOL * self.ref_peak

  def __str__(self):
    return f'rel L2 {self.rel_l2:.2e}, max |diff| {self.max_abs:.2e} ({self.max_rel:.2e} of peak {self.ref_peak:.3g})'


def errors(out, ref) -> Errors:
  out = np.asarray(out, np.float64)
  ref = np.asarray(ref, np.float64)
  if out.shape != ref.shape:
    raise AssertionError(f'shape {out.shape} != reference shape {ref.shape}')
  diff = out - ref
  return Errors(float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)), float(np.abs(diff).max()),
                float(np.abs(ref).max()))


def assert_parity(out, ref, what: str = 'output') -> Errors:
  """Asserts the project's float32 parity bar (rel L2 <= 1e-5, max |diff| <= 1e-4 x peak)."""
  err = errors(out, ref)
  assert err.ok(), f'{what}: {err} exceeds rel L2 {REL_L2_TOL} / max {MAX_ABS_REL_TOL} x peak'
  return err


def random_variables(arch: str, seed: int = 0, **kwargs):
  """Random variables with the exact tree of `arch` (no forward pass; for layout-only tests)."""
  import jax  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(seed)

  def fill(s):
    if np.issubdtype(s.dtype, np.integer):
      return rs.randint(0, 1000, s.shape).astype(s.dtype)
    return rs.standard_normal(s.shape).astype(s.dtype)

  return jax.tree.map(fill, archs.abstract_variables(arch, **kwargs))
