r"""Restores the faces of photos and videos with a GFP-GAN generator (the official `inference_gfpgan.py`).

    python -m gfpgan_jax.restore -i inputs/whole_imgs -o results -v 1.3 -s 2
    python -m gfpgan_jax.restore -i clip.mp4 -o results --weights GFPGANv1.4.pth --detector-weights \
        detection_Resnet50_Final.pth --parser-weights parsing_parsenet.pth
    python -m gfpgan_jax.restore -i aligned_faces/ -o results --aligned
    python -m gfpgan_jax.restore -o results        # built-in group photo, no download

`-i` is an image, a video (by extension: .mp4, .mov, .avi, .mkv, .webm, ...)
or a folder (every file, sorted; a folder of frames is a sequence of images).
For each photo the faces are detected, aligned, restored in batches across
photos (sharded over all local devices), and pasted back into the upscaled
photo. Outputs, as the official command: cropped_faces/, restored_faces/,
cmp/ (cropped | restored) and restored_imgs/ under `-o`; a video becomes
restored_videos/NAME.mp4 at its frame rate, with its audio track.

Weights: `--weights` (an official .pth, a converted checkpoint, an export
directory, or a training workdir: its latest G-EMA), else the official file of
`-v` in `--model-dir` (default: the official experiments/pretrained_models and
gfpgan/weights). With none at all everything still runs, with a warning that
the outputs are not restorations: the generator with RANDOM weights, the
weight-free Haar detector, the square paste mask and the LANCZOS4 background.
A `.pth` needs PyTorch: pip install -e ".[torch]".
`--landmarks FILE.json` replaces detection with your own 5-point landmarks
(format: `gfpgan_jax.faces.inputs.LandmarksFile`).

Bad inputs (unreadable files, unsupported images, broken videos) are
reported by name and the rest still run; images without a face are written
through upscaled and counted. Outputs are written atomically. With
`--aligned`, faces larger than the model (e.g. 512 px inputs, 64 px model) are
restored at the model's size and written back at their own size.

A run that would replace earlier results in `-o` (the same input names) stops
before any work and lists them: pass `--overwrite` to replace them (a face
file of an earlier run beyond this run's face count is removed too), or
choose another `-o`.
"""

import argparse
import logging
import os
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gfpgan_jax import cli_common
from gfpgan_jax.convert import pth
from gfpgan_jax.faces import batching
from gfpgan_jax.faces import inputs as inputs_lib
from gfpgan_jax.faces import networks
from gfpgan_jax.faces import outputs as outputs_lib
from gfpgan_jax.faces import pipeline as pipeline_lib
from gfpgan_jax.faces import samples
from gfpgan_jax.faces import timing
from gfpgan_jax.faces import video as video_lib

log = logging.getLogger('gfpgan_jax.restore')


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('-i', '--input', type=pathlib.Path, default=None,
                 help='image, video or folder (default: a built-in group photo)')
  p.add_argument('-o', '--output', type=pathlib.Path, default=pathlib.Path('results'), help='output folder')
  p.add_argument('-v', '--version', choices=list(networks.VERSIONS), default=None,
                 help='GFPGAN version (default 1.3): picks the architecture and the official weights file')
  p.add_argument('-s', '--upscale', type=int, default=2, help='final upsampling scale of the image')
  p.add_argument('--bg_upsampler', '--bg-upsampler', choices=['realesrgan', 'none'], default='realesrgan',
                 help='background upsampler (Real-ESRGAN x2plus needs --bg-weights or RealESRGAN_x2plus.pth)')
  p.add_argument('--bg-weights', '--bg_weights', default=None, help='RealESRGAN_x2plus.pth or a converted directory')
  p.add_argument('--bg_tile', '--bg-tile', type=int, default=400, help='tile size of the background upsampler')
  p.add_argument('--suffix', default=None, help='suffix of the restored faces and images')
  p.add_argument('--only_center_face', '--only-center-face', action='store_true', help='restore only the center face')
  p.add_argument('--aligned', action='store_true', help='the inputs are aligned faces')
  p.add_argument('--ext', choices=['auto', 'png', 'jpg'], default='auto',
                 help='image extension: auto (the input\'s), png or jpg')
  p.add_argument('-w', '--weight', type=float, default=0.5, help='adjustable weight (a no-op for GFPGAN, as upstream)')
  p.add_argument('--weights', default=None,
                 help='generator: official .pth (needs torch), converted checkpoint dir, export dir, or a training '
                 'workdir (its latest G-EMA)')
  p.add_argument('--model-dir', '--model_dir', default=None,
                 help='folder with the official weight files (default: experiments/pretrained_models, gfpgan/weights)')
  p.add_argument('--detector-weights', default=None, help='RetinaFace: detection_Resnet50_Final.pth or converted')
  p.add_argument('--parser-weights', default=None, help='ParseNet: parsing_parsenet.pth or converted')
  p.add_argument('--detect-size', '--detect_size', type=int, default=None,
                 help='resize the shorter side to this for RetinaFace (facexlib\'s resize=, e.g. 640; default: the '
                 'original size, as gfpgan 1.3.8\'s GFPGANer)')
  p.add_argument('--landmarks', type=pathlib.Path, default=None,
                 help='JSON file of 5-point landmarks per input file, used instead of detection')
  p.add_argument('--batch-size', type=int, default=None,
                 help='faces per compiled batch over all devices (default: 4 per accelerator, 4 on the CPU; '
                 'rounded up to a multiple of the device count)')
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default=None, help='generator compute dtype')
  p.add_argument('--noise', choices=['random', 'stored'], default=None,
                 help='decoder noise: fresh per face (official; the default) or the stored buffers (deterministic)')
  p.add_argument('--exported', action='store_true',
                 help='run the serialized function of the export directory given as --weights')
  p.add_argument('--seed', type=int, default=0, help='noise seed for --noise random')
  p.add_argument('--overwrite', action='store_true',
                 help='replace the results of an earlier run in -o (without it, such a run stops at once)')
  return p


def default_batch_size(mesh) -> int:
  return 4 * mesh.size if jax.default_backend() != 'cpu' else 4


def make_batcher(args, mesh) -> tuple[batching.FaceBatcher, str, str | None]:
  """The FaceBatcher of the flags, where its weights came from, and where the parser's came from."""
  batch = args.batch_size or default_batch_size(mesh)
  parser, parser_src = networks.load_parser(args.parser_weights, networks.model_dirs(args.model_dir))
  if args.exported:
    from gfpgan_jax import export as export_lib  # pylint: disable=g-import-not-at-top
    if args.weights is None:
      raise ValueError('--exported needs --weights EXPORT_DIR')
    run, meta = export_lib.load_restore(args.weights)
    for flag in ('dtype', 'noise'):
      given = getattr(args, flag)
      if given is not None and given != meta[flag]:
        raise ValueError(f'--{flag} {given}: the export was made with --{flag} {meta[flag]} (drop --{flag}, '
                         'or re-export)')
    log.info('running the exported function of %s (dtype %s, noise %s)', args.weights, meta['dtype'], meta['noise'])
    b = batching.FaceBatcher(None, batch_size=batch, mesh=mesh, seed=args.seed, parser=parser, exported=run,
                             face_size=int(meta['image_size']))
    return b, f'{args.weights} (exported)', parser_src
  module, variables, src = networks.load_generator(
      args.version or '1.3', args.weights, networks.model_dirs(args.model_dir), jnp.dtype(args.dtype or 'float32'),
      version_given=args.version is not None)
  b = batching.FaceBatcher((module, variables), batch_size=batch, mesh=mesh,
                           randomize_noise=(args.noise or 'random') == 'random', seed=args.seed, parser=parser)
  return b, src, parser_src


def make_pipeline(args, batcher, mesh, timers) -> pipeline_lib.PhotoPipeline:
  dirs = networks.model_dirs(args.model_dir)
  detector = landmarks = None
  if args.landmarks is not None and not args.aligned:
    table = inputs_lib.LandmarksFile(args.landmarks)
    landmarks = lambda item: table.lookup(item.source, item.frame)
    log.info('faces: the landmarks of %s (%d entries)', args.landmarks, len(table.table))
  elif not args.aligned:
    from gfpgan_jax.faces import detect  # pylint: disable=g-import-not-at-top
    weights = networks.find_detector(args.detector_weights, dirs)
    kwargs = {} if weights is None else dict(mesh=mesh, batch_size=batching.round_batch(4, mesh),
                                             detect_size=args.detect_size)
    detector = detect.load_detector(weights, **kwargs)
    log.info('faces: %s', detect.describe(detector))
  background = None
  if not args.aligned:
    bg, bg_src = networks.load_background(args.bg_upsampler, args.bg_weights, dirs)
    if bg is not None:
      background = pipeline_lib.Background(*bg, upscale=args.upscale, tile=args.bg_tile)
      log.info('background: Real-ESRGAN from %s (tile %d)', bg_src, args.bg_tile)
  return pipeline_lib.PhotoPipeline(batcher, detector=detector, landmarks=landmarks, upscale=args.upscale,
                                    only_center_face=args.only_center_face, aligned=args.aligned,
                                    background=background, timers=timers)


class Run:
  """Routes the pipeline's results to the image writer and the video sinks, and counts them."""

  def __init__(self, args, writer: outputs_lib.OutputWriter):
    self.args, self.writer = args, writer
    self.images = self.faces = self.no_face = self.failed_faces = self.frames = 0
    self.problems: list[str] = []
    self.videos: list[str] = []
    self.truncated: list[str] = []
    self.sink = self.progress = None
    self.face_counts: dict[str, int] = {}  # faces written per image name

  def problem(self, msg: str) -> None:
    log.error('skipped %s', msg)
    self.problems.append(msg)

  def video_start(self, item) -> None:
    if item.error:
      self.problem(item.error)
      return
    self.sink = video_lib.VideoSink(self.args.output, item.source, item.info)
    self.progress = video_lib.Progress(item.source.key, item.info.get('frames'))
    log.info('%s: %s frames at %.3g fps%s', item.source.key, item.info.get('frames') or '?', item.info['fps'],
             f', audio {item.info["audio_codec"]}' if item.info.get('audio_codec') else '')

  def video_end(self, item) -> None:
    sink, self.sink = self.sink, None
    if sink is None:
      return
    if item.error:
      sink.abort()
      self.problem(f'{item.error}; no output written')
      return
    try:
      path, note = sink.finish()
    except (OSError, RuntimeError, ValueError) as e:
      self.problem(f'{item.source.key}: the video could not be written ({type(e).__name__}: {e})')
      return
    log.info('%s; wrote %s (%d frames, %s)', self.progress.line(), path, sink.frames, note)
    expected, read = item.info.get('frames'), item.info.get('frames_read', 0)
    if expected and read < expected - max(1, expected // 100):  # the container's count is often off by one
      log.warning('%s: the video ended after %d of its %d frames (truncated?); the %d frames read were written',
                  item.source.key, read, expected, read)
      self.truncated.append(item.source.key)
    self.videos.append(str(path))

  def frame(self, result) -> None:
    item = result.item
    if self.sink is None:
      return
    image = result.image if not self.args.aligned else (result.restored[0] if len(result.restored) else None)
    if image is None:  # keep the frame count: the frame upscaled as it is
      import cv2  # pylint: disable=g-import-not-at-top
      log.error('%s', result.error or f'{pipeline_lib.label(item)}: no output; the frame is written upscaled')
      h, w = item.image.shape[:2]
      image = cv2.resize(item.image, (int(w * self.args.upscale), int(h * self.args.upscale)),
                         interpolation=cv2.INTER_LANCZOS4)
    try:
      self.sink.append(image)
    except (OSError, ValueError, RuntimeError) as e:
      self.problem(f'{item.source.key}: video encoding failed ({type(e).__name__}: {e})')
      self.sink.abort()
      self.sink = None
      return
    self.frames += 1
    self.faces += len(result.restored)
    self.failed_faces += result.failed_faces
    self.progress.step()

  def image(self, result) -> None:
    item = result.item
    if result.error:
      self.problem(result.error)
      return
    self.images += 1
    self.faces += len(result.restored)
    self.failed_faces += result.failed_faces
    if result.no_faces and not self.args.aligned:
      self.no_face += 1
      log.warning('%s: no face found; written through upscaled', item.source.key)
    else:
      log.info('%s: %d face(s)', item.source.key, len(result.restored))
    self.writer.write(result, item.source.name, item.source.ext, item.source.key)
    self.face_counts[item.source.name] = len(result.restored)

  def route(self, result) -> None:
    item = result.item
    if item.marker == 'video_start':
      self.video_start(item)
    elif item.marker == 'video_end':
      self.video_end(item)
    elif item.source.kind == 'video':
      self.frame(result)
    else:
      self.image(result)


def existing_outputs(sources, writer: outputs_lib.OutputWriter, aligned: bool) -> list[pathlib.Path]:
  """The files in the output folder that this run would replace (per input: its image, faces or video)."""
  root = writer.root
  listing = {}
  for folder in (*outputs_lib.FOLDERS, video_lib.FOLDER):
    listing[folder] = set(os.listdir(root / folder)) if (root / folder).is_dir() else set()
  face_tail = re.escape(f'_{writer.suffix}') if writer.suffix is not None else ''
  found = []
  for src in sources:
    if src.kind == 'video':
      names = {video_lib.FOLDER: [f'{src.name}.mp4']}
    else:
      names = {}
      for folder, tail in (('cropped_faces', ''), ('restored_faces', face_tail), ('cmp', '')):
        pattern = re.compile(re.escape(src.name) + r'_\d{2,}' + tail + r'\.png')
        names[folder] = sorted(n for n in listing[folder] if pattern.fullmatch(n))
      if not aligned:
        names['restored_imgs'] = [writer.image_path(src.name, src.ext).name]
    found += [root / folder / n for folder, ns in names.items() for n in ns if n in listing[folder]]
  return found


def remove_stale_faces(writer: outputs_lib.OutputWriter, counts: dict[str, int]) -> int:
  """With --overwrite: removes face files of an earlier run beyond this run's count of faces per input."""
  removed = 0
  face_tail = re.escape(f'_{writer.suffix}') if writer.suffix is not None else ''
  for folder, tail in (('cropped_faces', ''), ('restored_faces', face_tail), ('cmp', '')):
    if not (writer.root / folder).is_dir():
      continue
    for entry in os.listdir(writer.root / folder):
      for name, count in counts.items():
        m = re.fullmatch(re.escape(name) + r'_(\d{2,})' + tail + r'\.png', entry)
        if m and int(m.group(1)) >= count:
          (writer.root / folder / entry).unlink(missing_ok=True)
          removed += 1
  return removed


def main(argv=None) -> int:
  p = build_parser()
  args = p.parse_args(argv)
  cli_common.setup_logging(log)
  if args.batch_size is not None and args.batch_size < 1:
    p.error('--batch-size must be >= 1')
  if args.upscale < 1:
    p.error('-s/--upscale must be >= 1')
  if args.detect_size is not None and args.detect_size < 16:
    p.error('--detect-size must be >= 16 (the shorter side in pixels)')
  if args.bg_tile < 0:
    p.error('--bg_tile must be >= 0')
  timers = timing.Timers()
  writer = outputs_lib.OutputWriter(args.output, suffix=args.suffix, ext=args.ext, timers=timers)
  try:
    sources = inputs_lib.list_inputs(args.input, samples.group_photo)
    cli_common.check_writable(args.output, '-o')
    mesh = batching.local_mesh()
    batcher, g_src, p_src = make_batcher(args, mesh)
    pipe = make_pipeline(args, batcher, mesh, timers)
    earlier = existing_outputs(sources, writer, args.aligned)  # after the inputs' checks, before any compile
    if earlier and not args.overwrite:
      shown = ', '.join(str(f.relative_to(args.output)) for f in earlier[:4])
      raise FileExistsError(f'-o {args.output} holds {len(earlier)} result file(s) of an earlier run that this run '
                            f'would replace ({shown}{", ..." if len(earlier) > 4 else ""}); pass --overwrite to '
                            'replace them, or choose another -o')
  except (FileNotFoundError, FileExistsError, ValueError, pth.TorchNotInstalled) as e:  # ConversionError and
    writer.close()                                                                     # OutputError: ValueErrors
    log.error('error: %s', e)
    return 2
  if args.input is None:
    log.info('no -i given: restoring the built-in group photo (%d faces composed from scikit-image\'s astronaut())',
             samples.SAMPLE_FACES)
  log.info('generator: %s (%d px faces, batch %d over %d device(s)); paste mask: %s', g_src, batcher.face_size,
           batcher.batch_size, mesh.size, f'ParseNet from {p_src}' if p_src else 'square')
  run = Run(args, writer)
  start = time.perf_counter()
  items = inputs_lib.read_items(sources, video_lib.frames, timers=timers)
  try:
    for result in pipe.run(items):
      run.route(result)
  finally:
    writer.close()
    if run.sink is not None:
      run.sink.abort()
  elapsed = time.perf_counter() - start
  if args.overwrite and run.face_counts:
    stale = remove_stale_faces(writer, run.face_counts)
    if stale:
      log.info('--overwrite: removed %d face file(s) of an earlier run beyond this run\'s faces', stale)
  for msg in writer.errors:
    run.problems.append(msg)
  n_img = run.images + run.frames
  log.info('restored %d face(s) in %d image(s)%s into %s in %.1f s (%.2f images/s, first batch includes '
           'compilation)', run.faces, run.images, f' and {run.frames} video frame(s)' if run.frames else '',
           args.output, elapsed, n_img / elapsed if elapsed else 0)
  if run.no_face:
    log.info('%d image(s) had no face and were written through upscaled', run.no_face)
  if run.failed_faces:
    log.warning('%d face(s) failed to restore and were written as cropped', run.failed_faces)
  if run.problems:
    log.warning('%d input(s) skipped: %s', len(run.problems), '; '.join(run.problems))
  log.info('time: %s', timers.line())
  return 0 if n_img or not sources else 1


if __name__ == '__main__':
  sys.exit(main())
