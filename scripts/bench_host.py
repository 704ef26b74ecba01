r"""Host input pipeline throughput: read + decode + flip + boxes + batch, in images/s.

    python scripts/bench_host.py [--workers 0,2] [--num-images 96] [--resolution 512]

Times `gfpgan_jax.data.input_pipeline.make_train_iterator` (configs/ffhq.py
defaults, component boxes on) on synthetic PNG faces written to a temporary
folder (or on `--data-dir`, a folder of real faces with optional
`--landmarks`), once per worker count. The degradations are not included:
they run on the accelerator.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

from absl import flags

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workers', default='0', help='comma-separated grain worker counts to time (0 = in-process)')
  parser.add_argument('--read-threads', type=int, default=None, help='threads per process (default: config)')
  parser.add_argument('--num-images', type=int, default=96, help='synthetic images to write')
  parser.add_argument('--resolution', type=int, default=512)
  parser.add_argument('--batch-size', type=int, default=12, help='global batch (one process)')
  parser.add_argument('--num-batches', type=int, default=20, help='timed batches per worker count')
  parser.add_argument('--warmup-batches', type=int, default=3)
  parser.add_argument('--data-dir', default='', help='time this image folder instead of synthetic faces')
  parser.add_argument('--landmarks', default='', help='landmarks of --data-dir (default: no component boxes)')


def _config(args, data_dir: str, landmarks: str):
  sys.path.insert(0, str(_ROOT))
  from configs import ffhq  # pylint: disable=g-import-not-at-top
  config = ffhq.get_config()
  config.data.source = 'folder'
  config.data.train_dir = data_dir
  config.data.landmarks_path = landmarks
  config.data.crop_components = bool(landmarks)
  config.data.landmarks_resolution = args.resolution
  config.data.resolution = args.resolution
  config.data.batch_size = args.batch_size
  if args.read_threads is not None:
    config.data.read_threads = args.read_threads
  return config


def host_rate(args) -> dict:
  """Times the host pipeline for each of `args.workers`; returns a JSON-able dict."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  from gfpgan_jax.data import host_bench  # pylint: disable=g-import-not-at-top

  defaults = argparse.ArgumentParser()
  add_arguments(defaults)
  args = argparse.Namespace(**{**vars(defaults.parse_args([])), **vars(args)})  # callers may pass fewer fields
  workers = [int(w) for w in str(args.workers).split(',') if w.strip()]
  with tempfile.TemporaryDirectory() as tmp:
    if args.data_dir:
      data_dir, landmarks, source = args.data_dir, args.landmarks, args.data_dir
    else:
      data_dir = os.path.join(tmp, 'faces')
      landmarks = host_bench.write_synthetic_faces(data_dir, args.num_images, args.resolution)
      source = f'{args.num_images} synthetic PNGs'
    files = [f for f in os.listdir(data_dir) if f.endswith('.png')]
    mean_kb = sum(os.path.getsize(os.path.join(data_dir, f)) for f in files) / max(len(files), 1) / 1024
    runs = []
    for w in workers:
      config = _config(args, data_dir, landmarks)
      config.data.worker_count = w
      runs.append(host_bench.measure_host_rate(config, args.num_batches, args.warmup_batches))
  return {
      'source': source,
      'mean_png_kb': round(mean_kb, 1),
      'cpu_count': os.cpu_count(),
      'runs': runs,
  }


def run(args) -> dict:
  results = host_rate(args)
  print(f"host pipeline on {results['source']} (~{results['mean_png_kb']} KB each), {results['cpu_count']} CPUs:")
  for r in results['runs']:
    print(f"  workers={r['worker_count']} threads={r['read_threads']} batch={r['batch_size']} "
          f"{r['resolution']}px: {r['images_per_s']:.1f} images/s (start-up {r['startup_s']:.1f} s)")
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--json', type=pathlib.Path, help='also write the results to this JSON file')
  add_arguments(parser)
  args = parser.parse_args(argv)
  results = run(args)
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
