"""The built-in demo dataset: faces that ship with scikit-image, augmented, written as an image folder.

No download is needed: scikit-image bundles `astronaut()` (a colour portrait),
`camera()` (the cameraman, grayscale) and `lfw_subset()` (100 tiny 25x25 grayscale
LFW faces, then 100 non-faces). Every face is cropped, resized to the demo
resolution and augmented (crop jitter, colour tints); the faces are roughly but
not exactly aligned, so the eye/mouth landmarks are the FFHQ alignment template
(gfpgan.md section 4, scaled), the same for every image. Good enough to run
the complete recipe end to end in minutes; not a dataset to judge quality on.

Next to the evaluation faces, `eval_lq/` holds degraded copies of them (the
official order: blur, downsampling, noise, JPEG, resized back; fixed seed, on
the host): the inputs to try `restore` on (the clean `eval/` faces are the
ground truth, which a restoration can only make worse).
"""

import pathlib

import numpy as np
from PIL import Image

from gfpgan_jax.data import landmarks as landmarks_lib

# FFHQ 512 template (facexlib): eyes and mouth corners; half lengths typical of FFHQ faces.
_TEMPLATE_512 = np.array([[193.0, 240.0, 20.0], [319.0, 240.0, 20.0], [257.0, 371.0, 48.0]])


def _base_faces() -> list[np.ndarray]:
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top
  faces = [skdata.astronaut()[10:250, 110:350], np.repeat(skdata.camera()[40:200, 170:330, None], 3, axis=2)]
  lfw = (np.clip(skdata.lfw_subset()[:100], 0, 1) * 255).astype(np.uint8)  # the first 100 are faces
  faces += [np.repeat(f[:, :, None], 3, axis=2) for f in lfw]
  return faces


def _augment(face: np.ndarray, size: int, rs: np.random.RandomState) -> np.ndarray:
  h, w = face.shape[:2]
  crop = rs.uniform(0.85, 1.0)
  ch, cw = int(h * crop), int(w * crop)
  y, x = rs.randint(0, h - ch + 1), rs.randint(0, w - cw + 1)
  img = Image.fromarray(face[y:y + ch, x:x + cw]).resize((size, size), Image.Resampling.BICUBIC)
  out = np.asarray(img, np.float32) * rs.uniform(0.8, 1.2, 3) + rs.uniform(-15, 15)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def degrade(face: np.ndarray, rs: np.random.RandomState) -> np.ndarray:
  """A degraded copy of a uint8 RGB face [H, W, 3], at the same size (the official order, milder ranges).

  Gaussian blur (sigma 1-3), downsampling by 2-4 (INTER_LINEAR), Gaussian
  noise (sigma 3-10 of 255), JPEG at quality 50-80, and back to H x W.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  h, w = face.shape[:2]
  img = cv2.GaussianBlur(face.astype(np.float32), (0, 0), rs.uniform(1.0, 3.0), borderType=cv2.BORDER_REFLECT_101)
  scale = rs.uniform(2.0, 4.0)
  img = cv2.resize(img, (max(1, int(w / scale)), max(1, int(h / scale))), interpolation=cv2.INTER_LINEAR)
  img = img + rs.normal(0.0, rs.uniform(3.0, 10.0), img.shape)
  img = np.clip(np.round(img), 0, 255).astype(np.uint8)
  ok, buf = cv2.imencode('.jpg', img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rs.uniform(50, 80))])
  assert ok
  img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
  return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))


def _write_degraded_eval(root: pathlib.Path, seed: int) -> None:
  """`root/eval_lq/NNNNN.png`: degraded copies of `root/eval/NNNNN.png` (idempotent)."""
  out = root / 'eval_lq'
  if (out / '.complete').exists():
    return
  out.mkdir(parents=True, exist_ok=True)
  rs = np.random.RandomState(seed + 1)
  for path in sorted((root / 'eval').glob('*.png')):
    face = np.asarray(Image.open(path).convert('RGB'))
    Image.fromarray(degrade(face, rs)).save(out / path.name)
  (out / '.complete').touch()


def write_demo_dataset(root: str | pathlib.Path, resolution: int, num_train: int = 64, num_eval: int = 8,
                       seed: int = 0) -> dict[str, str]:
  """Writes `root/{train,eval,eval_lq}/NNNNN.png` and `root/landmarks.json` (idempotent).

  Returns:
    {'train_dir', 'eval_dir', 'eval_lq_dir' (degraded copies of the eval
    faces, to restore), 'landmarks_path'}.
  """
  root = pathlib.Path(root)
  paths = {'train_dir': str(root / 'train'), 'eval_dir': str(root / 'eval'), 'eval_lq_dir': str(root / 'eval_lq'),
           'landmarks_path': str(root / 'landmarks.json')}
  if (root / '.complete').exists():
    _write_degraded_eval(root, seed)  # a dataset written before eval_lq/ existed
    return paths
  rs = np.random.RandomState(seed)
  faces = _base_faces()
  held_out = set(range(len(faces) - num_eval, len(faces)))  # eval faces never appear in training
  train_faces = [f for i, f in enumerate(faces) if i not in held_out]
  eval_faces = [f for i, f in enumerate(faces) if i in held_out]
  for sub, pool, count in (('train', train_faces, num_train), ('eval', eval_faces, num_eval)):
    (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      # The two real portraits come first and more often: they carry the only colour detail.
      face = pool[i % 2] if sub == 'train' and i % 4 == 0 else pool[rs.randint(len(pool))]
      Image.fromarray(_augment(face, resolution, rs)).save(root / sub / f'{i:05d}.png')
  table = {i: _TEMPLATE_512.copy() for i in range(max(num_train, num_eval))}
  landmarks_lib.save_landmarks(table, root / 'landmarks.json')
  _write_degraded_eval(root, seed)
  (root / '.complete').touch()
  return paths
