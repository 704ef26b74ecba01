"""GFP-GAN training losses as pure JAX functions (gfpgan.md 3.3).

Everything here is a function of arrays (or of a discriminator apply
callable, for R1): no Flax state, jit-compatible, reductions in float32
whatever the input dtype. Images are NHWC in [-1, 1].

Weights: each function returns its *unweighted* term; the official weights
(options/train_gfpgan_v1.yml) are the constants below and the caller applies
them (the pyramid weight is `pyramid_loss_weight(iteration)`, a function of
the iteration). Two exceptions follow the official code: `perceptual_and_style`
multiplies by its layer/perceptual/style weights like basicsr's
`PerceptualLoss`, and `r1_penalty` includes `r1_reg_weight / 2 * d_reg_every`.

The generator loss of one official iteration is

    PIXEL_WEIGHT * l1(out, gt)
    + pyramid_loss_weight(t) * pyramid_l1(out_rgbs, gt)
    + percep + style                                    # perceptual_and_style
    + GAN_WEIGHT * g_nonsaturating(D(out))
    + sum_c COMPONENT_GAN_WEIGHT * component_g_loss(D_c(patch_c(out)))
    + COMP_STYLE_WEIGHT * sum_c component_style_loss(feats_c(out), feats_c(gt))
    + IDENTITY_WEIGHT * identity_loss(A(identity_input(out)), A(identity_input(gt)))

and the discriminators use `d_logistic` (+ `r1_penalty` every D_REG_EVERY
iterations) and `component_d_loss`.
"""

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from gfpgan_jax.models import resample
from gfpgan_jax.ops import roi_align

Array = jax.Array
PyTree = Any

# Official weights and schedule (train_gfpgan_v1.yml, GFPGANModel).
PIXEL_WEIGHT = 0.1
PYRAMID_WEIGHT = 1.0
REMOVE_PYRAMID_LOSS = 50_000
PYRAMID_RESIDUAL_WEIGHT = 1e-12
PERCEPTUAL_WEIGHT = 1.0
STYLE_WEIGHT = 50.0
VGG_LAYER_WEIGHTS = {'conv1_2': 0.1, 'conv2_2': 0.1, 'conv3_4': 1.0, 'conv4_4': 1.0, 'conv5_4': 1.0}
GAN_WEIGHT = 0.1
COMPONENT_GAN_WEIGHT = 1.0
COMP_STYLE_WEIGHT = 200.0
IDENTITY_WEIGHT = 10.0
R1_REG_WEIGHT = 10.0
D_REG_EVERY = 16
EMA_DECAY_OFFICIAL = 0.5**(32 / (10 * 1000))  # ~0.9977844 per iteration

COMPONENTS = ('left_eye', 'right_eye', 'mouth')
EYE_SIZE = 80
MOUTH_SIZE = 120
IDENTITY_SIZE = 128
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # GFPGANModel.gray_resize_for_identity (not cv2's 0.299/0.587/0.114)

_F32 = jnp.float32
_HIGHEST = lax.Precision.HIGHEST


def l1(a: Array, b: Array) -> Array:
  """Mean absolute error over all elements (torch `L1Loss`, reduction 'mean').

  Args:
    a: any shape.
    b: same shape as `a`.

  Returns:
    float32 scalar.
  """
  if a.shape != b.shape:
    raise ValueError(f'l1: shapes differ: {a.shape} vs {b.shape}')
  return jnp.mean(jnp.abs(a.astype(_F32) - b.astype(_F32)))


# ------------------------------------------------------------------------------
# Pixel pyramid (intermediate restoration loss).
# ------------------------------------------------------------------------------


def gt_pyramid(gt: Array, num_levels: int | None = None) -> list[Array]:
  """GFPGANModel.construct_img_pyramid: successive bilinear x0.5 of the GT.

  Bilinear x0.5 with align_corners=False is the 2x2 mean for even sizes.

  Args:
    gt: [N, S, S, C]; S a power of two >= 8 for the default `num_levels`,
      else divisible by 2**(num_levels - 1).
    num_levels: number of levels; default log2(S) - 2 (down to 8 px, i.e. the
      7 levels 8..512 at S = 512, matching the generator's `out_rgbs`).

  Returns:
    List of num_levels arrays, coarsest first: [N, S / 2**(L-1-i), ..., C]
    for i = 0..L-1; the last one is `gt` itself.
  """
  size = gt.shape[1]
  if num_levels is None:
    if size < 8 or size & (size - 1):
      raise ValueError(f'gt_pyramid: size must be a power of two >= 8, got {gt.shape}')
    num_levels = int(math.log2(size)) - 2
  if num_levels < 1 or gt.shape[1] % 2**(num_levels - 1) or gt.shape[2] % 2**(num_levels - 1):
    # Odd sizes would need F.interpolate's scale_factor=0.5 coordinate mapping, which is not the in/out ratio.
    raise ValueError(f'gt_pyramid: {num_levels} levels need sizes divisible by 2**{num_levels - 1}, got {gt.shape}')
  levels = [gt]
  for _ in range(num_levels - 1):
    levels.insert(0, resample.downsample2x(levels[0]))
  return levels


def pyramid_l1(out_rgbs: Sequence[Array], gt: Array) -> Array:
  """Sum over levels of L1(out_rgbs[i], gt_i), unweighted (gfpgan.md 3.3).

  Args:
    out_rgbs: the generator's intermediate RGB images, coarsest first
      (GFPGANv1: 7 x [N, r, r, 3] for r = 8..512).
    gt: [N, S, S, 3], S the size of the finest level.

  Returns:
    float32 scalar; multiply by `pyramid_loss_weight(iteration)`.
  """
  levels = gt_pyramid(gt, len(out_rgbs))
  return sum(l1(o, g) for o, g in zip(out_rgbs, levels, strict=True))


def pyramid_loss_weight(iteration: Array | int,
                        weight: float = PYRAMID_WEIGHT,
                        remove_after: int = REMOVE_PYRAMID_LOSS,
                        residual: float = PYRAMID_RESIDUAL_WEIGHT) -> Array:
  """The official pyramid weight schedule, usable under jit (traced iteration).

  `weight` for iterations <= `remove_after`, then `residual` (1e-12: the
  official code keeps the term alive to avoid DDP unused-parameter errors).

  Args:
    iteration: the official 1-based `current_iter` (scalar int, may be
      traced). A 0-based step counter must pass `step + 1`.
    weight: pyramid_loss_weight.
    remove_after: remove_pyramid_loss.
    residual: weight after removal.

  Returns:
    float32 scalar.
  """
  return jnp.where(jnp.asarray(iteration) > remove_after, jnp.asarray(residual, _F32), jnp.asarray(weight, _F32))


# ------------------------------------------------------------------------------
# Perceptual and style (VGG19 features).
# ------------------------------------------------------------------------------


def gram(features: Array) -> Array:
  """Per-sample Gram matrix F F^T / (c h w) (basicsr `_gram_mat`), in float32.

  Args:
    features: [N, H, W, C] (NHWC; the value equals the official NCHW gram).

  Returns:
    [N, C, C] float32.
  """
  n, h, w, c = features.shape
  f = features.astype(_F32).reshape(n, h * w, c)
  return jnp.einsum('nkc,nkd->ncd', f, f, precision=_HIGHEST) / (c * h * w)


def perceptual_and_style(feats_out: Mapping[str, Array],
                         feats_gt: Mapping[str, Array],
                         layer_weights: Mapping[str, float] = VGG_LAYER_WEIGHTS,
                         perceptual_weight: float = PERCEPTUAL_WEIGHT,
                         style_weight: float = STYLE_WEIGHT) -> tuple[Array, Array]:
  """basicsr `PerceptualLoss` (criterion 'l1') on precomputed VGG features.

  percep = perceptual_weight * sum_l w_l * L1(phi_l(out), phi_l(gt))
  style  = style_weight * sum_l w_l * L1(Gram(phi_l(out)), Gram(phi_l(gt)))

  The GT features are stop-gradiented: basicsr extracts them from
  `gt.detach()`.

  Args:
    feats_out: {layer: [N, h, w, C]} VGG features of the output (before ReLU,
      as `VGGFeatureExtractor` returns them).
    feats_gt: same for the ground truth.
    layer_weights: {layer: w_l}; every key must be in both feature dicts.
    perceptual_weight: multiplies the perceptual term (0 gives 0).
    style_weight: multiplies the style term (0 gives 0).

  Returns:
    (percep, style): float32 scalars, already weighted.
  """
  percep = jnp.zeros((), _F32)
  style = jnp.zeros((), _F32)
  for name, w in layer_weights.items():
    fo, fg = feats_out[name], lax.stop_gradient(feats_gt[name])
    if perceptual_weight:
      percep += w * l1(fo, fg)
    if style_weight:
      style += w * l1(gram(fo), gram(fg))
  return percep * perceptual_weight, style * style_weight


# ------------------------------------------------------------------------------
# GAN losses and R1.
# ------------------------------------------------------------------------------


def g_nonsaturating(fake_logits: Array) -> Array:
  """Generator non-saturating loss: mean softplus(-D(fake)) (basicsr 'wgan_softplus', real target).

  Args:
    fake_logits: any shape (StyleGAN2Discriminator: [N, 1]).

  Returns:
    float32 scalar (unweighted; the official weight is GAN_WEIGHT).
  """
  return jnp.mean(jax.nn.softplus(-fake_logits.astype(_F32)))


def d_logistic(real_logits: Array, fake_logits: Array) -> Array:
  """Discriminator logistic loss: mean softplus(-D(real)) + mean softplus(D(fake)).

  The caller passes logits of the detached fake (`lax.stop_gradient(out)`).

  Args:
    real_logits: any shape.
    fake_logits: any shape.

  Returns:
    float32 scalar (the official D loss has no weight).
  """
  return (jnp.mean(jax.nn.softplus(-real_logits.astype(_F32))) +
          jnp.mean(jax.nn.softplus(fake_logits.astype(_F32))))


def bce_with_logits(logits: Array, target: float | Array) -> Array:
  """torch `BCEWithLogitsLoss` (mean): max(x, 0) - x t + log(1 + exp(-|x|)).

  Args:
    logits: any shape.
    target: scalar label or an array broadcastable to `logits`.

  Returns:
    float32 scalar.
  """
  x = logits.astype(_F32)
  t = jnp.asarray(target, _F32)
  return jnp.mean(jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x))))


def r1_penalty(d_fn: Callable[[Array], Array],
               real_images: Array,
               r1_reg_weight: float = R1_REG_WEIGHT,
               d_reg_every: int = D_REG_EVERY) -> tuple[Array, Array]:
  """The official lazy R1 term: (r1_reg_weight / 2) * d_reg_every * mean_b sum_{h,w,c} g^2.

  g = d(sum_b D(real)) / d real, from a fresh forward of the real images
  (basicsr `r1_penalty` and GFPGANModel). Differentiable w.r.t. whatever
  `d_fn` closes over (double backprop), e.g.

      loss = lambda p: r1_penalty(lambda x: d.apply(p, x), gt)[0]
      grads = jax.grad(loss)(d_params)

  The returned logits are differentiable too, so an R1 iteration can build
  the whole D loss from one real forward (D is deterministic):
  `pen, real = r1_penalty(...); d_logistic(real, fake) + pen`.

  Args:
    d_fn: images [N, H, W, C] -> logits (any shape; all are summed).
    real_images: [N, H, W, C]; not differentiated through the penalty.
    r1_reg_weight: r1_reg_weight (10).
    d_reg_every: net_d_reg_every (16); the penalty is applied that rarely.

  Returns:
    (penalty: float32 scalar, real_logits: d_fn(real_images), reusable by
    the caller).
  """
  real_images = lax.stop_gradient(real_images)
  real_logits, vjp = jax.vjp(d_fn, real_images)
  (grad,) = vjp(jnp.ones_like(real_logits))
  grad = grad.astype(_F32)
  per_sample = jnp.sum(jnp.square(grad).reshape(grad.shape[0], -1), axis=1)
  return (r1_reg_weight / 2 * d_reg_every) * jnp.mean(per_sample), real_logits


# ------------------------------------------------------------------------------
# Facial components.
# ------------------------------------------------------------------------------


def crop_components(images: Array,
                    locs: Mapping[str, Array],
                    eye_size: int = EYE_SIZE,
                    mouth_size: int = MOUTH_SIZE,
                    **roi_kwargs) -> dict[str, Array]:
  """GFPGANModel.get_roi_regions: roi_align crops of both eyes and the mouth.

  The official code calls `torchvision.ops.roi_align(img, rois, output_size)`
  (spatial_scale 1, adaptive sampling, aligned False) with the eyes
  interleaved in one call; per-box results are independent, so this equals
  one call per component. The official `face_ratio = int(out_size / 512)`
  factor (on the sizes and the crop values) is 1 at 512 px and not applied
  here: pass the sizes explicitly.

  Args:
    images: [N, H, W, C] (gt or output).
    locs: {'left_eye', 'right_eye', 'mouth'} -> [N, 4] float32 boxes
      (x1, y1, x2, y2), the dataset's `loc_*` entries.
    eye_size: eye crop size (80).
    mouth_size: mouth crop size (120).
    **roi_kwargs: extra `roi_align` options (e.g. `max_samples`).

  Returns:
    {'left_eye': [N, eye, eye, C], 'right_eye': [N, eye, eye, C],
     'mouth': [N, mouth, mouth, C]}.
  """
  sizes = {'left_eye': eye_size, 'right_eye': eye_size, 'mouth': mouth_size}
  return {c: roi_align(images, locs[c], sizes[c], **roi_kwargs) for c in COMPONENTS}


def component_style_loss(feats_fake: Sequence[Array], feats_real: Sequence[Array]) -> Array:
  """Style loss on one component discriminator's features (unweighted).

  0.5 * L1(Gram(f1(fake)), Gram(f1(real))) + 1.0 * L1(Gram(f2(fake)), Gram(f2(real))),
  f1/f2 the conv3/conv5 features (`FacialComponentDiscriminator(...,
  return_feats=True)`); the real features are stop-gradiented. Sum over the
  three components and multiply by COMP_STYLE_WEIGHT (200).

  Args:
    feats_fake: [f1 [N, h, w, 128], f2 [N, h/2, w/2, 256]] of the output patch.
    feats_real: same for the GT patch.

  Returns:
    float32 scalar.
  """
  f1, f2 = feats_fake
  r1, r2 = (lax.stop_gradient(f) for f in feats_real)
  return 0.5 * l1(gram(f1), gram(r1)) + 1.0 * l1(gram(f2), gram(r2))


def component_g_loss(fake_logits: Array) -> Array:
  """G-side component GAN loss: BCEWithLogits(D_c(fake patch), 1) = mean softplus(-logit).

  Args:
    fake_logits: [N, h, w, 1] logit map of one component discriminator.

  Returns:
    float32 scalar (official weight COMPONENT_GAN_WEIGHT = 1), per component.
  """
  return bce_with_logits(fake_logits, 1.0)


def component_d_loss(real_logits: Array, fake_logits: Array) -> Array:
  """D-side component loss: BCEWithLogits(D_c(real), 1) + mean softplus(D_c(fake)).

  The official code mixes the vanilla criterion (real) and wgan_softplus
  (fake); both are the logistic loss. The caller passes logits of the
  detached fake patch.

  Args:
    real_logits: [N, h, w, 1] logit map of the GT patch.
    fake_logits: [N, h, w, 1] logit map of the (detached) output patch.

  Returns:
    float32 scalar, for one component (no weight).
  """
  return bce_with_logits(real_logits, 1.0) + jnp.mean(jax.nn.softplus(fake_logits.astype(_F32)))


# ------------------------------------------------------------------------------
# Identity (ArcFace).
# ------------------------------------------------------------------------------


def identity_input(images: Array, size: int = IDENTITY_SIZE) -> Array:
  """GFPGANModel.gray_resize_for_identity: gray 0.2989 R + 0.5870 G + 0.1140 B, bilinear to size.

  The gray image stays on the [-1, 1] scale; the resize is PyTorch bilinear
  (align_corners False, no antialias).

  Args:
    images: [N, H, W, 3] RGB in [-1, 1].
    size: output size (128, the ArcFace input).

  Returns:
    [N, size, size, 1] float32.
  """
  x = images.astype(_F32)
  gray = GRAY_WEIGHTS[0] * x[..., 0:1] + GRAY_WEIGHTS[1] * x[..., 1:2] + GRAY_WEIGHTS[2] * x[..., 2:3]
  return resample.resize_bilinear(gray, (size, size))


def identity_loss(emb_out: Array, emb_gt: Array) -> Array:
  """L1 between ArcFace embeddings (not normalised), GT stop-gradiented; unweighted.

  Args:
    emb_out: [N, 512] embedding of `identity_input(out)`.
    emb_gt: [N, 512] embedding of `identity_input(gt)`.

  Returns:
    float32 scalar; multiply by IDENTITY_WEIGHT (10).
  """
  return l1(emb_out, lax.stop_gradient(emb_gt))


# ------------------------------------------------------------------------------
# Generator EMA.
# ------------------------------------------------------------------------------


def ema_update(ema_params: PyTree, params: PyTree, decay: float | Array = EMA_DECAY_OFFICIAL) -> PyTree:
  """`ema <- decay * ema + (1 - decay) * params` leaf-wise (GFPGANModel.model_ema).

  Computed in float32 and cast back to each EMA leaf's dtype. Apply it to
  parameters only: the official EMA copies no buffers (e.g. noise).

  Args:
    ema_params: pytree of arrays.
    params: pytree with the same structure.
    decay: EMA decay (EMA_DECAY_OFFICIAL = 0.5 ** (32 / 10000)).

  Returns:
    The updated EMA pytree.
  """

  def lerp(e, p):
    return (decay * e.astype(_F32) + (1.0 - decay) * p.astype(_F32)).astype(e.dtype)

  return jax.tree.map(lerp, ema_params, params)
