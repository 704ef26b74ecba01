"""PyTorch state dict <-> Flax variables, strictly: every key is used exactly once or nothing loads."""

from collections.abc import Mapping
from typing import Any

from flax import traverse_util
import numpy as np

from gfpgan_jax.convert import archs
from gfpgan_jax.convert import layout
from gfpgan_jax.models import vgg


class ConversionError(ValueError):
  """A state dict does not match the requested architecture (nothing was converted)."""


def _flat_abstract(arch: str, kwargs: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...], Any]]:
  """torch key -> (collection, flax path, ShapeDtypeStruct) for every variable of the arch."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(archs.abstract_variables(arch, **kwargs)).items():
    out['.'.join(path[1:])] = (path[0], path[1:], leaf)
  return out


def _listing(title: str, items: list[str], limit: int = 12) -> str:
  if not items:
    return ''
  shown = '\n'.join(f'    {s}' for s in items[:limit])
  more = f'\n    ... and {len(items) - limit} more' if len(items) > limit else ''
  return f'\n  {title} ({len(items)}):\n{shown}{more}'


def _fail(arch: str, cfg: dict[str, Any], missing, unexpected, mismatched, hint: str = ''):
  msg = (f'state dict does not match arch {arch!r} with {cfg}; nothing was converted.' +
         _listing('missing keys', sorted(missing)) + _listing('unexpected keys', sorted(unexpected)) +
         _listing('shape mismatches (key: given vs expected, PyTorch layout)', mismatched))
  if hint:
    msg += f'\n  hint: {hint}'
  raise ConversionError(msg)


# ------------------------------------------------------------------------------
# Arch-specific key handling (only VGG19 has any).
# ------------------------------------------------------------------------------


def _vgg_from_torch(sd: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, np.ndarray]:
  """Accepts torchvision `vgg19-*.pth` (`features.{i}.*`, `classifier.*`) or basicsr extractor keys.

  torchvision's `classifier.*` and the layers after the last requested one are
  not part of the feature extractor and are dropped; the extractor's `mean` /
  `std` buffers must equal the ImageNet constants.
  """
  names = vgg.layer_names(cfg['vgg_type'])
  last = max(names.index(n) for n in cfg['layer_name_list'])
  out = {}
  for key, value in sd.items():
    parts = key.split('.')
    if parts[0] == 'classifier':
      continue
    if parts[0] == 'features' and len(parts) == 3 and parts[1].isdigit():
      idx = int(parts[1])
      if idx < len(names) and idx > last:
        continue
      key = f'vgg_net.{names[idx]}.{parts[2]}' if idx < len(names) else key
    elif key in ('mean', 'std'):
      ref = vgg.IMAGENET_MEAN if key == 'mean' else vgg.IMAGENET_STD
      if not np.allclose(np.asarray(value).reshape(-1), ref, atol=1e-6):
        raise ConversionError(f'VGG input-normalisation buffer {key!r} is {np.asarray(value).ravel()}, '
                              f'expected the ImageNet {key} {ref}')
      continue
    elif parts[0] == 'vgg_net' and len(parts) == 3 and parts[1] in names and names.index(parts[1]) > last:
      continue
    out[key] = value
  return out


def _vgg_to_torch(sd: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, np.ndarray]:
  if cfg['use_input_norm']:
    sd['mean'] = np.asarray(vgg.IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    sd['std'] = np.asarray(vgg.IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
  return sd


_FROM_TORCH_HOOKS = {'vgg19': _vgg_from_torch}
_TO_TORCH_HOOKS = {'vgg19': _vgg_to_torch}


# ------------------------------------------------------------------------------
# Public API.
# ------------------------------------------------------------------------------


def to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor
    value = value.detach().cpu()
    if str(value.dtype) in ('torch.bfloat16', 'torch.float16'):
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes the `module.` prefix that DataParallel/DDP add to every key."""
  return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def torch_to_flax(state_dict: Mapping[str, Any], arch: str, **arch_kwargs) -> dict[str, Any]:
  """Converts an official PyTorch state dict to Flax variables.

  Args:
    state_dict: `{key: numpy array or torch tensor}` in PyTorch layout (a
      `module.` prefix is stripped).
    arch: one of `archs.ARCHS` (e.g. 'gfpganv1clean').
    **arch_kwargs: constructor options over the released defaults of `arch`.

  Returns:
    Nested dict `{collection: {...: np.ndarray}}` ('params', plus 'noises'
    for generators, 'batch_stats' for ArcFace), float32 (int32 counters).

  Raises:
    ConversionError: listing every missing key, unexpected key and shape
      mismatch; nothing is returned in that case.
  """
  cfg = archs.get(arch).config(**arch_kwargs)
  sd = {k: to_numpy(v) for k, v in strip_module_prefix(state_dict).items()}
  if arch in _FROM_TORCH_HOOKS:
    sd = _FROM_TORCH_HOOKS[arch](sd, cfg)
  expected = _flat_abstract(arch, cfg)
  missing = set(expected) - set(sd)
  unexpected = set(sd) - set(expected)
  mismatched = []
  for key in sorted(set(sd) & set(expected)):
    want = layout.torch_shape(key, expected[key][2].shape)
    if tuple(sd[key].shape) != want:
      mismatched.append(f'{key}: {tuple(sd[key].shape)} vs {want}')
  if missing or unexpected or mismatched:
    from gfpgan_jax.convert import detect  # pylint: disable=g-import-not-at-top
    _fail(arch, cfg, missing, unexpected, mismatched, detect.describe(sd))
  flat = {}
  for key, (collection, path, leaf) in expected.items():
    flat[(collection, *path)] = layout.to_flax(key, sd[key]).astype(leaf.dtype)
  return traverse_util.unflatten_dict(flat)


def check_variables(variables: Mapping[str, Any], arch: str, **arch_kwargs) -> dict[str, np.ndarray]:
  """Checks that `variables` are exactly those of `arch`; returns them flat by PyTorch key.

  Raises:
    ConversionError: listing missing, unexpected and mis-shaped variables.
  """
  cfg = archs.get(arch).config(**arch_kwargs)
  expected = _flat_abstract(arch, cfg)
  given = {'.'.join(p[1:]): v for p, v in traverse_util.flatten_dict(dict(variables)).items()}
  missing = set(expected) - set(given)
  unexpected = set(given) - set(expected)
  mismatched = [
      f'{k}: {layout.torch_shape(k, np.shape(given[k]))} vs {layout.torch_shape(k, expected[k][2].shape)}'
      for k in sorted(set(given) & set(expected)) if tuple(np.shape(given[k])) != tuple(expected[k][2].shape)
  ]
  if missing or unexpected or mismatched:
    _fail(arch, cfg, missing, unexpected, mismatched)
  return given


def flax_to_torch(variables: Mapping[str, Any], arch: str, **arch_kwargs) -> dict[str, np.ndarray]:
  """Converts Flax variables to an official PyTorch state dict (numpy arrays).

  The result loads into the official class with `load_state_dict(strict=True)`
  (after `torch.from_numpy`); counters become int64 as in PyTorch.

  Raises:
    ConversionError: if `variables` does not match `arch` with `arch_kwargs`.
  """
  cfg = archs.get(arch).config(**arch_kwargs)
  given = check_variables(variables, arch, **cfg)
  sd = {}
  for key, value in given.items():
    value = layout.to_torch(key, np.asarray(value))
    sd[key] = value.astype(np.int64) if np.issubdtype(value.dtype, np.integer) else value.astype(np.float32)
  if arch in _TO_TORCH_HOOKS:
    sd = _TO_TORCH_HOOKS[arch](sd, cfg)
  return sd
