r"""Serving export: a generator's weights plus a serialized `jax.export` restore function.

    python -m gfpgan_jax.export --from WORKDIR --output exports/run1            # the G-EMA of the latest step
    python -m gfpgan_jax.export --from GFPGANv1.4.pth --output exports/v1.4 --dtype bfloat16
    python -m gfpgan_jax.export --from ckpt/v1.4 --output exports/v1.4-random --noise random

`--from` takes a training workdir (its G-EMA; `--step N`, default the latest),
a converted checkpoint (or export) directory, or an official `.pth`. DIR is
assembled under a temporary name and renamed into place (never half-written):

    DIR/gfpgan_jax.json       arch, kwargs and the export's meta (`exported_from`,
                              `dtype`, `noise`, `source_step`, `image_size`, ...)
    DIR/variables/            Orbax checkpoint of {'params', 'noises'}, float32
    DIR/restore.jax_exported  `jax.export` serialization (StableHLO) of
                              restore(variables, images[, seed]) -> restored
    DIR/README.txt            how to load and call it without gfpgan_jax

DIR is also a converted-checkpoint directory: `load_generator`, `restore
--weights DIR` and `convert_jax_to_torch.py --input DIR` read it.

The function is `inference.make_restore_fn` of the generator: `images` and
`restored` are uint8 [B, S, S, 3] RGB (S = out_size, 512 for the released
models) with a symbolic batch B, so one artifact serves every batch size. With
`--noise stored` it is deterministic (the stored noise maps); with `--noise
random` it takes a third argument, a uint32 `seed`, and draws fresh decoder
noise from `jax.random.key(seed)`.

The weights travel as the first argument (`variables`, the exact tree of
DIR/variables), not as constants baked into the module: the weights are stored
once, the module stays small (~0.2 MB for the released 512 config, against
~340 MB with constants), and XLA compiles it about twice as fast with less than
half the host memory. The price is that serving code reads the weights with
`orbax-checkpoint` (a JAX library; no gfpgan_jax import). With `--dtype
bfloat16` the function computes in bfloat16 from the same float32 variables
(the project's dtype/param_dtype rule: the demodulation is computed from the
float32 weights), so every export of a model stores identical variables.

The module is lowered for `--platforms` (default cpu, cuda and tpu: lowering
needs no accelerator; the platform is picked when the function is called).
"""

import argparse
from collections.abc import Callable, Sequence
import functools
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax import cli_common
from gfpgan_jax import inference
from gfpgan_jax import xla_options
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.convert import pth
from gfpgan_jax.convert import state_dict as sd_lib

log = logging.getLogger('gfpgan_jax.export')

FUNCTION_FILE = 'restore.jax_exported'
README_FILE = 'README.txt'
GENERATOR_ARCHS = ('gfpganv1clean', 'gfpganv1')
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
NOISE_MODES = ('stored', 'random')
DTYPES = ('float32', 'bfloat16')

# What serving code needs (README.md "Serving" and DIR/README.txt): `jax.export` deserialization imports
# flatbuffers, which jax does not depend on. No gfpgan_jax.
SERVING_PACKAGES = ('jax', 'orbax-checkpoint', 'flatbuffers')
INSTALL_LINE = 'pip install ' + ' '.join(SERVING_PACKAGES)
README_EXPORT_DIR = 'exports/v1.4'  # the path README.md's snippet shows


def load_snippet(export_dir: str | None = None, noise: str = 'stored') -> str:
  """The plain-JAX lines that load and call an export (README.md "Serving" and DIR/README.txt).

  They run as they are: they make their own example batch, and the path is
  absolute (Orbax refuses relative ones).

  Args:
    export_dir: the export's absolute path; None: README.md's
      `os.path.abspath('exports/v1.4')`.
    noise: the export's noise mode ('random' calls it with a seed).

  Returns:
    Python source, ending in a newline.
  """
  where = (f'os.path.abspath({README_EXPORT_DIR!r})   # Orbax needs an absolute path' if export_dir is None
           else f'{str(export_dir)!r}')
  call = ('restore.call(variables, images)   # uint8 [B, S, S, 3], deterministic' if noise != 'random' else
          'restore.call(variables, images, np.uint32(seed))   # uint8 [B, S, S, 3]')
  seed = 'seed = 0                                          # fresh decoder noise per uint32 seed\n' * (noise == 'random')
  return f"""\
import os
import jax, numpy as np, orbax.checkpoint as ocp

export_dir = {where}
with open(os.path.join(export_dir, 'restore.jax_exported'), 'rb') as f:
  restore = jax.export.deserialize(f.read())
variables = jax.device_put(ocp.StandardCheckpointer().restore(os.path.join(export_dir, 'variables')))
size = restore.out_avals[0].shape[1]              # S: 512 for the released models
images = np.zeros((2, size, size, 3), np.uint8)   # your faces: uint8 RGB [B, S, S, 3], any B
{seed}restored = {call}
"""


class Source(NamedTuple):
  """A generator read from `--from`.

  Attributes:
    kind: 'workdir' (its G-EMA), 'checkpoint' (converted or export dir) or 'pth'.
    arch: arch name (`gfpganv1clean` or `gfpganv1`).
    kwargs: complete constructor options.
    variables: {'params', 'noises'} as numpy arrays.
    step: the training step of a workdir checkpoint, else None.
  """
  kind: str
  arch: str
  kwargs: dict[str, Any]
  variables: dict[str, Any]
  step: int | None


def load_source(path: str | os.PathLike, step: int | None = None) -> Source:
  """Reads a GFP-GAN generator from a workdir, a converted/export directory or a `.pth`.

  Args:
    path: a training workdir (the G-EMA is read), a converted checkpoint or
      export directory, or an official `.pth` (arch detected from the keys).
    step: checkpoint step of a workdir (default: the latest).

  Raises:
    FileNotFoundError: no such path, a workdir without checkpoints (or without
      `step`).
    ConversionError: not a GFP-GAN generator (e.g. a discriminator), a
      truncated or corrupt file, or `step` given for a non-workdir.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'--from not found: {path}')
  if path.is_file():
    if step is not None:
      raise sd_lib.ConversionError(f'--step applies to training workdirs only; {path} is a file')
    from gfpgan_jax.convert import detect  # pylint: disable=g-import-not-at-top
    sd, _ = pth.read_pth(path)
    found = detect.detect_arch(sd)
    if found is None:
      raise sd_lib.ConversionError(f'{path}: {detect.describe(sd)}')
    arch, kwargs = found
    _check_generator(path, arch)
    variables = sd_lib.torch_to_flax(sd, arch, **kwargs)
    kind, cfg = 'pth', archs.get(arch).config(**kwargs)
  elif checkpoint.is_workdir(path):
    from gfpgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
    arch, kwargs, variables, step = checkpointing.load_generator_ema(path, step)
    _check_generator(path, arch)
    cfg = archs.get(arch).config(**kwargs)
    sd_lib.check_variables(variables, arch, **cfg)
    kind = 'workdir'
  else:
    if step is not None:
      raise sd_lib.ConversionError(f'--step applies to training workdirs only; {path} is not one')
    arch = checkpoint.read_meta(path)['arch']
    _check_generator(path, arch)
    arch, cfg, variables = checkpoint.load(path)
    kind = 'checkpoint'
  return Source(kind, arch, cfg, variables, step)


def _check_generator(path, arch: str):
  if arch not in GENERATOR_ARCHS:
    raise sd_lib.ConversionError(f'{path} holds a {arch!r}; export needs a GFP-GAN generator {GENERATOR_ARCHS}')


def export_restore_fn(module, variables: dict[str, Any], noise: str = 'stored',
                      platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
  """`jax.export` of `inference.make_restore_fn(module)` with a symbolic batch.

  Args:
    module: a GFP-GAN generator (its `dtype` is the compute dtype).
    variables: its variables (only their shapes and dtypes are used).
    noise: 'stored' -> `restore(variables, images)`, deterministic;
      'random' -> `restore(variables, images, seed)` with a uint32 scalar
      seed, noise drawn from `jax.random.key(seed)`.
    platforms: the platforms to lower for.

  Returns:
    The Exported function: images uint8 [B, S, S, 3] -> uint8 [B, S, S, 3].
  """
  if noise not in NOISE_MODES:
    raise ValueError(f'noise must be one of {NOISE_MODES}, got {noise!r}')
  run = inference.make_restore_fn(module, randomize_noise=noise == 'random')
  s = module.out_size
  specs = [jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), variables),
           jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'b, {s}, {s}, 3'), jnp.uint8)]
  if noise == 'random':
    specs.append(jax.ShapeDtypeStruct((), jnp.uint32))

    def restore(variables, images, seed):
      return run(variables, images, jax.random.key(seed))
  else:

    def restore(variables, images):
      return run(variables, images, None)

  return jax.export.export(jax.jit(restore), platforms=tuple(platforms))(*specs)


def readme_text(meta: dict[str, Any]) -> str:
  """The DIR/README.txt of an export with metadata `meta` (and its absolute path, `meta['export_dir']`)."""
  s = meta['image_size']
  return (f'GFP-GAN restore function exported by gfpgan_jax ({meta["arch"]}, {s}x{s}, compute dtype '
          f'{meta["dtype"]}, noise {meta["noise"]}, lowered for {", ".join(meta["platforms"])}; '
          f'jax {meta["jax_version"]}).\n'
          f'From: {meta["exported_from"]}'
          + (f' (step {meta["source_step"]})' if meta.get('source_step') is not None else '') + '\n\n'
          f'Serving needs jax, orbax-checkpoint and flatbuffers only (no gfpgan_jax), with a jax at least as new\n'
          f'as the one above:\n\n    {INSTALL_LINE}\n\n'
          f'(on NVIDIA GPUs: pip install "jax[cuda12]" orbax-checkpoint flatbuffers). These lines load and call it\n'
          f'(images: uint8 RGB [B, {s}, {s}, 3], any B; change export_dir if you move this directory):\n\n'
          f'```python\n{load_snippet(meta["export_dir"], meta["noise"])}```\n\n'
          'The directory is also a gfpgan_jax checkpoint: python -m gfpgan_jax.restore --weights DIR ...\n')


def export(source: str | os.PathLike,
           output: str | os.PathLike,
           dtype: str = 'float32',
           noise: str = 'stored',
           step: int | None = None,
           platforms: Sequence[str] = DEFAULT_PLATFORMS,
           overwrite: bool = False) -> pathlib.Path:
  """Writes the export directory `output` from `source` (see the module docstring).

  Args:
    source: training workdir, converted checkpoint/export directory or `.pth`.
    output: the export directory.
    dtype: compute dtype of the function ('float32' or 'bfloat16').
    noise: 'stored' (deterministic) or 'random' (the function takes a seed).
    step: checkpoint step of a workdir (default: the latest).
    platforms: platforms to lower for.
    overwrite: replace an existing `output`.

  Returns:
    The export directory.

  Raises:
    FileNotFoundError, FileExistsError, ConversionError: bad input (nothing
      is written), as listed in `load_source`.
    OutputError: `output` cannot be written (checked before any work).
    TorchNotInstalled: a `.pth` source without PyTorch.
  """
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
  if noise not in NOISE_MODES:
    raise ValueError(f'noise must be one of {NOISE_MODES}, got {noise!r}')
  bad = sorted(set(platforms) - set(PLATFORMS))
  if bad or not platforms:
    raise ValueError(f'platforms must be a non-empty subset of {PLATFORMS}, got {tuple(platforms)}')
  output = pathlib.Path(output).resolve()  # README.txt names it; Orbax needs absolute paths
  if output.exists() and not overwrite:
    raise FileExistsError(f'{output} exists; pass overwrite=True (--overwrite) to replace it')
  cli_common.check_writable(output.parent, '--output')  # before minutes of loading and lowering
  src = load_source(source, step)
  module, _ = archs.build(src.arch, dtype=jnp.dtype(dtype), **src.kwargs)
  start = time.perf_counter()
  blob = export_restore_fn(module, src.variables, noise, platforms).serialize()
  log.info('exported and serialized restore() in %.1f s (%s bytes)', time.perf_counter() - start, f'{len(blob):,}')
  meta = dict(exported_from=str(pathlib.Path(source).absolute()), source_kind=src.kind, source_step=src.step,
              dtype=dtype, param_dtype='float32', noise=noise, image_size=module.out_size,
              function=FUNCTION_FILE, function_args=['variables', 'images'] + (['seed'] if noise == 'random' else []),
              platforms=list(platforms), jax_version=jax.__version__)
  try:
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{output.name}.', dir=output.parent))
  except OSError as e:
    raise cli_common.OutputError(cli_common.output_error_message(e, output, '--output')) from e
  try:
    assembled = checkpoint.save(staging / 'export', src.variables, src.arch, src.kwargs, **meta)
    (assembled / FUNCTION_FILE).write_bytes(blob)
    (assembled / README_FILE).write_text(readme_text({**meta, 'arch': src.arch, 'export_dir': str(output)}))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(assembled, 0o777 & ~umask)  # a temporary directory is 0700; serving may run as another user
    _move_into_place(assembled, output, staging / 'previous')
  except OSError as e:
    raise cli_common.OutputError(cli_common.output_error_message(e, output, '--output')) from e
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return output


def _move_into_place(assembled: pathlib.Path, output: pathlib.Path, aside: pathlib.Path):
  """Renames `assembled` to `output`; an existing `output` is moved `aside` first and restored on failure."""
  if output.exists():
    os.replace(output, aside)
  try:
    os.replace(assembled, output)
  except OSError:
    if aside.exists():
      os.replace(aside, output)
    raise


def load_restore(directory: str | os.PathLike) -> tuple[Callable[[Any, jax.Array], jax.Array], dict[str, Any]]:
  """The serialized function of an export directory, with its weights on the device.

  Returns:
    (`run(images, key) -> restored`, uint8 [B, S, S, 3] both; `key` seeds the
    noise of a `--noise random` export and is ignored otherwise; the export's
    metadata).

  Raises:
    ConversionError: not an export directory, or unreadable files.
  """
  directory = pathlib.Path(directory)
  meta = checkpoint.read_meta(directory)
  if 'function' not in meta:
    raise sd_lib.ConversionError(f'{directory} is a checkpoint without a serialized function; '
                                 'make an export with python -m gfpgan_jax.export')
  try:
    exported = jax.export.deserialize(bytearray((directory / meta['function']).read_bytes()))
  except Exception as e:  # pylint: disable=broad-except
    raise sd_lib.ConversionError(f'cannot read {directory / meta["function"]}: {type(e).__name__}: {e}') from e
  variables = jax.device_put(checkpoint.load(directory)[2])
  if meta['noise'] == 'random':

    def run(variables, images, key):
      return exported.call(variables, images, jax.random.bits(key, (), jnp.uint32))
  else:

    def run(variables, images, key):
      del key
      return exported.call(variables, images)

  # The weights stay an argument (not constants) of the compiled call.
  return functools.partial(xla_options.jit(run), variables), meta


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--from', dest='source', required=True,
                 help='training workdir (its G-EMA), converted checkpoint/export directory, or official .pth')
  p.add_argument('--output', required=True, type=pathlib.Path, help='export directory to write')
  p.add_argument('--dtype', choices=DTYPES, default='float32', help='compute dtype (the weights stay float32)')
  p.add_argument('--noise', choices=NOISE_MODES, default='stored',
                 help='stored: deterministic, restore(variables, images); random: restore(variables, images, seed)')
  p.add_argument('--step', type=int, default=None, help='checkpoint step of a workdir (default: the latest)')
  p.add_argument('--platforms', default=','.join(DEFAULT_PLATFORMS),
                 help='comma-separated platforms to lower for (cpu, cuda, rocm, tpu)')
  p.add_argument('--overwrite', action='store_true', help='replace an existing output directory')
  args = p.parse_args(argv)
  cli_common.setup_logging(log)
  platforms = tuple(x.strip() for x in args.platforms.split(',') if x.strip())
  try:
    out = export(args.source, args.output, args.dtype, args.noise, args.step, platforms, args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError, pth.TorchNotInstalled) as e:  # ConversionError and
    log.error('error: %s', e)                                                            # OutputError: ValueErrors
    return 2
  meta = checkpoint.read_meta(out)
  size = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
  log.info('%s -> %s: %s %s, dtype %s, noise %s, %s bytes in all', args.source, out, meta['arch'],
           meta['image_size'], args.dtype, args.noise, f'{size:,}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
