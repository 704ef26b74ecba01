"""Reading and writing official `.pth` checkpoints (needs the `torch` extra)."""

from collections import OrderedDict
from collections.abc import Mapping
import os
import pathlib
import tempfile

import numpy as np

from gfpgan_jax.convert import state_dict as sd_lib

# Where the official tools look for the weights, in the order GFPGANer tries them.
PARAM_KEYS = ('params_ema', 'params')


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('reading or writing .pth files needs PyTorch: pip install "gfpgan_jax[torch]"') from e
  return torch


def read_pth(path: str | os.PathLike, param_key: str | None = None) -> tuple[dict[str, np.ndarray], str | None]:
  """Reads an official checkpoint (zip or legacy serialization) into a flat numpy state dict.

  Takes `params_ema`, else `params`, else the bare dict (or exactly `param_key`
  when given) and strips a `module.` prefix.

  Args:
    path: the `.pth` file.
    param_key: force this top-level key.

  Returns:
    (state dict in PyTorch layout, the top-level key used or None for a bare dict).

  Raises:
    FileNotFoundError: no such file.
    ConversionError: not a PyTorch checkpoint, or no state dict inside.
  """
  torch = _torch()
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'checkpoint not found: {path}')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise sd_lib.ConversionError(f'{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e}') from e
  if not isinstance(obj, Mapping):
    raise sd_lib.ConversionError(f'{path} holds a {type(obj).__name__}, not a state dict')
  used = None
  keys = [param_key] if param_key else [k for k in PARAM_KEYS if isinstance(obj.get(k), Mapping)]
  if keys:
    if keys[0] not in obj:
      raise sd_lib.ConversionError(f'{path} has no {keys[0]!r}; top-level keys: {sorted(obj)}')
    used, obj = keys[0], obj[keys[0]]
  bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
  if bad:
    raise sd_lib.ConversionError(f'{path}: entries {bad[:8]} are not tensors; top-level keys: {sorted(obj)[:8]}')
  sd = {k: sd_lib.to_numpy(v) for k, v in sd_lib.strip_module_prefix(obj).items()}
  return sd, used


def write_pth(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray], param_key: str | None = 'params_ema',
              legacy_format: bool = False) -> None:
  """Writes `{param_key: state_dict}` (or the bare dict) atomically.

  Args:
    path: output `.pth`.
    state_dict: flat `{key: np.ndarray}` in PyTorch layout.
    param_key: top-level key, or None for a bare state dict.
    legacy_format: use the pre-1.6 (non-zip) serialization, as the official
      conversion script does.
  """
  torch = _torch()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = OrderedDict((k, torch.from_numpy(np.array(v, order="C", copy=True))) for k, v in state_dict.items())
  obj = tensors if param_key is None else {param_key: tensors}
  fd, tmp = tempfile.mkstemp(prefix=path.name, suffix='.tmp', dir=path.parent)
  os.close(fd)
  try:
    torch.save(obj, tmp, _use_new_zipfile_serialization=not legacy_format)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
