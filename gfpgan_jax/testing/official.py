"""Loads the official GFP-GAN architecture files (PyTorch) for parity tests and benchmarks.

The sources are fetched with `pip download --no-deps gfpgan==1.3.8 basicsr==1.4.2
facexlib==0.3.0 realesrgan==0.3.0 torchvision==0.28.0` into a cache directory
(from PyPI; nothing else is downloaded) and only their architecture files are
imported, by file path: their package `__init__`s pull in dependencies that do
not install here, and torchvision's compiled ops need a CUDA build of torch.
realesrgan is fetched for one file, `realesrgan/utils.py` (`RealESRGANer`, the
tiled background upsampler that gfpgan's inference uses).

Two substitutions are made, as the project rules allow, for compiled ops that
have no CPU build here:
* basicsr's `fused_act`: `FusedLeakyReLU`/`fused_leaky_relu` are replaced by
  their formula `scale * leaky_relu(x + bias, 0.2)` (gfpgan.md 1.1);
* torchvision's `nms` (called by facexlib's `py_cpu_nms`): replaced by the
  greedy NMS that torchvision's CPU kernel computes (a stable descending sort
  of the scores; a box is dropped when its IoU with a kept box is > the
  threshold; areas without the +1).
Every other line that runs is the official code (basicsr's own CPU
`upfirdn2d_native`, torchvision's VGG and ResNet definitions and its
pure-PyTorch `roi_align`).
"""

import importlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import zipfile

PACKAGES = ('gfpgan==1.3.8', 'basicsr==1.4.2', 'facexlib==0.3.0', 'realesrgan==0.3.0', 'torchvision==0.28.0')
DEFAULT_CACHE = pathlib.Path(os.environ.get('GFPGAN_JAX_OFFICIAL_DIR',
                                            pathlib.Path.home() / '.cache' / 'gfpgan_jax' / 'official'))


def fetch(cache_dir: pathlib.Path = DEFAULT_CACHE) -> pathlib.Path:
  """Downloads and unpacks the official sources once; returns the source root."""
  cache_dir = pathlib.Path(cache_dir)
  src = cache_dir / 'src'
  if (src / '.complete').exists():
    return src
  cache_dir.mkdir(parents=True, exist_ok=True)
  # Work in a private folder and rename it into place: concurrent test workers
  # (pytest-xdist) may fetch at the same time; the first rename wins.
  work = pathlib.Path(tempfile.mkdtemp(prefix='fetch-', dir=cache_dir))
  try:
    dl, new_src = work / 'dl', work / 'src'
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', '-d', str(dl), *PACKAGES],
                   check=True)
    new_src.mkdir()
    for f in sorted(dl.iterdir()):
      if f.suffix == '.whl':
        with zipfile.ZipFile(f) as z:
          z.extractall(new_src)
      elif f.name.endswith('.tar.gz'):
        with tarfile.open(f) as t:
          t.extractall(new_src, filter='data')
          top = f.name[:-len('.tar.gz')]
          (new_src / top / top.split('-')[0]).rename(new_src / top.split('-')[0])
    (new_src / '.complete').touch()
    try:
      new_src.rename(src)
    except OSError:
      if not (src / '.complete').exists():
        raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return src


def _fake_package(name: str, path: pathlib.Path) -> types.ModuleType:
  """Registers a package whose `__init__` is not executed; its submodules load from `path`."""
  mod = types.ModuleType(name)
  mod.__path__ = [str(path)]
  sys.modules[name] = mod
  parent, _, child = name.rpartition('.')
  if parent:
    setattr(sys.modules[parent], child, mod)
  return mod


def _fused_act_substitute() -> types.ModuleType:
  """basicsr.ops.fused_act with the CUDA op replaced by its formula."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top

  def fused_leaky_relu(input, bias, negative_slope=0.2, scale=2**0.5):  # pylint: disable=redefined-builtin
    if bias is not None:
      input = input + bias.view(1, bias.shape[0], *([1] * (input.ndim - 2)))
    return F.leaky_relu(input, negative_slope=negative_slope) * scale

  class FusedLeakyReLU(nn.Module):

    def __init__(self, channel, negative_slope=0.2, scale=2**0.5):
      super().__init__()
      self.bias = nn.Parameter(torch.zeros(channel))
      self.negative_slope = negative_slope
      self.scale = scale

    def forward(self, input):  # pylint: disable=redefined-builtin
      return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)

  mod = types.ModuleType('basicsr.ops.fused_act')
  mod.FusedLeakyReLU = FusedLeakyReLU
  mod.fused_leaky_relu = fused_leaky_relu
  return mod


def _nms_substitute(boxes, scores, iou_threshold):
  """torchvision.ops.nms as its CPU kernel computes it (pure PyTorch)."""
  import torch  # pylint: disable=g-import-not-at-top
  order = torch.sort(scores, stable=True, descending=True).indices
  x1, y1, x2, y2 = boxes.unbind(1)
  areas = (x2 - x1) * (y2 - y1)
  suppressed = torch.zeros(len(boxes), dtype=torch.bool)
  keep = []
  for i in order.tolist():
    if suppressed[i]:
      continue
    keep.append(i)
    w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
    h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
    inter = w * h
    iou = inter / (areas[i] + areas - inter)
    suppressed |= iou.double() > iou_threshold  # the kernel compares the float IoU in double
  return torch.tensor(keep, dtype=torch.int64)


class Official:
  """The official modules.

  gfpgan/basicsr: `stylegan2_arch`, `gfpganv1_arch`, `gfpganv1_clean_arch`,
  `stylegan2_clean_arch`, `stylegan2_bilinear_arch`, `gfpgan_bilinear_arch`,
  `restoreformer_arch`, `arcface_arch`, `vgg_arch`, `rrdbnet_arch`;
  facexlib: `retinaface`, `retinaface_net`, `retinaface_utils`, `parsenet`;
  realesrgan: `realesrgan_utils` (`RealESRGANer`); torchvision: `tv_vgg`,
  `tv_resnet`, `roi_align`.
  """

  def __init__(self, src: pathlib.Path):
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    src = pathlib.Path(src)
    _fake_package('basicsr', src / 'basicsr')
    for sub in ('archs', 'ops', 'utils'):
      _fake_package(f'basicsr.{sub}', src / 'basicsr' / sub)
    fused = _fused_act_substitute()
    sys.modules['basicsr.ops.fused_act'] = fused
    sys.modules['basicsr.ops'].fused_act = fused
    logger = importlib.import_module('basicsr.utils.logger')
    sys.modules['basicsr.utils'].get_root_logger = logger.get_root_logger
    importlib.import_module('basicsr.utils.registry')
    _fake_package('torchvision', src / 'torchvision')
    _fake_package('torchvision.models', src / 'torchvision' / 'models')
    _fake_package('torchvision.ops', src / 'torchvision' / 'ops')
    sys.modules['torchvision.ops'].nms = _nms_substitute
    _fake_package('gfpgan', src / 'gfpgan')
    _fake_package('gfpgan.archs', src / 'gfpgan' / 'archs')
    self.tv_vgg = importlib.import_module('torchvision.models.vgg')
    self.roi_align = importlib.import_module('torchvision.ops.roi_align')._roi_align  # pylint: disable=protected-access
    self.stylegan2_arch = importlib.import_module('basicsr.archs.stylegan2_arch')
    self.vgg_arch = importlib.import_module('basicsr.archs.vgg_arch')
    self.gfpganv1_arch = importlib.import_module('gfpgan.archs.gfpganv1_arch')
    self.stylegan2_clean_arch = importlib.import_module('gfpgan.archs.stylegan2_clean_arch')
    self.gfpganv1_clean_arch = importlib.import_module('gfpgan.archs.gfpganv1_clean_arch')
    self.arcface_arch = importlib.import_module('gfpgan.archs.arcface_arch')
    self.stylegan2_bilinear_arch = importlib.import_module('gfpgan.archs.stylegan2_bilinear_arch')
    self.gfpgan_bilinear_arch = importlib.import_module('gfpgan.archs.gfpgan_bilinear_arch')
    self.restoreformer_arch = importlib.import_module('gfpgan.archs.restoreformer_arch')
    self.rrdbnet_arch = importlib.import_module('basicsr.archs.rrdbnet_arch')
    # facexlib's RetinaFace builds `torchvision.models.resnet50(pretrained=False)`.
    self.tv_resnet = importlib.import_module('torchvision.models.resnet')
    sys.modules['torchvision.models'].resnet50 = self.tv_resnet.resnet50
    importlib.import_module('torchvision.models._utils')
    _fake_package('facexlib', src / 'facexlib')
    for sub in ('detection', 'parsing'):
      _fake_package(f'facexlib.{sub}', src / 'facexlib' / sub)
    self.retinaface_net = importlib.import_module('facexlib.detection.retinaface_net')
    self.retinaface_utils = importlib.import_module('facexlib.detection.retinaface_utils')
    self.retinaface = importlib.import_module('facexlib.detection.retinaface')
    self.parsenet = importlib.import_module('facexlib.parsing.parsenet')
    _fake_package('realesrgan', src / 'realesrgan')
    self.realesrgan_utils = importlib.import_module('realesrgan.utils')


_LOADED: Official | None = None


def load(cache_dir: pathlib.Path = DEFAULT_CACHE) -> Official:
  """Fetches (once) and imports the official architecture modules."""
  global _LOADED
  if _LOADED is None:
    _LOADED = Official(fetch(cache_dir))
  return _LOADED
