"""Recognises which official architecture (and options) a PyTorch state dict belongs to.

Used for error hints and by `load_generator` on a bare `.pth`. Shapes give
every generator option except `input_is_latent`, which is True for every
released GFP-GAN model and is assumed.
"""

from collections.abc import Mapping
import math
import re
from typing import Any


_DECODER_BASE = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def _count(sd: Mapping[str, Any], pattern: str) -> int:
  rx = re.compile(pattern)
  return len({m.group(1) for k in sd if (m := rx.match(k))})


def _decoder_options(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  levels = _count(sd, re.escape(prefix) + r'to_rgbs\.(\d+)\.')
  out_size = 2**(levels + 2)
  c4 = sd[prefix + 'constant_input.weight'].shape[1]
  narrow = c4 / 512
  c_out = sd[f'{prefix}to_rgbs.{levels - 1}.modulated_conv.weight'].shape[2]
  cm = c_out / (_DECODER_BASE.get(out_size, 512) * narrow) if out_size >= 64 else 1
  opts = {
      'out_size': out_size,
      'num_style_feat': sd[prefix + 'style_conv1.modulated_conv.modulation.weight'].shape[1],
      'num_mlp': _count(sd, re.escape(prefix) + r'style_mlp\.(\d+)\.weight'),
      'channel_multiplier': int(round(cm)) if abs(cm - round(cm)) < 1e-6 else cm,
      'narrow': int(narrow) if narrow == int(narrow) else narrow,
  }
  return opts


def detect_arch(sd: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
  """Returns `(arch, kwargs)` for a PyTorch state dict, or None if unrecognised.

  Args:
    sd: `{key: array}` with `.shape` attributes, in PyTorch layout.
  """
  sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
  try:
    if 'conv_body_first.weight' in sd or 'conv_body_first.0.weight' in sd:
      arch = 'gfpganv1clean' if 'conv_body_first.weight' in sd else 'gfpganv1'
      opts = _decoder_options(sd, 'stylegan_decoder.')
      feat = opts['num_style_feat']
      n_latent = int(math.log2(opts['out_size'])) * 2 - 2
      opts['different_w'] = sd['final_linear.weight'].shape[0] == n_latent * feat
      c_in = sd['condition_scale.0.0.weight'].shape[0]
      opts['sft_half'] = sd['condition_scale.0.2.weight'].shape[0] == c_in
      opts['input_is_latent'] = True
      return arch, opts
    if 'style_conv1.bias' in sd:
      return 'stylegan2clean', _decoder_options(sd, '')
    if 'style_conv1.activate.bias' in sd:
      return 'stylegan2', _decoder_options(sd, '')
    if 'conv_body.0.0.weight' in sd:
      c_first = sd['conv_body.0.0.weight'].shape[0]
      blocks = _count(sd, r'conv_body\.(\d+)\.conv1\.')
      out_size = 2**(blocks + 2)
      narrow = sd['final_conv.0.weight'].shape[0] / 512
      cm = c_first / (_DECODER_BASE.get(out_size, 512) * narrow) if out_size >= 64 else 1
      return 'stylegan2_discriminator', {'out_size': out_size, 'channel_multiplier': int(round(cm)),
                                         'narrow': int(narrow) if narrow == int(narrow) else narrow}
    if 'conv1.0.weight' in sd and 'final_conv.0.weight' in sd and 'conv5.0.weight' in sd:
      return 'facial_component_discriminator', {}
    if 'layer1.0.bn0.weight' in sd:
      layers = tuple(_count(sd, rf'layer{i}\.(\d+)\.bn0\.weight') for i in range(1, 5))
      return 'arcface', {'layers': layers, 'use_se': any('.se.' in k for k in sd)}
    if 'features.0.weight' in sd or 'vgg_net.conv1_1.weight' in sd:
      return 'vgg19', {}
  except (KeyError, IndexError, AttributeError, ValueError):
    return None
  return None


def describe(sd: Mapping[str, Any]) -> str:
  """A one-line hint naming the arch a state dict looks like."""
  found = detect_arch(sd)
  if found is None:
    return 'the keys match none of the known architectures'
  arch, opts = found
  return f'the keys look like arch {arch!r} with {opts}'
