"""Command lines of `scripts/convert_torch_to_jax.py` and `scripts/convert_jax_to_torch.py`."""

import argparse
import json
import math
import os
import pathlib
import sys

from flax import traverse_util
import numpy as np

from gfpgan_jax import cli_common
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.convert import detect
from gfpgan_jax.convert import pth
from gfpgan_jax.convert import state_dict as sd_lib


def _count(variables) -> tuple[int, int]:
  leaves = traverse_util.flatten_dict(variables)
  return len(leaves), sum(math.prod(np.shape(v)) for v in leaves.values())


def torch_to_jax(argv=None) -> pathlib.Path:
  """`convert_torch_to_jax.py --arch A --input X.pth --output DIR [--arch-kwargs JSON]`."""
  p = argparse.ArgumentParser(description='Convert an official .pth (GFP-GAN, RestoreFormer, StyleGAN2, the '
                              'discriminators, ArcFace, VGG, facexlib RetinaFace/ParseNet, Real-ESRGAN RRDBNet) to a '
                              'gfpgan_jax checkpoint directory (Orbax variables + gfpgan_jax.json).')
  p.add_argument('--arch', default='auto', choices=['auto', *sorted(archs.ARCHS)],
                 help='architecture; "auto" recognises it (and its options) from the keys (GFPGANBilinear files '
                 'have GFPGANv1\'s keys: pass --arch gfpganbilinear)')
  p.add_argument('--input', required=True, type=pathlib.Path, help='.pth file (zip or legacy format)')
  p.add_argument('--output', required=True, type=pathlib.Path, help='output directory')
  p.add_argument('--arch-kwargs', default='{}', help='JSON constructor options over the released defaults, '
                 'e.g. \'{"channel_multiplier": 1}\'')
  p.add_argument('--param-key', default=None, help='top-level key to read (default: params_ema, else params, '
                 'else a bare state dict)')
  p.add_argument('--overwrite', action='store_true', help='replace an existing output directory')
  args = p.parse_args(argv)
  try:
    kwargs = json.loads(args.arch_kwargs)
  except json.JSONDecodeError as e:
    p.error(f'--arch-kwargs is not valid JSON: {e}')
  if not isinstance(kwargs, dict):
    p.error('--arch-kwargs must be a JSON object')
  _check_output(args.output, args.overwrite)
  sd, used = pth.read_pth(args.input, args.param_key)
  arch = args.arch
  if arch == 'auto':
    found = detect.detect_arch(sd)
    if found is None:
      p.error(f'{args.input}: {detect.describe(sd)}; pass --arch')
    arch, detected = found
  else:
    detected = detect.options_for(sd, arch)
  kwargs = {**detected, **kwargs}
  variables = sd_lib.torch_to_flax(sd, arch, **kwargs)
  cfg = archs.get(arch).config(**kwargs)
  try:
    out = checkpoint.save(args.output, variables, arch, cfg, overwrite=args.overwrite, source=str(args.input),
                          source_key=used)
  except OSError as e:
    if isinstance(e, (FileNotFoundError, FileExistsError)) and e.filename is None:
      raise
    raise cli_common.OutputError(cli_common.output_error_message(e, args.output, '--output')) from e
  n, size = _count(variables)
  print(f'{args.input} [{used or "bare state dict"}] -> {out}: arch {arch} {cfg}, {n} tensors, {size:,} values')
  return out


def jax_to_torch(argv=None) -> pathlib.Path:
  """`convert_jax_to_torch.py --input DIR|WORKDIR --output Y.pth [--step N]` (a workdir: its G-EMA)."""
  p = argparse.ArgumentParser(description='Convert a gfpgan_jax checkpoint directory to an official .pth that the '
                              'PyTorch classes load with strict=True.')
  p.add_argument('--input', required=True, type=pathlib.Path,
                 help='converted checkpoint or export directory, or a training workdir (its G-EMA)')
  p.add_argument('--output', required=True, type=pathlib.Path, help='output .pth')
  p.add_argument('--param-key', default=None,
                 help='top-level key: params_ema (generators, RRDBNet), params (discriminators), or "none" for '
                 'a bare state dict (ArcFace, VGG, RetinaFace, ParseNet); default: what the official loaders of the '
                 'arch read')
  p.add_argument('--legacy-format', action='store_true', help='write the pre-1.6 (non-zip) torch format')
  p.add_argument('--step', type=int, default=None, help='checkpoint step of a training workdir (default: latest)')
  p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
  args = p.parse_args(argv)
  _check_output(args.output, args.overwrite)
  pth.check_torch(args.output)
  arch, cfg, variables = checkpoint.load_any(args.input, args.step)
  key = args.param_key or archs.get(arch).torch_key
  key = None if key in (None, 'none') else key
  sd = sd_lib.flax_to_torch(variables, arch, **cfg)
  try:
    pth.write_pth(args.output, sd, key, legacy_format=args.legacy_format)
  except OSError as e:
    raise cli_common.OutputError(cli_common.output_error_message(e, args.output, '--output')) from e
  print(f'{args.input} -> {args.output}: arch {arch} {cfg}, {len(sd)} tensors under {key or "(bare)"}')
  return args.output


def _check_output(output: pathlib.Path, overwrite: bool) -> None:
  """Fails before any work on an output that exists (without --overwrite) or cannot be written."""
  if os.path.lexists(output) and not overwrite:
    raise FileExistsError(f'--output {output} exists; pass --overwrite to replace it')
  cli_common.check_writable(pathlib.Path(output).absolute().parent, '--output')


# The faults a user can cause (bad input, existing or unwritable output, no torch): one line, no traceback.
_USER_ERRORS = (sd_lib.ConversionError, FileNotFoundError, FileExistsError, ValueError, pth.TorchNotInstalled)


def main_torch_to_jax():
  cli_common.quiet_backend_probe()
  try:
    torch_to_jax()
  except _USER_ERRORS as e:
    sys.exit(f'error: {e}')


def main_jax_to_torch():
  cli_common.quiet_backend_probe()
  try:
    jax_to_torch()
  except _USER_ERRORS as e:
    sys.exit(f'error: {e}')
