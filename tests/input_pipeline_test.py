"""Host grain pipeline: batches, checkpointing, sharding, flips and boxes, eval, failures."""

import json
import os
import pathlib
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from gfpgan_jax.data import input_pipeline
from gfpgan_jax.data import landmarks as landmarks_lib
from gfpgan_jax.testing import scripts

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from configs import ffhq  # pylint: disable=g-import-not-at-top,wrong-import-position

RES = 64
# Blob colours at the image-left eye, image-right eye and mouth of the test faces.
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
BLOB_RADIUS = 3.0


def face(index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A 64-px test face: row 0 holds the index (flip-invariant id), RGB blobs at the landmarks."""
  locations = np.array([[20., 26., 4.], [44., 26., 4.], [32., 46., 5.]])
  locations[:, :2] += rng.integers(-3, 4, (3, 2))
  image = rng.integers(60, 200, (RES, RES, 3)).astype(np.uint8)
  yy, xx = np.mgrid[:RES, :RES] + 0.5  # pixel centres: the continuous frame where a flip is x -> RES - x
  for (x, y, _), colour in zip(locations, COLOURS):
    image[(xx - x)**2 + (yy - y)**2 <= BLOB_RADIUS**2] = colour
  image[0] = [index >> 16, (index >> 8) & 255, index & 255]
  return image, locations


def image_id(gt: np.ndarray) -> int:
  r, g, b = (int(v) for v in gt[0, 0])
  return (r << 16) | (g << 8) | b


def write_faces(directory, indices, names=None, seed=0):
  """Writes faces `indices` (file names `names`, default `%05d.png`) and returns {index: (image, locations)}."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  faces = {}
  for n, index in enumerate(indices):
    image, locations = face(index, rng)
    name = names[n] if names else f'{index:05d}.png'
    os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
    Image.fromarray(image).save(os.path.join(directory, name))
    faces[index] = (image, locations)
  return faces


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """12 faces and their landmarks JSON."""
  root = tmp_path_factory.mktemp('faces')
  faces = write_faces(root / 'train', range(12))
  landmarks_lib.save_landmarks({i: loc for i, (_, loc) in faces.items()}, root / 'landmarks.json')
  return root, faces


def make_config(root, **data):
  config = ffhq.get_config()
  config.data.update(
      dict(train_dir=str(root / 'train'), landmarks_path=str(root / 'landmarks.json'), resolution=RES,
           landmarks_resolution=RES, batch_size=4, worker_count=0, read_threads=1, prefetch_size=2))
  config.data.update(data)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_format(dataset):
  root, _ = dataset
  batch = next(input_pipeline.make_train_iterator(make_config(root), 0, 1))
  assert batch['gt'].shape == (4, RES, RES, 3) and batch['gt'].dtype == np.uint8
  for part in landmarks_lib.COMPONENTS:
    assert batch[f'loc_{part}'].shape == (4, 4) and batch[f'loc_{part}'].dtype == np.float32
  np.testing.assert_array_equal(batch['num_skipped'], np.zeros(4, np.int32))
  assert set(batch) == {'gt', 'loc_left_eye', 'loc_right_eye', 'loc_mouth', 'num_skipped'}
  batch = next(input_pipeline.make_train_iterator(make_config(root, crop_components=False), 0, 1))
  assert set(batch) == {'gt', 'num_skipped'}


def test_iterator_state_restores_exact_next_batches(dataset):
  root, _ = dataset
  config = make_config(root)
  iterator = input_pipeline.make_train_iterator(config, 0, 1)
  take(iterator, 4)  # crosses an epoch boundary (12 images, batch 4)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 3)
  resumed = input_pipeline.make_train_iterator(config, 0, 1)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), expected)


def test_iterator_state_through_orbax(dataset, tmp_path):
  root, _ = dataset
  config = make_config(root)
  iterator = input_pipeline.make_train_iterator(config, 0, 1)
  take(iterator, 2)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = take(iterator, 2)
  resumed = input_pipeline.make_train_iterator(config, 0, 1)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    restored = manager.restore(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(resumed)))
  assert_batches_equal(take(restored['data_iter'], 2), expected)


def test_worker_processes_give_the_same_stream_and_restore(dataset):
  root, _ = dataset
  expected = take(input_pipeline.make_train_iterator(make_config(root), 0, 1), 4)
  config = make_config(root, worker_count=2)
  iterator = input_pipeline.make_train_iterator(config, 0, 1)
  try:
    assert_batches_equal(take(iterator, 2), expected[:2])
    state = iterator.get_state()
  finally:
    iterator.close()
  resumed = input_pipeline.make_train_iterator(config, 0, 1)
  try:
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 2), expected[2:])
  finally:
    resumed.close()


def test_process_shards_are_disjoint_and_cover_the_data(dataset):
  root, _ = dataset
  config = make_config(root, batch_size=6)
  global_batches = take(input_pipeline.make_train_iterator(config, 0, 1), 2)  # one epoch
  per_process = [take(input_pipeline.make_train_iterator(config, p, 3), 2) for p in range(3)]
  seen = [[image_id(g) for b in batches for g in b['gt']] for batches in per_process]
  for ids in seen:
    assert len(ids) == 4
  assert sorted(sum(seen, [])) == list(range(12))  # disjoint and covering
  for step in range(2):  # and step k of all processes, in process order, is exactly the global batch k
    ids = [image_id(g) for batches in per_process for g in batches[step]['gt']]
    assert ids == [image_id(g) for g in global_batches[step]['gt']]
    for key in global_batches[step]:
      np.testing.assert_array_equal(np.concatenate([b[step][key] for b in per_process]), global_batches[step][key])
  with pytest.raises(ValueError, match='multiple of the process count'):
    input_pipeline.make_train_iterator(make_config(root, batch_size=4), 0, 3)


def _blob_mask(gt, colour):
  mask = np.all(gt == colour, axis=-1)
  mask[0] = False  # the id row
  return mask


def _assert_box_holds_blob(gt, box, colour, name):
  x1, y1, x2, y2 = box
  mask = _blob_mask(gt, colour)
  assert mask.sum() > 20, name
  inside = np.zeros_like(mask)
  inside[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
  assert mask[inside].sum() == mask.sum(), f'{name}: the {colour} blob is not inside box {box}'
  for other in COLOURS:
    if not np.array_equal(other, colour):
      assert not _blob_mask(gt, other)[inside].any(), f'{name}: box {box} also holds the {other} blob'
  ys, xs = np.nonzero(mask)
  centre = np.array([(x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2])  # [x-h+1, x+h] is centred on x + 0.5 - 0.5
  np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], centre, atol=1.0, err_msg=name)


def test_flipped_boxes_land_on_mirrored_blobs(dataset):
  root, faces = dataset
  config = make_config(root, batch_size=6)
  flips = []
  for batch in take(input_pipeline.make_train_iterator(config, 0, 1), 6):  # 3 epochs
    for b, gt in enumerate(batch['gt']):
      source, _ = faces[image_id(gt)]
      flipped = not np.array_equal(gt, source)
      if flipped:
        np.testing.assert_array_equal(gt, source[:, ::-1])
      flips.append(flipped)
      for part, colour in zip(landmarks_lib.COMPONENTS, COLOURS):
        # Boxes are named by image side: after a flip, loc_left_eye must hold the mirrored
        # right eye (green) and loc_right_eye the mirrored left eye (red).
        expected = COLOURS[[1, 0, 2][landmarks_lib.COMPONENTS.index(part)]] if flipped else colour
        _assert_box_holds_blob(gt, batch[f'loc_{part}'][b], expected, f'{part} flipped={flipped}')
  assert 0.2 < np.mean(flips) < 0.8  # p = 0.5 over 36 samples


def test_flip_matches_the_official_formula_and_does_not_mutate():
  locations = np.array([[100.25, 200., 20.], [400., 210., 18.], [256., 380., 30.]])
  original = locations.copy()
  element = {'gt': np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3), 'locations': locations}
  flip = input_pipeline.RandomHorizontalFlip(prob=1.0, width=512)
  out = flip.random_map(element, np.random.default_rng(0))
  np.testing.assert_array_equal(locations, original)  # official pitfall 1: no mutation
  np.testing.assert_array_equal(out['locations'], [[512 - 400., 210., 18.], [512 - 100.25, 200., 20.],
                                                   [512 - 256., 380., 30.]])
  np.testing.assert_array_equal(out['gt'], element['gt'][:, ::-1])
  boxes = input_pipeline.ComponentBoxes(1.4).map(out)

  # The official get_component_coordinates, transcribed (float64 numpy, then .float()).
  bbox = {'left_eye': original[0].copy(), 'right_eye': original[1].copy(), 'mouth': original[2].copy()}
  bbox['left_eye'], bbox['right_eye'] = bbox['right_eye'], bbox['left_eye']
  for part in ['left_eye', 'right_eye', 'mouth']:
    bbox[part][0] = 512 - bbox[part][0]
  for part in ['left_eye', 'right_eye', 'mouth']:
    mean, half_len = bbox[part][0:2], bbox[part][2]
    if 'eye' in part:
      half_len *= 1.4
    loc = np.hstack((mean - half_len + 1, mean + half_len)).astype(np.float32)
    np.testing.assert_array_equal(boxes[f'loc_{part}'], loc)
  assert 'locations' not in boxes and 'locations' in out


def test_boxes_stay_consistent_over_epochs(dataset):
  """A sample's boxes depend only on its own flip, never on earlier visits (official pitfall 1)."""
  root, faces = dataset
  config = make_config(root, batch_size=12)
  for batch in take(input_pipeline.make_train_iterator(config, 0, 1), 4):
    for b, gt in enumerate(batch['gt']):
      _, locations = faces[image_id(gt)]
      if not np.array_equal(gt, faces[image_id(gt)][0]):
        locations = landmarks_lib.flip_locations(locations, RES)
      boxes = landmarks_lib.component_boxes(locations, 1.4)
      for i, part in enumerate(landmarks_lib.COMPONENTS):
        np.testing.assert_array_equal(batch[f'loc_{part}'][b], boxes[i])


def test_landmarks_matched_by_file_name_whatever_the_listing_order(tmp_path, monkeypatch):
  indices = [42, 3, 100000, 7, 10]
  names = ['00042.png', 'sub/00000003.png', '100000.png', 'sub/deeper/00007.png', '00010.png']
  faces = write_faces(tmp_path / 'train', indices, names)
  table = {i: loc for i, (_, loc) in faces.items()}
  table.update({i: np.full((3, 3), -1.) for i in (0, 1, 2, 4, 5, 6, 8, 9, 11)})  # decoys a list order would hit
  landmarks_lib.save_landmarks(table, tmp_path / 'landmarks.json')
  real_walk = os.walk

  def shuffled_walk(*args, **kwargs):
    for dirpath, dirnames, filenames in real_walk(*args, **kwargs):
      yield dirpath, dirnames, list(np.random.default_rng(len(filenames)).permutation(filenames))

  monkeypatch.setattr(os, 'walk', shuffled_walk)
  config = make_config(tmp_path, batch_size=5, shuffle=False, use_hflip=False)
  batch = next(input_pipeline.make_train_iterator(config, 0, 1))
  assert sorted(image_id(g) for g in batch['gt']) == sorted(indices)
  for b, gt in enumerate(batch['gt']):
    boxes = landmarks_lib.component_boxes(faces[image_id(gt)][1], 1.4)
    for i, part in enumerate(landmarks_lib.COMPONENTS):
      np.testing.assert_array_equal(batch[f'loc_{part}'][b], boxes[i])
  (tmp_path / 'train' / 'face.png').write_bytes((tmp_path / 'train' / '00042.png').read_bytes())
  with pytest.raises(ValueError, match=r'no landmarks entry.*face\.png'):
    input_pipeline.make_train_iterator(config, 0, 1)


def test_bad_files_are_skipped_converted_and_counted(tmp_path, caplog):
  faces = write_faces(tmp_path / 'train', range(6))
  train = tmp_path / 'train'
  good = (train / '00001.png').read_bytes()
  (train / '00006.png').write_bytes(good[:len(good) // 2])  # truncated
  (train / '00007.png').write_bytes(b'this is not an image')
  (train / '00008.jpg').write_bytes(b'')
  (train / '00009.png').write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))
  Image.fromarray(faces[2][0][..., 0]).save(train / '00010.png')  # grayscale 'L'
  Image.fromarray(np.dstack([faces[3][0], np.full((RES, RES), 7, np.uint8)])).save(train / '00011.png')  # RGBA
  Image.fromarray(faces[4][0]).convert('P').save(train / '00012.png')  # palette
  grey16 = faces[5][0][..., 1].astype(np.uint16) * 257 + 3
  Image.fromarray(grey16).save(train / '00013.png')  # 16-bit grey ('I;16')
  bad = ['00006.png', '00007.png', '00008.jpg', '00009.png']

  config = make_config(tmp_path, batch_size=14, shuffle=False, use_hflip=False, crop_components=False)
  with caplog.at_level('WARNING'):
    batches = take(input_pipeline.make_train_iterator(config, 0, 1), 2)
  assert sum(int(b['num_skipped'].sum()) for b in batches) == 2 * len(bad)  # once per file and epoch
  gt = batches[0]['gt']
  np.testing.assert_array_equal(gt[6], gt[10])  # the bad 6..9 are replaced by the next readable file
  np.testing.assert_array_equal(batches[0]['num_skipped'], [0] * 6 + [1] * 4 + [0] * 4)
  np.testing.assert_array_equal(gt[10], np.repeat(faces[2][0][..., :1], 3, -1))
  np.testing.assert_array_equal(gt[11], faces[3][0])
  np.testing.assert_array_equal(gt[12], np.asarray(Image.fromarray(faces[4][0]).convert('P').convert('RGB')))
  np.testing.assert_array_equal(gt[13], np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, -1))
  messages = [r.getMessage() for r in caplog.records]
  for name in bad:
    assert sum(f'Skipping unreadable image: {train / name}' in m for m in messages) == 1, name  # warned once
  for name, mode in [('00010.png', 'L'), ('00011.png', 'RGBA'), ('00012.png', 'P'), ('00013.png', 'I;16')]:
    assert any(f'{train / name} from mode {mode}' in m for m in messages), name


def test_all_unreadable_fails(tmp_path):
  (tmp_path / 'train').mkdir()
  for i in range(3):
    (tmp_path / 'train' / f'{i:05d}.png').write_bytes(b'junk')
  config = make_config(tmp_path, crop_components=False, batch_size=2)
  with pytest.raises(RuntimeError, match='consecutive unreadable'):
    next(input_pipeline.make_train_iterator(config, 0, 1))


def test_missing_or_empty_paths_fail_at_build_time(tmp_path, dataset):
  root, _ = dataset
  missing = tmp_path / 'nope'
  with pytest.raises(FileNotFoundError, match=str(missing)):
    input_pipeline.make_train_iterator(make_config(root, train_dir=str(missing)), 0, 1)
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
  with pytest.raises(ValueError, match=f'no image files.*{tmp_path / "empty"}'):
    input_pipeline.make_train_iterator(make_config(root, train_dir=str(tmp_path / 'empty')), 0, 1)
  with pytest.raises(ValueError, match='train_dir is not set'):
    input_pipeline.make_train_iterator(make_config(root, train_dir=''), 0, 1)
  with pytest.raises(FileNotFoundError, match=str(missing)):
    input_pipeline.make_train_iterator(make_config(root, source='tfds', tfds_data_dir=str(missing)), 0, 1)
  with pytest.raises(FileNotFoundError, match='landmarks file not found'):
    input_pipeline.make_train_iterator(make_config(root, landmarks_path=str(missing / 'l.json')), 0, 1)
  with pytest.raises(ValueError, match='crop_components=True needs eye/mouth landmarks'):
    input_pipeline.make_train_iterator(make_config(root, landmarks_path=''), 0, 1)
  with pytest.raises(FileNotFoundError, match=str(missing)):
    input_pipeline.make_eval_iterator(make_config(root, eval_dir=str(missing)), 0, 1)


def test_eval_iterator_is_finite_deterministic_and_padded(dataset, tmp_path):
  root, faces = dataset
  eval_dir = tmp_path / 'eval'
  eval_dir.mkdir()
  for i in range(7):
    (eval_dir / f'{i:05d}.png').write_bytes((root / 'train' / f'{i:05d}.png').read_bytes())
  (eval_dir / '00007.png').write_bytes(b'broken')
  config = make_config(root, eval_dir=str(eval_dir), eval_batch_size=4)
  runs = [list(input_pipeline.make_eval_iterator(config, p, 2)) for p in (0, 1, 0)]
  assert_batches_equal(runs[0], runs[2])  # deterministic
  assert len(runs[0]) == len(runs[1]) == 2  # 8 files / 2 processes / 2 per batch, same count everywhere
  seen = []
  for batches in runs[:2]:
    for batch in batches:
      assert set(batch) == {'gt', 'index', 'mask', 'num_skipped'}
      for gt, index, mask in zip(batch['gt'], batch['index'], batch['mask']):
        if mask:
          np.testing.assert_array_equal(gt, faces[int(index)][0])  # unshuffled, unflipped
          seen.append(int(index))
        else:
          assert not gt.any()
  assert sorted(seen) == list(range(7))
  assert sum(int(b['num_skipped'].sum()) for b in runs[1]) == 1  # 00007.png, on process 1
  padded = list(input_pipeline.make_eval_iterator(make_config(root, eval_dir=str(eval_dir), eval_batch_size=6), 1, 2))
  assert len(padded) == 2 and padded[-1]['index'].tolist() == [7, -1, -1] and not padded[-1]['mask'].any()


def test_config_defaults_are_the_official_v1_recipe():
  data = ffhq.get_config().data
  assert (data.resolution, data.batch_size, data.use_hflip, data.crop_components) == (512, 12, True, True)
  assert (data.eye_enlarge_ratio, data.landmarks_resolution, data.shuffle, data.seed) == (1.4, 512, True, 0)
  assert data.worker_count == 6 and data.source == 'folder'


def test_host_rate_probe():
  bench_host = scripts.load('bench_host')
  args = bench_host.argparse.Namespace(workers='0', resolution=RES, num_images=8, batch_size=4, num_batches=2,
                                       warmup_batches=1)
  results = bench_host.host_rate(args)
  (run,) = results['runs']
  assert run['images'] == 8 and run['images_per_s'] > 0 and run['resolution'] == RES and run['worker_count'] == 0
