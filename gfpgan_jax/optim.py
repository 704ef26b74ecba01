"""Optimisers of the GFP-GAN recipe (gfpgan.md 3.5).

* G: Adam(lr 2e-3, betas (0, 0.99), eps 1e-8); frozen parts (the decoder when
  `fix_decoder`) get no update, through an optimiser mask.
* D: Adam with the lazy-R1 correction of the betas, `beta ** (k / (k + 1))`
  with k = `d_reg_every` (the official code also passes lr * k/(k+1) as the
  default, but its param group sets lr explicitly, so the effective D lr is the
  plain lr; gfpgan.md 3.5).
* component Ds: Adam(lr 2e-3, betas (0.9, 0.99)).
* All five: MultiStepLR (milestones 600k, 700k; gamma 0.5), where the lr in
  effect at iteration t (1-based) is the schedule at t - 1.
"""

from collections.abc import Sequence
import re
from typing import Any

import flax
import jax
import optax

PyTree = Any


def multistep_schedule(lr: float, milestones: Sequence[int], gamma: float) -> optax.Schedule:
  """`MultiStepLR`: lr * gamma^(number of milestones <= count).

  optax evaluates a schedule at the update count (0 for the first update), which
  is the official iteration t - 1, so the lr of iteration t = milestone + 1
  is already reduced, as in basicsr.
  """
  return optax.piecewise_constant_schedule(lr, {int(m): gamma for m in milestones})


def adam(lr: float, betas: Sequence[float], milestones: Sequence[int], gamma: float,
         eps: float = 1e-8) -> optax.GradientTransformation:
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=multistep_schedule(lr, milestones, gamma), b1=betas[0], b2=betas[1], eps=eps)


def lazy_reg_betas(betas: Sequence[float], reg_every: int) -> tuple[float, float]:
  """The official correction of Adam's betas for a lazily regularised network."""
  ratio = reg_every / (reg_every + 1)
  return betas[0]**ratio, betas[1]**ratio


def trainable_mask(params: PyTree, frozen_patterns: Sequence[str]) -> PyTree:
  """True for parameters to train: those whose '/'-joined path matches none of `frozen_patterns`."""
  rx = [re.compile(p) for p in frozen_patterns]
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  return flax.traverse_util.unflatten_dict({k: not any(r.search(k) for r in rx) for k in flat}, sep='/')


def masked(tx: optax.GradientTransformation, mask: PyTree) -> optax.GradientTransformation:
  """Applies `tx` where `mask` is True and zeroes the updates elsewhere (frozen parameters)."""
  labels = jax.tree.map(lambda m: 'train' if m else 'frozen', mask)
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)


def learning_rate(opt_state: optax.OptState) -> jax.Array | None:
  """The learning rate of the last update of an `adam`/`masked` optimiser state (for logging)."""
  found = []
  is_injected = lambda x: 'learning_rate' in getattr(x, 'hyperparams', {})

  def visit(x):
    if is_injected(x):
      found.append(x.hyperparams['learning_rate'])
    return x

  jax.tree.map(visit, opt_state, is_leaf=is_injected)
  return found[0] if found else None
