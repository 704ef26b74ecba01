"""The networks of the restore command: the generator of a `-v` version, the detector, ParseNet, Real-ESRGAN.

Weights come from an explicit flag, else from the official file name in the
model folders (`--model-dir`, else the official `experiments/pretrained_models`
and `gfpgan/weights`), else (generator only) random weights with a loud
warning, so that everything runs with no download. Without detector weights
the weight-free Haar detector runs; without ParseNet weights the square
erosion mask is used; without Real-ESRGAN weights the background is resized
with LANCZOS4.
"""

import logging
import pathlib

import jax
import jax.numpy as jnp

log = logging.getLogger('gfpgan_jax.restore')

# -v -> (arch, constructor options, official file name), as inference_gfpgan.py.
VERSIONS = {
    '1': ('gfpganv1', dict(channel_multiplier=1), 'GFPGANv1.pth'),
    '1.2': ('gfpganv1clean', dict(channel_multiplier=2), 'GFPGANCleanv1-NoCE-C2.pth'),
    '1.3': ('gfpganv1clean', dict(channel_multiplier=2), 'GFPGANv1.3.pth'),
    '1.4': ('gfpganv1clean', dict(channel_multiplier=2), 'GFPGANv1.4.pth'),
    'RestoreFormer': ('restoreformer', {}, 'RestoreFormer.pth'),
}
DETECTOR_FILE = 'detection_Resnet50_Final.pth'
PARSER_FILE = 'parsing_parsenet.pth'
BACKGROUND_FILE = 'RealESRGAN_x2plus.pth'
DEFAULT_MODEL_DIRS = ('experiments/pretrained_models', 'gfpgan/weights')


def model_dirs(model_dir: str | None) -> list[pathlib.Path]:
  return [pathlib.Path(model_dir)] if model_dir else [pathlib.Path(d) for d in DEFAULT_MODEL_DIRS]


def find_weights(file_name: str, dirs: list[pathlib.Path]) -> pathlib.Path | None:
  """The first `dir/file_name` (or a converted directory of that stem) that exists."""
  for d in dirs:
    for candidate in (d / file_name, d / pathlib.Path(file_name).stem):
      if candidate.exists():
        return candidate
  return None


def load_generator(version: str, weights: str | None, dirs: list[pathlib.Path], dtype=jnp.float32,
                   version_given: bool = True):
  """(module, variables, where) of the generator: --weights, the version's official file, or random.

  Raises:
    FileNotFoundError, ConversionError (a ValueError): unreadable weights.
  """
  from gfpgan_jax.convert import archs  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import checkpoint  # pylint: disable=g-import-not-at-top
  arch, options, file_name = VERSIONS[version]
  path = weights if weights is not None else find_weights(file_name, dirs)
  if path is None:
    log.warning('!!! No generator weights: %s (-v %s) not found in %s and no --weights given. Running the %s '
                'architecture with RANDOM weights: the outputs are NOT restorations. Pass --weights or '
                '--model-dir. !!!', file_name, version, ', '.join(map(str, dirs)), arch)
    module, _ = archs.build(arch, dtype=dtype, **options)
    return module, archs.init(arch, jax.random.key(0), **options), 'random weights'
  module, variables = checkpoint.load_generator(path, dtype=dtype)
  found = type(module).__name__
  if version_given and weights is not None and archs.get(arch).module is not type(module):
    log.warning('-v %s is a %s, but %s holds a %s: using the weights\' architecture', version,
                archs.get(arch).module.__name__, path, found)
  return module, variables, str(path)


def load_network(path, arch: str, what: str):
  """(module, variables) of a `what` network from a .pth or a converted directory, checked to be `arch`."""
  from gfpgan_jax.convert import checkpoint  # pylint: disable=g-import-not-at-top
  from gfpgan_jax.convert import state_dict as sd_lib  # pylint: disable=g-import-not-at-top
  try:
    found, _, _ = checkpoint.read_network(path)
  except sd_lib.ConversionError as e:
    raise ValueError(f'{path} is not a {what} checkpoint ({e})') from e
  if found != arch:
    raise ValueError(f'{path} holds a {found!r} network, not the {what} ({arch})')
  return checkpoint.load_network(path)


def load_parser(weights: str | None, dirs: list[pathlib.Path]):
  """ParseNet from --parser-weights or parsing_parsenet.pth in the model folders; None (square mask) if none."""
  path = weights if weights is not None else find_weights(PARSER_FILE, dirs)
  if path is None:
    log.warning('No face parser weights (%s, --parser-weights): pasting with the square erosion mask instead '
                'of the official ParseNet mask.', PARSER_FILE)
    return None, None
  return load_network(path, 'parsenet', 'face parser (ParseNet)'), str(path)


def load_background(choice: str, weights: str | None, dirs: list[pathlib.Path]):
  """Real-ESRGAN x2plus for --bg_upsampler realesrgan: explicit weights, or the official file.

  As the official command, found (not given) weights are not used on the CPU,
  where the upsampler is slow (about a minute and a half per 1080p photo on
  two cores); explicit `--bg-weights` are always used.
  """
  if choice == 'none':
    return None, None
  path = weights
  if path is None:
    path = find_weights(BACKGROUND_FILE, dirs)
    if path is not None and jax.default_backend() == 'cpu':
      log.warning('The Real-ESRGAN background upsampler is slow on the CPU; not using %s (pass --bg-weights to use '
                  'it anyway). The background is resized with LANCZOS4.', path)
      return None, None
  if path is None:
    log.warning('No background upsampler weights (%s, --bg-weights): the background is resized with LANCZOS4.',
                BACKGROUND_FILE)
    return None, None
  module, variables = load_network(path, 'rrdbnet', 'background upsampler (Real-ESRGAN RRDBNet)')
  return (module, variables), str(path)


def find_detector(weights: str | None, dirs: list[pathlib.Path]) -> str | None:
  """RetinaFace weights: --detector-weights, else detection_Resnet50_Final.pth in the model folders, else None."""
  if weights is not None:
    return weights
  path = find_weights(DETECTOR_FILE, dirs)
  return None if path is None else str(path)
