"""What the command lines share: quiet logging set-up and the output checks made before any work.

`setup_logging` prints our INFO lines bare and hides jax's INFO line about
the TPU backend it could not open (printed at every start on machines without
TPUs; a real failure to use a backend is still an error). `check_writable`
fails fast, with one line, on an output that cannot be written (read-only,
or under a regular file), before anything is loaded or compiled.
"""

import errno
import logging
import os
import pathlib
import tempfile

# jax logs "Unable to initialize backend 'tpu': ..." at INFO on every machine without a TPU.
_NOISY_LOGGERS = ('jax._src.xla_bridge',)


class OutputError(ValueError):
  """An output path that cannot be written; the message says which and what to do."""


def quiet_backend_probe() -> None:
  """Hides jax's INFO line about backends it could not open (its warnings and errors still show)."""
  for name in _NOISY_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)


def setup_logging(*loggers: logging.Logger) -> None:
  """INFO lines without prefixes for `loggers`, and jax's backend probing kept quiet."""
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  for log in loggers:
    log.setLevel(logging.INFO)  # basicConfig is a no-op once absl (imported by orbax) configured logging
  quiet_backend_probe()


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
  for p in (path, *path.parents):
    if os.path.lexists(p):
      return p
  return pathlib.Path(path.anchor or '.')


def check_writable(directory: str | os.PathLike, flag: str) -> None:
  """Raises OutputError unless files can be created in `directory` (created later if missing).

  Nothing is left behind: the nearest existing folder on the way is probed
  with a temporary file that is removed at once.

  Args:
    directory: the folder the command will write in (or create).
    flag: the command-line flag that named it, for the message.
  """
  directory = pathlib.Path(directory).absolute()
  there = _existing_ancestor(directory)
  if not there.is_dir():
    raise OutputError(f'{flag} {directory}: cannot create it, {there} is a file, not a folder; choose another {flag}')
  try:
    fd, probe = tempfile.mkstemp(prefix='.gfpgan_jax_probe.', dir=there)
  except OSError as e:
    raise OutputError(output_error_message(e, directory, flag)) from e
  os.close(fd)
  os.unlink(probe)


def output_error_message(e: OSError, path: str | os.PathLike, flag: str) -> str:
  """One line for an OSError met while writing the output `path`."""
  why = {errno.EACCES: 'permission denied', errno.EPERM: 'permission denied', errno.EROFS: 'read-only file system',
         errno.ENOSPC: 'no space left on the device', errno.EDQUOT: 'disk quota exceeded'}.get(
             e.errno, e.strerror or type(e).__name__)
  where = f' ({e.filename})' if e.filename and str(e.filename) != str(path) else ''
  return f'{flag} {path}: cannot write there: {why}{where}; choose another {flag} or make it writable'
