"""Parity cases of the retinaface family: facexlib `RetinaFace` (ResNet-50 and MobileNet-0.25), test phase.

The input is a realistic preprocessed photo range (BGR minus the mean
(104, 117, 123): U(-123, 152)). 480x640 has exact 2x FPN upsampling; the odd
135x203 MobileNet case (levels 17x26, 9x13, 5x7) exercises the general
nearest-neighbour index rule: rows 5 -> 9 -> 17 and columns 7 -> 13 are not 2x.
"""

import numpy as np

from gfpgan_jax.testing.cases.base import Case
from gfpgan_jax.testing.cases.base import jit as _jit
from gfpgan_jax.testing.cases.base import to_torch as _t

OUTPUTS = ('loc', 'conf', 'landmarks')


def condition(tm, size=(96, 128), seed=0):
  """Rescales every conv weight of `tm` in place so that it outputs unit RMS on an image-range input.

  With the official (untrained) initialisation and random BatchNorm statistics
  nothing normalises the activations: in ResNet-50 they grow to ~1e3 by the
  heads and the softmax saturates, so float32 rounding (rel 1e-7) of logits in
  the hundreds becomes a 4e-4 difference of the class probabilities. A trained
  detector has O(1) activations; this data-dependent rescaling (one forward
  pass, before `randomize_torch_module` sets the BN statistics around (0, 1))
  gives the random network that scale. Returns `tm`.
  """
  import torch  # pylint: disable=g-import-not-at-top

  def hook(module, args, out):
    del args
    rms = out.detach().pow(2).mean().sqrt().clamp(min=1e-12)
    with torch.no_grad():
      module.weight.div_(rms)
      if module.bias is not None:
        module.bias.div_(rms)
    return out / rms

  handles = [m.register_forward_hook(hook) for m in tm.modules() if isinstance(m, torch.nn.Conv2d)]
  gen = torch.Generator().manual_seed(seed)
  try:
    with torch.no_grad():
      tm(torch.rand((1, 3, *size), generator=gen) * 275.0 - 123.0)
  finally:
    for h in handles:
      h.remove()
  return tm


def _official(network_name):

  def build(o, kw):
    del kw  # the arch options are just `network_name`
    return condition(o.retinaface.RetinaFace(network_name=network_name, phase='test', device='cpu').eval())

  return build


def _inputs(h, w, batch=1):
  return lambda rs: {'x': rs.uniform(-123.0, 152.0, (batch, h, w, 3)).astype(np.float32)}


def _torch(m, inp):
  return {k: v.numpy() for k, v in zip(OUTPUTS, m(_t(inp['x'])))}


def _flax(module, variables, inp):
  return dict(zip(OUTPUTS, _jit(module.apply)(variables, inp['x'])))


# The R50 case is `heavy`: its round-trip forward at 480x640 takes ~30 s on 2 cores (the parity test runs it).
CASES = [
    Case('retinaface_resnet50', 'retinaface_resnet50', dict(network_name='resnet50'), _official('resnet50'),
         _inputs(480, 640), _torch, _flax, heavy=True),
    Case('retinaface_mobilenet0.25', 'retinaface_mobilenet0.25', dict(network_name='mobile0.25'),
         _official('mobile0.25'), _inputs(480, 640), _torch, _flax),
    Case('retinaface_mobilenet0.25_odd', 'retinaface_mobilenet0.25', dict(network_name='mobile0.25'),
         _official('mobile0.25'), _inputs(135, 203, 2), _torch, _flax),
]
