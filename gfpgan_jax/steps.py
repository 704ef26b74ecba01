"""Pure training and evaluation steps (gfpgan.md 3.3-3.4), compiled with `jax.jit` by the trainer.

One training iteration, as the official `GFPGANModel.optimize_parameters`:

1. Degrade the GT batch on the device (`data.degradations`) -> (gt, lq) in [-1, 1],
   or take the batch's given `lq` (paired data, `data.train_lq_dir`).
2. G step: `out, out_rgbs = G(lq)` with fresh decoder noise; the sum of every G
   loss (pixel, pyramid, perceptual + style, GAN, component GAN + style, identity)
   with D and the component Ds fixed; Adam (frozen decoder masked); EMA.
3. D step on `stop_gradient(out)` and gt (the pre-update G's output), plus the
   lazy R1 term on iterations divisible by `d_reg_every` (a separate compiled
   variant, `r1=True`).
4. Component D steps on the detached fake and the real eye/mouth patches.

`step` in the state counts completed iterations; the official 1-based
`current_iter` of an iteration is `step + 1`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gfpgan_jax import losses
from gfpgan_jax import train_state as ts
from gfpgan_jax.data import degradations

Array = jax.Array
PyTree = Any
F32 = jnp.float32


def step_key(state: ts.TrainState) -> Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def make_pair(key: Array, gt_uint8: Array, config: ml_collections.ConfigDict) -> tuple[Array, Array]:
  """uint8 GT [N,H,W,3] -> (gt, lq) float32 in [-1, 1], degraded on the device."""
  gt01 = gt_uint8.astype(F32) / 255.0
  gt01, lq01 = degradations.degrade_pair(key, gt01, config.data.degradation)
  return gt01 * 2.0 - 1.0, lq01 * 2.0 - 1.0


def batch_pair(key: Array, batch: dict[str, Array], config: ml_collections.ConfigDict,
               num: int | None = None) -> tuple[Array, Array]:
  """(gt, lq) float32 in [-1, 1] of the first `num` samples: the batch's given `lq` (paired data, no
  degradation) or `make_pair`."""
  gt = batch['gt'][:num]
  if 'lq' in batch:
    return gt.astype(F32) / 127.5 - 1.0, batch['lq'][:num].astype(F32) / 127.5 - 1.0
  return make_pair(key, gt, config)


def _locs(batch: dict[str, Array]) -> dict[str, Array]:
  return {c: batch[f'loc_{c}'] for c in ts.COMPONENTS}


def _patches(images: Array, locs: dict[str, Array], lc: ml_collections.ConfigDict) -> dict[str, Array]:
  return losses.crop_components(images, locs, eye_size=lc.eye_size, mouth_size=lc.mouth_size)


def _g_losses(g_params, state, nets, frozen, lq, gt, real_patches, locs, noise_key, config,
              randomize_noise=True):
  """(total, (out, rgbs, terms)): the weighted G losses of one batch."""
  lc = config.loss
  out, rgbs = nets.g.apply({'params': g_params, 'noises': state.g_noises}, lq, return_rgb=True,
                           randomize_noise=randomize_noise, rngs={'noise': noise_key})
  terms = {'l1': lc.pixel_weight * losses.l1(out, gt)}
  if lc.pyramid_weight:
    weight = losses.pyramid_loss_weight(state.step + 1, lc.pyramid_weight, lc.remove_pyramid_loss)
    terms['pyramid'] = weight * losses.pyramid_l1(rgbs, gt)
  if nets.vgg is not None:
    feats_out = nets.vgg.apply(frozen['vgg'], out)
    feats_gt = nets.vgg.apply(frozen['vgg'], gt)
    percep, style = losses.perceptual_and_style(feats_out, feats_gt, {k: float(v) for k, v in
                                                                      lc.vgg_layer_weights.items()},
                                                float(lc.perceptual_weight), float(lc.style_weight))
    terms['percep'], terms['style'] = percep, style
  terms['gan'] = lc.gan_weight * losses.g_nonsaturating(nets.d.apply({'params': state.d_params}, out))
  if nets.dc is not None:
    fake_patches = _patches(out, locs, lc)
    comp_style = 0.0
    for c in ts.COMPONENTS:
      logits, feats = nets.dc.apply({'params': state.dc_params[c]}, fake_patches[c], return_feats=True)
      terms[f'gan_{c}'] = lc.component_gan_weight * losses.component_g_loss(logits)
      if lc.comp_style_weight:
        _, real_feats = nets.dc.apply({'params': state.dc_params[c]}, real_patches[c], return_feats=True)
        comp_style = comp_style + losses.component_style_loss(feats, real_feats)
    if lc.comp_style_weight:
      terms['comp_style'] = lc.comp_style_weight * comp_style
  if nets.arcface is not None:
    emb_out = nets.arcface.apply(frozen['arcface'], losses.identity_input(out))
    emb_gt = nets.arcface.apply(frozen['arcface'], losses.identity_input(gt))
    terms['identity'] = lc.identity_weight * losses.identity_loss(emb_out, emb_gt)
  total = sum(terms.values())
  return total, (out, rgbs, terms)


def train_step(state: ts.TrainState, batch: dict[str, Array], frozen: PyTree, *, nets: ts.Networks,
               config: ml_collections.ConfigDict, r1: bool) -> tuple[ts.TrainState, dict[str, Array]]:
  """One full GFP-GAN iteration. Returns the new state and scalar metrics.

  Args:
    state: the train state.
    batch: {'gt': uint8 [B,H,W,3], 'loc_*': float32 [B,4] (with components), 'num_skipped': int32 [B]},
      and 'lq': uint8 [B,H,W,3] for paired data (then nothing is degraded).
    frozen: variables of the frozen loss networks ({'vgg', 'arcface'}).
    nets: the modules and optimisers (static).
    config: the experiment config (static).
    r1: add the lazy R1 penalty to the D loss (iterations divisible by d_reg_every).
  """
  k_deg, k_noise = jax.random.split(step_key(state))
  gt, lq = batch_pair(k_deg, batch, config)
  locs = _locs(batch) if nets.dc is not None else None
  new_state, metrics, _ = step_on_pair(state, gt, lq, locs, frozen, k_noise, nets=nets, config=config, r1=r1)
  metrics['data/num_skipped'] = jnp.sum(batch['num_skipped']).astype(F32)
  return new_state, metrics


def step_on_pair(state: ts.TrainState, gt: Array, lq: Array, locs: dict[str, Array] | None, frozen: PyTree,
                 noise_key: Array, *, nets: ts.Networks, config: ml_collections.ConfigDict, r1: bool,
                 randomize_noise: bool = True) -> tuple[ts.TrainState, dict[str, Array], dict[str, Any]]:
  """Steps 2-4 of an iteration on a given (gt, lq) pair: the official `feed_data` + `optimize_parameters`.

  `train_step` calls it on the pair it degrades; the whole-step parity test
  (tests/step_parity_test.py) calls it with the official iteration's LQ.

  Args:
    state: the train state (`state.step + 1` is the official `current_iter`).
    gt: float32 [B,H,W,3] in [-1, 1].
    lq: float32 [B,H,W,3] in [-1, 1], the generator's input.
    locs: {'left_eye', 'right_eye', 'mouth'} -> float32 [B,4] boxes (None without components).
    frozen: variables of the frozen loss networks.
    noise_key: key of the decoder noise (unused with `randomize_noise=False`).
    nets: the modules and optimisers (static).
    config: the experiment config (static).
    r1: add the lazy R1 penalty to the D loss.
    randomize_noise: fresh decoder noise (training) or the stored `state.g_noises`.

  Returns:
    (new state, scalar metrics, extras): extras holds the gradients
    {'g', 'd', 'dc': {component: ...}} before the optimisers, 'output': G's
    output (what D scored as the fake), and 'pyramid': the weighted L1 of each
    pyramid level, coarsest first (their sum is the metric 'g/pyramid';
    official `l_p_8`, `l_p_16`, ...). XLA drops the extras a caller does not
    use.
  """
  lc = config.loss
  real_patches = _patches(gt, locs, lc) if nets.dc is not None else None

  # ---- generator
  (g_total, (out, rgbs, g_terms)), g_grads = jax.value_and_grad(_g_losses, has_aux=True)(
      state.g_params, state, nets, frozen, lq, gt, real_patches, locs, noise_key, config, randomize_noise)
  g_updates, g_opt = nets.g_tx.update(g_grads, state.g_opt, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  g_ema = losses.ema_update(state.g_ema_params, g_params, config.optim.ema_decay)

  # ---- discriminator (on the pre-update generator's output)
  fake = jax.lax.stop_gradient(out)

  def d_loss(d_params):
    d_fn = lambda x: nets.d.apply({'params': d_params}, x)
    fake_logits = d_fn(fake)
    if r1:
      penalty, real_logits = losses.r1_penalty(d_fn, gt, lc.r1_weight, lc.d_reg_every)
    else:
      penalty, real_logits = jnp.zeros((), F32), d_fn(gt)
    loss = losses.d_logistic(real_logits, fake_logits)
    aux = {'d': loss, 'real_score': jnp.mean(real_logits.astype(F32)),
           'fake_score': jnp.mean(fake_logits.astype(F32))}
    if r1:
      aux['r1'] = penalty
    return loss + penalty, aux

  (_, d_aux), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state.d_params)
  d_updates, d_opt = nets.d_tx.update(d_grads, state.d_opt, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  # ---- facial component discriminators
  dc_params, dc_opt, dc_metrics, dc_grads = {}, {}, {}, {}
  if nets.dc is not None:
    fake_patches = _patches(fake, locs, lc)
    for c in ts.COMPONENTS:

      def dc_loss(p, c=c):
        real_logits, _ = nets.dc.apply({'params': p}, real_patches[c])
        fake_logits, _ = nets.dc.apply({'params': p}, fake_patches[c])
        return losses.component_d_loss(real_logits, fake_logits)

      loss, grads = jax.value_and_grad(dc_loss)(state.dc_params[c])
      dc_grads[c] = grads
      updates, dc_opt[c] = nets.dc_tx.update(grads, state.dc_opt[c], state.dc_params[c])
      dc_params[c] = optax.apply_updates(state.dc_params[c], updates)
      dc_metrics[f'd_{c}'] = loss

  new_state = state.replace(step=state.step + 1, g_params=g_params, g_ema_params=g_ema, g_opt=g_opt,
                            d_params=d_params, d_opt=d_opt, dc_params=dc_params, dc_opt=dc_opt)
  metrics = {f'g/{k}': v.astype(F32) for k, v in g_terms.items()}
  metrics['g/total'] = g_total.astype(F32)
  metrics.update({f'd/{k}': v.astype(F32) for k, v in {**d_aux, **dc_metrics}.items()})
  extras = {'grads': {'g': g_grads, 'd': d_grads, 'dc': dc_grads}, 'output': out, 'pyramid': []}
  if lc.pyramid_weight:  # unused outputs are dropped by XLA
    weight = losses.pyramid_loss_weight(state.step + 1, lc.pyramid_weight, lc.remove_pyramid_loss)
    levels = losses.gt_pyramid(gt, len(rgbs))
    extras['pyramid'] = [weight * losses.l1(o, g) for o, g in zip(rgbs, levels)]
  return new_state, metrics, extras


# ------------------------------------------------------------------------------ evaluation


def _gray_embed(nets, frozen, x):
  return nets.arcface.apply(frozen['arcface'], losses.identity_input(x)).astype(F32)


def eval_step(state: ts.TrainState, batch: dict[str, Array], frozen: PyTree, key: Array, *, nets: ts.Networks,
              config: ml_collections.ConfigDict) -> dict[str, Array]:
  """Validation of G-EMA on one batch of held-out faces: per-sample PSNR, SSIM and identity distance.

  The LQ inputs are the batch's `lq` (given pairs, `data.eval_lq_dir`) or, by
  default, a fixed degradation of each face (the key folded with its index), so
  every evaluation sees the same LQ inputs. The LQ's own PSNR/SSIM against the
  GT are measured too, to show whether the model beats its input.

  Returns:
    {'psnr', 'ssim', 'lq_psnr', 'lq_ssim', 'id_deg', 'mask', 'index'}: [B]
    arrays (`mask` False on padding; `index` the batch's), and 'lq_out_gt':
    uint8 [B, H, 3W, 3], the LQ | output | GT rows.
  """
  import dm_pix  # pylint: disable=g-import-not-at-top

  k_deg, k_noise = jax.random.split(key)
  if 'lq' in batch:
    gt, lq = batch['gt'].astype(F32) / 127.5 - 1.0, batch['lq'].astype(F32) / 127.5 - 1.0
  else:
    dcfg = config.data.degradation
    params = degradations.sample_params_per_key(jax.vmap(lambda i: jax.random.fold_in(k_deg, i))(batch['index']),
                                                dcfg)
    gt, lq = degradations.pair_from_params(batch['gt'].astype(F32) / 255.0, params, dcfg)
    gt, lq = gt * 2.0 - 1.0, lq * 2.0 - 1.0
  out, _ = nets.g.apply({'params': state.g_ema_params, 'noises': state.g_noises}, lq, return_rgb=False,
                        randomize_noise=True, rngs={'noise': k_noise})
  to8 = lambda x: jnp.round((jnp.clip(x.astype(F32), -1, 1) + 1) * 127.5)  # tensor2img
  out8, gt8, lq8 = to8(out), to8(gt), to8(lq)

  def psnr_ssim(x8):
    mse = jnp.mean(jnp.square(x8 - gt8), axis=(1, 2, 3))
    return 10.0 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-10)), dm_pix.ssim(x8 / 255.0, gt8 / 255.0)

  psnr, ssim = psnr_ssim(out8)
  lq_psnr, lq_ssim = psnr_ssim(lq8)
  metrics = {'psnr': psnr, 'ssim': ssim, 'lq_psnr': lq_psnr, 'lq_ssim': lq_ssim, 'mask': batch['mask'],
             'index': batch['index'],
             'lq_out_gt': jnp.concatenate([lq8, out8, gt8], axis=2).astype(jnp.uint8)}
  if nets.arcface is not None:
    e_out, e_gt = _gray_embed(nets, frozen, out), _gray_embed(nets, frozen, gt)
    cos = jnp.sum(e_out * e_gt, -1) / (jnp.linalg.norm(e_out, axis=-1) * jnp.linalg.norm(e_gt, axis=-1) + 1e-12)
    metrics['id_deg'] = jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
  return metrics


def preview_step(state: ts.TrainState, batch: dict[str, Array], *, nets: ts.Networks,
                 config: ml_collections.ConfigDict, num: int) -> Array:
  """LQ | G-EMA output | GT rows for the first `num` samples of a train batch, uint8 [num, H, 3W, 3]."""
  key = jax.random.fold_in(step_key(state), 1)
  gt, lq = batch_pair(key, batch, config, num)
  out, _ = nets.g.apply({'params': state.g_ema_params, 'noises': state.g_noises}, lq, return_rgb=False,
                        randomize_noise=True, rngs={'noise': key})
  to8 = lambda x: jnp.round((jnp.clip(x.astype(F32), -1, 1) + 1) * 127.5).astype(jnp.uint8)
  return jnp.concatenate([to8(lq), to8(out), to8(gt)], axis=2)
