r"""The demo trained twice from the same seed, float32 and bfloat16 compute: the curves side by side.

    python scripts/bf16_curves.py [--root DIR] [--reuse] [--output docs/bf16_demo_curves.png]

Runs `python -m gfpgan_jax.train --config configs/ffhq.py:demo` into
`ROOT/float32` and `ROOT/bfloat16` (ROOT: a new temporary folder unless given),
with `--config.dtype` the only difference apart from the denser cadences below
(`--eval-every`, `--log-every`; the demo's own validate only at steps 100 and
200). `--reuse` reads existing workdirs instead of training (a workdir that
already holds a finished run is reused too, as the trainer would just resume it).

Reads both `metrics.jsonl`, writes one PNG (training losses and validation
curves, float32 and bfloat16 on the same axes) and prints the final values,
their differences and each run's seconds per step. Needs matplotlib
(`pip install '.[plot]'`).
"""

import argparse
import json
import math
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = pathlib.Path(__file__).resolve().parent.parent
DTYPES = ('float32', 'bfloat16')
TRAIN_KEYS = ('train/g/total', 'train/g/l1', 'train/g/percep', 'train/g/gan', 'train/g/identity', 'train/d/d')
VAL_KEYS = ('val/psnr', 'val/ssim', 'val/id_deg')
_STYLE = {'float32': dict(color='tab:blue', ls='-'), 'bfloat16': dict(color='tab:orange', ls='--')}


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument('--root', type=pathlib.Path, help='parent of the two workdirs (default: a new temporary folder)')
  p.add_argument('--reuse', action='store_true', help='read the existing workdirs under --root, train nothing')
  p.add_argument('--output', type=pathlib.Path, default=_ROOT / 'docs' / 'bf16_demo_curves.png')
  p.add_argument('--eval-every', type=int, default=20, help='config.eval_every_steps of both runs')
  p.add_argument('--log-every', type=int, default=10, help='config.log_every_steps of both runs')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='another config override for both runs, e.g. --set total_steps=100 (repeatable)')


def train(workdir: pathlib.Path, dtype: str, args) -> float:
  """Trains the demo into `workdir`; returns the wall seconds of the whole command (compiles included)."""
  cmd = [sys.executable, '-m', 'gfpgan_jax.train', '--config', str(_ROOT / 'configs' / 'ffhq.py') + ':demo',
         '--workdir', str(workdir), f'--config.dtype={dtype}', f'--config.eval_every_steps={args.eval_every}',
         f'--config.log_every_steps={args.log_every}', *[f'--config.{kv}' for kv in args.set]]
  print('+', ' '.join(cmd), flush=True)
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=_ROOT)
  return time.perf_counter() - t0


def read_metrics(workdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """metrics.jsonl -> {name: [(step, value), ...]} (a later row of the same step wins)."""
  path = workdir / 'metrics.jsonl'
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: train first (leave out --reuse) or give the right --root')
  by_step: dict[int, dict[str, float]] = {}
  for line in path.read_text(encoding='utf-8').splitlines():
    if line.strip():
      row = json.loads(line)
      by_step.setdefault(int(row.pop('step')), {}).update(row)
  series: dict[str, list[tuple[int, float]]] = {}
  for step in sorted(by_step):
    for name, value in by_step[step].items():
      if isinstance(value, (int, float)):
        series.setdefault(name, []).append((step, float(value)))
  return series


def seconds_per_step(workdir: pathlib.Path, series) -> float:
  """Median seconds per step over the log intervals free of validation, previews and checkpoints.

  `perf/steps_per_s` leaves compiles out but not the validation, preview and
  checkpoint that follow a step; the intervals starting at such a step are
  dropped.
  """
  config = json.loads((workdir / 'config.json').read_text(encoding='utf-8'))
  every = [config[k] for k in ('eval_every_steps', 'image_every_steps', 'checkpoint_every_steps', 'log_every_steps')]
  log_every = every[-1]
  clean = [1 / v for s, v in series.get('perf/steps_per_s', [])
           if s > log_every and all((s - log_every) % e for e in every[:-1]) and v > 0]
  return statistics.median(clean) if clean else math.nan


def plot(runs: dict, output: pathlib.Path, title: str) -> None:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise SystemExit("scripts/bf16_curves.py needs matplotlib: pip install '.[plot]'") from e
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  keys = [k for k in TRAIN_KEYS + VAL_KEYS if any(k in r['series'] for r in runs.values())]
  cols = 3
  rows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    for dtype, run in runs.items():
      points = run['series'].get(key, [])
      ax.plot([s for s, _ in points], [v for _, v in points], label=dtype, lw=1.3, marker='.', ms=3,
              **_STYLE[dtype])
    ax.set_title(key, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis('off')
  for ax in axes[-1]:
    ax.set_xlabel('step', fontsize=8)
  axes.flat[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(output, dpi=80)
  plt.close(fig)


def run(args) -> dict:
  root = args.root or pathlib.Path(tempfile.mkdtemp(prefix='bf16_curves_'))
  runs = {}
  for dtype in DTYPES:
    workdir = root / dtype
    wall = None if args.reuse else train(workdir, dtype, args)
    series = read_metrics(workdir)
    runs[dtype] = {'workdir': str(workdir), 'series': series, 'wall_s': wall,
                   's_per_step': seconds_per_step(workdir, series)}
  plot(runs, args.output, 'demo (64 px, batch 4), same seed: float32 vs bfloat16 compute')
  print(f'\nwrote {args.output}\n')
  table = {}
  print(f'{"final value":18s} {"float32":>10s} {"bfloat16":>10s} {"bf16 - f32":>11s} {"rel.":>8s}')
  for key in TRAIN_KEYS + VAL_KEYS:
    if all(key in r['series'] for r in runs.values()):
      (s32, a), (s16, b) = runs['float32']['series'][key][-1], runs['bfloat16']['series'][key][-1]
      table[key] = {'step': s32, 'float32': a, 'bfloat16': b}
      rel = (b - a) / abs(a) if a else math.nan
      steps = '' if s32 == s16 else f' (steps {s32}/{s16})'
      print(f'{key:18s} {a:10.4g} {b:10.4g} {b - a:+11.4g} {rel:+8.1%}{steps}')
  for dtype, r in runs.items():
    wall = f', whole command {r["wall_s"]:.0f} s' if r['wall_s'] else ''
    print(f'{dtype}: {r["s_per_step"]:.3f} s/step (median of the plain log intervals){wall}  [{r["workdir"]}]')
  return {'final': table, **{d: {k: r[k] for k in ('workdir', 'wall_s', 's_per_step')} for d, r in runs.items()}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_arguments(parser)
  parser.add_argument('--json', type=pathlib.Path, help='also write the results to this JSON file')
  args = parser.parse_args(argv)
  if args.reuse and not args.root:
    parser.error('--reuse needs --root (the folder holding float32/ and bfloat16/)')
  results = run(args)
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
