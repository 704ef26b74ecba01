"""The convertible architectures: name -> Flax module, released-model defaults, dummy inputs."""

from collections.abc import Callable
import dataclasses
import functools
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax import models

# Official constructor options that only matter when training the PyTorch model.
_TRAINING_ONLY = ('decoder_load_path', 'fix_decoder', 'fix_codebook', 'fix_encoder')


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """How to build and initialise one architecture.

  Attributes:
    name: arch name used by the converters and checkpoints.
    module: the Flax module class.
    defaults: constructor kwargs of the released checkpoint of this arch;
      user kwargs override them.
    torch_key: top-level key the official loaders read (`params_ema`,
      `params`, or None for a bare state dict).
    init_inputs: kwargs -> (args, call kwargs) of a dummy forward for `init`.
    is_generator: whether `load_generator` accepts it.
  """
  name: str
  module: type[nn.Module]
  defaults: dict[str, Any]
  torch_key: str | None
  init_inputs: Callable[[dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]
  is_generator: bool = False

  def config(self, **kwargs) -> dict[str, Any]:
    """Validated, complete constructor kwargs (defaults overridden by `kwargs`)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in _TRAINING_ONLY}
    fields = {f.name for f in dataclasses.fields(self.module)} - {'parent', 'name', 'dtype', 'param_dtype'}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
      raise ValueError(f'unknown option(s) {unknown} for arch {self.name!r}; valid options: {sorted(fields)}')
    cfg = {**self.defaults, **kwargs}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def _image(size_key='out_size', default=512):

  def inputs(cfg):
    s = cfg.get(size_key, default)
    return (jnp.zeros((1, s, s, 3), jnp.float32),), {}

  return inputs


def _styles(cfg):
  return (jnp.zeros((1, cfg.get('num_style_feat', 512)), jnp.float32),), {}


def _fixed(shape):
  return lambda cfg: ((jnp.zeros(shape, jnp.float32),), {})


def _rrdb_input(cfg):
  return (jnp.zeros((1, 16, 16, cfg.get('num_in_ch', 3)), jnp.float32),), {}


def _restoreformer_input(cfg):
  s = cfg.get('resolution', 512)
  return (jnp.zeros((1, s, s, cfg.get('in_channels', 3)), jnp.float32),), {}


_GFPGAN_RELEASED = dict(out_size=512, num_style_feat=512, num_mlp=8, input_is_latent=True, different_w=True,
                        narrow=1, sft_half=True)

ARCHS: dict[str, ArchSpec] = {
    spec.name: spec for spec in [
        ArchSpec('gfpganv1clean', models.GFPGANv1Clean, dict(_GFPGAN_RELEASED, channel_multiplier=2),
                 'params_ema', _image(), is_generator=True),
        ArchSpec('gfpganv1', models.GFPGANv1,
                 dict(_GFPGAN_RELEASED, channel_multiplier=1, resample_kernel=(1, 3, 3, 1), lr_mlp=0.01),
                 'params_ema', _image(), is_generator=True),
        ArchSpec('stylegan2', models.StyleGAN2Generator,
                 dict(out_size=512, num_style_feat=512, num_mlp=8, channel_multiplier=1,
                      resample_kernel=(1, 3, 3, 1), lr_mlp=0.01, narrow=1), 'params_ema', _styles,
                 is_generator=True),
        ArchSpec('stylegan2clean', models.StyleGAN2GeneratorClean,
                 dict(out_size=512, num_style_feat=512, num_mlp=8, channel_multiplier=2, narrow=1), 'params_ema',
                 _styles, is_generator=True),
        ArchSpec('stylegan2_discriminator', models.StyleGAN2Discriminator,
                 dict(out_size=512, channel_multiplier=1, resample_kernel=(1, 3, 3, 1), stddev_group=4, narrow=1),
                 'params', _image()),
        ArchSpec('facial_component_discriminator', models.FacialComponentDiscriminator, {}, 'params',
                 lambda cfg: ((jnp.zeros((1, 80, 80, 3), jnp.float32),), {})),
        ArchSpec('arcface', models.ResNetArcFace, dict(block='IRBlock', layers=(2, 2, 2, 2), use_se=False), None,
                 lambda cfg: ((jnp.zeros((1, 128, 128, 1), jnp.float32),), {})),
        ArchSpec('vgg19', models.VGGFeatureExtractor,
                 dict(layer_name_list=models.vgg.GFPGAN_LAYERS, vgg_type='vgg19', use_input_norm=True,
                      range_norm=True), None, lambda cfg: ((jnp.zeros((1, 32, 32, 3), jnp.float32),), {})),
        # The inference networks of the photo pipeline (gfpgan.md section 4).
        ArchSpec('retinaface_resnet50', models.RetinaFace, dict(network_name='resnet50'), None,
                 _fixed((1, 64, 64, 3))),
        ArchSpec('retinaface_mobilenet0.25', models.RetinaFace, dict(network_name='mobile0.25'), None,
                 _fixed((1, 64, 64, 3))),
        ArchSpec('parsenet', models.ParseNet,
                 dict(in_size=512, out_size=512, min_feat_size=32, base_ch=64, parsing_ch=19, res_depth=10,
                      relu_type='LeakyReLU', norm_type='bn', ch_range=(32, 256)), None, _image('in_size')),
        ArchSpec('rrdbnet', models.RRDBNet,
                 dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32), 'params_ema',
                 _rrdb_input),
        ArchSpec('restoreformer', models.RestoreFormer,
                 dict(n_embed=1024, embed_dim=256, ch=64, out_ch=3, ch_mult=(1, 2, 2, 4, 4, 8), num_res_blocks=2,
                      attn_resolutions=(16,), dropout=0.0, in_channels=3, resolution=512, z_channels=256,
                      double_z=False, enable_mid=True, head_size=8), 'params_ema', _restoreformer_input,
                 is_generator=True),
        ArchSpec('gfpganbilinear', models.GFPGANBilinear,
                 dict(_GFPGAN_RELEASED, channel_multiplier=2, lr_mlp=0.01), 'params_ema', _image(),
                 is_generator=True),
        ArchSpec('stylegan2bilinear', models.StyleGAN2GeneratorBilinear,
                 dict(out_size=512, num_style_feat=512, num_mlp=8, channel_multiplier=2, lr_mlp=0.01, narrow=1,
                      interpolation_mode='bilinear'), 'params_ema', _styles, is_generator=True),
    ]
}


def get(arch: str) -> ArchSpec:
  if arch not in ARCHS:
    raise ValueError(f'unknown arch {arch!r}; valid archs: {sorted(ARCHS)}')
  return ARCHS[arch]


def build(arch: str, dtype=jnp.float32, **kwargs) -> tuple[nn.Module, dict[str, Any]]:
  """Returns `(module, complete kwargs)` for `arch` with `kwargs` over the released defaults."""
  spec = get(arch)
  cfg = spec.config(**kwargs)
  return spec.module(**cfg, dtype=dtype), cfg


def init(arch: str, key: jax.Array, **kwargs) -> dict[str, Any]:
  """Randomly initialised variables of `arch`."""
  module, cfg = build(arch, **kwargs)
  args, call_kwargs = get(arch).init_inputs(cfg)
  k1, k2 = jax.random.split(key)
  return jax.jit(functools.partial(module.init, **call_kwargs))({'params': k1, 'noise': k2}, *args)


@functools.lru_cache(maxsize=32)
def _abstract_cached(arch: str, frozen_kwargs: str):
  return jax.eval_shape(functools.partial(init, arch, **json.loads(frozen_kwargs)), jax.random.key(0))


def abstract_variables(arch: str, **kwargs) -> dict[str, Any]:
  """`jax.ShapeDtypeStruct` tree of the variables of `arch` (no computation)."""
  cfg = get(arch).config(**kwargs)
  return _abstract_cached(arch, json.dumps(cfg, sort_keys=True))
