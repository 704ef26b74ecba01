r"""Converts a gfpgan_jax checkpoint directory back to an official `.pth`.

    python scripts/convert_jax_to_torch.py --input ckpt/v1.4 --output GFPGANv1.4_roundtrip.pth

Generators are written as {'params_ema': ...}, discriminators as {'params': ...},
ArcFace and VGG as bare state dicts, which is what the official loaders read
(override with --param-key).
"""

from gfpgan_jax.convert import cli

if __name__ == '__main__':
  cli.main_jax_to_torch()
