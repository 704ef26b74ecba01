"""gfpgan_jax: GFP-GAN blind face restoration in JAX/Flax."""

__version__ = '0.1.0'


def load_generator(path, **kwargs):
  """Returns `(module, variables)` from a converted checkpoint directory, an export or a `.pth`.

  See `gfpgan_jax.convert.checkpoint.load_generator`.
  """
  from gfpgan_jax.convert import checkpoint  # pylint: disable=g-import-not-at-top
  return checkpoint.load_generator(path, **kwargs)
