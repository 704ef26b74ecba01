"""Building blocks of RestoreFormer (gfpgan `archs/restoreformer_arch.py`), NHWC.

The blocks come from the VQGAN/"taming transformers" encoder-decoder: torch
`GroupNorm(32, eps=1e-6)`, swish, a pre-activation `ResnetBlock`, nearest x2
`Upsample` and the asymmetrically padded stride-2 `Downsample`, plus
RestoreFormer's `MultiHeadAttnBlock` (cross-attention: queries from the
encoder features, keys/values from the decoder) and the VQ codebook lookup.

Parameter paths mirror the official keys split on '.': `nn.ModuleList`
children are modules named '0', '1', ... inside a `ModuleList` container.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from gfpgan_jax.models import layers

Array = jax.Array
Dtype = Any

NUM_GROUPS = 32
NORM_EPS = 1e-6


def _at_least_f32(dtype) -> Dtype:
  """The dtype norms, softmax and the codebook search run in: float32, or float64 in a float64 model."""
  return jnp.promote_types(dtype, jnp.float32)


def swish(x: Array) -> Array:
  """The official `nonlinearity`: x * sigmoid(x)."""
  return x * jax.nn.sigmoid(x)


class ModuleList(nn.Module):
  """`nn.ModuleList`: children named '0', '1', ...; `self(i, *args)` calls child i.

  Attributes:
    factories: one `name -> module` constructor per child (e.g. a
      `functools.partial` of a module class).
  """
  factories: Sequence[Callable[..., nn.Module]]

  def setup(self):
    self.items = [f(name=str(i)) for i, f in enumerate(self.factories)]

  def __call__(self, i: int, *args, **kwargs):
    return self.items[i](*args, **kwargs)


def _group_mean(g: Array) -> Array:
  """Mean of g [N,H,W,G,C/G] over (H, W, C/G) -> [N,1,1,G,1]: per-row sums first, then over the rows.

  One reduction over all H*W*C/G elements is less accurate on XLA:CPU: at
  512 x 512 x 64 the normalised output is 1.1e-7 (rel L2) from a float64
  reference, torch's 4.5e-8. Per-row partial sums, kept apart by an
  optimization barrier (without it XLA merges the two reductions back into
  one), give 6.3e-8 at the same speed.
  """
  rows = lax.optimization_barrier(jnp.sum(g, axis=(2, 4), keepdims=True))
  return jnp.sum(rows, axis=1, keepdims=True) / (g.shape[1] * g.shape[2] * g.shape[4])


class GroupNorm(nn.Module):
  """torch `GroupNorm(32, C, eps=1e-6, affine=True)` over NHWC, computed in (at least) float32.

  Params: `weight` [C] (ones), `bias` [C] (zeros). Biased variance per
  (sample, group) over H, W and the C/32 channels of the group.
  """
  num_groups: int = NUM_GROUPS
  eps: float = NORM_EPS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h, w, c = x.shape
    if c % self.num_groups:
      raise ValueError(f'GroupNorm({self.num_groups}) needs channels divisible by {self.num_groups}, got {c}')
    scale = self.param('weight', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    ct = _at_least_f32(self.dtype)
    g = x.astype(ct).reshape(n, h, w, self.num_groups, c // self.num_groups)
    mean = _group_mean(g)
    var = _group_mean(jnp.square(g - mean))
    y = ((g - mean) * lax.rsqrt(var + self.eps)).reshape(n, h, w, c)
    return (y * scale.astype(ct) + bias.astype(ct)).astype(self.dtype)


class ResnetBlock(nn.Module):
  """Official `ResnetBlock` with `temb_channels=0` (no time embedding) in eval mode.

  `x + conv2(swish(norm2(conv1(swish(norm1(x))))))`, with a 1x1
  `nin_shortcut` on x when the channel count changes. Dropout is the identity
  (inference); the official `dropout` option only matters when training.

  Attributes:
    out_channels: output channels (None: the input channels).
  """
  out_channels: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [N,H,W,C_in] -> [N,H,W,out_channels]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c_in = x.shape[-1]
    c_out = self.out_channels or c_in
    h = layers.Conv2d(c_out, 3, padding=1, name='conv1', **kw)(swish(GroupNorm(name='norm1', **kw)(x)))
    h = layers.Conv2d(c_out, 3, padding=1, name='conv2', **kw)(swish(GroupNorm(name='norm2', **kw)(h)))
    if c_in != c_out:
      x = layers.Conv2d(c_out, 1, name='nin_shortcut', **kw)(x)
    return x + h


class MultiHeadAttnBlock(nn.Module):
  """Official `MultiHeadAttnBlock`: multi-head (cross-)attention over the H*W positions.

  With `y` None it is self-attention on `norm1(x)`. With `y` (the encoder
  features) the queries come from `norm2(y)` and the keys/values from
  `norm1(x)`. Channels are split head-major (channel = head * att + a,
  att = C / head_size); q is scaled by `int(att) ** -0.5` before `q @ k`, the
  softmax runs over the key positions, and `proj_out` of the result is added
  to x. Params: `norm1`, `norm2` (always present, as in the official module),
  `q`, `k`, `v`, `proj_out` (1x1 convs).

  Attributes:
    head_size: the number of heads (the official name).
  """
  head_size: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, y: Array | None = None) -> Array:
    """x: [N,H,W,C]; y: None or [N,H,W,C] -> [N,H,W,C]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, hh, ww, c = x.shape
    if c % self.head_size:
      raise ValueError(f'MultiHeadAttnBlock: {c} channels are not divisible by head_size {self.head_size}')
    if y is not None and y.shape != x.shape:
      raise ValueError(f'MultiHeadAttnBlock: y has shape {y.shape}, x has {x.shape}; they must match')
    norm2 = GroupNorm(name='norm2', **kw)
    h_ = GroupNorm(name='norm1', **kw)(x)
    if y is None:
      if self.is_initializing():
        norm2(x)  # unused by self-attention, but part of the official state dict
      y = h_
    else:
      y = norm2(y)
    q = layers.Conv2d(c, 1, name='q', **kw)(y)
    k = layers.Conv2d(c, 1, name='k', **kw)(h_)
    v = layers.Conv2d(c, 1, name='v', **kw)(h_)
    att = c // self.head_size
    split = lambda t: t.reshape(b, hh * ww, self.head_size, att).transpose(0, 2, 1, 3)  # [b, head, hw, att]
    q, k, v = split(q), split(k), split(v)
    q = q * int(att)**(-0.5)
    w_ = jnp.einsum('bnqa,bnka->bnqk', q, k)
    w_ = jax.nn.softmax(w_.astype(_at_least_f32(self.dtype)), axis=-1).astype(self.dtype)
    w_ = jnp.einsum('bnqk,bnka->bnqa', w_, v)
    w_ = w_.transpose(0, 2, 1, 3).reshape(b, hh, ww, c)
    return x + layers.Conv2d(c, 1, name='proj_out', **kw)(w_)


class Upsample(nn.Module):
  """Official `Upsample(with_conv=True)`: nearest x2, then `conv` 3x3 (pad 1). [N,H,W,C] -> [N,2H,2W,C]."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return layers.Conv2d(x.shape[-1], 3, padding=1, name='conv', dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Downsample(nn.Module):
  """Official `Downsample(with_conv=True)`: zero-pad one row/column at the bottom/right, `conv` 3x3 stride 2.

  [N,H,W,C] -> [N,H/2,W/2,C] (for even H, W).
  """
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # F.pad(x, (0, 1, 0, 1))
    return layers.Conv2d(x.shape[-1], 3, stride=2, padding=0, name='conv', dtype=self.dtype,
                         param_dtype=self.param_dtype)(x)


class Embedding(nn.Module):
  """`nn.Embedding(num, dim)`: param `weight` [num, dim], U(-1/num, 1/num) (the VectorQuantizer init)."""
  num: int
  dim: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self) -> Array:
    bound = 1.0 / self.num
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    return self.param('weight', init, (self.num, self.dim), self.param_dtype)


class VectorQuantizer(nn.Module):
  """Official `VectorQuantizer` forward (inference values): nearest codebook entry per position.

  The squared distances are computed as the official code does,
  `sum(z^2) + sum(e^2) - 2 z @ e^T` (at least float32, full-precision matmul), the index
  is the argmin (first minimum), and the output is `z + (e[idx] - z)` (the
  straight-through form; its value is e[idx] up to rounding, as in the
  official code). The commitment loss and perplexity are training-only and not
  computed. Param: `embedding.weight` [n_e, e_dim].

  Attributes:
    n_e: number of codes.
    e_dim: code width (the channels of z).
  """
  n_e: int
  e_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> tuple[Array, Array]:
    """z: [N,H,W,e_dim] -> (z_q [N,H,W,e_dim], indices [N,H,W] int32)."""
    if z.shape[-1] != self.e_dim:
      raise ValueError(f'VectorQuantizer: z has {z.shape[-1]} channels, the codebook has {self.e_dim}')
    ct = _at_least_f32(self.dtype)
    e = Embedding(self.n_e, self.e_dim, self.param_dtype, name='embedding')().astype(ct)
    z32 = z.astype(ct)
    zf = z32.reshape(-1, self.e_dim)
    d = (jnp.sum(zf**2, axis=1, keepdims=True) + jnp.sum(e**2, axis=1) -
         2 * jnp.matmul(zf, e.T, precision=lax.Precision.HIGHEST))
    idx = jnp.argmin(d, axis=1).astype(jnp.int32)
    z_q = jnp.take(e, idx, axis=0).reshape(z32.shape)
    z_q = z32 + lax.stop_gradient(z_q - z32)
    return z_q.astype(self.dtype), idx.reshape(z.shape[:-1])
