r"""Benchmarks, side by side with the official PyTorch code on the same machine.

    python scripts/benchmark.py infer [--batch-sizes 1,8] [--threads N]
    python scripts/benchmark.py data  [...]
    python scripts/benchmark.py train [...]
    python scripts/benchmark.py detect | parse | upsample | restoreformer | photo | step_parity | profile [...]

Each subcommand lives in `scripts/bench_<name>.py` and exposes
`add_arguments(parser)` and `run(args)`. Results are printed and, with
`--json FILE`, written as JSON.
"""

import argparse
import importlib
import json
import pathlib
import sys

SUBCOMMANDS = ('infer', 'data', 'train', 'detect', 'parse', 'upsample', 'restoreformer', 'photo', 'step_parity',
               'profile')


def main(argv=None):
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  modules = {}
  for name in SUBCOMMANDS:
    try:
      modules[name] = importlib.import_module(f'bench_{name}')
    except ModuleNotFoundError as e:
      if e.name != f'bench_{name}':
        raise
      continue
    p = sub.add_parser(name, help=modules[name].__doc__.splitlines()[0])
    p.add_argument('--json', type=pathlib.Path, help='also write the results to this JSON file')
    modules[name].add_arguments(p)
  args = parser.parse_args(argv)
  results = modules[args.command].run(args)
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
