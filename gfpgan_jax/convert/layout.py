"""Tensor layouts between PyTorch state dicts and our Flax variables (gfpgan.md 2.4).

Flax variable paths are the PyTorch key components (list items are named
`style_convs.3`, `nn.Sequential` children '0', '1', ...), so a variable at
path `p` in any collection has the PyTorch key `'.'.join(p)`. Only the axis
order differs, and it is decided by the key alone; every rule is a
permutation, so shapes map both ways:

| PyTorch tensor | PyTorch layout | Flax layout |
|---|---|---|
| conv weight | OIHW | HWIO |
| modulated conv weight | (1, O, I, k, k) | (1, k, k, I, O) |
| linear weight | (out, in) | (in, out) |
| `nn.Embedding` weight (RestoreFormer's codebook, `*.embedding.weight`) | (num, dim) | unchanged |
| `constant_input.weight`, (1,C,1,1) biases, noise buffers | NCHW | NHWC |
| everything else (1-D, scalars) | unchanged | unchanged |
"""

import numpy as np

_CONV = (2, 3, 1, 0)  # OIHW -> HWIO
_MODULATED = (0, 3, 4, 2, 1)  # 1OIHW -> 1HWIO
_NCHW = (0, 2, 3, 1)  # NCHW -> NHWC
_LINEAR = (1, 0)


def torch_to_flax_perm(key: str, ndim: int) -> tuple[int, ...] | None:
  """The axis permutation taking the PyTorch tensor `key` to its Flax layout (None: unchanged)."""
  parts = key.split('.')
  name, parent = parts[-1], (parts[-2] if len(parts) > 1 else '')
  if ndim == 5:
    return _MODULATED
  if ndim == 4:
    return _CONV if name == 'weight' and parent != 'constant_input' else _NCHW
  if ndim == 2 and name == 'weight' and parent != 'embedding':
    return _LINEAR
  return None


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argsort(perm))


def to_flax(key: str, array: np.ndarray) -> np.ndarray:
  perm = torch_to_flax_perm(key, array.ndim)
  return array if perm is None else np.ascontiguousarray(np.transpose(array, perm))


def to_torch(key: str, array: np.ndarray) -> np.ndarray:
  perm = torch_to_flax_perm(key, array.ndim)
  return array if perm is None else np.ascontiguousarray(np.transpose(array, _inverse(perm)))


def torch_shape(key: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of the Flax variable `key` with `flax_shape`."""
  perm = torch_to_flax_perm(key, len(flax_shape))
  return tuple(flax_shape) if perm is None else tuple(flax_shape[i] for i in _inverse(perm))
