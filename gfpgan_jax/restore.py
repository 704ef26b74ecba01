r"""Restores aligned face crops with a GFP-GAN generator.

    python -m gfpgan_jax.restore --weights GFPGANv1.4.pth --input faces/ --output results/
    python -m gfpgan_jax.restore --output results/          # built-in sample, see below

Inputs are aligned faces (as the official `--aligned` mode): crops of another
size are resized to the model size (bilinear, like `cv2.resize`) and the log
says so. For each readable input, `OUTPUT/restored/NAME.png` and a side-by-side
`OUTPUT/cmp/NAME.png` (input | restored) are written. Unreadable or non-image
files are reported by name and skipped; the rest still run.

`--weights` takes an official `.pth` (arch detected), a converted checkpoint
directory, or an export directory (`python -m gfpgan_jax.export`); with
`--exported`, the export's serialized function runs instead of the module (with
the dtype and noise mode it was exported with). Without `--input`, a face crop
of scikit-image's bundled `astronaut()` photograph is restored. Without
`--weights`, the released v1.3/v1.4 architecture runs with random weights: the
pipeline runs end to end, but the output is not a restoration (say so loudly).
"""

import argparse
import functools
import logging
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from gfpgan_jax import export as export_lib
from gfpgan_jax import inference
from gfpgan_jax import xla_options
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.data import sources

log = logging.getLogger('gfpgan_jax.restore')


def sample_face() -> np.ndarray:
  """A face crop of scikit-image's `astronaut()` photograph (ships with the package), uint8 [H, W, 3]."""
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top
  return np.ascontiguousarray(skdata.astronaut()[10:250, 110:350])


def _inputs(path: pathlib.Path | None) -> list[tuple[str, np.ndarray | None, str]]:
  """(name, image or None, problem) for every file of a file or directory."""
  if path is None:
    return [('astronaut', sample_face(), '')]
  if not path.exists():
    raise FileNotFoundError(f'input not found: {path}')
  if path.is_file():
    files = [path]
  else:  # every visible file: non-images are reported, not silently ignored
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith('.'))
    if not files:
      raise FileNotFoundError(f'no files in input directory {path}')
  stems = [f.stem for f in files]
  out = []
  for f in files:
    name = f.stem if stems.count(f.stem) == 1 else f.name.replace('.', '_')
    try:
      image, _ = sources.decode_image(f.read_bytes(), None, str(f))
      out.append((name, image, ''))
    except (OSError, sources.UnreadableImageError) as e:
      out.append((name, None, str(e)))
  return out


def load_model(weights: str | None, dtype):
  """(module, variables) from --weights, or the released arch with random weights."""
  if weights is None:
    log.warning('no --weights given: running the released GFPGANv1Clean architecture with RANDOM weights. '
                'The outputs are NOT restorations; pass --weights (an official .pth or a converted checkpoint).')
    module, _ = archs.build('gfpganv1clean', dtype=dtype)
    return module, archs.init('gfpganv1clean', jax.random.key(0))
  return checkpoint.load_generator(weights, dtype=dtype)


def restore_fn(args):
  """(`run(images, key) -> restored`, uint8 [N, S, S, 3] both; S) from the flags."""
  if not args.exported:
    module, variables = load_model(args.weights, jnp.dtype(args.dtype or 'float32'))
    run = xla_options.jit(inference.make_restore_fn(module, randomize_noise=(args.noise or 'random') == 'random'))
    return functools.partial(run, variables), module.out_size
  if args.weights is None:
    raise ValueError('--exported needs --weights EXPORT_DIR')
  run, meta = export_lib.load_restore(args.weights)
  for flag in ('dtype', 'noise'):
    given = getattr(args, flag)
    if given is not None and given != meta[flag]:
      raise ValueError(f'--{flag} {given}: the export was made with --{flag} {meta[flag]} (drop --{flag}, '
                       'or re-export)')
  log.info('running the exported function of %s (dtype %s, noise %s)', args.weights, meta['dtype'], meta['noise'])
  return run, meta['image_size']


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--weights', default=None, help='.pth, converted checkpoint dir or export dir')
  p.add_argument('--input', type=pathlib.Path, default=None, help='image file or directory (default: built-in sample)')
  p.add_argument('--output', type=pathlib.Path, required=True, help='output directory')
  p.add_argument('--batch-size', type=int, default=4, help='faces per device batch')
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default=None, help='compute dtype (default float32)')
  p.add_argument('--noise', choices=['random', 'stored'], default=None,
                 help='decoder noise: fresh per call (official; the default) or the stored buffers (deterministic)')
  p.add_argument('--exported', action='store_true',
                 help='run the serialized function of the export directory given as --weights')
  p.add_argument('--seed', type=int, default=0, help='noise seed for --noise random')
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  log.setLevel(logging.INFO)  # basicConfig is a no-op once absl (imported by orbax) configured logging
  if args.batch_size < 1:
    p.error('--batch-size must be >= 1')
  try:
    restore, size = restore_fn(args)
    items = _inputs(args.input)
  except (FileNotFoundError, ValueError) as e:  # ConversionError is a ValueError
    log.error('error: %s', e)
    return 2
  for sub in ('restored', 'cmp'):
    (args.output / sub).mkdir(parents=True, exist_ok=True)

  good = []
  for name, image, problem in items:
    if image is None:
      log.warning('skipped %s: %s', name, problem)
      continue
    if image.shape[:2] != (size, size):
      log.info('%s: resized from %dx%d to %dx%d', name, image.shape[1], image.shape[0], size, size)
      image = inference.resize_to(image, size)
    good.append((name, image))

  key = jax.random.key(args.seed)
  start, done = time.perf_counter(), 0
  for i in range(0, len(good), args.batch_size):
    chunk = good[i:i + args.batch_size]
    batch = np.zeros((args.batch_size, size, size, 3), np.uint8)  # fixed shape: one compile
    batch[:len(chunk)] = np.stack([im for _, im in chunk])
    out = np.asarray(restore(batch, jax.random.fold_in(key, i)))
    for (name, lq), restored in zip(chunk, out):
      Image.fromarray(restored).save(args.output / 'restored' / f'{name}.png')
      Image.fromarray(np.concatenate([lq, restored], axis=1)).save(args.output / 'cmp' / f'{name}.png')
    done += len(chunk)
  elapsed = time.perf_counter() - start
  skipped = len(items) - len(good)
  log.info('restored %d face(s) into %s in %.1f s (first batch includes compilation)%s', done, args.output, elapsed,
           f'; skipped {skipped} unreadable file(s)' if skipped else '')
  return 0 if done or not items else 1


if __name__ == '__main__':
  sys.exit(main())
