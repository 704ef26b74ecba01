"""facexlib 0.3.0's `FaceRestoreHelper`, loaded from the official sources for the faces parity tests.

This works like `gfpgan_jax.testing.official`, which it loads first. The
module `facexlib/utils/face_restoration_helper.py` is imported by file path
under fake packages, so no package `__init__` runs. Its imports are served as
follows:
* `torchvision.transforms.functional.normalize`: torchvision's own
  `transforms/functional.py`, loaded by path (pure PyTorch and PIL). If that
  load fails, a substitute with the same formula is used, and `NORMALIZE_SOURCE`
  says which one is in use.
* `facexlib.utils.misc` (`img2tensor`, `imwrite`): the official file.
* `facexlib.detection.init_detection_model` and
  `facexlib.parsing.init_parsing_model`: the official helper downloads weights
  in them. Here they are replaced by functions that build the official networks
  with random weights (RetinaFace mobile0.25, ParseNet 512/19), built once.
  Nothing is downloaded. The tests pick the landmarks and the parse logits
  themselves, so the weights never matter.
"""

import importlib
import sys
import types

from gfpgan_jax.testing import official

_MODULE = None
_MODELS = {}
NORMALIZE_SOURCE = None


def _normalize_substitute(tensor, mean, std, inplace=False):
  """torchvision's normalize formula: (t - mean) / std per channel (CHW)."""
  import torch  # pylint: disable=g-import-not-at-top
  if not inplace:
    tensor = tensor.clone()
  mean = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
  std = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
  tensor.sub_(mean).div_(std)
  return tensor


def _detection_model(model_name, half=False, device='cpu', model_rootpath=None):  # pylint: disable=unused-argument
  if 'det' not in _MODELS:
    o = official.load()
    _MODELS['det'] = o.retinaface.RetinaFace('mobile0.25', phase='test', device='cpu').eval()
  return _MODELS['det']


def _parsing_model(model_name='parsenet', half=False, device='cpu',  # pylint: disable=unused-argument
                   model_rootpath=None):  # pylint: disable=unused-argument
  if 'parse' not in _MODELS:
    o = official.load()
    _MODELS['parse'] = o.parsenet.ParseNet(512, 512, parsing_ch=19).eval()
  return _MODELS['parse']


def load() -> types.ModuleType:
  """Imports `facexlib.utils.face_restoration_helper` (once) with the substitutions above."""
  global _MODULE, NORMALIZE_SOURCE
  if _MODULE is not None:
    return _MODULE
  official.load()
  src = official.fetch()
  fake = official._fake_package  # pylint: disable=protected-access
  fake('facexlib.utils', src / 'facexlib' / 'utils')
  importlib.import_module('facexlib.utils.misc')
  if 'torchvision.transforms' not in sys.modules:
    fake('torchvision.transforms', src / 'torchvision' / 'transforms')
  if 'torchvision.transforms.functional' not in sys.modules:
    try:
      importlib.import_module('torchvision.transforms.functional')
      NORMALIZE_SOURCE = 'official torchvision/transforms/functional.py'
    except Exception:  # pylint: disable=broad-except
      sys.modules.pop('torchvision.transforms.functional', None)
      mod = types.ModuleType('torchvision.transforms.functional')
      mod.normalize = _normalize_substitute
      sys.modules['torchvision.transforms.functional'] = mod
      NORMALIZE_SOURCE = 'substitute'
  else:  # official.load() already imported it (by path, from the official sources)
    NORMALIZE_SOURCE = 'official ' + str(getattr(sys.modules['torchvision.transforms.functional'], '__file__', '?'))
  sys.modules['facexlib.detection'].init_detection_model = _detection_model
  sys.modules['facexlib.parsing'].init_parsing_model = _parsing_model
  _MODULE = importlib.import_module('facexlib.utils.face_restoration_helper')
  # The names the helper's __init__ calls, in its own namespace.
  _MODULE.init_detection_model = _detection_model
  _MODULE.init_parsing_model = _parsing_model
  return _MODULE


def make_helper(upscale: float, use_parse: bool, face_size: int = 512):
  """A `FaceRestoreHelper(upscale, face_size, use_parse=...)` on CPU with random-weight networks."""
  helper_mod = load()
  return helper_mod.FaceRestoreHelper(upscale, face_size=face_size, crop_ratio=(1, 1), det_model='retinaface_resnet50',
                                      save_ext='png', use_parse=use_parse, device='cpu')


class FixedParser:
  """Stands in for `helper.face_parse`: returns given logits, one face per call, in paste order."""

  def __init__(self, logits_nchw):
    """logits_nchw: float [N, 19, 512, 512] (torch layout), returned face by face."""
    self.logits = logits_nchw
    self.calls = 0

  def __call__(self, x):
    import torch  # pylint: disable=g-import-not-at-top
    out = torch.as_tensor(self.logits[self.calls:self.calls + 1])
    self.calls += 1
    return (out, None)
