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


class TorchNotInstalled(ImportError):
  """Reading or writing a `.pth` without PyTorch installed; the message says how to install it."""


TORCH_HINT = 'install the torch extra: pip install -e ".[torch]" (or pip install torch)'


def _torch(path=None):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    what = f'{path}: ' if path is not None else ''
    raise TorchNotInstalled(f'{what}reading or writing .pth files needs PyTorch, which is not installed; '
                            f'{TORCH_HINT}') from e
  return torch


def check_torch(path=None) -> None:
  """Raises TorchNotInstalled (with the install line) when PyTorch is missing."""
  _torch(path)


_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's default format: a zip archive with */data.pkl
# The legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2).
_LEGACY_MAGIC = b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.'


def _check_looks_like_torch(path: pathlib.Path) -> None:
  """Raises ConversionError unless `path` is a torch zip archive or a legacy torch file (by its structure)."""
  import zipfile  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    head = f.read(len(_LEGACY_MAGIC))
  if head.startswith(_ZIP_MAGIC):
    try:
      with zipfile.ZipFile(path) as z:
        if any(n == 'data.pkl' or n.endswith('/data.pkl') for n in z.namelist()):
          return
      why = 'a zip archive without the data.pkl of torch.save'
    except (zipfile.BadZipFile, OSError) as e:
      raise sd_lib.ConversionError(f'{path} is not a readable PyTorch checkpoint (truncated or corrupt?): a damaged '
                                   f'zip archive ({e})') from e
  elif head == _LEGACY_MAGIC:
    return
  else:
    why = 'an empty file' if not head else f'it starts with {head[:8]!r}'
  raise sd_lib.ConversionError(f'{path} is not a PyTorch checkpoint ({why}; a .pth is what torch.save writes)')


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
    TorchNotInstalled: PyTorch is missing (the message gives the install line).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'checkpoint not found: {path}')
  _check_looks_like_torch(path)
  torch = _torch(path)
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [''])[0][:200]
    raise sd_lib.ConversionError(f'{path} is not a readable PyTorch checkpoint (truncated or corrupt?): '
                                 f'{type(e).__name__}: {first}') from e
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
  torch = _torch(path)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = OrderedDict((k, torch.from_numpy(np.array(v, order="C", copy=True))) for k, v in state_dict.items())
  obj = tensors if param_key is None else {param_key: tensors}
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  os.close(fd)
  try:
    torch.save(obj, tmp, _use_new_zipfile_serialization=not legacy_format)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # what open() would give, not mkstemp's 0600
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
