"""Whole-step parity: one official `optimize_parameters` beside ours, term by term and gradient by gradient.

Both sides start from the same weights (the official random initialisation,
converted to our variables), the same GT batch and the same LQ batch (made
once by the official OpenCV degradations, `cv2_degradations.degrade_official`,
and fed to both: no random degradation runs inside either iteration), and the
generator uses its stored noise buffers on both sides
(`torch_train_step.use_stored_noise`, `steps.step_on_pair(...,
randomize_noise=False)`). One plain iteration (official `current_iter` 1) and
one R1 iteration (`current_iter` = `d_reg_every`) run from the same initial
weights. Reported:

* every logged loss term (`log_dict` of the official model beside our
  metrics), with its relative difference |ours - official| / |official|;
* the relative L2 difference ||g_ours - g_official|| / ||g_official|| of the
  gradient of G, D and each component D (all their trainable parameters
  together; the worst single parameter is reported too). The official gradients
  are what `.grad` holds after the iteration (`torch_train_step.gradients`);
  parameters without one (the decoder under `fix_decoder`) are left out;
* the activations of D whose leaky ReLU takes the other slope on our side
  (`slope_flips`). The slope jumps from 1 to 0.2 at 0, so an input within
  float32 rounding of 0 can land on either side, and D's whole gradient then
  moves by that one activation's share. That, not a difference of the code,
  puts D's gradient over the bar at 512 px with seed 0 (README).

Used by tests/step_parity_test.py (small config) and scripts/bench_step_parity.py
(512 px, the full recipe).
"""

import functools
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax import steps
from gfpgan_jax import train_state as ts
from gfpgan_jax import xla_options
from gfpgan_jax.convert import layout
from gfpgan_jax.convert import state_dict as sd_lib
from gfpgan_jax.testing import torch_train_step

COMPONENTS = ts.COMPONENTS
LOSS_RTOL = 1e-5  # every logged loss term (issue 12, item 3)
GRAD_RTOL = 1e-3  # relative L2 of each network's gradient


def term_names(config, r1: bool) -> dict[str, str]:
  """Official `log_dict` name -> our metric name (or 'pyramid/i' for level i of `extras['pyramid']`)."""
  lc, m = config.loss, config.model
  names = {'l_g_pix': 'g/l1'}
  if lc.pyramid_weight:
    levels = int(np.log2(config.data.resolution)) - 2
    names.update({f'l_p_{2**(i + 3)}': f'pyramid/{i}' for i in range(levels)})
  if lc.perceptual_weight:
    names['l_g_percep'] = 'g/percep'
  if lc.style_weight:
    names['l_g_style'] = 'g/style'
  names['l_g_gan'] = 'g/gan'
  if m.use_components:
    names.update({f'l_g_gan_{c}': f'g/gan_{c}' for c in COMPONENTS})
    if lc.comp_style_weight:
      names['l_g_comp_style_loss'] = 'g/comp_style'
  if m.use_identity:
    names['l_identity'] = 'g/identity'
  names.update({'l_d': 'd/d', 'real_score': 'd/real_score', 'fake_score': 'd/fake_score'})
  if r1:
    names['l_d_r1'] = 'd/r1'
  if m.use_components:
    names.update({f'l_d_{c}': f'd/d_{c}' for c in COMPONENTS})
  return names


def our_state(sds: dict[str, Any], nets: ts.Networks, config, seed: int = 0) -> tuple[ts.TrainState, dict[str, Any]]:
  """Our train state and frozen variables holding the official weights `sds` (`torch_state_dicts()`).

  Nothing is initialised randomly (the structure comes from `jax.eval_shape`),
  so no initialiser is compiled.
  """
  res = int(config.data.resolution)
  abstract = jax.eval_shape(functools.partial(ts.init_state, nets, config), jax.random.key(seed))
  abstract_frozen = jax.eval_shape(lambda k: ts.init_frozen(nets, k), jax.random.key(seed))
  g = sd_lib.torch_to_flax(sds['g'], nets.g_arch, **nets.g_kwargs)
  d = sd_lib.torch_to_flax(sds['d'], 'stylegan2_discriminator', out_size=res,
                           **config.model.discriminator_kwargs.to_dict())['params']
  dc = {c: sd_lib.torch_to_flax(sds['dc'][c], 'facial_component_discriminator')['params']
        for c in abstract.dc_params}
  frozen = {}
  if 'arcface' in abstract_frozen:
    frozen['arcface'] = sd_lib.torch_to_flax(sds['arcface'], 'arcface', **config.model.arcface_kwargs.to_dict())
  if 'vgg' in abstract_frozen:
    frozen['vgg'] = sd_lib.torch_to_flax(sds['vgg19'], 'vgg19', layer_name_list=ts.vgg_layer_names(config))
  for name, new, old in (('G', g, {'params': abstract.g_params, 'noises': abstract.g_noises}),
                         ('D', d, abstract.d_params), ('component Ds', dc, abstract.dc_params),
                         ('frozen', frozen, abstract_frozen)):
    if jax.tree.structure(new) != jax.tree.structure(old):
      raise ValueError(f'converted official {name} weights do not match our variables')
  g, d, dc, frozen = jax.device_put((g, d, dc, frozen))
  state = ts.TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(seed)),
                        g_params=g['params'], g_noises=g['noises'], g_ema_params=g['params'], d_params=d,
                        dc_params=dc, g_opt=nets.g_tx.init(g['params']), d_opt=nets.d_tx.init(d),
                        dc_opt={c: nets.dc_tx.init(p) for c, p in dc.items()})
  if jax.tree.structure(state) != jax.tree.structure(abstract):
    raise ValueError('the assembled train state does not match ts.init_state')
  return state, frozen


def official_lq(config, gt_u8: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(gt, lq) float32 NHWC in [-1, 1]: the official OpenCV degradations, once per image (numpy, no compile)."""
  from gfpgan_jax.testing import cv2_degradations  # pylint: disable=g-import-not-at-top
  import random  # pylint: disable=g-import-not-at-top
  gt01 = gt_u8.astype(np.float32) / 255.0
  rng, py_rng = np.random.default_rng(seed), random.Random(seed)
  lq01 = np.stack([cv2_degradations.degrade_official(img, config.data.degradation, rng, py_rng) for img in gt01])
  return gt01 * 2 - 1, (lq01 * 2 - 1).astype(np.float32)


def _rel_l2(ours: dict[str, np.ndarray], official: dict[str, np.ndarray | None]) -> dict[str, Any]:
  """Relative L2 of a network's gradient (flat by torch key; official arrays in torch layout)."""
  num = den = 0.0
  worst, worst_key, count = 0.0, None, 0
  for key, theirs in official.items():
    if theirs is None:  # not trained (fix_decoder): no official gradient to compare with
      continue
    mine = np.asarray(ours[key], np.float64)
    theirs = layout.to_flax(key, theirs).astype(np.float64)
    if mine.shape != theirs.shape:
      raise ValueError(f'gradient {key}: shape {mine.shape} vs official {theirs.shape}')
    d2, t2 = float(np.sum((mine - theirs)**2)), float(np.sum(theirs**2))
    num, den, count = num + d2, den + t2, count + 1
    rel = np.sqrt(d2 / t2) if t2 > 0 else (0.0 if d2 == 0 else np.inf)
    if rel > worst:
      worst, worst_key = float(rel), key
  return {'rel_l2': float(np.sqrt(num / den)) if den > 0 else float('nan'), 'norm': float(np.sqrt(den)),
          'worst_param': worst_key, 'worst_param_rel_l2': worst, 'params': count}


def _official_activations(net, x) -> dict[str, np.ndarray]:
  """Each leaky-ReLU output of the official D `net` on x (NCHW torch), NHWC numpy by module name."""
  import torch  # pylint: disable=g-import-not-at-top
  acts, hooks = {}, []
  for name, module in net.named_modules():
    if type(module).__name__ == 'FusedLeakyReLU' or getattr(module, 'activation', None) == 'fused_lrelu':
      def hook(module, inputs, output, name=name):  # pylint: disable=unused-argument
        out = output.detach().cpu().numpy()
        acts[name] = out.transpose(0, 2, 3, 1) if out.ndim == 4 else out
      hooks.append(module.register_forward_hook(hook))
  try:
    with torch.no_grad():
      net(x.detach())
  finally:
    for h in hooks:
      h.remove()
  return acts


def _our_activations(d, d_params, x) -> dict[str, np.ndarray]:
  """Each leaky-ReLU output of our D on x (NHWC), by the official module name."""
  def leaky(module, method):
    return method == '__call__' and (type(module).__name__ == 'FusedLeakyReLU' or
                                     getattr(module, 'activation', None) == 'fused_lrelu')

  _, state = xla_options.jit(lambda p, x: d.apply({'params': p}, x, capture_intermediates=leaky,
                                                  mutable=['intermediates']))(d_params, x)
  flat = traverse_util.flatten_dict(jax.device_get(state['intermediates']))
  return {'.'.join(k[:-1]): np.asarray(v[0]) for k, v in flat.items()}


def slope_flips(net, d, d_params, official_images, our_images) -> dict[str, Any]:
  """Where D's leaky ReLUs take the other slope on our side than on the official one, in one iteration.

  Each side's D runs on what its iteration fed it (the official fake and ours,
  then the GT); an activation whose sign differs between the sides has its
  input within rounding of the kink, where the slope, and so the gradient
  through it, jumps from 1 to 0.2.

  Args:
    net: the official D (torch).
    d, d_params: ours.
    official_images: torch NCHW tensors, the official D's inputs.
    our_images: NHWC arrays, ours (in the same order).

  Returns:
    {'count': activations of differing sign, 'of': activations compared,
    'layers': {official module name: [count, activations in it]} for those
    with any, 'weightiest': [layer, official, ours] for one flipped
    activation (its values) in the layer with the fewest activations, where
    one carries the largest share of the gradient (None when none differ)}.
  """
  count = total = 0
  layers, weightiest, weightiest_size = {}, None, None
  for theirs_x, ours_x in zip(official_images, our_images):
    theirs, ours = _official_activations(net, theirs_x), _our_activations(d, d_params, ours_x)
    if set(theirs) != set(ours):
      raise ValueError(f'activations differ: official {sorted(set(theirs) - set(ours))}, '
                       f'ours {sorted(set(ours) - set(theirs))}')
    for name, a in theirs.items():
      b = ours[name]
      flipped = (a > 0) != (b > 0)
      n = int(flipped.sum())
      count, total = count + n, total + a.size
      if n:
        prev = layers.get(name, [0, 0])
        layers[name] = [prev[0] + n, prev[1] + a.size]
        i = int(np.argmax(flipped))
        if weightiest is None or a.size < weightiest_size:
          weightiest, weightiest_size = [name, float(a.flat[i]), float(b.flat[i])], a.size
  return {'count': count, 'of': total, 'layers': layers, 'weightiest': weightiest}


def _flat(tree) -> dict[str, np.ndarray]:
  return {'.'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def compare_iteration(model, sds, state, frozen, nets, config, gt, lq, locs, r1: bool) -> dict[str, Any]:
  """One iteration on both sides from the weights `sds` / `state`; the comparison as a JSON-able dict.

  Args:
    model: `torch_train_step.build(...)` with `use_stored_noise` applied.
    sds: the initial official weights (loaded into `model` first).
    state, frozen: ours, with the same weights (`to_our_state`).
    nets, config: ours.
    gt, lq: float32 NHWC in [-1, 1] (numpy).
    locs: component -> float32 [B, 4] boxes (numpy).
    r1: the R1 iteration (`current_iter = d_reg_every`) or the first plain one.
  """
  iteration = int(config.loss.d_reg_every) if r1 else 1
  torch_train_step.load_weights(model, sds)
  model.feed_data(torch_train_step.make_data(gt, lq, locs))
  model.optimize_parameters(iteration)
  official_log = dict(model.log_dict)
  official_grads = torch_train_step.gradients(model)

  fn = xla_options.jit(functools.partial(steps.step_on_pair, nets=nets, config=config, r1=r1,
                                         randomize_noise=False))
  our_locs = {c: jnp.asarray(locs[c]) for c in COMPONENTS} if nets.dc is not None else None
  _, metrics, extras = fn(state.replace(step=jnp.asarray(iteration - 1, state.step.dtype)), jnp.asarray(gt),
                          jnp.asarray(lq), our_locs, frozen, jax.random.key(0))
  metrics, extras = jax.device_get((metrics, extras))
  ours = {k: float(v) for k, v in metrics.items()}
  ours.update({f'pyramid/{i}': float(v) for i, v in enumerate(extras['pyramid'])})

  losses = {}
  names = term_names(config, r1)
  missing = sorted(set(official_log) - set(names))
  if missing:
    raise ValueError(f'official terms without a counterpart here: {missing}')
  for name, mine in names.items():
    theirs = float(official_log[name])
    losses[name] = {'official': theirs, 'ours': ours[mine],
                    'rel': abs(ours[mine] - theirs) / abs(theirs) if theirs else abs(ours[mine])}
  torch_train_step.load_weights(model, sds)  # D as it was before its step: the weights both sides' D used
  flips = slope_flips(model.net_d, nets.d, state.d_params, [model.output, model.gt],
                      [extras['output'], jnp.asarray(gt)])  # D's two forwards: the fake, the real
  grads = {'g': _rel_l2(_flat(extras['grads']['g']), official_grads['g']),
           'd': _rel_l2(_flat(extras['grads']['d']), official_grads['d'])}
  for c in official_grads.get('dc', {}):
    grads[f'd_{c}'] = _rel_l2(_flat(extras['grads']['dc'][c]), official_grads['dc'][c])
  return {'iteration': iteration, 'losses': losses, 'grads': grads, 'd_slope_flips': flips,
          'max_loss_rel': max(v['rel'] for v in losses.values()),
          'max_grad_rel_l2': max(v['rel_l2'] for v in grads.values())}


def run(config, gt_u8: np.ndarray, locs: dict[str, np.ndarray], *, seed: int = 0, official=None) -> dict[str, Any]:
  """Builds both sides from one official initialisation and compares a plain and an R1 iteration.

  Args:
    config: the experiment config (configs/ffhq.py); batch and size from `gt_u8`.
    gt_u8: uint8 [B, H, W, 3] GT faces, H = W = config.data.resolution.
    locs: component -> float32 [B, 4] boxes (x1, y1, x2, y2).
    seed: the official initialisation seed (`torch.manual_seed`) and the key of the LQ degradation.
    official: `gfpgan_jax.testing.official.load()` (loaded when None).

  Returns:
    {'plain': comparison, 'r1': comparison} (`compare_iteration`).
  """
  if gt_u8.shape[1:3] != (config.data.resolution,) * 2:
    raise ValueError(f'GT batch {gt_u8.shape} does not match data.resolution {config.data.resolution}')
  model = torch_train_step.build(config, official, seed=seed)
  torch_train_step.use_stored_noise(model)
  sds = model.torch_state_dicts()
  nets = ts.build_networks(config)
  state, frozen = our_state(sds, nets, config, seed)
  gt, lq = official_lq(config, gt_u8, seed)
  return {r: compare_iteration(model, sds, state, frozen, nets, config, gt, lq, locs, r == 'r1')
          for r in ('plain', 'r1')}


def format_report(report: dict[str, Any]) -> str:
  """The comparison as a text table."""
  lines = []
  for kind, rep in report.items():
    lines.append(f"{kind} iteration (official current_iter {rep['iteration']}):")
    lines.append(f"  {'term':<22}{'official':>15}{'ours':>15}{'rel diff':>11}")
    for name, v in rep['losses'].items():
      lines.append(f"  {name:<22}{v['official']:>15.7g}{v['ours']:>15.7g}{v['rel']:>11.2e}")
    lines.append(f"  {'gradient':<22}{'|g| official':>15}{'rel L2':>15}{'worst param':>11}")
    for name, v in rep['grads'].items():
      lines.append(f"  {name:<22}{v['norm']:>15.7g}{v['rel_l2']:>15.2e}{v['worst_param_rel_l2']:>11.2e}"
                   f"  ({v['worst_param']}, {v['params']} params)")
    if 'd_slope_flips' in rep:
      f = rep['d_slope_flips']
      line = f"  D's leaky ReLUs on the other slope here: {f['count']} of {f['of']} activations"
      if f['count']:
        where = ', '.join(f'{k} {n} of {m}' for k, (n, m) in f['layers'].items())
        name, a, b = f['weightiest']
        line += f" ({where}; the weightiest, in {name}: official {a:+.2e}, ours {b:+.2e})"
      lines.append(line)
  return '\n'.join(lines)
