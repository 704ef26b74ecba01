"""facexlib 0.3.0 `RetinaFace` (detection network), NHWC: ResNet-50 or MobileNetV1-0.25 backbone, FPN, SSH, heads.

The face detector of the photo pipeline (gfpgan.md section 4; FaceRestoreHelper
uses `retinaface_resnet50`). This is the network of `RetinaFace.forward` with
`phase='test'`; the priors, box decoding, thresholding and NMS of
`detect_faces` are in `gfpgan_jax.models.retinaface_post`.

Input: the official preprocessed image, BGR float32 with the mean
(104, 117, 123) subtracted, NHWC. Output `(loc, conf, landmarks)` over the
priors in the official order (level, then row, column, anchor):
`loc` [N,P,4], `conf` [N,P,2] after softmax, `landmarks` [N,P,10].

Variable paths are the official state-dict keys (`body.layer1.0.downsample.0.weight`,
`body.stage1.1.3.weight`, `fpn.output1.0.weight`, `ssh1.conv3X3.1.running_mean`,
`ClassHead.0.conv1x1.bias`, ...). BatchNorm always runs in inference mode.
Leaky slopes are the official ones: FPN and SSH use 0.1 when their width is
<= 64 (MobileNet) and 0 (ReLU) otherwise; MobileNet's `conv_dw` and its first
`conv_bn` use 0.1.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from gfpgan_jax.models import layers

Array = jax.Array
Dtype = Any

NETWORKS = ('resnet50', 'mobile0.25')
# Per backbone: the FPN input widths (in_channel * (2, 4, 8)) and the FPN/SSH/head width (`out_channel`).
_IN_CHANNELS = {'resnet50': (512, 1024, 2048), 'mobile0.25': (64, 128, 256)}
_OUT_CHANNELS = {'resnet50': 256, 'mobile0.25': 64}
NUM_ANCHORS = 2  # `make_*_head(anchor_num=2)`: two min sizes per level
# torchvision's `ResNet.__init__` initialises its convs with kaiming_normal(fan_out, relu).
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source rows of PyTorch `F.interpolate(size=out, mode='nearest')` along one axis.

  ATen's `nearest_idx`: identity for equal sizes, `dst >> 1` for exactly 2x,
  else `min(floor(dst * scale), in - 1)` with `scale = (float)in / out`, all in
  float32 as the CPU kernel computes it.
  """
  dst = np.arange(out_size)
  if out_size == in_size:
    return dst
  if out_size == 2 * in_size:
    return dst >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  return np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
  """`F.interpolate(x, size=size, mode='nearest')` for NHWC `x` [N,h,w,C] -> [N,H,W,C]."""
  h, w = x.shape[1:3]
  oh, ow = size
  if (oh, ow) == (2 * h, 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  if oh != h:
    x = jnp.take(x, jnp.asarray(nearest_indices(h, oh), jnp.int32), axis=1)
  if ow != w:
    x = jnp.take(x, jnp.asarray(nearest_indices(w, ow), jnp.int32), axis=2)
  return x


def max_pool_3x3_s2(x: Array) -> Array:
  """`nn.MaxPool2d(kernel_size=3, stride=2, padding=1)` (padding is -inf)."""
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


# ------------------------------------------------------------------------------
# facexlib's conv blocks (nn.Sequential: children '0', '1', ...).
# ------------------------------------------------------------------------------


class ConvBN(nn.Module):
  """`conv_bn` / `conv_bn_no_relu` / `conv_bn1X1`: '0' conv (no bias), '1' BatchNorm, [leaky ReLU].

  Attributes:
    features: output channels.
    kernel_size: 3 (padding 1) or 1 (padding 0).
    stride: conv stride.
    leaky: negative slope of the activation, or None for none (`conv_bn_no_relu`).
    kernel_init: conv weight initialiser.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  leaky: float | None = 0.0
  kernel_init: Any = layers.torch_default_kernel_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Conv2d(self.features, self.kernel_size, stride=self.stride, padding=self.kernel_size // 2,
                      use_bias=False, kernel_init=self.kernel_init, name='0', **kw)(x)
    x = layers.BatchNorm(name='1', **kw)(x)
    return x if self.leaky is None else layers.leaky_relu(x, self.leaky)


class DepthwiseConv2d(nn.Module):
  """`nn.Conv2d(C, C, k, stride, k // 2, groups=C, bias=False)` as k*k shifted multiply-adds.

  Param `weight` [k,k,1,C], the layout of `layers.Conv2d(groups=C)` (torch
  (C,1,k,k)); same result up to the summation order. XLA:CPU's grouped
  convolution is 15-30x slower than this on MobileNet's shapes (e.g. 14.5 ms
  vs 0.7 ms for [1,240,320,8], 2 cores); on a GPU both are memory-bound.
  """
  kernel_size: int = 3
  stride: int = 1
  kernel_init: Any = layers.torch_default_kernel_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h, w, c = x.shape
    k, s, p = self.kernel_size, self.stride, self.kernel_size // 2
    weight = self.param('weight', self.kernel_init, (k, k, 1, c), self.param_dtype).astype(self.dtype)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (p, p), (p, p), (0, 0)))
    out = None
    for i in range(k):
      for j in range(k):
        tap = lax.slice(xp, (0, i, j, 0), (n, i + s * (oh - 1) + 1, j + s * (ow - 1) + 1, c), (1, s, s, 1))
        out = tap * weight[i, j, 0] if out is None else out + tap * weight[i, j, 0]
    return out


class ConvDW(nn.Module):
  """`conv_dw`: '0' depthwise 3x3 (stride), '1' BN, lrelu, '3' 1x1 conv, '4' BN, lrelu (slope 0.1)."""
  features: int
  stride: int = 1
  leaky: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = DepthwiseConv2d(3, self.stride, name='0', **kw)(x)
    x = layers.leaky_relu(layers.BatchNorm(name='1', **kw)(x), self.leaky)
    x = layers.Conv2d(self.features, 1, use_bias=False, name='3', **kw)(x)
    return layers.leaky_relu(layers.BatchNorm(name='4', **kw)(x), self.leaky)


# ------------------------------------------------------------------------------
# Backbones (`body`, torchvision's IntermediateLayerGetter: only the layers up to the last returned one).
# ------------------------------------------------------------------------------


class Bottleneck(nn.Module):
  """torchvision `Bottleneck` (ResNet v1.5: the stride is on the 3x3 conv), expansion 4."""
  planes: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(use_bias=False, kernel_init=_kaiming_fan_out, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out = layers.Conv2d(self.planes, 1, name='conv1', **kw)(x)
    out = jax.nn.relu(layers.BatchNorm(name='bn1', **bn)(out))
    out = layers.Conv2d(self.planes, 3, stride=self.stride, padding=1, name='conv2', **kw)(out)
    out = jax.nn.relu(layers.BatchNorm(name='bn2', **bn)(out))
    out = layers.Conv2d(self.planes * 4, 1, name='conv3', **kw)(out)
    out = layers.BatchNorm(name='bn3', **bn)(out)
    if self.stride != 1 or x.shape[-1] != self.planes * 4:
      x = ConvBN(self.planes * 4, 1, self.stride, None, _kaiming_fan_out, name='downsample', **bn)(x)
    return jax.nn.relu(out + x)


class ResNetLayer(nn.Module):
  """torchvision `ResNet.layerN`: Bottlenecks '0' (stride, downsample) .. 'blocks-1'."""
  planes: int
  blocks: int
  stride: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.blocks):
      x = Bottleneck(self.planes, self.stride if i == 0 else 1, name=str(i), **kw)(x)
    return x


class ResNet50Body(nn.Module):
  """torchvision `resnet50` up to `layer4`; returns layer2, layer3, layer4 ([N,H/8..H/32,512/1024/2048])."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> list[Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Conv2d(64, 7, stride=2, padding=3, use_bias=False, kernel_init=_kaiming_fan_out, name='conv1',
                      **kw)(x)
    x = max_pool_3x3_s2(jax.nn.relu(layers.BatchNorm(name='bn1', **kw)(x)))
    x = ResNetLayer(64, 3, 1, name='layer1', **kw)(x)
    outs = []
    for name, planes, blocks in (('layer2', 128, 4), ('layer3', 256, 6), ('layer4', 512, 3)):
      x = ResNetLayer(planes, blocks, 2, name=name, **kw)(x)
      outs.append(x)
    return outs


class MobileNetStage(nn.Module):
  """A `MobileNetV1.stageN` Sequential of (conv_bn |) conv_dw blocks; `specs` = ((features, stride), ...)."""
  specs: Sequence[tuple[int, int]]
  first_conv_bn: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, (features, stride) in enumerate(self.specs):
      if i == 0 and self.first_conv_bn:
        x = ConvBN(features, 3, stride, 0.1, name=str(i), **kw)(x)
      else:
        x = ConvDW(features, stride, name=str(i), **kw)(x)
    return x


class MobileNetV1Body(nn.Module):
  """facexlib `MobileNetV1` (x0.25) stages 1-3; returns their outputs ([N,H/8..H/32,64/128/256])."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> list[Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    s1 = MobileNetStage(((8, 2), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)), True, name='stage1', **kw)(x)
    s2 = MobileNetStage(((128, 2),) + ((128, 1),) * 5, name='stage2', **kw)(s1)
    s3 = MobileNetStage(((256, 2), (256, 1)), name='stage3', **kw)(s2)
    return [s1, s2, s3]


# ------------------------------------------------------------------------------
# Neck and heads.
# ------------------------------------------------------------------------------


class FPN(nn.Module):
  """facexlib `FPN`: 1x1 laterals `output1..3`, nearest top-down adds, 3x3 `merge2`, `merge1`."""
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[Array]) -> list[Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    leaky = 0.1 if self.out_channels <= 64 else 0.0
    c = self.out_channels
    out1 = ConvBN(c, 1, 1, leaky, name='output1', **kw)(feats[0])
    out2 = ConvBN(c, 1, 1, leaky, name='output2', **kw)(feats[1])
    out3 = ConvBN(c, 1, 1, leaky, name='output3', **kw)(feats[2])
    out2 = ConvBN(c, 3, 1, leaky, name='merge2', **kw)(out2 + resize_nearest(out3, out2.shape[1:3]))
    out1 = ConvBN(c, 3, 1, leaky, name='merge1', **kw)(out1 + resize_nearest(out2, out1.shape[1:3]))
    return [out1, out2, out3]


class SSH(nn.Module):
  """facexlib `SSH` context module: concat(3x3 [C/2], 5x5 [C/4], 7x7 [C/4] branches), ReLU."""
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    leaky = 0.1 if self.out_channels <= 64 else 0.0
    c = self.out_channels
    conv3 = ConvBN(c // 2, leaky=None, name='conv3X3', **kw)(x)
    c5_1 = ConvBN(c // 4, leaky=leaky, name='conv5X5_1', **kw)(x)
    conv5 = ConvBN(c // 4, leaky=None, name='conv5X5_2', **kw)(c5_1)
    c7_2 = ConvBN(c // 4, leaky=leaky, name='conv7X7_2', **kw)(c5_1)
    conv7 = ConvBN(c // 4, leaky=None, name='conv7x7_3', **kw)(c7_2)
    return jax.nn.relu(jnp.concatenate([conv3, conv5, conv7], axis=-1))


class Head(nn.Module):
  """`ClassHead`/`BboxHead`/`LandmarkHead`: 1x1 conv `conv1x1` [N,H,W,A*k] -> [N,H*W*A,k]."""
  k: int
  num_anchors: int = NUM_ANCHORS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out = layers.Conv2d(self.num_anchors * self.k, 1, name='conv1x1', dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)
    return out.reshape(out.shape[0], -1, self.k)  # NHWC: the official permute(0, 2, 3, 1).view


# ------------------------------------------------------------------------------
# The detector.
# ------------------------------------------------------------------------------


class RetinaFace(nn.Module):
  """facexlib `RetinaFace(network_name, phase='test')`.

  Attributes:
    network_name: 'resnet50' (the released `detection_Resnet50_Final.pth`) or
      'mobile0.25' (`detection_mobilenet0.25_Final.pth`).
    dtype: compute dtype (BatchNorm and the softmax run in float32; outputs
      are float32).
    param_dtype: parameter dtype.
  """
  network_name: str = 'resnet50'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array, Array]:
    """Runs the detector.

    Args:
      x: [N,H,W,3] float BGR image minus the mean (104, 117, 123), as
        `detect_faces` feeds the network.

    Returns:
      `(loc [N,P,4], conf [N,P,2] (softmax), landmarks [N,P,10])`, float32,
      with P = 2 * sum over strides 8, 16, 32 of ceil(H/s) * ceil(W/s).

    Raises:
      ValueError: for an unknown `network_name` or an input that is not [N,H,W,3].
    """
    if self.network_name not in NETWORKS:
      raise ValueError(f'RetinaFace network_name must be one of {NETWORKS}, got {self.network_name!r}')
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'RetinaFace expects a BGR image batch [N,H,W,3] (NHWC), got shape {tuple(x.shape)}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    if self.network_name == 'resnet50':
      feats = ResNet50Body(name='body', **kw)(x)
    else:
      feats = MobileNetV1Body(name='body', **kw)(x)
    c = _OUT_CHANNELS[self.network_name]
    fpn = FPN(c, name='fpn', **kw)(feats)
    features = [SSH(c, name=f'ssh{i + 1}', **kw)(f) for i, f in enumerate(fpn)]

    def heads(name, k):
      outs = [Head(k, name=f'{name}.{i}', **kw)(f) for i, f in enumerate(features)]
      return jnp.concatenate(outs, axis=1).astype(jnp.float32)

    loc = heads('BboxHead', 4)
    conf = jax.nn.softmax(heads('ClassHead', 2), axis=-1)
    landmarks = heads('LandmarkHead', 10)
    return loc, conf, landmarks
