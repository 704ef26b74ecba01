"""RestoreFormer (gfpgan 1.3.8 `archs/restoreformer_arch.py`; `inference_gfpgan.py -v RestoreFormer`), NHWC.

A VQGAN-style encoder (`MultiHeadEncoder`) maps the degraded face to a
latent grid and a dictionary of intermediate features `hs`; the latent is
snapped to the nearest entries of a learned codebook (`VectorQuantizer`), and
a decoder (`MultiHeadDecoderTransformer`) reconstructs the face while its
multi-head attention blocks attend to the encoder features (queries from
`hs`, keys/values from the decoder).

The released model (RestoreFormer.pth, `params_ema` or `params`) uses the
default constructor: 512 px, 6 levels (64..512 channels), latent 16 x 16 x 256,
1024 codes, 8 heads, attention at 16 px. Parameter paths are the official keys
split on '.', e.g. `encoder.down.0.block.0.norm1.weight`,
`encoder.mid.attn_1.q.weight`, `quantize.embedding.weight`.
"""

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import layers
from gfpgan_jax.models import restoreformer_blocks as blocks

Array = jax.Array
Dtype = Any


class _Mid(nn.Module):
  """The official `mid` container: `block_1`, `attn_1` (attending to `y` if given), `block_2`.

  Returns `(output of block_1, output of block_2)` (the encoder records both in `hs`).
  """
  head_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: Array, y: Array | None = None) -> tuple[Array, Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h1 = blocks.ResnetBlock(name='block_1', **kw)(h)
    h = blocks.MultiHeadAttnBlock(self.head_size, name='attn_1', **kw)(h1, y)
    return h1, blocks.ResnetBlock(name='block_2', **kw)(h)


class _Level(nn.Module):
  """One `down.{i}` (encoder) or `up.{i}` (decoder) entry: `block.{j}`, `attn.{j}`, `downsample`/`upsample`.

  Runs `block[j]` then, where the level has attention, `attn[j]` (attending
  to `y` if given) for each j; then resamples.

  Attributes:
    out_channels: channels of the ResnetBlocks.
    num_blocks: ResnetBlocks (and attention blocks, if any).
    attn: whether the level has attention blocks.
    resample: 'down', 'up' or None (the last encoder / first decoder level).
    head_size: attention heads.
  """
  out_channels: int
  num_blocks: int
  attn: bool
  resample: str | None
  head_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: Array, y: Array | None = None) -> tuple[Array, Array]:
    """h: [N,H,W,C] -> (features before resampling, resampled features)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block = blocks.ModuleList(
        tuple(functools.partial(blocks.ResnetBlock, self.out_channels, **kw) for _ in range(self.num_blocks)),
        name='block')
    attn = None
    if self.attn:
      attn = blocks.ModuleList(
          tuple(functools.partial(blocks.MultiHeadAttnBlock, self.head_size, **kw) for _ in range(self.num_blocks)),
          name='attn')
    for j in range(self.num_blocks):
      h = block(j, h)
      if attn is not None:
        h = attn(j, h, y)
    if self.resample == 'down':
      return h, blocks.Downsample(name='downsample', **kw)(h)
    if self.resample == 'up':
      return h, blocks.Upsample(name='upsample', **kw)(h)
    return h, h


class MultiHeadEncoder(nn.Module):
  """Official `MultiHeadEncoder` (resamp_with_conv=True, no time embedding).

  Attributes: as `RestoreFormer` (`ch_mult`, `num_res_blocks`, ...).
  """
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  resolution: int
  z_channels: int
  double_z: bool
  enable_mid: bool
  head_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    """x: [N,R,R,C_in] -> the official `hs` dict (NHWC).

    Keys: 'in' (after conv_in), 'block_{i}' (level i before its downsampling,
    i < last), with `enable_mid` 'block_{last}_atten' (after mid.block_1) and
    'mid_atten' (after mid.block_2), and 'out' (the latent, z_channels or
    2 * z_channels with `double_z`).
    """
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    levels = len(self.ch_mult)
    h = layers.Conv2d(self.ch, 3, padding=1, name='conv_in', **kw)(x)
    hs = {'in': h}
    res = self.resolution
    factories = []
    for i in range(levels):
      factories.append(functools.partial(_Level, self.ch * self.ch_mult[i], self.num_res_blocks,
                                         res in self.attn_resolutions, 'down' if i != levels - 1 else None,
                                         self.head_size, **kw))
      if i != levels - 1:
        res //= 2
    down = blocks.ModuleList(tuple(factories), name='down')
    for i in range(levels):
      skip, h = down(i, h)
      if i != levels - 1:
        hs[f'block_{i}'] = skip
    if self.enable_mid:
      hs[f'block_{levels - 1}_atten'], h = _Mid(self.head_size, name='mid', **kw)(h)
      hs['mid_atten'] = h
    h = blocks.swish(blocks.GroupNorm(name='norm_out', **kw)(h))
    hs['out'] = layers.Conv2d(2 * self.z_channels if self.double_z else self.z_channels, 3, padding=1,
                              name='conv_out', **kw)(h)
    return hs


class MultiHeadDecoderTransformer(nn.Module):
  """Official `MultiHeadDecoderTransformer` (give_pre_end=False): decodes z while attending to the encoder's `hs`.

  `mid.attn_1` attends to `hs['mid_atten']`; the attention blocks of level i
  attend to `hs['block_{i}_atten']`, which the encoder only produces for its
  last level (with `enable_mid`), as in the official code.

  Attributes: as `RestoreFormer`.
  """
  ch: int
  out_ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  resolution: int
  enable_mid: bool
  head_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array, hs: dict[str, Array]) -> Array:
    """z: [N,r,r,z_channels], hs: the encoder's dict -> [N,R,R,out_ch]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    levels = len(self.ch_mult)
    h = layers.Conv2d(self.ch * self.ch_mult[-1], 3, padding=1, name='conv_in', **kw)(z)
    if self.enable_mid:
      _, h = _Mid(self.head_size, name='mid', **kw)(h, _feature(hs, 'mid_atten'))
    res = self.resolution // 2**(levels - 1)
    has_attn = {}
    for i in reversed(range(levels)):
      has_attn[i] = res in self.attn_resolutions
      if i != 0:
        res *= 2
    up = blocks.ModuleList(
        tuple(functools.partial(_Level, self.ch * self.ch_mult[i], self.num_res_blocks + 1, has_attn[i],
                                'up' if i != 0 else None, self.head_size, **kw) for i in range(levels)),
        name='up')
    for i in reversed(range(levels)):
      _, h = up(i, h, _feature(hs, f'block_{i}_atten') if has_attn[i] else None)
    h = blocks.swish(blocks.GroupNorm(name='norm_out', **kw)(h))
    return layers.Conv2d(self.out_ch, 3, padding=1, name='conv_out', **kw)(h)


def _feature(hs: dict[str, Array], key: str) -> Array:
  if key not in hs:
    raise ValueError(f"the decoder attends to the encoder feature hs[{key!r}], which this configuration does not "
                     f"produce (it has {sorted(hs)}); the official forward fails the same way (KeyError)")
  return hs[key]


class RestoreFormer(nn.Module):
  """gfpgan `RestoreFormer`.

  The official training flags `fix_decoder`, `fix_codebook`, `fix_encoder`
  (which parameters get gradients) are not fields; the converter registry
  drops them. Dropout is the identity (inference).

  Attributes:
    n_embed: codebook size.
    embed_dim: code width.
    ch: base channels.
    out_ch: output channels.
    ch_mult: channel multiplier per level (level i works at resolution / 2**i).
    num_res_blocks: ResnetBlocks per encoder level (decoder levels have one more).
    attn_resolutions: resolutions whose levels get attention blocks.
    dropout: the official dropout rate (training only; unused here).
    in_channels: input channels.
    resolution: input/output size.
    z_channels: latent channels.
    double_z: the encoder outputs 2 * z_channels (the official forward then
      fails in quant_conv; so does ours, with a ValueError).
    enable_mid: middle blocks in the encoder and decoder.
    head_size: attention heads.
  """
  n_embed: int = 1024
  embed_dim: int = 256
  ch: int = 64
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  in_channels: int = 3
  resolution: int = 512
  z_channels: int = 256
  double_z: bool = False
  enable_mid: bool = True
  head_size: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    common = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                  attn_resolutions=tuple(self.attn_resolutions), resolution=self.resolution,
                  enable_mid=self.enable_mid, head_size=self.head_size, **kw)
    self.encoder = MultiHeadEncoder(z_channels=self.z_channels, double_z=self.double_z, **common)
    self.decoder = MultiHeadDecoderTransformer(out_ch=self.out_ch, **common)
    self.quantize = blocks.VectorQuantizer(self.n_embed, self.embed_dim, **kw)
    self.quant_conv = layers.Conv2d(self.embed_dim, 1, **kw)
    self.post_quant_conv = layers.Conv2d(self.z_channels, 1, **kw)

  @property
  def out_size(self) -> int:
    """The face size, `resolution`, under the name the restore and export paths read from generators."""
    return self.resolution

  def encode(self, x: Array) -> tuple[Array, Array, dict[str, Array]]:
    """x: [N,R,R,in_channels] -> (quantized latent [N,r,r,embed_dim], code indices [N,r,r], hs)."""
    if self.double_z:
      raise ValueError('double_z=True gives the encoder 2 * z_channels outputs, but quant_conv takes z_channels '
                       '(the official RestoreFormer forward fails the same way)')
    hs = self.encoder(x)
    quant, codes = self.quantize(self.quant_conv(hs['out']))
    return quant, codes, hs

  def decode(self, quant: Array, hs: dict[str, Array]) -> Array:
    """quant: [N,r,r,embed_dim], hs: encoder features -> image [N,R,R,out_ch]."""
    return self.decoder(self.post_quant_conv(quant), hs)

  def __call__(self,
               x: Array,
               return_rgb: bool = False,
               randomize_noise: bool = True,
               return_codes: bool = False,
               **kwargs) -> tuple[Array, Array | None]:
    """Restores faces, like the official `forward` (which returns `(dec, None)`).

    Args:
      x: [N, resolution, resolution, in_channels] RGB in [-1, 1].
      return_rgb: accepted for GFP-GAN's generator signature; ignored.
      randomize_noise: accepted for GFP-GAN's generator signature; ignored
        (RestoreFormer is deterministic).
      return_codes: return the codebook indices instead of None.
      **kwargs: other generator keywords (GFPGANer's `weight`); ignored.

    Returns:
      `(image [N, resolution, resolution, out_ch], None)`, not clamped; with
      `return_codes`, `(image, indices [N, r, r] int32)`, r = resolution /
      2**(len(ch_mult) - 1).

    Raises:
      ValueError: if x is not [N, resolution, resolution, in_channels].
    """
    del return_rgb, randomize_noise, kwargs
    want = (self.resolution, self.resolution, self.in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
      raise ValueError(f'RestoreFormer expects NHWC input [N, {want[0]}, {want[1]}, {want[2]}], got shape {x.shape}')
    quant, codes, hs = self.encode(x)
    image = self.decode(quant, hs)
    return image, (codes if return_codes else None)
