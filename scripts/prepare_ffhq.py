r"""Turns a local FFHQ folder (or BasicSR LMDB) into a TFDS ArrayRecord dataset for the grain pipeline.

    python scripts/prepare_ffhq.py --input datasets/ffhq/ffhq_512 \
        --landmarks landmarks.json --output datasets/tfds [--resolution 512]

then train with `config.data.source='tfds'`, `config.data.tfds_data_dir=datasets/tfds`.

Every image file under `--input` (recursively; see
`gfpgan_jax.data.sources.list_image_files`) becomes one example. `--input` may
also be a BasicSR LMDB folder (`ffhq_512.lmdb/` with `data.mdb` and
`meta_info.txt`, needs `pip install '.[lmdb]'`): its images, in
`meta_info.txt` order, named as listed there (e.g. `00042.png`):

    'image':      tfds.features.Image((R, R, 3), PNG)  RGB uint8; an RGB PNG that
                  already is R x R keeps its bytes, others are converted to
                  RGB, Lanczos-resized and re-encoded
    'name':       tfds.features.Text()  path relative to --input (e.g. '00042.png')
    'components': Tensor((3, 3), float64, raw bytes)  only with --landmarks: rows left eye,
                  right eye, mouth; columns x, y, half_len, in R-pixel coordinates

Landmarks (`.json` from scripts/convert_landmarks.py, `.npz`, or the official
`.pth` with PyTorch installed) are matched by file name (`00042.png` -> entry
`00000042`); an image without an entry is an error. Unreadable files are
skipped with a warning and counted in the dataset's `metadata.json`.

The dataset (`<output>/ffhq_gfpgan/1.0.0/`) is written and read without
TensorFlow: `tfds.builder_from_directory(path).as_data_source('train')` or
`tfds.data_source('ffhq_gfpgan', data_dir=output)`.
"""

import argparse
import functools
import logging
import multiprocessing
import os
import sys
import tempfile

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from gfpgan_jax.data import landmarks as landmarks_lib
from gfpgan_jax.data import lmdb_source
from gfpgan_jax.data import sources

logger = logging.getLogger('prepare_ffhq')


class FfhqGfpgan(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """HQ FFHQ faces (and eye/mouth landmarks) for GFP-GAN training."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'PNG faces, file names and eye/mouth components.'}

  def __init__(self, *, input_dir: str, names: list[str], locations: np.ndarray | None, resolution: int,
               num_workers: int, compress_level: int, **kwargs):
    self._input_dir = input_dir
    self._names = names
    self._locations = locations
    self._resolution = resolution
    self._num_workers = num_workers
    self._compress_level = compress_level
    self.skipped = []
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    res = self._resolution
    features = {
        sources.FEATURE_IMAGE: tfds.features.Image(shape=(res, res, 3), encoding_format='png'),
        sources.FEATURE_NAME: tfds.features.Text(),
    }
    if self._locations is not None:
      # Raw bytes: the default encoding goes through tf.train.Example's float32 list and loses float64 precision.
      features[sources.FEATURE_COMPONENTS] = tfds.features.Tensor(
          shape=(3, 3), dtype=np.float64, encoding=tfds.features.Encoding.BYTES)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n')[0],
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(resolution=res, has_components=self._locations is not None,
                                        input_dir=self._input_dir, num_input_files=len(self._names)),
        homepage='https://github.com/NVlabs/ffhq-dataset',
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {sources.TFDS_SPLIT: self._generate_examples()}

  def _generate_examples(self):
    kw = dict(resolution=self._resolution, compress_level=self._compress_level)
    if lmdb_source.is_lmdb_dir(self._input_dir):
      db = lmdb_source.LmdbSource(self._input_dir)
      paths = [db.location(name) for name in self._names]
      fn = functools.partial(sources.prepare_encoded, **kw)
      inputs = ((db[i]['data'], paths[i]) for i in range(len(db)))
    else:
      paths = [os.path.join(self._input_dir, name) for name in self._names]
      fn = functools.partial(sources.prepare_image, **kw)
      inputs = paths
    if self._num_workers:
      pool = multiprocessing.get_context('spawn').Pool(self._num_workers)
      results = pool.imap(fn, inputs, chunksize=16)
    else:
      pool, results = None, map(fn, inputs)
    try:
      for n, (png, note) in enumerate(tqdm.tqdm(results, total=len(paths), desc='Encoding', unit='img')):
        name = self._names[n]
        if png is None:
          logger.warning('Skipping unreadable image: %s', note)
          self.skipped.append(name)
          continue
        if note != 'RGB':
          logger.warning('Converted image %s from mode %s to RGB uint8', paths[n], note)
        example = {sources.FEATURE_IMAGE: png, sources.FEATURE_NAME: name}
        if self._locations is not None:
          example[sources.FEATURE_COMPONENTS] = self._locations[n]
        yield name, example
    finally:
      if pool is not None:
        pool.terminate()
    self.info.metadata['num_skipped'] = len(self.skipped)
    self.info.metadata['skipped'] = self.skipped[:1000]
    if len(self.skipped) == len(paths):
      raise ValueError(f'no readable image in {self._input_dir}')


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--input', required=True,
                      help='folder of FFHQ images (PNG/JPEG, searched recursively), or a BasicSR .lmdb folder')
  parser.add_argument('--output', required=True, help='TFDS data_dir to write <name>/1.0.0/ into')
  parser.add_argument('--landmarks', default='', help='eye/mouth landmarks (.json, .npz or official .pth)')
  parser.add_argument('--landmarks-resolution', type=int, default=512, help='pixel frame of the landmarks file')
  parser.add_argument('--resolution', type=int, default=512, help='stored image side in pixels')
  parser.add_argument('--name', default=sources.TFDS_NAME, help='dataset name')
  parser.add_argument('--num-workers', type=int, default=os.cpu_count() or 1,
                      help='processes decoding/encoding images; 0 = in this process')
  parser.add_argument('--compress-level', type=int, default=6, help='PNG compression level of re-encoded images')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing dataset version')
  return parser.parse_args(argv)


def main(argv=None) -> str:
  """Runs the conversion. Returns the written dataset version folder."""
  args = parse_args(argv)
  if not os.path.isdir(args.input):
    raise FileNotFoundError(f'--input folder not found: {args.input}')
  if lmdb_source.is_lmdb_dir(args.input):
    names = lmdb_source.LmdbSource(args.input).names  # raises on a bad LMDB
  else:
    names = sources.list_image_files(args.input)  # raises on an empty folder
  locations = None
  if args.landmarks:
    table = landmarks_lib.load_landmarks(args.landmarks)
    locations, missing = landmarks_lib.match_by_name(names, table)
    if missing:
      raise ValueError(f'{len(missing)} of {len(names)} images in {args.input} have no entry in {args.landmarks} '
                       f'(matched by file name): {missing[:5]}')
    locations = landmarks_lib.scale_locations(locations, args.resolution / args.landmarks_resolution)
  logger.info('%d images in %s, landmarks: %s', len(names), args.input, args.landmarks or 'none')

  builder_cls = type(FfhqGfpgan.__name__, (FfhqGfpgan,), {'name': args.name}, skip_registration=True)
  builder = builder_cls(input_dir=args.input, names=names, locations=locations, resolution=args.resolution,
                        num_workers=args.num_workers, compress_level=args.compress_level,
                        data_dir=args.output, file_format='array_record')
  if builder.is_prepared() and args.overwrite:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(builder.data_dir)
    builder = builder_cls(input_dir=args.input, names=names, locations=locations, resolution=args.resolution,
                          num_workers=args.num_workers, compress_level=args.compress_level,
                          data_dir=args.output, file_format='array_record')
  elif builder.is_prepared():
    raise FileExistsError(f'{builder.data_dir} already exists; pass --overwrite to replace it')
  tfds.disable_progress_bar()
  with tempfile.TemporaryDirectory() as download_dir:
    builder.download_and_prepare(download_dir=download_dir)
  if builder.skipped:
    logger.warning('Skipped %d unreadable files (listed in %s/metadata.json)', len(builder.skipped), builder.data_dir)
  num = builder.info.splits[sources.TFDS_SPLIT].num_examples
  print(f'Wrote {num} examples ({len(builder.skipped)} files skipped) to {builder.data_dir}')
  return os.fspath(builder.data_dir)


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s', stream=sys.stderr)
  main()
