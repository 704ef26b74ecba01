"""The networks of a training run and its single immutable train-state pytree."""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gfpgan_jax import optim
from gfpgan_jax.convert import archs
from gfpgan_jax.models import vgg as vgg_lib

PyTree = Any
COMPONENTS = ('left_eye', 'right_eye', 'mouth')
# The decoder of each generator arch and the arch of its standalone checkpoints.
DECODER_ARCH = {'gfpganv1': 'stylegan2', 'gfpganv1clean': 'stylegan2clean'}


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (checkpointed as one pytree).

  Attributes:
    step: completed iterations (int32 scalar); the official 1-based iteration
      of the next step is `step + 1`.
    rng: raw PRNG key data (uint32 [2]); per-step keys are `fold_in(rng, step)`.
    g_params, g_noises: generator parameters and its stored decoder noise maps.
    g_ema_params: the exponential moving average of `g_params`.
    d_params: the StyleGAN2 discriminator.
    dc_params: the facial component discriminators by name (empty without components).
    g_opt, d_opt, dc_opt: optimiser states.
  """
  step: jax.Array
  rng: jax.Array
  g_params: PyTree
  g_noises: PyTree
  g_ema_params: PyTree
  d_params: PyTree
  dc_params: dict[str, PyTree]
  g_opt: optax.OptState
  d_opt: optax.OptState
  dc_opt: dict[str, optax.OptState]


@dataclasses.dataclass(frozen=True)
class Networks:
  """The (static) Flax modules and optimisers of a run."""
  g_arch: str
  g_kwargs: dict[str, Any]
  g: Any
  d: Any
  dc: Any | None
  arcface: Any | None
  vgg: Any | None
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  dc_tx: optax.GradientTransformation


def compute_dtype(config: ml_collections.ConfigDict):
  if config.dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"config.dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
  return jnp.dtype(config.dtype)


def build_networks(config: ml_collections.ConfigDict) -> Networks:
  """Modules and optimisers from the config (validated: bad values fail here, before any compile)."""
  m, o, lc = config.model, config.optim, config.loss
  dtype = compute_dtype(config)
  if m.generator not in DECODER_ARCH:
    raise ValueError(f'config.model.generator must be one of {sorted(DECODER_ARCH)}, got {m.generator!r}')
  g, g_kwargs = archs.build(m.generator, dtype=dtype, **m.generator_kwargs.to_dict())
  res = config.data.resolution
  if g_kwargs['out_size'] != res:
    raise ValueError(f'config.model.generator_kwargs.out_size={g_kwargs["out_size"]} must equal '
                     f'config.data.resolution={res}')
  d, _ = archs.build('stylegan2_discriminator', dtype=dtype, out_size=res, **m.discriminator_kwargs.to_dict())
  dc = archs.build('facial_component_discriminator', dtype=dtype)[0] if m.use_components else None
  arcface = archs.build('arcface', dtype=dtype, **m.arcface_kwargs.to_dict())[0] if m.use_identity else None
  vgg = None
  if lc.perceptual_weight or lc.style_weight:
    vgg, _ = archs.build('vgg19', dtype=dtype, layer_name_list=tuple(lc.vgg_layer_weights.keys()))
  frozen = [r'^stylegan_decoder/'] if m.fix_decoder else []
  mask = optim.trainable_mask(_abstract_params(g, config), frozen)
  milestones, gamma = tuple(o.milestones), o.gamma
  g_tx = optim.masked(optim.adam(o.g_lr, o.g_betas, milestones, gamma, o.eps), mask)
  d_tx = optim.adam(o.d_lr, optim.lazy_reg_betas(o.d_betas, lc.d_reg_every), milestones, gamma, o.eps)
  dc_tx = optim.adam(o.dc_lr, o.dc_betas, milestones, gamma, o.eps)
  return Networks(m.generator, g_kwargs, g, d, dc, arcface, vgg, g_tx, d_tx, dc_tx)


def _abstract_params(g, config):
  x = jnp.zeros((1, config.data.resolution, config.data.resolution, 3))
  return jax.eval_shape(g.init, {'params': jax.random.key(0), 'noise': jax.random.key(0)}, x)['params']


def init_state(nets: Networks, config: ml_collections.ConfigDict, key: jax.Array) -> TrainState:
  """A freshly initialised state (random weights; see `trainer.load_pretrained` for checkpoints)."""
  res = config.data.resolution
  img = jnp.zeros((1, res, res, 3), jnp.float32)
  keys = jax.random.split(key, 7)
  g_vars = nets.g.init({'params': keys[0], 'noise': keys[1]}, img)
  d_params = nets.d.init(keys[2], img)['params']
  dc_params = {}
  if nets.dc is not None:
    for k, name in zip(keys[3:6], COMPONENTS):
      dc_params[name] = nets.dc.init(k, jnp.zeros((1, 80, 80, 3), jnp.float32))['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      rng=jax.random.key_data(jax.random.key(config.seed)),
      g_params=g_vars['params'],
      g_noises=g_vars['noises'],
      g_ema_params=g_vars['params'],
      d_params=d_params,
      dc_params=dc_params,
      g_opt=nets.g_tx.init(g_vars['params']),
      d_opt=nets.d_tx.init(d_params),
      dc_opt={name: nets.dc_tx.init(p) for name, p in dc_params.items()},
  )


def init_frozen(nets: Networks, key: jax.Array,
                skip: tuple[str, ...] = ()) -> dict[str, PyTree]:
  """Random variables of the frozen loss networks (replaced by `trainer.load_pretrained`).

  One jitted computation: Flax's eager `init` dispatches every initializer and
  layer one op at a time, which took 16 s for VGG19 and ArcFace on a CPU.

  Args:
    nets: the networks; a loss network that is None has no entry.
    key: the PRNG key. Each network's key does not depend on `skip`.
    skip: names among 'vgg' and 'arcface' to leave out (those loaded from files).

  Returns:
    {'vgg': variables, 'arcface': variables}, less the skipped or absent ones.
  """
  def init(key):
    out = {}
    k1, k2 = jax.random.split(key)
    if nets.vgg is not None and 'vgg' not in skip:
      out['vgg'] = nets.vgg.init(k1, jnp.zeros((1, 32, 32, 3), jnp.float32))
    if nets.arcface is not None and 'arcface' not in skip:
      out['arcface'] = nets.arcface.init(k2, jnp.zeros((1, 128, 128, 1), jnp.float32))
    return out
  return jax.jit(init)(key)


def with_pretrained_g(state: TrainState, variables: dict[str, PyTree], nets: Networks) -> TrainState:
  """Replaces G (and its EMA copy) by `variables`; the optimiser state is re-initialised."""
  return state.replace(g_params=variables['params'], g_noises=variables['noises'],
                       g_ema_params=variables['params'], g_opt=nets.g_tx.init(variables['params']))


def with_pretrained_decoder(state: TrainState, decoder: dict[str, PyTree], nets: Networks) -> TrainState:
  """Puts a StyleGAN2 generator's variables in place of G's `stylegan_decoder` (params and noise maps)."""
  g_params = dict(state.g_params, stylegan_decoder=decoder['params'])
  g_noises = dict(state.g_noises, stylegan_decoder=decoder['noises'])
  return state.replace(g_params=g_params, g_noises=g_noises, g_ema_params=g_params,
                       g_opt=nets.g_tx.init(g_params))


def vgg_layer_names(config) -> tuple[str, ...]:
  names = tuple(config.loss.vgg_layer_weights.keys())
  valid = vgg_lib.layer_names('vgg19')
  bad = [n for n in names if n not in valid]
  if bad:
    raise ValueError(f'config.loss.vgg_layer_weights has unknown VGG19 layers {bad}')
  return names
