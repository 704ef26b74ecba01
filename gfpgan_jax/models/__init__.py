"""Flax Linen networks of GFP-GAN, NHWC, parameter names as the official state dicts."""

from gfpgan_jax.models.arcface import ResNetArcFace
from gfpgan_jax.models.discriminators import FacialComponentDiscriminator
from gfpgan_jax.models.discriminators import StyleGAN2Discriminator
from gfpgan_jax.models.gfpgan import GFPGANv1
from gfpgan_jax.models.gfpgan import GFPGANv1Clean
from gfpgan_jax.models.gfpgan_bilinear import GFPGANBilinear
from gfpgan_jax.models.parsenet import ParseNet
from gfpgan_jax.models.restoreformer import RestoreFormer
from gfpgan_jax.models.retinaface import RetinaFace
from gfpgan_jax.models.rrdbnet import RRDBNet
from gfpgan_jax.models.stylegan2 import StyleGAN2Generator
from gfpgan_jax.models.stylegan2_bilinear import StyleGAN2GeneratorBilinear
from gfpgan_jax.models.stylegan2_bilinear import StyleGAN2GeneratorBilinearSFT
from gfpgan_jax.models.stylegan2_clean import StyleGAN2GeneratorClean
from gfpgan_jax.models.vgg import VGGFeatureExtractor

# The SFT decoders of the official code are the generators called with `conditions`.
StyleGAN2GeneratorSFT = StyleGAN2Generator
StyleGAN2GeneratorCSFT = StyleGAN2GeneratorClean

__all__ = [
    'FacialComponentDiscriminator',
    'GFPGANBilinear',
    'GFPGANv1',
    'GFPGANv1Clean',
    'ParseNet',
    'RRDBNet',
    'ResNetArcFace',
    'RestoreFormer',
    'RetinaFace',
    'StyleGAN2Discriminator',
    'StyleGAN2Generator',
    'StyleGAN2GeneratorBilinear',
    'StyleGAN2GeneratorBilinearSFT',
    'StyleGAN2GeneratorCSFT',
    'StyleGAN2GeneratorClean',
    'StyleGAN2GeneratorSFT',
    'VGGFeatureExtractor',
]
