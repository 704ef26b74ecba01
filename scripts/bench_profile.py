r"""Where our training step's time goes: XLA's per-op times from a profiler trace, by network and op kind.

    python scripts/benchmark.py profile [--config demo] [--steps 3] [--top 30] [--set KEY=VALUE]
    python scripts/benchmark.py profile --r1          # the R1 variant

It compiles `gfpgan_jax.steps.train_step` as `benchmark.py train` does (the same
config, batch and random weights), runs a few steps, then traces `--steps` more
with `jax.profiler` and sums the time of every compiled op (a thunk of XLA's
executor, summed over the threads that ran it), per step. Each op is named by
its HLO instruction and attributed from the compiled HLO text: the network its
`op_name` metadata names (`jvp(VGGFeatureExtractor)`, `transpose(jvp(GFPGANv1))`
for the backward pass, ...) or whose frozen weights it reads, and its kind
(convolution, dot, a copy/transpose, a reduce-window, other fusions). A copy of a
frozen network's weights is a layout change XLA makes every step.

The ops' sum is below the wall time times the thread count: threads wait on
each other between ops, and the profile ranks ops, it does not account for
every cycle.

This is how the slow gradient kernels of XLA:CPU were found (gfpgan_jax/models/
layers.py: `conv_transpose2x`, `max_pool2x`, `matmul_few_rows`). The trace is
kept in `--trace-dir` (view it with TensorBoard's profile plugin or Perfetto).
"""

import collections
import glob
import os
import re
import sys
import tempfile

_NETWORKS = (('GFPGANv1', 'G'), ('GFPGANv1Clean', 'G'), ('GFPGANBilinear', 'G'), ('StyleGAN2Discriminator', 'D'),
             ('FacialComponentDiscriminator', 'component D'), ('VGGFeatureExtractor', 'VGG19'),
             ('ResNetArcFace', 'ArcFace'))
_FROZEN = (('frozen__vgg', 'VGG19'), ('frozen__arcface', 'ArcFace'))


def add_arguments(p):
  p.add_argument('--config', default='demo', help="configs/ffhq.py variant ('' = the full recipe)")
  p.add_argument('--resolution', type=int, default=None, help="image side (default: the variant's)")
  p.add_argument('--batch', type=int, default=None, help="batch size (default: the variant's)")
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='config override (repeatable)')
  p.add_argument('--dtype', default='float32', help='compute dtype')
  p.add_argument('--r1', action='store_true', help='profile the R1 variant of the step')
  p.add_argument('--steps', type=int, default=3, help='traced steps')
  p.add_argument('--top', type=int, default=25, help='ops listed')
  p.add_argument('--trace-dir', default=None, help='where the trace goes (default: a temporary folder)')
  p.add_argument('--seed', type=int, default=0)


def hlo_index(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its line of the compiled module's text."""
  index = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = ', line)
    if m:
      index[m.group(1)] = line
  return index


def attribute(name: str, line: str) -> tuple[str, str, str]:
  """(network, pass, kind) of one HLO instruction from its name and text."""
  m = re.search(r'op_name="([^"]*)"', line)
  op_name = m.group(1) if m else ''
  network = next((label for key, label in _NETWORKS if re.search(rf'[(/]{key}[)/]', op_name)), '')
  if not network:
    network = next((label for key, label in _FROZEN if key in line), '?')
  pass_ = 'backward' if 'transpose(' in op_name else 'forward' if op_name else '?'
  if re.search(r'fusion\(%frozen__[^,)]*\)', line) and ('transpose' in name or 'copy' in name):
    kind = 'frozen weight copy'
  elif name.startswith('convolution') or name.startswith('conv_general'):
    kind = 'convolution'
  elif name.startswith('dot'):
    kind = 'dot'
  elif 'transpose' in name or name.startswith('copy'):
    kind = 'copy/transpose'
  elif 'reduce-window' in name or 'select-and-scatter' in name:
    kind = 'reduce-window'
  else:
    kind = 'other'
  return network, pass_, kind


def summarize(trace_dir: str, hlo_text: str, calls: int) -> dict:
  """Per-op and per-(network, kind) milliseconds per call from the newest trace in `trace_dir`."""
  import jax  # pylint: disable=g-import-not-at-top

  paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'no profiler trace (*.xplane.pb) under {trace_dir}')
  data = jax.profiler.ProfileData.from_file(paths[-1])
  per_op = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name == 'python' or 'python' in line.name.lower():
        continue
      for event in line.events:
        if not event.name.startswith('ThunkExecutor'):
          per_op[event.name] += event.duration_ns
  index = hlo_index(hlo_text)
  ops, groups = [], collections.Counter()
  for name, ns in per_op.most_common():
    line = index.get(name, '')
    network, pass_, kind = attribute(name, line)
    shape = line.split('=', 1)[1].split('{', 1)[0].strip() if '=' in line else ''
    ms = ns / 1e6 / calls
    ops.append({'op': name, 'ms': ms, 'network': network, 'pass': pass_, 'kind': kind, 'shape': shape[:48]})
    groups[(network, kind)] += ms
  total = sum(groups.values())
  return {'total_ms': total, 'ops': ops,
          'groups': [{'network': n, 'kind': k, 'ms': ms, 'share': ms / total if total else 0.0}
                     for (n, k), ms in groups.most_common()]}


def run(args):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import bench_train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  spec = dict(variant=args.config, resolution=args.resolution, batch=args.batch, overrides=list(args.set),
              dtype=args.dtype, seed=args.seed, r1_iters=1 if args.r1 else 0, warmup=2, weights=None)
  session = bench_train.JaxSession(spec)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='gfpgan_jax_profile_')
  wall = []
  jax.profiler.start_trace(trace_dir)
  try:
    for _ in range(args.steps):
      wall.append(session.step(args.r1))
  finally:
    jax.profiler.stop_trace()
  result = summarize(trace_dir, session.compiled[args.r1].as_text(), args.steps)
  result.update(trace_dir=trace_dir, wall_s_per_step=sum(wall) / len(wall), load_average=os.getloadavg(),
                flops_per_step=session.flops['r1' if args.r1 else 'plain'])
  _print(result, args.top)
  return result


def _print(result: dict, top: int) -> None:
  print(f"\ntraced {result['wall_s_per_step']:.3f} s/step wall; ops sum {result['total_ms']:.0f} ms/step over all "
        f"threads; load average {result['load_average'][0]:.1f}; trace in {result['trace_dir']}")
  print(f"\n{'network':14s} {'kind':20s} {'ms/step':>9s} {'share':>7s}")
  for g in result['groups'][:16]:
    print(f"{g['network']:14s} {g['kind']:20s} {g['ms']:9.1f} {100 * g['share']:6.1f}%")
  print(f"\n{'op':36s} {'ms/step':>8s}  {'network':12s} {'pass':8s} {'kind':18s} shape")
  for o in result['ops'][:top]:
    print(f"{o['op'][:36]:36s} {o['ms']:8.1f}  {o['network']:12s} {o['pass']:8s} {o['kind']:18s} {o['shape']}")

