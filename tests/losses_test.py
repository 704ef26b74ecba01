"""`gfpgan_jax.losses`: closed forms, hand cases and the official PyTorch code (basicsr, GFPGANModel)."""

import ast
import importlib
import math
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfpgan_jax import convert
from gfpgan_jax import losses
from gfpgan_jax.convert import archs
from gfpgan_jax.models import vgg as models_vgg
from gfpgan_jax.testing import parity
from gfpgan_jax.testing import parity_cases

import torch  # pylint: disable=g-import-not-at-top,wrong-import-order
F = torch.nn.functional


def _t(x):
  """NHWC numpy -> NCHW torch (other ranks as they are)."""
  return torch.from_numpy(parity.nhwc_to_nchw(x) if np.ndim(x) == 4 else np.array(x, np.float32))


def _smooth_images(rng, n, size, channels=3):
  """Face-like smooth images (sums of sinusoids), so float32 sample-position rounding stays below 1e-5."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  freq = rng.uniform(-0.15, 0.15, size=(n, channels, 3, 2))
  phase = rng.uniform(0, 2 * np.pi, size=(n, channels, 3))
  img = np.sin(freq[..., 0, None, None] * yy + freq[..., 1, None, None] * xx + phase[..., None, None]).sum(2) / 3
  return img.transpose(0, 2, 3, 1).astype(np.float32)


@pytest.fixture(scope='module')
def basicsr_losses(official):
  """basicsr.losses.{basic_loss, gan_loss}, imported by path like the other official modules."""
  del official  # the fixture registers the `basicsr` package these modules import from
  if 'basicsr.losses' not in sys.modules:
    pkg = types.ModuleType('basicsr.losses')
    pkg.__path__ = [str(pathlib.Path(sys.modules['basicsr'].__path__[0]) / 'losses')]
    sys.modules['basicsr.losses'] = pkg
  return types.SimpleNamespace(basic=importlib.import_module('basicsr.losses.basic_loss'),
                               gan=importlib.import_module('basicsr.losses.gan_loss'))


def _official_roi_align(official):
  """`torchvision.ops.roi_align(input, boxes, output_size)` through the pure-PyTorch code.

  Its adaptive path materialises [K, C, out, out, H, W]; the GFP-GAN boxes are
  square (equal grids on both axes), where adaptive sampling equals
  `sampling_ratio = ceil(size / out)`, so each box runs that way.
  """
  fn = getattr(official.roi_align, '__wrapped__', official.roi_align)

  def roi_align(inp, boxes, output_size):
    outs = []
    for roi in boxes:
      g = int(math.ceil(float((roi[3] - roi[1]) / output_size)))
      assert g == int(math.ceil(float((roi[4] - roi[2]) / output_size)))
      outs.append(fn(inp, roi[None], 1.0, output_size, output_size, g, False))
    return torch.cat(outs)

  return roi_align


@pytest.fixture(scope='module')
def model_methods(official):
  """GFPGANModel's loss helpers, compiled from the official source (the class itself needs a full basicsr)."""
  path = pathlib.Path(official.gfpganv1_arch.__file__).parents[1] / 'models' / 'gfpgan_model.py'
  tree = ast.parse(path.read_text())
  cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == 'GFPGANModel')
  names = ('construct_img_pyramid', 'get_roi_regions', '_gram_mat', 'gray_resize_for_identity')
  fns = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in names]
  assert {f.name for f in fns} == set(names)
  namespace = {'torch': torch, 'F': F, 'roi_align': _official_roi_align(official)}
  exec(compile(ast.Module(body=fns, type_ignores=[]), str(path), 'exec'), namespace)  # pylint: disable=exec-used
  return types.SimpleNamespace(**{n: namespace[n] for n in names})


# ------------------------------------------------------------------------------ L1 and pyramid


def test_l1_hand_case():
  a = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  b = jnp.array([[0.0, 2.0], [5.0, 1.0]])
  assert float(jax.jit(losses.l1)(a, b)) == pytest.approx(1.5)
  got = losses.l1(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
  assert got.dtype == jnp.float32 and float(got) == pytest.approx(1.5)
  with pytest.raises(ValueError, match='shapes differ'):
    losses.l1(a, b[:1])


def test_gt_pyramid_matches_official(model_methods):
  gt = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  want = model_methods.construct_img_pyramid(types.SimpleNamespace(gt=_t(gt), log_size=6))
  got = jax.jit(losses.gt_pyramid)(jnp.asarray(gt))
  assert [g.shape[1] for g in got] == [8, 16, 32, 64] == [w.shape[2] for w in want]
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), parity.nchw_to_nhwc(w), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got[-1]), gt)
  np.testing.assert_allclose(np.asarray(got[-2]), gt.reshape(2, 32, 2, 32, 2, 3).mean((2, 4)), atol=1e-6)
  assert len(losses.gt_pyramid(jnp.zeros((1, 512, 512, 3)))) == 7
  assert [g.shape[1] for g in losses.gt_pyramid(jnp.zeros((1, 64, 64, 3)), 2)] == [32, 64]
  with pytest.raises(ValueError, match='divisible'):
    losses.gt_pyramid(jnp.zeros((1, 20, 20, 3)), 4)


def test_pyramid_l1_and_weight_schedule():
  rng = np.random.default_rng(1)
  gt = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  out_rgbs = [rng.normal(size=(2, r, r, 3)).astype(np.float32) for r in (8, 16, 32)]
  levels = [gt.reshape(2, 8, 4, 8, 4, 3).mean((2, 4)), gt.reshape(2, 16, 2, 16, 2, 3).mean((2, 4)), gt]
  want = sum(np.abs(o - g).mean() for o, g in zip(out_rgbs, levels))
  got = jax.jit(losses.pyramid_l1)([jnp.asarray(o) for o in out_rgbs], jnp.asarray(gt))
  assert float(got) == pytest.approx(want, rel=1e-6)

  weight = jax.jit(losses.pyramid_loss_weight)
  assert [float(weight(jnp.int32(t))) for t in (1, 49_999, 50_000)] == [1.0, 1.0, 1.0]
  assert float(weight(jnp.int32(50_001))) == pytest.approx(1e-12)
  assert float(weight(jnp.int32(800_000))) == pytest.approx(1e-12)
  assert float(losses.pyramid_loss_weight(11, weight=0.5, remove_after=10, residual=0.0)) == 0.0


# ------------------------------------------------------------------------------ Gram, perceptual and style


def test_layer_weights_are_the_gfpgan_vgg_layers():
  assert tuple(losses.VGG_LAYER_WEIGHTS) == models_vgg.GFPGAN_LAYERS
  assert list(losses.VGG_LAYER_WEIGHTS.values()) == [0.1, 0.1, 1.0, 1.0, 1.0]


def test_gram_hand_case():
  # One sample, c = 2 channels of 2x2: F = [[1, 2, 3, 4], [0, 1, 0, 1]]; F F^T = [[30, 6], [6, 2]], / (c h w) = 8.
  nchw = np.array([[[[1, 2], [3, 4]], [[0, 1], [0, 1]]]], np.float32)
  got = jax.jit(losses.gram)(jnp.asarray(parity.nchw_to_nhwc(nchw)))
  np.testing.assert_allclose(np.asarray(got), [[[3.75, 0.75], [0.75, 0.25]]], rtol=1e-7)


def test_gram_matches_official(model_methods):
  x = np.random.default_rng(2).normal(size=(2, 5, 3, 7)).astype(np.float32)  # NHWC, H != W
  want = model_methods._gram_mat(None, _t(x)).numpy()  # pylint: disable=protected-access
  got = losses.gram(jnp.asarray(x))
  assert got.shape == (2, 7, 7) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got), np.swapaxes(np.asarray(got), 1, 2))


def test_perceptual_and_style_match_basicsr(official, basicsr_losses, monkeypatch):
  """basicsr PerceptualLoss (GFP-GAN options) vs perceptual_and_style on our VGG19 features (converted weights).

  The parity case runs the official extractor (random weights) and ours on the
  same two 64 px images; image 0 plays the output and image 1 the GT.
  """
  case = parity_cases.CASES_BY_NAME['vgg19']
  vgg = parity_cases.run(case, official)
  x = case.inputs(np.random.RandomState(0))['x']  # what `run` fed both networks (seed 0)
  monkeypatch.setattr(basicsr_losses.basic, 'VGGFeatureExtractor', lambda **kw: vgg.torch_module)
  criterion = basicsr_losses.basic.PerceptualLoss(
      layer_weights=dict(losses.VGG_LAYER_WEIGHTS), vgg_type='vgg19', use_input_norm=True, range_norm=True,
      perceptual_weight=losses.PERCEPTUAL_WEIGHT, style_weight=losses.STYLE_WEIGHT, criterion='l1')
  with torch.no_grad():
    want = [float(v) for v in criterion(_t(x[:1]), _t(x[1:]))]
  f_out = {k: jnp.asarray(v[:1]) for k, v in vgg.outputs.items()}
  f_gt = {k: jnp.asarray(v[1:]) for k, v in vgg.outputs.items()}
  got = [float(v) for v in jax.jit(losses.perceptual_and_style)(f_out, f_gt)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert min(want) > 0


def test_perceptual_and_style_formula_and_gradients():
  rng = np.random.default_rng(4)
  shapes = {'conv1_2': (2, 8, 8, 4), 'conv2_2': (2, 4, 4, 6), 'conv3_4': (2, 2, 2, 8), 'conv4_4': (2, 2, 2, 8),
            'conv5_4': (2, 1, 1, 8)}
  f_out = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  f_gt = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}

  def gram_np(x):
    n, h, w, c = x.shape
    x = np.asarray(x, np.float64).reshape(n, h * w, c)
    return np.einsum('nkc,nkd->ncd', x, x) / (c * h * w)

  w = losses.VGG_LAYER_WEIGHTS
  want_p = sum(w[k] * np.abs(np.asarray(f_out[k]) - np.asarray(f_gt[k])).mean() for k in w)
  want_s = 50 * sum(w[k] * np.abs(gram_np(f_out[k]) - gram_np(f_gt[k])).mean() for k in w)
  p, s = jax.jit(losses.perceptual_and_style)(f_out, f_gt)
  assert float(p) == pytest.approx(want_p, rel=1e-5) and float(s) == pytest.approx(want_s, rel=1e-5)
  p, s = losses.perceptual_and_style(f_out, f_gt, {'conv2_2': 2.0}, perceptual_weight=3.0, style_weight=0.0)
  assert float(p) == pytest.approx(6 * np.abs(np.asarray(f_out['conv2_2']) - np.asarray(f_gt['conv2_2'])).mean(),
                                   rel=1e-5)
  assert float(s) == 0.0

  g_out, g_gt = jax.jit(jax.grad(lambda a, b: sum(losses.perceptual_and_style(a, b)), argnums=(0, 1)))(f_out, f_gt)
  assert all(float(jnp.abs(v).sum()) == 0.0 for v in g_gt.values())  # basicsr extracts gt features from gt.detach()
  assert all(float(jnp.abs(v).sum()) > 0.0 for v in g_out.values())


# ------------------------------------------------------------------------------ GAN losses and R1


def test_gan_losses_at_known_logits():
  ln3 = math.log(3.0)
  # softplus(0) = ln 2, softplus(-ln 3) = ln(4/3), softplus(ln 3) = ln 4.
  assert float(jax.jit(losses.g_nonsaturating)(jnp.array([[0.0], [ln3]]))) == pytest.approx(
      (math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
  assert float(jax.jit(losses.d_logistic)(jnp.array([[ln3]]), jnp.array([[0.0], [ln3]]))) == pytest.approx(
      math.log(4 / 3) + (math.log(2) + math.log(4)) / 2, rel=1e-6)
  # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x).
  x = jnp.array([-2.0, 0.0, ln3])
  assert float(losses.bce_with_logits(x, 1.0)) == pytest.approx(float(jnp.mean(jax.nn.softplus(-x))), rel=1e-6)
  assert float(losses.bce_with_logits(x, 0.0)) == pytest.approx(float(jnp.mean(jax.nn.softplus(x))), rel=1e-6)
  assert float(losses.component_g_loss(jnp.full((1, 2, 2, 1), ln3))) == pytest.approx(math.log(4 / 3), rel=1e-6)
  assert float(losses.component_d_loss(jnp.full((1, 2, 2, 1), ln3), jnp.zeros((1, 2, 2, 1)))) == pytest.approx(
      math.log(4 / 3) + math.log(2), rel=1e-6)


def test_gan_losses_match_basicsr(basicsr_losses):
  rng = np.random.default_rng(5)
  real = (rng.normal(size=(3, 1)) * 4).astype(np.float32)
  fake = (rng.normal(size=(3, 1)) * 4).astype(np.float32)
  real_map = np.concatenate([rng.normal(size=(2, 5, 5, 1)) * 5, np.full((2, 5, 5, 1), 120.0)]).astype(np.float32)
  fake_map = np.concatenate([rng.normal(size=(2, 5, 5, 1)) * 5, np.full((2, 5, 5, 1), -120.0)]).astype(np.float32)
  gan = basicsr_losses.gan.GANLoss('wgan_softplus', loss_weight=losses.GAN_WEIGHT)
  comp = basicsr_losses.gan.GANLoss('vanilla', real_label_val=1.0, fake_label_val=0.0, loss_weight=1.0)
  want_g = float(gan(_t(fake), True, is_disc=False))
  want_d = float(gan(_t(real), True, is_disc=True) + gan(_t(fake), False, is_disc=True))
  want_cg = float(comp(_t(fake_map), True, is_disc=False))
  want_cd = float(comp(_t(real_map), True, is_disc=True) + gan(_t(fake_map), False, is_disc=True))
  assert losses.GAN_WEIGHT * float(losses.g_nonsaturating(jnp.asarray(fake))) == pytest.approx(want_g, rel=1e-6)
  assert float(losses.d_logistic(jnp.asarray(real), jnp.asarray(fake))) == pytest.approx(want_d, rel=1e-6)
  assert float(losses.component_g_loss(jnp.asarray(fake_map))) == pytest.approx(want_cg, rel=1e-6)
  assert float(losses.component_d_loss(jnp.asarray(real_map), jnp.asarray(fake_map))) == pytest.approx(
      want_cd, rel=1e-6)
  target = rng.uniform(size=real_map.shape).astype(np.float32)
  want = float(torch.nn.BCEWithLogitsLoss()(torch.from_numpy(real_map), torch.from_numpy(target)))
  assert float(losses.bce_with_logits(jnp.asarray(real_map), jnp.asarray(target))) == pytest.approx(want, rel=1e-6)


def test_r1_linear_discriminator_closed_form():
  """D(x) = <w, x>: dD/dx = w for every sample, so R1 = 10/2 * 16 * |w|^2 and d R1 / dw = 160 w."""
  rng = np.random.default_rng(6)
  w = jnp.asarray(rng.normal(size=(1, 4, 4, 3)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(3, 4, 4, 3)), jnp.float32)

  def penalty(w, real):
    return losses.r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3))[:, None], real)

  (value, logits), grad_w = jax.jit(jax.value_and_grad(penalty, has_aux=True))(w, real)
  assert float(value) == pytest.approx(80 * float(jnp.sum(w**2)), rel=1e-6)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(jnp.sum(real * w, axis=(1, 2, 3))[:, None]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad_w), 160 * np.asarray(w), rtol=1e-6)
  # The returned logits carry D's gradient too: d(R1 + sum D(real)) / dw = 160 w + sum_n real_n.
  grad_w = jax.grad(lambda w: sum(jnp.sum(v) for v in penalty(w, real)))(w)
  np.testing.assert_allclose(np.asarray(grad_w), np.asarray(160 * w + real.sum(0, keepdims=True)), rtol=1e-5)
  grad_real = jax.grad(lambda r: penalty(w, r)[0])(real)  # the real images are not differentiated
  assert float(jnp.abs(grad_real).sum()) == 0.0
  value, _ = losses.r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), real, r1_reg_weight=2.0, d_reg_every=1)
  assert float(value) == pytest.approx(float(jnp.sum(w**2)), rel=1e-6)


def test_r1_matches_basicsr_on_stylegan2_discriminator(official, basicsr_losses):
  """Penalty and its gradient w.r.t. D's parameters (double backprop) vs basicsr `r1_penalty` + autograd."""
  kw = dict(out_size=16, channel_multiplier=1, narrow=1 / 16, stddev_group=4)
  torch.manual_seed(0)
  d_torch = parity.randomize_torch_module(official.stylegan2_arch.StyleGAN2Discriminator(**kw))
  real = np.random.default_rng(7).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  real_t = _t(real).requires_grad_(True)
  pred = d_torch(real_t)
  want = losses.R1_REG_WEIGHT / 2 * basicsr_losses.gan.r1_penalty(pred, real_t) * losses.D_REG_EVERY
  want.backward()
  # Parameters the input gradient does not depend on (the last bias) get no gradient: zero.
  want_grads = {k: np.zeros(p.shape, np.float32) if p.grad is None else p.grad.numpy()
                for k, p in d_torch.named_parameters()}
  assert sum(p.grad is None for p in d_torch.parameters()) == 1

  variables = convert.torch_to_flax(parity.state_dict_numpy(d_torch), 'stylegan2_discriminator', **kw)
  module, _ = archs.build('stylegan2_discriminator', **kw)

  def loss(params):
    return losses.r1_penalty(lambda x: module.apply({'params': params}, x), jnp.asarray(real))

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
  parity.assert_parity(float(value), want.item(), 'r1 penalty')
  parity.assert_parity(np.asarray(logits), pred.detach().numpy(), 'real logits')
  got_grads = convert.flax_to_torch({'params': grads}, 'stylegan2_discriminator', **kw)
  assert set(want_grads) <= set(got_grads)
  for k, g in want_grads.items():
    if not g.any():
      np.testing.assert_array_equal(got_grads[k], 0.0, err_msg=k)
      continue
    err = parity.errors(got_grads[k], g)
    assert err.rel_l2 < 1e-5, f'{k}: {err}'


# ------------------------------------------------------------------------------ facial components


def _component_locs(rng, n):
  """Boxes as FFHQDegradationDataset builds them: [x - h + 1, y - h + 1, x + h, y + h] (eyes: h *= 1.4)."""
  locs = {}
  for name, (x, y, h, ratio) in {'left_eye': (190, 245, 22, 1.4), 'right_eye': (322, 245, 22, 1.4),
                                 'mouth': (256, 372, 45, 1.0)}.items():
    xs = x + rng.uniform(-15, 15, n)
    ys = y + rng.uniform(-15, 15, n)
    hs = (h + rng.uniform(-6, 30, n)) * ratio  # up to boxes over 80/120 px (2 samples per bin)
    locs[name] = np.stack([xs - hs + 1, ys - hs + 1, xs + hs, ys + hs], 1).astype(np.float32)
  return locs


def test_crop_components_match_official(model_methods):
  rng = np.random.default_rng(8)
  gt, out = _smooth_images(rng, 2, 512), _smooth_images(rng, 2, 512)
  locs = _component_locs(rng, 2)
  me = types.SimpleNamespace(opt={'network_g': {'out_size': 512}}, device='cpu', gt=_t(gt), output=_t(out),
                             loc_left_eyes=torch.from_numpy(locs['left_eye']),
                             loc_right_eyes=torch.from_numpy(locs['right_eye']),
                             loc_mouths=torch.from_numpy(locs['mouth']))
  model_methods.get_roi_regions(me, eye_out_size=80, mouth_out_size=120)
  crop = jax.jit(losses.crop_components)
  jlocs = {k: jnp.asarray(v) for k, v in locs.items()}
  for images, suffix in ((gt, '_gt'), (out, '')):
    got = crop(jnp.asarray(images), jlocs)
    for name, attr in (('left_eye', 'left_eyes'), ('right_eye', 'right_eyes'), ('mouth', 'mouths')):
      want = parity.nchw_to_nhwc(getattr(me, attr + suffix))
      size = 120 if name == 'mouth' else 80
      assert got[name].shape == want.shape == (2, size, size, 3)
      np.testing.assert_allclose(np.asarray(got[name]), want, rtol=1e-5, atol=3e-5, err_msg=name + suffix)


def test_component_style_loss(model_methods):
  rng = np.random.default_rng(9)
  fake = [rng.normal(size=(2, 6, 6, 8)).astype(np.float32), rng.normal(size=(2, 3, 3, 16)).astype(np.float32)]
  real = [rng.normal(size=(2, 6, 6, 8)).astype(np.float32), rng.normal(size=(2, 3, 3, 16)).astype(np.float32)]
  gram_t = lambda x: model_methods._gram_mat(None, x)  # pylint: disable=protected-access
  # GFPGANModel._comp_style with the L1 criterion.
  want = float(F.l1_loss(gram_t(_t(fake[0])), gram_t(_t(real[0]))) * 0.5 +
               F.l1_loss(gram_t(_t(fake[1])), gram_t(_t(real[1]))))
  got = jax.jit(losses.component_style_loss)([jnp.asarray(f) for f in fake], [jnp.asarray(r) for r in real])
  assert float(got) == pytest.approx(want, rel=1e-5)
  g_fake, g_real = jax.grad(losses.component_style_loss, argnums=(0, 1))([jnp.asarray(f) for f in fake],
                                                                         [jnp.asarray(r) for r in real])
  assert all(float(jnp.abs(g).sum()) == 0.0 for g in g_real)
  assert all(float(jnp.abs(g).sum()) > 0.0 for g in g_fake)


# ------------------------------------------------------------------------------ identity


@pytest.mark.parametrize('size', [256, 100])
def test_identity_input(model_methods, size):
  x = np.random.default_rng(10).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  got = np.asarray(jax.jit(losses.identity_input)(jnp.asarray(x)))
  assert got.shape == (2, 128, 128, 1) and got.dtype == np.float32
  gray = 0.2989 * x[..., 0] + 0.5870 * x[..., 1] + 0.1140 * x[..., 2]
  explicit = F.interpolate(torch.from_numpy(gray[:, None]), (128, 128), mode='bilinear', align_corners=False)
  np.testing.assert_allclose(got, parity.nchw_to_nhwc(explicit), rtol=1e-6, atol=1e-6)
  official = model_methods.gray_resize_for_identity(None, _t(x))
  np.testing.assert_allclose(got, parity.nchw_to_nhwc(official), rtol=1e-6, atol=1e-6)
  if size == 256:  # 2x bilinear downsampling without antialias is the 2x2 mean
    np.testing.assert_allclose(got[..., 0], gray.reshape(2, 128, 2, 128, 2).mean((2, 4)), atol=1e-6)


def test_identity_loss():
  rng = np.random.default_rng(11)
  a, b = (jnp.asarray(rng.normal(size=(2, 512)), jnp.float32) for _ in range(2))
  assert float(jax.jit(losses.identity_loss)(a, b)) == pytest.approx(float(np.abs(a - b).mean()), rel=1e-6)
  g_a, g_b = jax.grad(losses.identity_loss, argnums=(0, 1))(a, b)
  assert float(jnp.abs(g_b).sum()) == 0.0  # the GT embedding is detached
  np.testing.assert_allclose(np.asarray(g_a), np.sign(np.asarray(a - b)) / a.size, rtol=1e-6)


# ------------------------------------------------------------------------------ EMA


def test_ema_update():
  assert losses.EMA_DECAY_OFFICIAL == pytest.approx(0.9977843871238888, rel=1e-12)
  ema = {'a': jnp.array([1.0, 2.0]), 'b': {'c': jnp.array([4.0], jnp.bfloat16)}}
  params = {'a': jnp.array([3.0, 0.0]), 'b': {'c': jnp.array([0.0], jnp.bfloat16)}}
  got = jax.jit(losses.ema_update)(ema, params, 0.75)
  np.testing.assert_allclose(np.asarray(got['a']), [1.5, 1.5], rtol=1e-7)
  assert got['b']['c'].dtype == jnp.bfloat16 and float(got['b']['c'][0]) == 3.0
  d = losses.EMA_DECAY_OFFICIAL
  got = losses.ema_update(ema, params)
  np.testing.assert_allclose(np.asarray(got['a']), [d * 1 + (1 - d) * 3, d * 2], rtol=1e-6)
  same = losses.ema_update(params, params, jnp.float32(0.3))  # a traced decay works too
  np.testing.assert_allclose(np.asarray(same['a']), np.asarray(params['a']), rtol=1e-6)
