"""Recognises which official architecture (and options) a PyTorch state dict belongs to.

Used for error hints, `--arch auto` and by `load_network`/`load_generator` on
a bare `.pth`. Shapes give every option that changes a shape. The others are
assumed at the values of the released files:
* `input_is_latent=True` (every released GFP-GAN);
* GFPGANBilinear has exactly GFPGANv1's keys and shapes (gfpgan.md 1.7), so its
  files are recognised as 'gfpganv1'; pass the arch 'gfpganbilinear';
* ParseNet: `min_feat_size=32` (only in_size / min_feat_size is in the shapes),
  `relu_type`, `ch_range`;
* RRDBNet: `num_in_ch == num_out_ch` (the scale is then read from conv_first);
* RestoreFormer: `head_size=8`, and the deepest attention level at 16 px (which gives `resolution`;
  512 without attention).
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


def _parsenet_options(sd: Mapping[str, Any]) -> dict[str, Any]:
  down = _count(sd, r'encoder\.(\d+)\.') - 1
  up = _count(sd, r'decoder\.(\d+)\.')
  res = _count(sd, r'body\.(\d+)\.')
  base = sd['encoder.0.conv2d.weight'].shape[0]
  norm = 'bn' if any(k.endswith('norm.norm.running_mean') for k in sd) else (
      'gn' if any(k.endswith('norm.norm.weight') for k in sd) else 'none')  # 'in', 'pixel': no keys, as 'none'
  relu = 'PReLU' if any(k.endswith('.relu.func.weight') for k in sd) else 'LeakyReLU'  # others: no keys
  # ch_range: the released (32, 256) if it gives these channels, else the observed extremes (which do).
  seen = [sd[f'encoder.{i}.conv1.conv2d.weight'].shape[0] for i in range(1, down + 1)]
  seen += [sd['body.0.conv1.conv2d.weight'].shape[0]] * min(res, 1)
  seen += [sd[f'decoder.{i}.conv1.conv2d.weight'].shape[0] for i in range(up)]
  seen.append(sd['out_mask_conv.conv2d.weight'].shape[1])

  def channels(lo, hi):
    clip = lambda c: max(lo, min(c, hi))  # noqa: E731
    out = [clip(base * 2**(i + 1)) for i in range(down)] + [clip(base * 2**down)] * min(res, 1)
    head = base * 2**down
    for _ in range(up):
      head //= 2
      out.append(clip(head))
    return out + [clip(head)]

  ch_range = next((r for r in ((32, 256), (min(seen + [base]), max(seen + [base]))) if channels(*r) == seen),
                  (32, 256))
  return {'in_size': 32 * 2**down, 'out_size': 32 * 2**up, 'base_ch': base,
          'parsing_ch': sd['out_mask_conv.conv2d.weight'].shape[0], 'res_depth': res, 'relu_type': relu,
          'norm_type': norm, 'ch_range': ch_range}


def _rrdbnet_options(sd: Mapping[str, Any]) -> dict[str, Any]:
  c_in, c_out = sd['conv_first.weight'].shape[1], sd['conv_last.weight'].shape[0]
  scale = {1: 4, 4: 2, 16: 1}[c_in // c_out] if c_in % c_out == 0 else None
  if scale is None:
    raise ValueError('conv_first / conv_last channels fit no scale')
  return {'num_in_ch': c_out, 'num_out_ch': c_out, 'scale': scale, 'num_feat': sd['conv_first.weight'].shape[0],
          'num_block': _count(sd, r'body\.(\d+)\.rdb1\.'),
          'num_grow_ch': sd['body.0.rdb1.conv1.weight'].shape[0]}


def _restoreformer_options(sd: Mapping[str, Any]) -> dict[str, Any]:
  n_embed, embed_dim = sd['quantize.embedding.weight'].shape
  ch = sd['encoder.conv_in.weight'].shape[0]
  levels = _count(sd, r'encoder\.down\.(\d+)\.')
  ch_mult = tuple(sd[f'encoder.down.{i}.block.0.conv1.weight'].shape[0] // ch for i in range(levels))
  z_channels = sd['post_quant_conv.weight'].shape[0]
  # Only which levels attend is in the keys: put the deepest one at the released 16 px (the latent size of every
  # config the official decoder can run, since it attends to the encoder's last level only).
  attn_levels = [i for i in range(levels) if f'encoder.down.{i}.attn.0.q.weight' in sd]
  resolution = 16 * 2**max(attn_levels) if attn_levels else 512
  attn = tuple(resolution // 2**i for i in attn_levels)
  return {'n_embed': n_embed, 'embed_dim': embed_dim, 'ch': ch, 'out_ch': sd['decoder.conv_out.weight'].shape[0],
          'ch_mult': ch_mult, 'num_res_blocks': _count(sd, r'encoder\.down\.0\.block\.(\d+)\.'),
          'attn_resolutions': attn, 'in_channels': sd['encoder.conv_in.weight'].shape[1], 'z_channels': z_channels,
          'double_z': sd['encoder.conv_out.weight'].shape[0] == 2 * z_channels,
          'enable_mid': 'encoder.mid.block_1.conv1.weight' in sd, 'resolution': resolution}


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
    if 'ClassHead.0.conv1x1.weight' in sd:
      if 'body.conv1.weight' in sd:
        return 'retinaface_resnet50', {}
      if 'body.stage1.0.0.weight' in sd:
        return 'retinaface_mobilenet0.25', {}
    if 'out_mask_conv.conv2d.weight' in sd and 'encoder.0.conv2d.weight' in sd:
      return 'parsenet', _parsenet_options(sd)
    if 'conv_first.weight' in sd and 'body.0.rdb1.conv1.weight' in sd:
      return 'rrdbnet', _rrdbnet_options(sd)
    if 'quantize.embedding.weight' in sd and 'encoder.conv_in.weight' in sd:
      return 'restoreformer', _restoreformer_options(sd)
  except (KeyError, IndexError, AttributeError, ValueError):
    return None
  return None


# Archs whose state dicts have exactly the keys and shapes of another arch (gfpgan.md 1.7).
SAME_KEYS_AS = {'gfpganbilinear': 'gfpganv1', 'stylegan2bilinear': 'stylegan2'}


def options_for(sd: Mapping[str, Any], arch: str) -> dict[str, Any]:
  """The options read from the keys of `sd` when they belong to `arch` (or to its key twin), else `{}`.

  Lets an explicit arch (`--arch rrdbnet`, `--arch gfpganbilinear`) still take
  the sizes from the file instead of the released defaults.
  """
  found = detect_arch(sd)
  if found is None or found[0] not in (arch, SAME_KEYS_AS.get(arch)):
    return {}
  return found[1]


def describe(sd: Mapping[str, Any]) -> str:
  """A one-line hint naming the arch a state dict looks like."""
  found = detect_arch(sd)
  if found is None:
    return 'the keys match none of the known architectures'
  arch, opts = found
  return f'the keys look like arch {arch!r} with {opts}'
