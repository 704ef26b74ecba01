"""Runs an image-to-image network over an image tile by tile, exactly as Real-ESRGAN's `RealESRGANer` does.

`tiled_apply` reproduces `RealESRGANer.pre_process` (reflect pre-pad at the
bottom/right, then the reflect "mod pad" to a multiple of 2 or 4 for networks
of scale 2 or 1), `tile_process` (tiles of `tile` x `tile` input pixels, each
run with `tile_pad` pixels of context where the image has them, and only the
tile's own area kept; `process` when `tile` is 0) and `post_process` (the pads
cropped off, times the scale). Tiles of the same shape (and the images of a
batch) run together, in one call of the network function, in chunks of at
most `max_batch` tiles. The image and the result stay in host memory; the
device holds at most two chunks of tiles (one running, one being copied
back), so a 4K photo's background fits.

`upsample` is `RealESRGANer.enhance` for 8-bit images: uint8 in, uint8 out,
with its clamp, rounding, grayscale / RGBA branches and `outscale` resize
(cv2 INTER_LANCZOS4). It takes and returns RGB(A); `enhance` takes cv2's BGR
order and converts it to RGB before the network, so
`upsample(rgb) == enhance(rgb[..., ::-1])[0][..., ::-1]`.
"""

from collections.abc import Callable
import collections
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax import xla_options

Array = jax.Array

# RealESRGANer pads the input to a multiple of this for networks of these scales (their pixel-unshuffle).
MOD_SCALE = {1: 4, 2: 2}


@dataclasses.dataclass(frozen=True)
class Tile:
  """One tile of `tile_process`, in input pixels of the pre-padded image (output pixels are `scale` times).

  Attributes:
    y0, y1, x0, x1: the tile's own area; it writes exactly this region.
    py0, py1, px0, px1: the area given to the network (the tile plus up to
      `tile_pad` pixels of context on each side, clipped to the image).
  """
  y0: int
  y1: int
  x0: int
  x1: int
  py0: int
  py1: int
  px0: int
  px1: int

  @property
  def padded_shape(self) -> tuple[int, int]:
    return self.py1 - self.py0, self.px1 - self.px0


def tiles(height: int, width: int, tile: int, tile_pad: int) -> list[Tile]:
  """The tiles of `RealESRGANer.tile_process` over a [height, width] image, in its row-major order."""
  out = []
  for y in range(math.ceil(height / tile)):
    for x in range(math.ceil(width / tile)):
      y0, x0 = y * tile, x * tile
      y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
      out.append(Tile(y0, y1, x0, x1, max(y0 - tile_pad, 0), min(y1 + tile_pad, height), max(x0 - tile_pad, 0),
                      min(x1 + tile_pad, width)))
  return out


def _check_int(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _check_args(shape: tuple[int, ...], scale: int, tile: int, tile_pad: int, pre_pad: int) -> None:
  _check_int('scale', scale, 1)
  _check_int('tile', tile, 0)
  _check_int('tile_pad', tile_pad, 0)
  _check_int('pre_pad', pre_pad, 0)
  if tile and tile_pad >= tile:
    raise ValueError(f'tile_pad ({tile_pad}) must be smaller than tile ({tile})')
  if len(shape) != 4 or min(shape) < 1:
    raise ValueError(f'expected an image batch [N, H, W, C], got shape {tuple(shape)}')
  h, w = shape[1:3]
  # The reflect pads of pre_process (PyTorch's 'reflect' needs pad < size).
  mod = MOD_SCALE.get(scale, 1)
  hp, wp = h + pre_pad, w + pre_pad
  pads = ((pre_pad, h), (pre_pad, w), ((-hp) % mod, hp), ((-wp) % mod, wp))
  if any(pad and pad >= size for pad, size in pads):
    raise ValueError(f'image of {h}x{w} is too small for pre_pad {pre_pad} and the mod-{mod} pad of scale {scale} '
                     '(a reflect pad must be smaller than the image)')


def _reflect_pad(x: np.ndarray, bottom: int, right: int) -> np.ndarray:
  if not bottom and not right:
    return x
  return np.pad(x, ((0, 0), (0, bottom), (0, right), (0, 0)), mode='reflect')


def tiled_apply(fn: Callable[[Array], Array],
                image: np.ndarray | Array,
                scale: int,
                tile: int = 0,
                tile_pad: int = 10,
                pre_pad: int = 10,
                max_batch: int = 4) -> np.ndarray:
  """RealESRGANer's `pre_process -> tile_process (process if tile == 0) -> post_process`.

  Args:
    fn: the network, [n, h, w, C] float32 -> [n, h * scale, w * scale, C_out];
      pass a jitted function (it is called once per tile shape and chunk
      size; jit's cache keeps one program per shape).
    image: [N, H, W, C] floating (cast to float32); Real-ESRGAN: RGB in [0, 1].
    scale: the network's scale (RealESRGANer's `scale`).
    tile: tile size in input pixels; 0 runs the whole (padded) image at once.
    tile_pad: context pixels around each tile (smaller than `tile`).
    pre_pad: reflect padding at the bottom and right, cropped off at the end.
    max_batch: at most this many tiles (tile positions x images) per call.

  Returns:
    [N, H * scale, W * scale, C_out] float32 numpy array (not clamped).

  Raises:
    ValueError: for bad arguments, a non-floating or non-[N,H,W,C] image, an
      image too small for the reflect pads, or a network output of the
      wrong shape.
  """
  if not hasattr(image, 'dtype'):
    image = np.asarray(image)
  shape = tuple(np.shape(image))
  _check_args(shape, scale, tile, tile_pad, pre_pad)
  _check_int('max_batch', max_batch, 1)
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(f'expected a floating image (RGB in [0, 1]), got dtype {image.dtype}')
  n, h, w, _ = shape
  img = _reflect_pad(np.asarray(image, np.float32), pre_pad, pre_pad)
  mod = MOD_SCALE.get(scale, 1)
  img = _reflect_pad(img, (-img.shape[1]) % mod, (-img.shape[2]) % mod)
  height, width = img.shape[1:3]
  boxes = tiles(height, width, tile, tile_pad) if tile else [Tile(0, height, 0, width, 0, height, 0, width)]

  # Chunks of at most max_batch same-shape tiles, each a list of (tile, image index).
  groups = collections.defaultdict(list)
  for t in boxes:
    groups[t.padded_shape].extend((t, i) for i in range(n))
  chunks = [members[k:k + max_batch] for members in groups.values() for k in range(0, len(members), max_batch)]

  output = None

  def place(members, result):
    nonlocal output
    result = np.asarray(result)
    (ph, pw), count = members[0][0].padded_shape, len(members)
    if result.ndim != 4 or result.shape[:3] != (count, ph * scale, pw * scale):
      raise ValueError(f'fn returned shape {result.shape} for input {(count, ph, pw, img.shape[3])}; expected '
                       f'[{count}, {ph * scale}, {pw * scale}, C] (scale {scale})')
    if output is None:
      output = np.zeros((n, height * scale, width * scale, result.shape[3]), np.float32)
    for (t, i), out in zip(members, result):
      oy, ox = (t.y0 - t.py0) * scale, (t.x0 - t.px0) * scale
      output[i, t.y0 * scale:t.y1 * scale, t.x0 * scale:t.x1 * scale] = (
          out[oy:oy + (t.y1 - t.y0) * scale, ox:ox + (t.x1 - t.x0) * scale])

  # Dispatch ahead (the device runs one chunk while the host gathers the previous one), two chunks in flight.
  pending = collections.deque()
  for members in chunks:
    batch = np.stack([img[i, t.py0:t.py1, t.px0:t.px1] for t, i in members])
    pending.append((members, fn(batch)))
    if len(pending) > 1:
      place(*pending.popleft())
  while pending:
    place(*pending.popleft())
  # post_process: the mod pad, then the pre-pad (both at the bottom/right).
  return output[:, :h * scale, :w * scale]


# ------------------------------------------------------------------------------ RealESRGANer.enhance


@functools.cache
def _jitted_apply():
  return xla_options.jit(lambda module, variables, x: module.apply(variables, x), static_argnums=0)


def network_fn(module, variables) -> Callable[[Array], Array]:
  """`x -> module.apply(variables, x)`, jitted (one shared cache per module config), for `tiled_apply`."""
  variables = jax.device_put(variables)
  apply = _jitted_apply()
  return lambda x: apply(module, variables, x)


def _cv2():
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('upsample needs OpenCV (opencv-python-headless) for grayscale/RGBA images and for an '
                      'outscale other than the network scale') from e
  return cv2


def _to_gray(rgb: np.ndarray) -> np.ndarray:
  """enhance's `cv2.cvtColor(bgr, COLOR_BGR2GRAY)` of an RGB float image."""
  cv2 = _cv2()
  return cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY)


def upsample(module,
             variables,
             image: np.ndarray,
             outscale: float | None = None,
             tile: int = 400,
             tile_pad: int = 10,
             pre_pad: int = 10,
             alpha_upsampler: str = 'realesrgan',
             max_batch: int = 4) -> np.ndarray:
  """`RealESRGANer.enhance` for 8-bit images (RGB order): uint8 in, uint8 out.

  The network sees `image / 255` in RGB; its output is clamped to [0, 1],
  times 255 and rounded. A grayscale image runs as three equal channels and
  comes back through OpenCV's BGR2GRAY; an RGBA image's alpha runs through
  the network the same way (in the same tiled calls as the colours) or, with
  `alpha_upsampler` other than 'realesrgan', is resized with INTER_LINEAR.
  When `outscale` differs from the network scale the result is resized with
  INTER_LANCZOS4 to `(int(H * outscale), int(W * outscale))`.

  GFP-GAN's inference uses RealESRGAN_x2plus with `tile=400, tile_pad=10,
  pre_pad=0` and `outscale` = its upscale (gfpgan.md section 4).

  Args:
    module: an image network with a `scale` field (e.g. `RRDBNet`).
    variables: its variables.
    image: uint8 [H, W, 3] RGB, [H, W, 4] RGBA or [H, W] grayscale.
    outscale: final scale (None: the network's scale).
    tile, tile_pad, pre_pad, max_batch: as in `tiled_apply`.
    alpha_upsampler: 'realesrgan' (the network) or anything else (INTER_LINEAR).

  Returns:
    uint8 [H', W', C] (or [H', W'] grayscale), RGB(A).

  Raises:
    ValueError: for a non-uint8 image, an unsupported shape or bad tiling
      arguments.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'upsample expects a uint8 image, got dtype {image.dtype}')
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
    raise ValueError(f'upsample expects [H, W] gray, [H, W, 3] RGB or [H, W, 4] RGBA, got shape {image.shape}')
  scale = module.scale
  _check_args((1, *image.shape[:2], 3), scale, tile, tile_pad, pre_pad)
  h_input, w_input = image.shape[:2]
  img = image.astype(np.float32) / 255
  mode = 'L' if img.ndim == 2 else ('RGBA' if img.shape[2] == 4 else 'RGB')
  batch = [np.repeat(img[..., None], 3, axis=2) if mode == 'L' else img[..., :3]]
  use_net_alpha = mode == 'RGBA' and alpha_upsampler == 'realesrgan'
  if use_net_alpha:
    batch.append(np.repeat(img[..., 3:], 3, axis=2))
  out = tiled_apply(network_fn(module, variables), np.stack(batch), scale, tile, tile_pad, pre_pad, max_batch)
  out = np.clip(out, 0, 1)
  result = out[0]
  if mode == 'L':
    result = _to_gray(result)
  elif mode == 'RGBA':
    if use_net_alpha:
      alpha = _to_gray(out[1])
    else:
      cv2 = _cv2()
      alpha = cv2.resize(img[..., 3], (w_input * scale, h_input * scale), interpolation=cv2.INTER_LINEAR)
    result = np.concatenate([result, alpha[..., None]], axis=2)
  result = (result * 255.0).round().astype(np.uint8)
  if outscale is not None and outscale != float(scale):
    cv2 = _cv2()
    result = cv2.resize(result, (int(w_input * outscale), int(h_input * outscale)), interpolation=cv2.INTER_LANCZOS4)
  return result
