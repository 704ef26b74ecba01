"""Weight conversion between the official PyTorch checkpoints and our Flax variables.

    variables = torch_to_flax(state_dict, 'gfpganv1clean')          # released v1.3/v1.4 options
    state_dict = flax_to_torch(variables, 'gfpganv1', channel_multiplier=1)

Arch names: gfpganv1clean, gfpganv1, gfpganbilinear, restoreformer, stylegan2,
stylegan2clean, stylegan2bilinear, stylegan2_discriminator,
facial_component_discriminator, arcface, vgg19, retinaface_resnet50,
retinaface_mobilenet0.25, parsenet, rrdbnet.
"""

from gfpgan_jax.convert.archs import ARCHS
from gfpgan_jax.convert.bilinear_to_clean import bilinear_to_clean
from gfpgan_jax.convert.checkpoint import load_generator
from gfpgan_jax.convert.checkpoint import load_network
from gfpgan_jax.convert.detect import detect_arch
from gfpgan_jax.convert.state_dict import ConversionError
from gfpgan_jax.convert.state_dict import flax_to_torch
from gfpgan_jax.convert.state_dict import torch_to_flax

__all__ = ['ARCHS', 'ConversionError', 'bilinear_to_clean', 'detect_arch', 'flax_to_torch', 'load_generator',
           'load_network', 'torch_to_flax']
