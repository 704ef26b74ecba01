"""The official GFP-GAN training iteration in PyTorch, built from our config (benchmarks and tests).

`GFPGANModel` itself cannot be imported here (its package `__init__`s need a
full basicsr with compiled ops and a data/registry setup), so its methods are
compiled from the official source files, as `tests/losses_test.py` does for
the loss helpers, and bound to a small stand-in class:

* from `gfpgan/models/gfpgan_model.py` (`GFPGANModel`): `feed_data`,
  `setup_optimizers`, `construct_img_pyramid`, `get_roi_regions`, `_gram_mat`,
  `gray_resize_for_identity` and `optimize_parameters` (gfpgan.md 3.4);
* from `basicsr/models/base_model.py` (`BaseModel`): `get_optimizer`,
  `model_ema`, `get_bare_model`, `reduce_loss_dict`.

The stand-in's constructor does what `GFPGANModel.init_training_settings`
does, with the official classes for every network (`GFPGANv1`/`GFPGANv1Clean`,
`StyleGAN2Discriminator`, three `FacialComponentDiscriminator`s,
`ResNetArcFace`, basicsr's `PerceptualLoss` on its `VGGFeatureExtractor`) and
the official loss modules (`L1Loss`, `PerceptualLoss`, `GANLoss`), with the
options and weights of our config instead of the yml. Random weights: the
official initialisation under `torch.manual_seed(seed)`.

Three documented deviations, all needed to run it at all on this setup:

* `roi_align` is torchvision's pure-PyTorch `_roi_align` (its compiled ops are
  not installed). Its adaptive-sampling path materialises a
  [K, C, out, out, H, W] tensor (10^10 elements at 512 px), so boxes run with
  `sampling_ratio = ceil(box / out)`, grouped by that value, which is the same
  arithmetic (`official_roi_align`).
* `get_roi_regions` multiplies its sizes by `face_ratio = int(out_size / 512)`,
  which is 0 below 512 px. The crops use the config's `loss.eye_size` and
  `loss.mouth_size` with `face_ratio` 1 (exactly the official 80/120 at 512).
* `setup_optimizers` passes `betas=(0**1, 0.99**1)`, an int and a float,
  which torch >= 2.9 rejects; `get_optimizer` converts the betas to floats.
"""

import ast
import contextlib
import functools
import importlib
import math
import os
import pathlib
import sys
import tempfile
import types
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

COMPONENTS = ('left_eye', 'right_eye', 'mouth')
_MODEL_METHODS = ('feed_data', 'setup_optimizers', 'construct_img_pyramid', 'get_roi_regions', '_gram_mat',
                  'gray_resize_for_identity', 'optimize_parameters')
_BASE_METHODS = ('get_optimizer', 'model_ema', 'get_bare_model', 'reduce_loss_dict')
# Constructor options of the official generators that our generator_kwargs may leave out.
_G_DEFAULTS = {'gfpganv1': dict(resample_kernel=(1, 3, 3, 1), lr_mlp=0.01), 'gfpganv1clean': {}}


def basicsr_losses(official) -> types.SimpleNamespace:
  """basicsr.losses.{basic_loss, gan_loss}, imported by file path like the other official modules.

  Args:
    official: `gfpgan_jax.testing.official.load()` (it registers the `basicsr` package).
  """
  del official
  if 'basicsr.losses' not in sys.modules:
    pkg = types.ModuleType('basicsr.losses')
    pkg.__path__ = [str(pathlib.Path(sys.modules['basicsr'].__path__[0]) / 'losses')]
    sys.modules['basicsr.losses'] = pkg
  return types.SimpleNamespace(basic=importlib.import_module('basicsr.losses.basic_loss'),
                               gan=importlib.import_module('basicsr.losses.gan_loss'))


def per_gpu_discriminator(official, stddev_per_gpu_batch: int = 0, **kwargs):
  """basicsr's `StyleGAN2Discriminator(**kwargs)` with its minibatch stddev on slices of `stddev_per_gpu_batch`.

  This is the data-parallel official run on one device: basicsr's forward, but the statistic (its lines, as
  they are) is computed on each consecutive slice of `stddev_per_gpu_batch` images, one GPU's batch, while the
  convolutions run once on the whole batch (as fast as the one-GPU official D). 0 = basicsr's D itself. Same
  parameters and state-dict keys.
  """
  import torch  # pylint: disable=g-import-not-at-top
  base = official.stylegan2_arch.StyleGAN2Discriminator
  if not stddev_per_gpu_batch:
    return base(**kwargs)

  class PerGPU(base):

    def forward(self, x):
      out = self.conv_body(x)
      b, c, h, w = out.shape
      stats = []
      for part in out.split(stddev_per_gpu_batch):  # basicsr's forward on each GPU's slice
        group = min(part.shape[0], self.stddev_group)
        stddev = part.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdims=True).squeeze(2)
        stats.append(stddev.repeat(group, 1, h, w))
      out = self.final_conv(torch.cat([out, torch.cat(stats)], 1))
      return self.final_linear(out.view(b, -1))

  return PerGPU(**kwargs)


def official_roi_align(official):
  """`torchvision.ops.roi_align(input, boxes, output_size)` through torchvision's pure-PyTorch code.

  The adaptive sampling grid of a box is `ceil(size / out)` per axis; boxes
  with the same grid run in one call with that explicit `sampling_ratio`,
  which computes exactly what the adaptive path computes for them.
  """
  import torch  # pylint: disable=g-import-not-at-top
  fn = getattr(official.roi_align, '__wrapped__', official.roi_align)  # not the lazy torch.compile wrapper

  def roi_align(input, boxes, output_size):  # pylint: disable=redefined-builtin
    grid_w = torch.ceil(torch.clamp(boxes[:, 3] - boxes[:, 1], min=1.0) / output_size).long()
    grid_h = torch.ceil(torch.clamp(boxes[:, 4] - boxes[:, 2], min=1.0) / output_size).long()
    if not bool((grid_w == grid_h).all()):
      raise ValueError('roi_align shim: boxes must have equal sampling grids on both axes')
    out = input.new_empty((boxes.shape[0], input.shape[1], output_size, output_size))
    for g in torch.unique(grid_w).tolist():
      idx = torch.nonzero(grid_w == g).squeeze(1)
      out[idx] = fn(input, boxes[idx], 1.0, output_size, output_size, int(g), False)
    return out

  return roi_align


def _compile_methods(path: pathlib.Path, class_name: str, names: tuple[str, ...],
                     namespace: dict[str, Any]) -> dict[str, Any]:
  """The functions `names` of class `class_name` in the source file `path`, compiled in `namespace`."""
  tree = ast.parse(path.read_text())
  cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
  fns = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in names]
  missing = set(names) - {f.name for f in fns}
  if missing:
    raise RuntimeError(f'{path}: {class_name} has no {sorted(missing)}')
  for f in fns:
    f.decorator_list = []  # BaseModel's @master_only etc. are not among the methods used
  exec(compile(ast.Module(body=fns, type_ignores=[]), str(path), 'exec'), namespace)  # pylint: disable=exec-used
  return {n: namespace[n] for n in names}


def official_methods(official) -> dict[str, Any]:
  """GFPGANModel's and BaseModel's methods used by a training iteration, compiled from the official sources."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  from torch.nn.parallel import DataParallel  # pylint: disable=g-import-not-at-top
  from torch.nn.parallel import DistributedDataParallel  # pylint: disable=g-import-not-at-top

  losses = basicsr_losses(official)
  root = pathlib.Path(official.gfpganv1_arch.__file__).parents[2]
  namespace = {'torch': torch, 'F': F, 'OrderedDict': OrderedDict, 'math': math,
               'roi_align': official_roi_align(official), 'r1_penalty': losses.gan.r1_penalty,
               'DataParallel': DataParallel, 'DistributedDataParallel': DistributedDataParallel}
  methods = _compile_methods(root / 'gfpgan' / 'models' / 'gfpgan_model.py', 'GFPGANModel', _MODEL_METHODS,
                             dict(namespace))
  methods.update(_compile_methods(root / 'basicsr' / 'models' / 'base_model.py', 'BaseModel', _BASE_METHODS,
                                  dict(namespace)))
  return methods


@contextlib.contextmanager
def _chdir(path):
  cwd = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(cwd)


def _perceptual_loss(official, losses, layer_weights: dict[str, float], perceptual_weight: float,
                     style_weight: float):
  """basicsr `PerceptualLoss` (GFP-GAN's options) on a randomly initialised torchvision VGG19.

  `VGGFeatureExtractor` loads torchvision weights from the relative path
  `VGG_PRETRAIN_PATH` (or downloads them), so the random VGG19 is saved there
  in a temporary directory, as `cases.training.vgg_official` does.

  Returns:
    (loss module, the torchvision VGG19 state dict as numpy arrays).
  """
  import torch  # pylint: disable=g-import-not-at-top
  tv = official.tv_vgg.vgg19(weights=None)
  tv_state = {k: v.detach().cpu().numpy().copy() for k, v in tv.state_dict().items()}
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / official.vgg_arch.VGG_PRETRAIN_PATH
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    with _chdir(tmp), warnings.catch_warnings():
      warnings.filterwarnings('ignore', message='.*(pretrained|weight enum).*')  # its vgg19(pretrained=False)
      loss = losses.basic.PerceptualLoss(layer_weights=dict(layer_weights), vgg_type='vgg19', use_input_norm=True,
                                         range_norm=True, perceptual_weight=perceptual_weight,
                                         style_weight=style_weight, criterion='l1')
  return loss, tv_state


class _ModelBase:
  """Attributes of basicsr's BaseModel that the compiled methods read."""

  def __init__(self, device):
    import torch  # pylint: disable=g-import-not-at-top
    self.device = torch.device(device)
    self.is_train = True
    self.schedulers = []
    self.optimizers = []


def build(config, official=None, seed: int = 0, device: str = 'cpu'):
  """The official model state of one training run configured by our `config` (configs/ffhq.py).

  Args:
    config: the experiment ConfigDict (model, loss, optim and data.resolution are read).
    official: `gfpgan_jax.testing.official.load()` (loaded when None).
    seed: `torch.manual_seed` for the random initialisation.
    device: torch device ('cpu' or 'cuda').

  Returns:
    An object with the official `GFPGANModel` methods bound: `feed_data(data)`
    then `optimize_parameters(current_iter)` is one official iteration;
    `log_dict` holds its losses afterwards. `torch_state_dicts()` gives the
    random weights as numpy arrays for conversion to our Flax variables.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if official is None:
    from gfpgan_jax.testing import official as official_lib  # pylint: disable=g-import-not-at-top
    official = official_lib.load()
  losses = basicsr_losses(official)
  methods = official_methods(official)
  m, lc, o = config.model, config.loss, config.optim
  res = int(config.data.resolution)

  def get_roi_regions(self, eye_out_size=80, mouth_out_size=120):
    # The official sizes are 80/120 x int(out_size / 512): 0 below 512 px (module docstring).
    del eye_out_size, mouth_out_size
    return methods['get_roi_regions'](self, eye_out_size=int(lc.eye_size), mouth_out_size=int(lc.mouth_size))

  def get_optimizer(self, optim_type, params, lr, **kwargs):
    # setup_optimizers passes betas=(0**1, 0.99**1) = (int 0, float); torch >= 2.9 rejects mixed types.
    if 'betas' in kwargs:
      kwargs['betas'] = tuple(float(b) for b in kwargs['betas'])
    return methods['get_optimizer'](self, optim_type, params, lr, **kwargs)

  def torch_state_dicts(self):
    sd = lambda net: {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}  # no aliasing
    out = {'g': sd(self.net_g), 'd': sd(self.net_d)}
    if self.use_facial_disc:
      out['dc'] = {c: sd(getattr(self, f'net_d_{c}')) for c in COMPONENTS}
    if self.use_identity:
      out['arcface'] = sd(self.network_identity)
    if self.cri_perceptual is not None:
      out['vgg19'] = self.vgg_torchvision_state
    return out

  cls = type('GFPGANModel', (_ModelBase,), dict(methods, get_roi_regions=get_roi_regions, get_optimizer=get_optimizer,
                                                 torch_state_dicts=torch_state_dicts))
  model = cls(device)
  torch.manual_seed(seed)
  if m.generator not in _G_DEFAULTS:
    raise ValueError(f'unsupported generator {m.generator!r}')
  g_kwargs = dict(_G_DEFAULTS[m.generator], **m.generator_kwargs.to_dict())
  g_kwargs['out_size'] = res
  g_cls = (official.gfpganv1_arch.GFPGANv1 if m.generator == 'gfpganv1' else
           official.gfpganv1_clean_arch.GFPGANv1Clean)
  g_kwargs.update(decoder_load_path=None, fix_decoder=bool(m.fix_decoder))
  g_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in g_kwargs.items()}
  model.opt = {
      'dist': False,
      'network_g': {'out_size': 512},  # only read by get_roi_regions' face_ratio (see module docstring)
      'train': {
          'optim_g': {'type': 'Adam', 'lr': o.g_lr},
          'optim_d': {'type': 'Adam', 'lr': o.d_lr},
          'optim_component': {'type': 'Adam', 'lr': o.dc_lr},
          'pyramid_loss_weight': lc.pyramid_weight,
          'remove_pyramid_loss': lc.remove_pyramid_loss,
          'comp_style_weight': lc.comp_style_weight,
          'identity_weight': lc.identity_weight,
      },
  }
  model.log_size = int(math.log(res, 2))

  # ---- GFPGANModel.__init__ / init_training_settings, with our options
  model.net_g = g_cls(**g_kwargs).to(model.device)
  d_kwargs = dict(m.discriminator_kwargs.to_dict(), out_size=res)
  model.net_d = per_gpu_discriminator(official, **d_kwargs).to(model.device)
  model.net_g_ema = g_cls(**g_kwargs).to(model.device)
  model.model_ema(0)  # copy net_g weight
  model.net_g.train()
  model.net_d.train()
  model.net_g_ema.eval()
  model.use_facial_disc = bool(m.use_components)
  if model.use_facial_disc:
    for c in COMPONENTS:
      net = official.gfpganv1_arch.FacialComponentDiscriminator().to(model.device)
      net.train()
      setattr(model, f'net_d_{c}', net)
    model.cri_component = losses.gan.GANLoss('vanilla', real_label_val=1.0, fake_label_val=0.0,
                                            loss_weight=lc.component_gan_weight).to(model.device)
  model.cri_pix = losses.basic.L1Loss(loss_weight=lc.pixel_weight, reduction='mean').to(model.device)
  if lc.perceptual_weight or lc.style_weight:
    model.cri_perceptual, model.vgg_torchvision_state = _perceptual_loss(
        official, losses, {k: float(v) for k, v in lc.vgg_layer_weights.items()}, float(lc.perceptual_weight),
        float(lc.style_weight))
    model.cri_perceptual = model.cri_perceptual.to(model.device)
  else:
    model.cri_perceptual = None
  model.cri_l1 = losses.basic.L1Loss(loss_weight=1.0, reduction='mean').to(model.device)
  model.cri_gan = losses.gan.GANLoss('wgan_softplus', real_label_val=1.0, fake_label_val=0.0,
                                    loss_weight=lc.gan_weight).to(model.device)
  model.use_identity = bool(m.use_identity)
  if model.use_identity:
    a_kwargs = m.arcface_kwargs.to_dict()
    a_kwargs['layers'] = list(a_kwargs['layers'])
    model.network_identity = official.arcface_arch.ResNetArcFace(**a_kwargs).to(model.device)
    model.network_identity.eval()
    for param in model.network_identity.parameters():
      param.requires_grad = False
  model.r1_reg_weight = lc.r1_weight
  model.net_d_iters = 1
  model.net_d_init_iters = 0
  model.net_d_reg_every = int(lc.d_reg_every)
  model.setup_optimizers()
  return model


def make_data(gt: np.ndarray, lq: np.ndarray, locs: dict[str, np.ndarray]) -> dict[str, Any]:
  """The official data-loader batch: NCHW float32 tensors in [-1, 1] and float32 [B, 4] boxes.

  Args:
    gt, lq: float32 NHWC RGB in [-1, 1].
    locs: {'left_eye', 'right_eye', 'mouth'} -> [B, 4] (x1, y1, x2, y2).
  """
  import torch  # pylint: disable=g-import-not-at-top
  to_t = lambda x: torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), np.float32))
  data = {'gt': to_t(gt), 'lq': to_t(lq)}
  data.update({f'loc_{c}': torch.from_numpy(np.asarray(locs[c], np.float32)) for c in COMPONENTS})
  return data


def use_stored_noise(model) -> None:
  """Makes the official G run on its stored noise buffers (`randomize_noise=False`) in every iteration.

  `optimize_parameters` calls `net_g(lq, return_rgb=...)`, which draws fresh
  decoder noise; with this the call uses `noises.noise{i}` instead, so an
  iteration is a deterministic function of the weights and the batch.
  """
  forward = model.net_g.forward
  model.net_g.forward = functools.partial(forward, randomize_noise=False)


def _networks(model) -> dict[str, Any]:
  nets = {'g': model.net_g, 'd': model.net_d}
  if model.use_facial_disc:
    nets['dc'] = {c: getattr(model, f'net_d_{c}') for c in COMPONENTS}
  return nets


def load_weights(model, state_dicts: dict[str, Any]) -> None:
  """Puts weights from `torch_state_dicts()` back into G, D and the component Ds, and clears their gradients.

  The optimiser and EMA states are left as they are (an iteration's losses and
  gradients do not depend on them).
  """
  import torch  # pylint: disable=g-import-not-at-top

  def load(net, sd):
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    for p in net.parameters():
      p.grad = None

  nets = _networks(model)
  load(nets['g'], state_dicts['g'])
  load(nets['d'], state_dicts['d'])
  for c, net in nets.get('dc', {}).items():
    load(net, state_dicts['dc'][c])


def gradients(model) -> dict[str, Any]:
  """The gradients the last iteration left on each trained network, as float32 numpy arrays.

  `optimize_parameters` zeroes each optimiser before its backward pass and
  steps without zeroing after, so after an iteration `.grad` holds exactly
  that iteration's gradient: G of the G loss, D of `l_d` (+ `l_d_r1`), each
  component D of its own loss.

  Returns:
    {'g': {name: array or None}, 'd': {...}, 'dc': {component: {...}}} by
    parameter name (the state-dict key); None for a parameter without a
    gradient (e.g. the decoder under `fix_decoder`).
  """
  def grads(net):
    return {n: None if p.grad is None else p.grad.detach().cpu().numpy().astype(np.float32).copy()
            for n, p in net.named_parameters()}

  nets = _networks(model)
  out = {'g': grads(nets['g']), 'd': grads(nets['d'])}
  if 'dc' in nets:
    out['dc'] = {c: grads(net) for c, net in nets['dc'].items()}
  return out
