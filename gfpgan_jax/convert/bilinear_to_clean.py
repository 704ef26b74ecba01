"""Exact conversion of bilinear-arch variables to the clean arch (gfpgan.md 1.7).

GFP-GAN v1.2-v1.4 were trained as `GFPGANBilinear` and released as
`GFPGANv1Clean` after `scripts/convert_gfpganv_to_clean.py` (GFPGAN repo):
both compute the same function; the clean arch only folds the runtime
equalized-lr scales (s = 1/sqrt(fan_in), `lr_mlp` for the mapping MLP) and
the sqrt(2) gains of the fused / scaled leaky ReLUs into the stored weights.

    clean_vars = bilinear_to_clean(bilinear_vars)   # GFPGANBilinear -> GFPGANv1Clean
    # or StyleGAN2GeneratorBilinear -> StyleGAN2GeneratorClean

Rules (r2 = sqrt(2); keys as PyTorch's, i.e. our variable paths joined by '.'):

| bilinear | clean | value |
|---|---|---|
| `style_mlp.{n}.weight` / `.bias` (n = 1..) | `style_mlp.{2n-1}.*` | w * lr_mlp * s * r2 ; b * lr_mlp * r2 |
| `*.modulation.weight` / `.bias` | same | w * s ; b |
| `style_conv*.activate.bias` [C] | `style_conv*.bias` [1,1,1,C] | b * r2 |
| `style_conv*.modulated_conv.weight`, `to_rgb*.modulated_conv.weight` | same | w * s |
| `style_conv*.weight` (noise strength) | same | w * r2 |
| `to_rgb*.bias`, `constant_input.weight`, noise buffers | same | unchanged |
| `conv_body_first` / `final_conv` `.0.weight`, `.1.bias` | `.weight`, `.bias` | w * s * r2 ; b * r2 |
| `conv_body_{down,up}.i.conv1.{0.weight,1.bias}` | `.conv1.{weight,bias}` | w * s * r2 ; b * r2 |
| down `conv2.{1.weight,2.bias}`; up `conv2.{weight,activation.bias}` | `.conv2.{weight,bias}` | w * s ; b |
| down `skip.1.weight`; up `skip.weight` | `.skip.weight` | w * s / r2 |
| `toRGB.i.*`, `final_linear.*` | same | w * s ; b |
| `condition_*.i.0.weight` / `.bias` | same | w * s * r2 ; b * r2 |
| `condition_*.i.2.weight` / `.bias` | same | w * s ; b |

(The scale of a demodulated conv's weight cancels in the demodulation up to
its 1e-8 eps; it is applied anyway, as the official script does.)

Unlike the official script this never aliases or modifies its input, and it
rejects any variable it has no rule for. Only bilinear interpolation has a
clean counterpart: variables of a `StyleGAN2GeneratorBilinear` built with
`interpolation_mode='nearest'` convert, but the clean network will not
compute the same function.
"""

from collections.abc import Mapping
import math
from typing import Any

from flax import traverse_util
import numpy as np

R2 = math.sqrt(2.0)

# (block kind, path inside the block) -> (clean path inside the block, scale by 1/sqrt(fan_in), constant factor)
_RULES: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, ...], bool, float]] = {
    ('conv_layer', ('0', 'weight')): (('weight',), True, R2),
    ('conv_layer', ('1', 'bias')): (('bias',), False, R2),
    ('down', ('conv1', '0', 'weight')): (('conv1', 'weight'), True, R2),
    ('down', ('conv1', '1', 'bias')): (('conv1', 'bias'), False, R2),
    ('down', ('conv2', '1', 'weight')): (('conv2', 'weight'), True, 1.0),
    ('down', ('conv2', '2', 'bias')): (('conv2', 'bias'), False, 1.0),
    ('down', ('skip', '1', 'weight')): (('skip', 'weight'), True, 1 / R2),
    ('up', ('conv1', '0', 'weight')): (('conv1', 'weight'), True, R2),
    ('up', ('conv1', '1', 'bias')): (('conv1', 'bias'), False, R2),
    ('up', ('conv2', 'weight')): (('conv2', 'weight'), True, 1.0),
    ('up', ('conv2', 'activation', 'bias')): (('conv2', 'bias'), False, 1.0),
    ('up', ('skip', 'weight')): (('skip', 'weight'), True, 1 / R2),
    ('equal', ('weight',)): (('weight',), True, 1.0),
    ('equal', ('bias',)): (('bias',), False, 1.0),
    ('sft', ('0', 'weight')): (('0', 'weight'), True, R2),
    ('sft', ('0', 'bias')): (('0', 'bias'), False, R2),
    ('sft', ('2', 'weight')): (('2', 'weight'), True, 1.0),
    ('sft', ('2', 'bias')): (('2', 'bias'), False, 1.0),
    ('style_conv', ('modulated_conv', 'weight')): (('modulated_conv', 'weight'), True, 1.0),
    ('style_conv', ('modulated_conv', 'modulation', 'weight')): (('modulated_conv', 'modulation', 'weight'), True,
                                                                 1.0),
    ('style_conv', ('modulated_conv', 'modulation', 'bias')): (('modulated_conv', 'modulation', 'bias'), False, 1.0),
    ('style_conv', ('weight',)): (('weight',), False, R2),
    ('style_conv', ('activate', 'bias')): (('bias',), False, R2),  # and reshaped to [1, 1, 1, C]
    ('to_rgb', ('modulated_conv', 'weight')): (('modulated_conv', 'weight'), True, 1.0),
    ('to_rgb', ('modulated_conv', 'modulation', 'weight')): (('modulated_conv', 'modulation', 'weight'), True, 1.0),
    ('to_rgb', ('modulated_conv', 'modulation', 'bias')): (('modulated_conv', 'modulation', 'bias'), False, 1.0),
    ('to_rgb', ('bias',)): (('bias',), False, 1.0),
    ('constant_input', ('weight',)): (('weight',), False, 1.0),
}


def _kind(head: str, in_decoder: bool) -> str | None:
  """The rule family of a top-level (U-Net) or decoder child name."""
  base = head.split('.')[0]
  if in_decoder:
    return {'style_conv1': 'style_conv', 'style_convs': 'style_conv', 'to_rgb1': 'to_rgb', 'to_rgbs': 'to_rgb',
            'constant_input': 'constant_input', 'style_mlp': 'style_mlp'}.get(base)
  return {'conv_body_first': 'conv_layer', 'final_conv': 'conv_layer', 'conv_body_down': 'down',
          'conv_body_up': 'up', 'toRGB': 'equal', 'final_linear': 'equal', 'condition_scale': 'sft',
          'condition_shift': 'sft'}.get(base)


def _scaled(value, fan_scale: bool, factor: float) -> np.ndarray:
  """value * factor (* 1/sqrt(fan_in) with our layouts: fan_in = prod(shape[:-1])), in float64, cast back."""
  a = np.asarray(value)
  if fan_scale:
    factor /= math.sqrt(math.prod(a.shape[:-1]))  # HWIO, (1,k,k,I,O) and (in, out) alike
  return (a.astype(np.float64) * factor).astype(a.dtype)


def _convert_param(path: tuple[str, ...], value, lr_mlp: float,
                   decoder_only: bool) -> tuple[tuple[str, ...], np.ndarray]:
  """(bilinear path, value) -> (clean path, value); `decoder_only`: a StyleGAN2 tree (no U-Net)."""
  in_decoder = decoder_only or (path[0] == 'stylegan_decoder' and len(path) > 1)
  prefix, rest = (path[:1], path[1:]) if in_decoder and not decoder_only else ((), path)
  head, sub = rest[0], rest[1:]
  kind = _kind(head, in_decoder)
  if kind == 'style_mlp' and sub in (('weight',), ('bias',)):
    n = int(head.split('.')[1])
    new = prefix + (f'style_mlp.{2 * n - 1}',) + sub
    return new, _scaled(value, sub == ('weight',), lr_mlp * R2)
  rule = _RULES.get((kind, sub))
  if rule is None:
    raise ValueError(f'no bilinear -> clean rule for variable {".".join(path)}')
  new_sub, fan_scale, factor = rule
  out = _scaled(value, fan_scale, factor)
  if (kind, sub) == ('style_conv', ('activate', 'bias')):
    out = out.reshape(1, 1, 1, -1)
  return prefix + (head,) + new_sub, out


def bilinear_to_clean(variables: Mapping[str, Any], lr_mlp: float = 0.01) -> dict[str, Any]:
  """Converts `GFPGANBilinear` (or `StyleGAN2GeneratorBilinear`) variables to the clean arch.

  Args:
    variables: `{'params': ..., 'noises': ...}` of a `GFPGANBilinear` (result:
      `GFPGANv1Clean` variables for the same out_size, num_style_feat,
      channel_multiplier, num_mlp, input_is_latent, different_w, narrow and
      sft_half) or of a `StyleGAN2GeneratorBilinear` (result:
      `StyleGAN2GeneratorClean` variables).
    lr_mlp: the bilinear model's mapping-network learning-rate multiplier
      (0.01, the official script's fixed value).

  Returns:
    New nested dict of numpy arrays (the input is not modified).

  Raises:
    ValueError: on a collection or variable without a conversion rule.
  """
  unknown = sorted(set(variables) - {'params', 'noises'})
  if unknown or 'params' not in variables:
    raise ValueError(f"expected the collections 'params' (and 'noises'), got {sorted(variables)}")
  params = traverse_util.flatten_dict(dict(variables['params']))
  decoder_only = not any(p[0] == 'stylegan_decoder' for p in params)
  out: dict[tuple[str, ...], np.ndarray] = {}
  for path, value in params.items():
    new, arr = _convert_param(path, value, lr_mlp, decoder_only)
    if new in out:
      raise ValueError(f'two variables convert to {".".join(new)}')
    out[new] = arr
  result = {'params': traverse_util.unflatten_dict(out)}
  if 'noises' in variables:
    result['noises'] = traverse_util.unflatten_dict(
        {p: np.array(v) for p, v in traverse_util.flatten_dict(dict(variables['noises'])).items()})
  return result
