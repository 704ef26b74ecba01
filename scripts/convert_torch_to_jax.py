r"""Converts an official PyTorch checkpoint to a gfpgan_jax checkpoint directory.

    python scripts/convert_torch_to_jax.py --arch gfpganv1clean --input GFPGANv1.4.pth --output ckpt/v1.4
    python scripts/convert_torch_to_jax.py --input GFPGANv1.pth --output ckpt/v1          # arch detected
    python scripts/convert_torch_to_jax.py --arch stylegan2 --input StyleGAN2_512_Cmul1_FFHQ_B12G4_scratch_800k.pth \
        --output ckpt/prior --arch-kwargs '{"channel_multiplier": 1}'
"""

from gfpgan_jax.convert import cli

if __name__ == '__main__':
  cli.main_torch_to_jax()
