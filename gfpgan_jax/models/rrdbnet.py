"""basicsr `RRDBNet` (ESRGAN / Real-ESRGAN x4plus and x2plus), the background upsampler of GFP-GAN inference.

NHWC port of basicsr 1.4.2 `archs/rrdbnet_arch.py`. Parameter paths are the
official state-dict keys split on '.' (`conv_first.weight`,
`body.0.rdb1.conv1.weight`, ..., `conv_last.bias`), with conv weights HWIO.

For scales 2 and 1 the input is first pixel-unshuffled by 2 or 4 (basicsr's
NCHW channel order, so converted `conv_first` weights line up); the trunk then
always upsamples by 4 with two nearest-neighbour x2 steps. Image tiling
(RealESRGANer) lives in `gfpgan_jax.models.tiling`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfpgan_jax.models import layers

Array = jax.Array
Dtype = Any

# Residual scaling of every dense block and every RRDB ("empirically, we use 0.2").
RESIDUAL_SCALE = 0.2
# RRDBNet scale -> pixel-unshuffle factor applied before `conv_first`.
UNSHUFFLE = {1: 4, 2: 2, 4: 1}


def pixel_unshuffle(x: Array, factor: int) -> Array:
  """basicsr `arch_util.pixel_unshuffle` in NHWC.

  Output channel `c * factor**2 + i * factor + j` holds input channel `c` at
  the sub-pixel offset (row `i`, column `j`), as in the NCHW original.

  Args:
    x: [N, H, W, C] with H and W divisible by `factor`.
    factor: downsampling factor.

  Returns:
    [N, H / factor, W / factor, C * factor**2].
  """
  n, hh, ww, c = x.shape
  h, w = hh // factor, ww // factor
  x = x.reshape(n, h, factor, w, factor, c)
  return jnp.transpose(x, (0, 1, 3, 5, 2, 4)).reshape(n, h, w, c * factor * factor)


def upsample_nearest2x(x: Array) -> Array:
  """`F.interpolate(x, scale_factor=2, mode='nearest')` in NHWC: [N,H,W,C] -> [N,2H,2W,C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResidualDenseBlock(nn.Module):
  """Five 3x3 convs over the growing concatenation `(x, x1, ..., x4)`; returns `0.2 * x5 + x`.

  Params `conv1` ... `conv5` ([3,3,num_feat + k*num_grow_ch, ...] HWIO), initialised as basicsr's
  `default_init_weights(..., 0.1)`: kaiming-normal times 0.1, zero bias.
  """
  num_feat: int = 64
  num_grow_ch: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N,H,W,num_feat] -> [N,H,W,num_feat]."""
    kw = dict(kernel_size=3, padding=1, kernel_init=layers.kaiming_normal_init(scale=0.1),
              bias_init=layers.constant_init(0.0), dtype=self.dtype, param_dtype=self.param_dtype)
    feats = [x]
    for i in range(1, 5):
      y = layers.Conv2d(self.num_grow_ch, name=f'conv{i}', **kw)(jnp.concatenate(feats, axis=-1))
      feats.append(layers.leaky_relu(y, 0.2))
    x5 = layers.Conv2d(self.num_feat, name='conv5', **kw)(jnp.concatenate(feats, axis=-1))
    return x5 * RESIDUAL_SCALE + x


class RRDB(nn.Module):
  """Residual in residual dense block: `rdb1`, `rdb2`, `rdb3`, then `0.2 * out + x`."""
  num_feat: int = 64
  num_grow_ch: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N,H,W,num_feat] -> [N,H,W,num_feat]."""
    kw = dict(num_feat=self.num_feat, num_grow_ch=self.num_grow_ch, dtype=self.dtype, param_dtype=self.param_dtype)
    out = x
    for i in range(1, 4):
      out = ResidualDenseBlock(name=f'rdb{i}', **kw)(out)
    return out * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
  """ESRGAN generator with basicsr's scale-1/2 pixel-unshuffle extension.

  Attributes:
    num_in_ch: image channels in.
    num_out_ch: image channels out.
    scale: 1, 2 or 4 (the output is `scale` times the input size).
    num_feat: trunk channels.
    num_block: number of RRDBs in the trunk (`body.0` ... `body.{num_block-1}`).
    num_grow_ch: growth channels of the dense blocks.
    scan_blocks: run the trunk as a `lax.scan` over the stacked block
      parameters (same result and parameters; one block compiled instead of
      `num_block`). XLA's cost analysis counts a scanned block once, so
      count FLOPs with `scan_blocks=False`.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_in_ch: int = 3
  num_out_ch: int = 3
  scale: int = 4
  num_feat: int = 64
  num_block: int = 23
  num_grow_ch: int = 32
  scan_blocks: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _trunk(self, x: Array) -> Array:
    """`body`: the RRDBs `body.0` ... `body.{num_block-1}` in sequence, [N,h,w,num_feat] -> same.

    `init` (and `scan_blocks=False`) calls the blocks one after the other;
    otherwise `apply` runs one RRDB in a `lax.scan` over the stacked block
    parameters, which computes the same and compiles one block instead of
    `num_block` (1 s instead of 8 s on the CPU for the released 23 blocks).
    """
    kw = dict(num_feat=self.num_feat, num_grow_ch=self.num_grow_ch, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.is_initializing() or not self.scan_blocks or self.num_block < 2:
      for i in range(self.num_block):
        x = RRDB(name=f'body.{i}', **kw)(x)
      return x
    params = self.variables['params']
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *[params[f'body.{i}'] for i in range(self.num_block)])
    block = RRDB(parent=None, **kw)
    x, _ = jax.lax.scan(lambda h, p: (block.apply({'params': p}, h), None), x, stacked)
    return x

  def check_input(self, shape: tuple[int, ...]) -> None:
    """Raises one ValueError when an input of `shape` cannot go through the network."""
    if self.scale not in UNSHUFFLE:
      raise ValueError(f'RRDBNet: scale must be one of {sorted(UNSHUFFLE)}, got {self.scale}')
    factor = UNSHUFFLE[self.scale]
    if len(shape) != 4 or shape[-1] != self.num_in_ch or shape[1] % factor or shape[2] % factor:
      need = f', H and W divisible by {factor} (scale {self.scale})' if factor > 1 else ''
      raise ValueError(f'RRDBNet: expected input [N, H, W, {self.num_in_ch}]{need}; got shape {tuple(shape)}')

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Upsamples a batch of images.

    Args:
      x: [N, H, W, num_in_ch] (Real-ESRGAN: RGB in [0, 1]); for scale 2 (1)
        H and W must be divisible by 2 (4).

    Returns:
      [N, H * scale, W * scale, num_out_ch], not clamped.
    """
    self.check_input(x.shape)
    kw = dict(kernel_size=3, padding=1, dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda features, name: layers.Conv2d(features, name=name, **kw)
    factor = UNSHUFFLE[self.scale]
    feat = pixel_unshuffle(x, factor) if factor > 1 else x
    feat = conv(self.num_feat, 'conv_first')(feat)
    feat = feat + conv(self.num_feat, 'conv_body')(self._trunk(feat))
    feat = layers.leaky_relu(conv(self.num_feat, 'conv_up1')(upsample_nearest2x(feat)), 0.2)
    feat = layers.leaky_relu(conv(self.num_feat, 'conv_up2')(upsample_nearest2x(feat)), 0.2)
    return conv(self.num_out_ch, 'conv_last')(layers.leaky_relu(conv(self.num_feat, 'conv_hr')(feat), 0.2))
