"""Image decoding, landmarks files, and the TFDS ArrayRecord round trip through scripts/prepare_ffhq.py."""

import io
import json
import pathlib
import pickle
import struct
import sys
import zlib

import numpy as np
from PIL import Image
import pytest

from gfpgan_jax.data import input_pipeline
from gfpgan_jax.data import landmarks as landmarks_lib
from gfpgan_jax.data import sources
from gfpgan_jax.testing import scripts

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from configs import ffhq  # pylint: disable=g-import-not-at-top,wrong-import-position

prepare_ffhq = scripts.load('prepare_ffhq')
convert_landmarks = scripts.load('convert_landmarks')


def png16(array: np.ndarray) -> bytes:
  """A 16-bit PNG (grey, RGB or RGBA) written by hand: PIL cannot write 16-bit colour."""
  h, w, c = array.shape
  raw = b''.join(b'\x00' + array[y].astype('>u2').tobytes() for y in range(h))

  def chunk(tag, data):
    return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))

  header = struct.pack('>IIBBBBB', w, h, 16, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')


def encode(image: Image.Image, fmt='PNG', **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (16, 16, 3)).astype(np.uint8)


@pytest.mark.parametrize('name, data, expected', [
    ('rgb', encode(Image.fromarray(RGB)), RGB),
    ('rgb16', png16(RGB.astype(np.uint16) * 257), RGB),
    ('rgba16', png16(np.dstack([RGB, RGB[..., :1]]).astype(np.uint16) * 257), RGB),
    ('grey16', png16(RGB[..., :1].astype(np.uint16) * 256 + 255), np.repeat(RGB[..., :1], 3, -1)),
    ('la', encode(Image.fromarray(np.dstack([RGB[..., 0], RGB[..., 1]]), 'LA')), np.repeat(RGB[..., :1], 3, -1)),
    ('bilevel', encode(Image.fromarray(RGB[..., 0] > 127)), np.repeat((RGB[..., :1] > 127) * np.uint8(255), 3, -1)),
    ('palette_transparency', encode(Image.fromarray(RGB).quantize(16), transparency=0),
     np.asarray(Image.fromarray(RGB).quantize(16).convert('RGB'))),
])
def test_decode_converts_every_mode_to_rgb_uint8(name, data, expected):
  image, _ = sources.decode_image(data, None, name)
  assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
  np.testing.assert_array_equal(image, expected)


def test_decode_resizes_and_rejects_bad_bytes():
  image, mode = sources.decode_image(encode(Image.fromarray(RGB), 'JPEG'), 8, 'x.jpg')
  assert image.shape == (8, 8, 3) and mode == 'RGB'
  good = encode(Image.fromarray(RGB))
  for data in (b'', good[:len(good) // 2], b'GIF89a nonsense', b'plain text'):
    with pytest.raises(sources.UnreadableImageError, match='some/file.png'):
      sources.decode_image(data, 8, 'some/file.png')


def test_prepare_image_keeps_8bit_rgb_png_bytes(tmp_path):
  png = encode(Image.fromarray(RGB))
  (tmp_path / 'a.png').write_bytes(png)
  assert sources.prepare_image(str(tmp_path / 'a.png'), 16) == (png, 'RGB')
  (tmp_path / 'b.png').write_bytes(png16(RGB.astype(np.uint16) * 257))  # 16-bit: re-encoded as 8-bit
  data, mode = sources.prepare_image(str(tmp_path / 'b.png'), 16)
  assert mode == 'RGB' and data[24:26] == bytes([8, 2])
  np.testing.assert_array_equal(sources.decode_image(data)[0], RGB)
  data, _ = sources.prepare_image(str(tmp_path / 'a.png'), 8)  # resized
  assert sources.decode_image(data)[0].shape == (8, 8, 3)
  (tmp_path / 'c.png').write_bytes(png[:100])
  data, note = sources.prepare_image(str(tmp_path / 'c.png'), 16)
  assert data is None and 'c.png' in note


def test_index_from_name():
  assert landmarks_lib.index_from_name('00042.png') == 42
  assert landmarks_lib.index_from_name('a/b/00000042.jpg') == 42
  assert landmarks_lib.index_from_name('00042') == 42
  assert landmarks_lib.index_from_name('face_42.png') is None
  assert landmarks_lib.key_from_index(42) == '00000042'


def _official_table(n=5):
  """Entries shaped like FFHQ_eye_mouth_landmarks_512.pth: lists of numpy float64 scalars."""
  rng = np.random.default_rng(1)
  return {
      f'{i:08d}': {part: [np.float64(v) for v in rng.uniform(16, 500, 3)] for part in landmarks_lib.COMPONENTS}
      for i in range(n)
  }


def test_convert_official_pth_landmarks(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  official = _official_table()
  torch.save(official, tmp_path / 'landmarks.pth')
  with pytest.raises(pickle.UnpicklingError):  # why the converter exists: torch >= 2.6 refuses numpy scalars by default
    torch.load(tmp_path / 'landmarks.pth')
  assert convert_landmarks.main(['--input', str(tmp_path / 'landmarks.pth'), '--output',
                                 str(tmp_path / 'landmarks.json')]) == 5
  plain = json.loads((tmp_path / 'landmarks.json').read_text())
  assert list(plain) == list(official)
  for key, entry in official.items():
    assert plain[key] == {part: [float(v) for v in values] for part, values in entry.items()}  # exact float64
  table = landmarks_lib.load_landmarks(tmp_path / 'landmarks.json')
  np.testing.assert_array_equal(table[3], [official['00000003'][p] for p in landmarks_lib.COMPONENTS])
  convert_landmarks.main(['--input', str(tmp_path / 'landmarks.json'), '--output', str(tmp_path / 'l.npz')])
  npz = landmarks_lib.load_landmarks(tmp_path / 'l.npz')
  assert npz.keys() == table.keys() and all(np.array_equal(npz[i], table[i]) for i in table)
  pth = landmarks_lib.load_landmarks(tmp_path / 'landmarks.pth')  # the pipeline also reads the .pth directly
  assert all(np.array_equal(pth[i], table[i]) for i in table)


def _write_folder(directory, n=6, size=48, seed=0):
  directory.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  images, table = {}, {}
  for i in range(n):
    images[i] = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    Image.fromarray(images[i]).save(directory / f'{i:05d}.png')
    table[i] = rng.uniform(10, size - 10, (3, 3))
  return images, table


def _tfds_config(data_dir, **data):
  config = ffhq.get_config()
  config.data.update(dict(source='tfds', tfds_data_dir=str(data_dir), resolution=48, batch_size=3, shuffle=False,
                          use_hflip=False, worker_count=0, read_threads=1, prefetch_size=2))
  config.data.update(data)
  return config


def test_prepare_ffhq_roundtrip_through_tfds(tmp_path):
  images, table = _write_folder(tmp_path / 'ffhq')
  (tmp_path / 'ffhq' / '00006.png').write_bytes(b'corrupt')
  Image.fromarray(images[1][..., 0]).save(tmp_path / 'ffhq' / '00007.png')  # grey, converted
  table[6] = table[7] = table[0]
  landmarks_lib.save_landmarks({i: loc * 2 for i, loc in table.items()}, tmp_path / 'landmarks.json')  # 96-px frame
  path = prepare_ffhq.main(['--input', str(tmp_path / 'ffhq'), '--output', str(tmp_path / 'tfds'), '--resolution',
                            '48', '--landmarks', str(tmp_path / 'landmarks.json'), '--landmarks-resolution', '96',
                            '--num-workers', '0'])
  metadata = json.loads((pathlib.Path(path) / 'metadata.json').read_text())
  assert metadata['num_skipped'] == 1 and metadata['skipped'] == ['00006.png']
  assert 'tensorflow' not in sys.modules

  source = sources.TfdsSource(tmp_path / 'tfds')
  assert len(source) == 7 and source.has_components and source.landmarks_resolution == 48
  for i in range(len(source)):
    record = source[i]
    index = landmarks_lib.index_from_name(record['name'])
    gt, _ = sources.decode_image(record['data'])
    expected = images[index] if index < 6 else np.repeat(images[1][..., :1], 3, -1)
    np.testing.assert_array_equal(gt, expected)  # lossless PNG, matched by name
    np.testing.assert_array_equal(record['locations'], table[index])  # float64 kept exactly

  config = _tfds_config(tmp_path / 'tfds', batch_size=7)
  batch = next(input_pipeline.make_train_iterator(config, 0, 1))
  for b in range(7):
    index = landmarks_lib.index_from_name(source[b]['name'])
    boxes = landmarks_lib.component_boxes(table[index], 1.4)
    for k, part in enumerate(landmarks_lib.COMPONENTS):
      np.testing.assert_array_equal(batch[f'loc_{part}'][b], boxes[k])
  assert not batch['num_skipped'].any()
  # The version folder itself also opens; a smaller training resolution rescales boxes.
  small = next(input_pipeline.make_train_iterator(_tfds_config(path, resolution=24, batch_size=7), 0, 1))
  assert small['gt'].shape == (7, 24, 24, 3)
  np.testing.assert_allclose(small['loc_mouth'][:, 2:], batch['loc_mouth'][:, 2:] / 2, rtol=1e-6)

  with pytest.raises(FileExistsError, match='--overwrite'):
    prepare_ffhq.main(['--input', str(tmp_path / 'ffhq'), '--output', str(tmp_path / 'tfds'), '--num-workers', '0'])


def test_prepare_ffhq_without_landmarks_resizes(tmp_path):
  images, table = _write_folder(tmp_path / 'ffhq', n=3, size=32)
  path = prepare_ffhq.main(['--input', str(tmp_path / 'ffhq'), '--output', str(tmp_path / 'tfds'), '--resolution',
                            '16', '--num-workers', '0'])
  source = sources.TfdsSource(path)
  assert not source.has_components and len(source) == 3
  gt, _ = sources.decode_image(source[0]['data'])
  index = landmarks_lib.index_from_name(source[0]['name'])
  expected = np.asarray(Image.fromarray(images[index]).resize((16, 16), sources.RESAMPLE))
  np.testing.assert_array_equal(gt, expected)
  with pytest.raises(ValueError, match='crop_components=True needs eye/mouth landmarks'):
    input_pipeline.make_train_iterator(_tfds_config(path, resolution=16), 0, 1)
  # Landmarks kept outside the dataset are matched by the stored file name.
  landmarks_lib.save_landmarks(table, tmp_path / 'l.json')
  config = _tfds_config(path, resolution=32, batch_size=3, landmarks_path=str(tmp_path / 'l.json'),
                        landmarks_resolution=32)
  batch = next(input_pipeline.make_train_iterator(config, 0, 1))
  for b in range(3):
    boxes = landmarks_lib.component_boxes(table[landmarks_lib.index_from_name(source[b]['name'])], 1.4)
    np.testing.assert_array_equal(batch['loc_left_eye'][b], boxes[0])


def test_prepare_ffhq_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'missing')):
    prepare_ffhq.main(['--input', str(tmp_path / 'missing'), '--output', str(tmp_path / 'out')])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match=f'no image files.*{tmp_path / "empty"}'):
    prepare_ffhq.main(['--input', str(tmp_path / 'empty'), '--output', str(tmp_path / 'out')])
  _write_folder(tmp_path / 'ffhq', n=2)
  landmarks_lib.save_landmarks({0: np.ones((3, 3))}, tmp_path / 'l.json')
  with pytest.raises(ValueError, match=r'1 of 2 images .* no entry .*00001\.png'):
    prepare_ffhq.main(['--input', str(tmp_path / 'ffhq'), '--output', str(tmp_path / 'out'), '--landmarks',
                       str(tmp_path / 'l.json')])
