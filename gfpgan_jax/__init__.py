"""gfpgan_jax: GFP-GAN blind face restoration in JAX/Flax."""

__version__ = '0.1.0'


def load_generator(path, **kwargs):
  """Returns `(module, variables)` from a converted checkpoint directory, an export or a `.pth`.

  See `gfpgan_jax.convert.checkpoint.load_generator`.
  """
  from gfpgan_jax.convert import checkpoint  # pylint: disable=g-import-not-at-top
  return checkpoint.load_generator(path, **kwargs)


def load_network(path, arch=None, **kwargs):
  """Returns `(module, variables)` of any convertible network (RetinaFace, ParseNet, RRDBNet, generators...).

  `path` is a converted checkpoint directory, an export, a training workdir or
  an official `.pth`; see `gfpgan_jax.convert.checkpoint.load_network`.
  """
  from gfpgan_jax.convert import checkpoint  # pylint: disable=g-import-not-at-top
  return checkpoint.load_network(path, arch, **kwargs)
