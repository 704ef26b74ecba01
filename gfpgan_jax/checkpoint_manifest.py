"""Checksum manifests of committed checkpoint steps, verified before a restore.

After Orbax has committed `checkpoints/<step>/` (renamed it from its temporary
directory), process 0 writes `checkpoints/<step>/MANIFEST_NAME`: the size and
CRC-32 of every file of the step (arrays, `_METADATA`, `_CHECKPOINT_METADATA`,
the grain iterator's JSON). CRC-32 catches any burst of up to 32 flipped bits
and random damage with probability 1 - 2^-32, at a few GB/s.

A step without a manifest (written by an older version, or the run stopped
between the commit and the manifest) cannot be verified; the caller restores
it unverified and treats any exception as corruption.
"""

import json
import os
import pathlib
import zlib

MANIFEST_NAME = 'gfpgan_jax_manifest.json'
_CHUNK = 1 << 22


class CorruptCheckpointError(RuntimeError):
  """A checkpoint step that cannot be used; names the step and the file."""

  def __init__(self, step: int, path: str | pathlib.Path, reason: str):
    self.step, self.path, self.reason = step, str(path), reason
    super().__init__(f'checkpoint step {step} is unusable: {path}: {reason}')


def _crc32(path: pathlib.Path) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in step_dir.rglob('*') if p.is_file() and p.name != MANIFEST_NAME)


def has_manifest(step_dir: str | pathlib.Path) -> bool:
  return (pathlib.Path(step_dir) / MANIFEST_NAME).is_file()


def write(step_dir: str | pathlib.Path) -> pathlib.Path:
  """Writes the manifest of a committed step directory (atomically: temporary file, then rename).

  Returns:
    The manifest's path.
  """
  step_dir = pathlib.Path(step_dir)
  files = {p.relative_to(step_dir).as_posix(): {'size': p.stat().st_size, 'crc32': _crc32(p)}
           for p in _files(step_dir)}
  path = step_dir / MANIFEST_NAME
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'w') as f:
    json.dump({'version': 1, 'files': files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(path)
  return path


def verify(step_dir: str | pathlib.Path, step: int) -> bool:
  """Checks every file of a step against its manifest.

  Returns:
    True when the step matches its manifest, False when it has none.

  Raises:
    CorruptCheckpointError: an unreadable manifest, or a file that is missing,
      has another size or another checksum (the first one found is named).
  """
  step_dir = pathlib.Path(step_dir)
  path = step_dir / MANIFEST_NAME
  if not path.is_file():
    return False
  try:
    files = json.loads(path.read_text())['files']
    entries = [(name, int(e['size']), int(e['crc32'])) for name, e in files.items()]
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise CorruptCheckpointError(step, path, f'unreadable manifest ({type(e).__name__}: {e})') from e
  for name, size, crc in sorted(entries):
    f = step_dir / name
    if not f.is_file():
      raise CorruptCheckpointError(step, f, 'missing (listed in the manifest)')
    actual = f.stat().st_size
    if actual != size:
      raise CorruptCheckpointError(step, f, f'{actual} bytes, the manifest says {size} (truncated or overwritten)')
    if _crc32(f) != crc:
      raise CorruptCheckpointError(step, f, 'checksum mismatch (the file was modified or damaged after the commit)')
  return True


def directory_bytes(step_dir: str | pathlib.Path) -> int:
  """Total size of the files of a step directory (the estimate of what the next save needs)."""
  return sum(p.stat().st_size for p in _files(pathlib.Path(step_dir)))
