"""BasicSR LMDB datasets: a source for training and an input of scripts/prepare_ffhq.py."""

import pathlib
import pickle
import sys

import cv2
import lmdb
import numpy as np
import pytest

from gfpgan_jax.data import input_pipeline
from gfpgan_jax.data import landmarks as landmarks_lib
from gfpgan_jax.data import lmdb_source
from gfpgan_jax.data import sources
from gfpgan_jax.testing import scripts

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from configs import ffhq  # pylint: disable=g-import-not-at-top,wrong-import-position

prepare_ffhq = scripts.load('prepare_ffhq')

SIZE = 32


def make_basicsr_lmdb(path: pathlib.Path, images: dict[str, np.ndarray], compress_level: int = 1):
  """An LMDB in the layout of basicsr's `make_lmdb_from_imgs`: PNG values from `cv2.imencode` of the BGR image,
  the name without extension as the key, and `meta_info.txt` lines `NAME.png (H,W,C) LEVEL`."""
  env = lmdb.open(str(path), map_size=1 << 26)
  with env.begin(write=True) as txn, open(path / 'meta_info.txt', 'w') as meta:
    for key, rgb in images.items():
      _, png = cv2.imencode('.png', rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
      txn.put(key.encode('ascii'), png.tobytes())
      h, w, c = rgb.shape
      meta.write(f'{key}.png ({h},{w},{c}) {compress_level}\n')
  env.close()


@pytest.fixture
def ffhq_lmdb(tmp_path):
  """5 random faces (listed out of sorted order, as meta_info.txt may be), their landmarks, the .lmdb folder."""
  rng = np.random.default_rng(0)
  order = [3, 0, 4, 1, 2]
  images = {f'{i:05d}': rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8) for i in order}
  table = {i: rng.uniform(8, SIZE - 8, (3, 3)) for i in order}
  path = tmp_path / 'ffhq_32.lmdb'
  make_basicsr_lmdb(path, images)
  assert {p.name for p in path.iterdir()} >= {'data.mdb', 'meta_info.txt'}
  return path, images, table


def _config(path, **data):
  config = ffhq.get_config()
  config.data.update(dict(source='lmdb', train_dir=str(path), resolution=SIZE, batch_size=5, shuffle=False,
                          use_hflip=False, worker_count=0, read_threads=1, prefetch_size=2))
  config.data.update(data)
  return config


def test_lmdb_reads_back_the_source_images(ffhq_lmdb):
  path, images, table = ffhq_lmdb
  source = lmdb_source.LmdbSource(path, table, landmarks_resolution=SIZE)
  assert len(source) == 5 and source.has_components
  assert source.names == [f'{k}.png' for k in images]  # meta_info.txt order, names as listed
  decoded = sources.DecodedSource(source, SIZE, with_components=True)
  for i, (key, rgb) in enumerate(images.items()):
    element = decoded[i]
    np.testing.assert_array_equal(element['gt'], rgb)  # lossless, RGB (basicsr stores BGR -> PNG)
    np.testing.assert_array_equal(element['locations'], table[int(key)])
  # A grain worker gets a pickled copy: it reopens the environment itself.
  clone = pickle.loads(pickle.dumps(source))
  assert clone[2]['data'] == source[2]['data'] and clone[2]['name'] == '00004.png'


def test_lmdb_training_source(ffhq_lmdb):
  path, images, table = ffhq_lmdb
  landmarks_lib.save_landmarks(table, path.parent / 'landmarks.json')
  config = _config(path, landmarks_path=str(path.parent / 'landmarks.json'), landmarks_resolution=SIZE)
  batch = next(input_pipeline.make_train_iterator(config, 0, 1))
  np.testing.assert_array_equal(batch['gt'], np.stack(list(images.values())))
  for b, key in enumerate(images):
    np.testing.assert_array_equal(batch['loc_mouth'][b], landmarks_lib.component_boxes(table[int(key)], 1.4)[2])
  assert not batch['num_skipped'].any()


def test_folder_source_on_an_lmdb_says_what_to_do(ffhq_lmdb):
  path, _, _ = ffhq_lmdb
  config = _config(path, source='folder', crop_components=False)
  with pytest.raises(ValueError, match=r"is a BasicSR LMDB .*config\.data\.source='lmdb'.*prepare_ffhq\.py --input"):
    input_pipeline.make_train_source(config)
  with pytest.raises(ValueError, match="config.data.source='lmdb'"):
    sources.ImageFolderSource(path)


def test_bad_lmdbs_fail_clearly(ffhq_lmdb, tmp_path):
  path, _, table = ffhq_lmdb
  with pytest.raises(FileNotFoundError, match='LMDB folder not found'):
    lmdb_source.LmdbSource(tmp_path / 'missing.lmdb')
  (tmp_path / 'images').mkdir()
  with pytest.raises(FileNotFoundError, match="no data.mdb.*source='folder'"):
    lmdb_source.LmdbSource(tmp_path / 'images')
  meta = path / 'meta_info.txt'
  lines = meta.read_text()
  meta.write_text(lines + '00099.png (32,32,3) 1\n')  # listed, not stored
  with pytest.raises(ValueError, match='lists 6 images but data.mdb holds 5 records'):
    lmdb_source.LmdbSource(path)
  meta.write_text(lines + lines.splitlines()[0] + '\n')
  with pytest.raises(ValueError, match=r"1 keys more than once: \['00003'\]"):
    lmdb_source.LmdbSource(path)
  meta.unlink()
  with pytest.raises(FileNotFoundError, match='meta_info.txt not found'):
    lmdb_source.LmdbSource(path)
  meta.write_text(lines)
  del table[0]
  with pytest.raises(ValueError, match=r'1 of 5 images .* no landmarks entry .*00000\.png'):
    lmdb_source.LmdbSource(path, table)


def test_prepare_ffhq_converts_an_lmdb(ffhq_lmdb, tmp_path):
  path, images, table = ffhq_lmdb
  landmarks_lib.save_landmarks(table, tmp_path / 'landmarks.json')
  out = prepare_ffhq.main(['--input', str(path), '--output', str(tmp_path / 'tfds'), '--resolution', str(SIZE),
                           '--landmarks', str(tmp_path / 'landmarks.json'), '--landmarks-resolution', str(SIZE),
                           '--num-workers', '0'])
  source = sources.TfdsSource(out)
  assert len(source) == 5 and source.has_components
  for i in range(5):
    record = source[i]
    key = record['name'].split('.')[0]
    np.testing.assert_array_equal(sources.decode_image(record['data'])[0], images[key])
    np.testing.assert_array_equal(record['locations'], table[int(key)])
