"""StyleGAN2 generators: the shared synthesis loop and the basicsr (FIR) variant.

`StyleGAN2Generator` computes basicsr's `StyleGAN2Generator` and, given SFT
`conditions`, gfpgan's `StyleGAN2GeneratorSFT` (the decoder of `GFPGANv1`);
the two have the same parameters. The clean (bilinear) variant lives in
`stylegan2_clean.py` and shares `StyleGAN2Base`.

Modulated convolutions use the activation-scaling form (scale the input by the
style, run one shared-weight conv, demodulate the output), which is the same
maths as the official per-sample grouped conv (gfpgan.md section 1.2) and runs
as a dense conv under jit and sharding.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from gfpgan_jax.models import layers
from gfpgan_jax.models import resample

Array = jax.Array
Dtype = Any


def channels_for(narrow: float, channel_multiplier: float) -> dict[int, int]:
  """Feature channels per resolution, as the official `channels` dict."""
  return {
      4: int(512 * narrow),
      8: int(512 * narrow),
      16: int(512 * narrow),
      32: int(512 * narrow),
      64: int(256 * channel_multiplier * narrow),
      128: int(128 * channel_multiplier * narrow),
      256: int(64 * channel_multiplier * narrow),
      512: int(32 * channel_multiplier * narrow),
      1024: int(16 * channel_multiplier * narrow),
  }


def log2_size(out_size: int) -> int:
  log_size = int(math.log(out_size, 2))
  if 2**log_size != out_size or out_size < 8 or out_size > 1024:
    raise ValueError(f'out_size must be a power of two in [8, 1024], got {out_size}')
  return log_size


def norm_style_code(x: Array) -> Array:
  """`NormStyleCode`: x * rsqrt(mean(x^2, dim=1) + 1e-8), over axis 1 as the official code."""
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + 1e-8)


def modulate_and_demodulate(x: Array, style: Array, weight: Array, demodulate: bool,
                            eps: float, dtype: Dtype) -> tuple[Array, Array | None]:
  """Returns the style-scaled input and the demodulation factors.

  Args:
    x: [N, H, W, I] input features.
    style: [N, I] per-sample input-channel scales (float32).
    weight: [k, k, I, O] effective (already scaled) shared weight, float32.
    demodulate: whether to compute demodulation factors.
    eps: added inside the rsqrt.
    dtype: compute dtype.

  Returns:
    (x * style, demod [N, O] or None). demod equals rsqrt(sum_{i,kh,kw}
    (weight * style)^2 + eps), computed in float32.
  """
  demod = None
  if demodulate:
    wsq = jnp.sum(jnp.square(weight.astype(jnp.float32)), axis=(0, 1))  # [I, O]
    demod = lax.rsqrt(jnp.dot(jnp.square(style.astype(jnp.float32)), wsq,
                              precision=lax.Precision.HIGHEST) + eps)
  xs = x.astype(dtype) * style.astype(dtype)[:, None, None, :]
  return xs, demod


class ModulatedConv2d(nn.Module):
  """basicsr `ModulatedConv2d`: runtime scale 1/sqrt(in*k*k), FIR up/down-sampling.

  Params: `weight` [1, k, k, in, out] (randn), `modulation` (EqualLinear, bias 1).
  With `interpolation_mode` ('bilinear' or 'nearest'; None = FIR) it is
  gfpgan's bilinear-arch `ModulatedConv2d`: the input is resized with
  `F.interpolate(scale_factor=2 or 0.5)`, then a plain conv with pad k//2.
  """
  out_channels: int
  kernel_size: int
  demodulate: bool = True
  sample_mode: str | None = None
  resample_kernel: Sequence[int] = layers.DEFAULT_RESAMPLE_KERNEL
  eps: float = 1e-8
  interpolation_mode: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, style: Array) -> Array:
    if self.sample_mode not in (None, 'upsample', 'downsample'):
      raise ValueError(f"sample_mode must be 'upsample', 'downsample' or None, got {self.sample_mode!r}")
    in_ch = x.shape[-1]
    k = self.kernel_size
    s = layers.EqualLinear(in_ch, bias_init_val=1.0, param_dtype=self.param_dtype,
                           name='modulation')(style.astype(jnp.float32))
    w = self.param('weight', nn.initializers.normal(1.0), (1, k, k, in_ch, self.out_channels),
                   self.param_dtype)
    w = w[0].astype(jnp.float32) * (1.0 / math.sqrt(in_ch * k * k))
    x, demod = modulate_and_demodulate(x, s, w, self.demodulate, self.eps, self.dtype)
    wc = w.astype(self.dtype)
    if self.interpolation_mode is not None:
      # The style scale is per input channel, so it commutes with the resize.
      if self.sample_mode is not None:
        x = resample.interpolate(x, 2 if self.sample_mode == 'upsample' else 0.5, self.interpolation_mode)
      out = layers.conv2d(x, wc, padding=k // 2)
      if demod is not None:
        out = out * demod.astype(out.dtype)[:, None, None, :]
      return out
    if self.sample_mode == 'upsample':
      out = layers.conv_transpose2x(x, wc)  # conv_transpose2d(stride 2, pad 0): 2h+1
    elif self.sample_mode == 'downsample':
      x = layers.blur_before_stride2(x, k, self.resample_kernel)
      out = layers.conv2d(x, wc, stride=2, padding=0)
    else:
      out = layers.conv2d(x, wc, padding=k // 2)
    if demod is not None:
      out = out * demod.astype(out.dtype)[:, None, None, :]
    if self.sample_mode == 'upsample':
      # UpFirDnSmooth(upsample_factor=2): kernel * 4, pad (1, 1): 2h+1 -> 2h.
      k1 = resample.make_resample_kernel_1d(self.resample_kernel)
      p = (len(k1) - 2) - (k - 1)
      out = resample.upfirdn2d(out, k1, pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)
    return out


def draw_noise(module: nn.Module, out: Array, noise: Array | None) -> Array:
  if noise is None:
    n, h, w, _ = out.shape
    noise = jax.random.normal(module.make_rng('noise'), (n, h, w, 1), jnp.float32)
  return noise.astype(out.dtype)


class StyleConv(nn.Module):
  """basicsr `StyleConv`: sqrt(2) * lrelu(modconv(x) + w_n * noise + b).

  Params: `weight` [1] noise strength, `modulated_conv`, `activate.bias` [C].
  """
  out_channels: int
  kernel_size: int = 3
  sample_mode: str | None = None
  resample_kernel: Sequence[int] = layers.DEFAULT_RESAMPLE_KERNEL
  interpolation_mode: str | None = None  # None: FIR; 'bilinear'/'nearest': see ModulatedConv2d
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, style: Array, noise: Array | None = None) -> Array:
    out = ModulatedConv2d(self.out_channels, self.kernel_size, sample_mode=self.sample_mode,
                          resample_kernel=self.resample_kernel, interpolation_mode=self.interpolation_mode,
                          dtype=self.dtype, param_dtype=self.param_dtype, name='modulated_conv')(x, style)
    strength = self.param('weight', nn.initializers.zeros, (1,), self.param_dtype)
    out = out + strength.astype(out.dtype) * draw_noise(self, out, noise)
    return layers.FusedLeakyReLU(dtype=self.dtype, param_dtype=self.param_dtype, name='activate')(out)


class ToRGB(nn.Module):
  """basicsr `ToRGB`: 1x1 modulated conv (no demod) + bias, plus the FIR-upsampled skip.

  With `interpolation_mode` ('bilinear' or 'nearest'; None = FIR) the skip is
  upsampled by `F.interpolate(scale_factor=2)` (gfpgan's bilinear arch).
  """
  upsample: bool = True
  resample_kernel: Sequence[int] = layers.DEFAULT_RESAMPLE_KERNEL
  interpolation_mode: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, style: Array, skip: Array | None = None) -> Array:
    out = ModulatedConv2d(3, 1, demodulate=False, dtype=self.dtype, param_dtype=self.param_dtype,
                          name='modulated_conv')(x, style)
    out = out + self.param('bias', nn.initializers.zeros, (1, 1, 1, 3), self.param_dtype).astype(out.dtype)
    if skip is not None:
      if self.upsample and self.interpolation_mode is not None:
        skip = resample.interpolate(skip, 2, self.interpolation_mode)
      elif self.upsample:
        # UpFirDnUpsample: kernel * 4, up 2, pad (2, 1).
        k1 = resample.make_resample_kernel_1d(self.resample_kernel)
        p = len(k1) - 2
        skip = resample.upfirdn2d(skip, k1, up=2, pad=((p + 1) // 2 + 1, p // 2), gain=4.0)
      out = out + skip.astype(out.dtype)
    return out


class ConstantInput(nn.Module):
  """The learned 4x4 input. Param `weight` [1, 4, 4, C]."""
  num_channel: int
  size: int = 4
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, batch: int) -> Array:
    w = self.param('weight', nn.initializers.normal(1.0), (1, self.size, self.size, self.num_channel),
                   self.param_dtype)
    return jnp.tile(w, (batch, 1, 1, 1))


class NoiseBuffers(nn.Module):
  """The stored noise maps `noise{k}` [1, r, r, 1] in the non-trainable 'noises' collection."""
  num_layers: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self) -> list[Array]:
    out = []
    for k in range(self.num_layers):
      r = 2**((k + 5) // 2)
      var = self.variable('noises', f'noise{k}',
                          lambda r=r: jax.random.normal(self.make_rng('params'), (1, r, r, 1), self.param_dtype))
      out.append(var.value)
    return out


class StyleGAN2Base(nn.Module):
  """Mapping network, latent/noise handling and the SFT synthesis loop.

  Subclasses provide the layer constructors of their variant. Names follow the
  official state dict: `style_mlp.{i}`, `constant_input`, `style_conv1`,
  `to_rgb1`, `style_convs.{n}`, `to_rgbs.{j}`, `noises.noise{k}`.
  """
  out_size: int
  num_style_feat: int = 512
  num_mlp: int = 8
  channel_multiplier: int = 2
  narrow: float = 1.0
  sft_half: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  # -- hooks implemented by the variants ------------------------------------------------
  def _make_style_mlp(self) -> list[nn.Module]:
    raise NotImplementedError

  def _style_mlp_act(self, x: Array) -> Array:
    raise NotImplementedError

  def _make_style_conv(self, out_channels: int, upsample: bool, name: str) -> nn.Module:
    raise NotImplementedError

  def _make_to_rgb(self, upsample: bool, name: str) -> nn.Module:
    raise NotImplementedError

  # -- structure ---------------------------------------------------------------------------
  @property
  def log_size(self) -> int:
    return log2_size(self.out_size)

  @property
  def num_layers(self) -> int:
    return (self.log_size - 2) * 2 + 1

  @property
  def num_latent(self) -> int:
    return self.log_size * 2 - 2

  def setup(self):
    ch = channels_for(self.narrow, self.channel_multiplier)
    self.style_mlp = self._make_style_mlp()
    self.constant_input = ConstantInput(ch[4], param_dtype=self.param_dtype)
    self.style_conv1 = self._make_style_conv(ch[4], False, 'style_conv1')
    self.to_rgb1 = self._make_to_rgb(False, 'to_rgb1')
    style_convs, to_rgbs = [], []
    for level, i in enumerate(range(3, self.log_size + 1)):
      out_ch = ch[2**i]
      style_convs.append(self._make_style_conv(out_ch, True, f'style_convs.{2 * level}'))
      style_convs.append(self._make_style_conv(out_ch, False, f'style_convs.{2 * level + 1}'))
      to_rgbs.append(self._make_to_rgb(True, f'to_rgbs.{level}'))
    self.style_convs = style_convs
    self.to_rgbs = to_rgbs
    self.noises = NoiseBuffers(self.num_layers, self.param_dtype)

  # -- mapping -------------------------------------------------------------------------------
  def get_latent(self, z: Array) -> Array:
    """Mapping network (NormStyleCode + MLP). z: [N, F] (or [N, L, F]) -> same shape."""
    x = norm_style_code(z.astype(jnp.float32))
    for layer in self.style_mlp:
      x = self._style_mlp_act(layer(x))
    return x

  def mean_latent(self, key: Array, num_latent: int = 4096) -> Array:
    """Average mapped latent of `num_latent` random codes, [1, F] (truncation centre)."""
    z = jax.random.normal(key, (num_latent, self.num_style_feat), jnp.float32)
    return jnp.mean(self.get_latent(z), axis=0, keepdims=True)

  def _form_latent(self, styles: Sequence[Array], inject_index) -> Array:
    n_lat = self.num_latent
    if len(styles) == 1:
      s = styles[0]
      return jnp.repeat(s[:, None], n_lat, axis=1) if s.ndim < 3 else s
    if len(styles) != 2:
      raise ValueError(f'styles must hold one or two codes, got {len(styles)}')
    if inject_index is None:
      inject_index = jax.random.randint(self.make_rng('noise'), (), 1, n_lat)
    first = (jnp.arange(n_lat) < inject_index)[None, :, None]
    return jnp.where(first, styles[0][:, None], styles[1][:, None])

  # -- synthesis -----------------------------------------------------------------------------
  def __call__(self,
               styles: Array | Sequence[Array],
               conditions: Sequence[Array] | None = None,
               input_is_latent: bool = False,
               noise: Sequence[Array | None] | None = None,
               randomize_noise: bool = True,
               truncation: float = 1.0,
               truncation_latent: Array | None = None,
               inject_index: int | Array | None = None,
               return_latents: bool = False) -> tuple[Array, Array | None]:
    """Generates images.

    Args:
      styles: one code [N, F] (repeated over layers), one w+ code [N, L, F]
        with L = 2*log2(out_size) - 2, or a sequence of one or two codes
        (two = style mixing at `inject_index`, drawn from the 'noise' rng when None).
      conditions: SFT [scale_0, shift_0, scale_1, ...], NHWC, one pair per level
        (8, 16, ... px); None for a plain StyleGAN2.
      input_is_latent: skip the mapping network (GFP-GAN always sets True).
      noise: per-layer noise maps [N or 1, r, r, 1] (None entries are drawn).
      randomize_noise: when `noise` is None, draw fresh noise from the 'noise'
        rng stream (official default); False uses the stored `noises` buffers.
      truncation: truncation psi; applied when < 1 with `truncation_latent`.
      truncation_latent: [1, F] centre, e.g. from `mean_latent`.
      inject_index: style-mixing index.
      return_latents: also return the [N, L, F] latent.

    Returns:
      (image [N, out_size, out_size, 3] unclamped, latent or None).
    """
    if not isinstance(styles, (list, tuple)):
      styles = [styles]
    styles = [jnp.asarray(s, jnp.float32) for s in styles]
    if not input_is_latent:
      styles = [self.get_latent(s) for s in styles]
    elif self.is_initializing():
      self.get_latent(jnp.zeros((1, self.num_style_feat)))  # create the (unused) mapping params
    stored = self.noises()  # always read, so the collection exists after init
    if noise is None:
      noise = [None] * self.num_layers if randomize_noise else stored
    if len(noise) != self.num_layers:
      raise ValueError(f'noise must hold {self.num_layers} maps, got {len(noise)}')
    if truncation < 1:
      if truncation_latent is None:
        raise ValueError('truncation < 1 needs truncation_latent (see mean_latent)')
      styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
    latent = self._form_latent(styles, inject_index)
    if latent.shape[1] != self.num_latent:
      raise ValueError(f'w+ latent must have {self.num_latent} layers, got shape {latent.shape}')
    conditions = list(conditions or [])

    out = self.constant_input(latent.shape[0]).astype(self.dtype)
    out = self.style_conv1(out, latent[:, 0], noise[0])
    skip = self.to_rgb1(out, latent[:, 1])
    i = 1
    for level, to_rgb in enumerate(self.to_rgbs):
      out = self.style_convs[2 * level](out, latent[:, i], noise[i])
      if i < len(conditions):
        scale, shift = conditions[i - 1].astype(out.dtype), conditions[i].astype(out.dtype)
        if self.sft_half:
          half = out.shape[-1] // 2
          out = jnp.concatenate([out[..., :half], out[..., half:] * scale + shift], axis=-1)
        else:
          out = out * scale + shift
      out = self.style_convs[2 * level + 1](out, latent[:, i + 1], noise[i + 1])
      skip = to_rgb(out, latent[:, i + 2], skip)
      i += 2
    return skip, (latent if return_latents else None)


class StyleGAN2Generator(StyleGAN2Base):
  """basicsr `StyleGAN2Generator` (and gfpgan `StyleGAN2GeneratorSFT` with conditions).

  Attributes:
    out_size: output resolution (power of two).
    num_style_feat: style width (512).
    num_mlp: mapping-network depth.
    channel_multiplier: StyleGAN2 channel multiplier.
    resample_kernel: FIR taps (1, 3, 3, 1).
    lr_mlp: mapping-network learning-rate multiplier (0.01).
    narrow: channel narrowing ratio.
    sft_half: apply SFT to the second half of the channels only.
  """
  resample_kernel: Sequence[int] = layers.DEFAULT_RESAMPLE_KERNEL
  lr_mlp: float = 0.01

  def _make_style_mlp(self):
    return [
        layers.EqualLinear(self.num_style_feat, lr_mul=self.lr_mlp, activation='fused_lrelu',
                           param_dtype=self.param_dtype, name=f'style_mlp.{i}')
        for i in range(1, self.num_mlp + 1)
    ]

  def _style_mlp_act(self, x):
    return x  # the fused lrelu is inside EqualLinear

  def _make_style_conv(self, out_channels, upsample, name):
    return StyleConv(out_channels, 3, sample_mode='upsample' if upsample else None,
                     resample_kernel=self.resample_kernel, dtype=self.dtype,
                     param_dtype=self.param_dtype, name=name)

  def _make_to_rgb(self, upsample, name):
    return ToRGB(upsample, self.resample_kernel, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
