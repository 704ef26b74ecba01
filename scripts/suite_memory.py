r"""Runs a command (by default the README's test command) and reports its peak memory and wall time.

    python scripts/suite_memory.py [--interval 1] [--json FILE] [-- COMMAND ...]

The peak is of the sum of the resident set sizes of the command and all its
descendants (pytest, its xdist workers and every training subprocess they
start), sampled from /proc every `--interval` seconds. After the command ends,
any descendant still alive is reported as orphaned (it should be none): this
process makes itself the descendants' subreaper, so an orphan is re-parented
to it rather than to init and is still counted.
"""

import argparse
import ctypes
import json
import os
import pathlib
import subprocess
import sys
import time

DEFAULT_COMMAND = (sys.executable, '-m', 'pytest', '-n', '2', '-q')


def _children() -> dict[int, int]:
  """{pid: ppid} of every process on the machine."""
  out = {}
  for entry in os.scandir('/proc'):
    if not entry.name.isdigit():
      continue
    try:
      stat = pathlib.Path(entry.path, 'stat').read_text()
    except OSError:
      continue
    fields = stat.rpartition(')')[2].split()
    if fields[0] != 'Z':  # a zombie has exited; only its exit status is left
      out[int(entry.name)] = int(fields[1])
  return out


def descendants(root: int) -> set[int]:
  """`root` and every process below it."""
  parents = _children()
  tree, frontier = {root}, [root]
  while frontier:
    p = frontier.pop()
    for pid, ppid in parents.items():
      if ppid == p and pid not in tree:
        tree.add(pid)
        frontier.append(pid)
  return tree


def rss_bytes(pid: int) -> int:
  try:
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--interval', type=float, default=1.0, help='seconds between samples')
  parser.add_argument('--json', type=pathlib.Path, help='also write the figures to this JSON file')
  parser.add_argument('command', nargs='*', help='the command to run (default: the README test command)')
  args = parser.parse_args(argv)
  command = args.command or list(DEFAULT_COMMAND)

  try:  # PR_SET_CHILD_SUBREAPER: orphans of the command are re-parented to this process
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(36, 1, 0, 0, 0)
  except OSError:
    pass
  start = time.monotonic()
  proc = subprocess.Popen(command)
  peak, peak_procs = 0, 0
  while proc.poll() is None:
    tree = descendants(os.getpid()) - {os.getpid()}
    total = sum(rss_bytes(p) for p in tree)
    if total > peak:
      peak, peak_procs = total, len(tree)
    time.sleep(args.interval)
  wall = time.monotonic() - start
  time.sleep(2.0)
  alive = sorted(descendants(os.getpid()) - {os.getpid()})
  result = {'command': command, 'returncode': proc.returncode, 'wall_s': round(wall, 1),
            'peak_rss_gib': round(peak / 2**30, 2), 'processes_at_peak': peak_procs,
            'orphaned_pids': alive}
  print(json.dumps(result, indent=2))
  if args.json:
    args.json.write_text(json.dumps(result, indent=2) + '\n')
  return proc.returncode


if __name__ == '__main__':
  sys.exit(main())
