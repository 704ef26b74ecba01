r"""Trains GFP-GAN.

    python -m gfpgan_jax.train --config configs/ffhq.py --workdir DIR
    python -m gfpgan_jax.train --config configs/ffhq.py:demo --workdir /tmp/gfpgan_demo

Restarting with the same --workdir resumes from its newest checkpoint that
verifies and restores (a bad newer step is logged, moved into
WORKDIR/checkpoints_rejected/ and skipped; --strict_resume stops instead). Config
fields are overridden with --config.FIELD=VALUE (unknown fields and values of
the wrong type are rejected before anything runs).

Multi-host: `jax.distributed.initialize()` runs automatically on TPU pods and
SLURM jobs; elsewhere pass --coordinator_address, --num_processes and
--process_id (one process per host).

Exit codes: 0 done (or stopped by SIGTERM after saving), 130 Ctrl-C (SIGINT;
see gfpgan_jax/interrupts.py), 1 a fault reported in one line (a full disk, an
unusable checkpoint, a non-finite loss).
"""

import logging
import os
import pathlib
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from gfpgan_jax import cli_common
from gfpgan_jax import interrupts

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration (configs/ffhq.py[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process runs).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (multi-process runs).')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume even though the data stream changed (seeds, batch size, training '
    'sources); the change is recorded in WORKDIR/config_changes.jsonl. Architecture changes are always refused.')
_STRICT_RESUME = flags.DEFINE_bool('strict_resume', False, 'Stop when the latest checkpoint fails verification or '
                                   'restore (naming the step and file), instead of falling back to the previous one.')
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed():
  """`jax.distributed.initialize` when the run spans several processes."""
  if _COORDINATOR.value or _NUM_PROCESSES.value:
    # Cross-process collectives on CPU devices (ignored by GPU/TPU backends). Must not
    # touch the backend before `initialize`.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif 'SLURM_JOB_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()
  elif os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0:
    jax.distributed.initialize()


def _committed_checkpoint(workdir: str) -> str:
  """'step N in DIR' for the newest complete step on disk (before the trainer has opened its checkpoints)."""
  directory = pathlib.Path(workdir).absolute() / 'checkpoints'
  steps = sorted(int(p.name) for p in directory.glob('*') if p.name.isdigit()) if directory.is_dir() else []
  return f'step {steps[-1]} in {directory}' if steps else f'none (nothing saved in {directory})'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  signals = interrupts.install()  # first, so that a Ctrl-C during start-up or a compile exits cleanly
  signals.attach(lambda: _committed_checkpoint(_WORKDIR.value), lambda: None)
  logging.getLogger('gfpgan_jax').setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # Orbax's per-save INFO chatter
  cli_common.quiet_backend_probe()  # no INFO line about a TPU backend at every start
  initialize_distributed()
  from gfpgan_jax import trainer  # pylint: disable=g-import-not-at-top
  logging.getLogger('gfpgan_jax.train').info('JAX process %d/%d, %d local / %d global devices (%s)', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  from gfpgan_jax import checkpoint_manifest  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from gfpgan_jax import config_checks, workdir_lock  # pylint: disable=g-import-not-at-top
  try:
    _, info = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                                         strict_resume=_STRICT_RESUME.value)
  except (config_checks.ConfigError, workdir_lock.WorkdirLockedError) as e:
    sys.exit(f'gfpgan_jax.train: error: {e}')
  except (checkpointing.DiskFullError, checkpoint_manifest.CorruptCheckpointError, FloatingPointError) as e:
    # One line, and no interpreter teardown (Orbax's event loops would print pages of noise after a full disk).
    interrupts.exit_now(f'error: {e}', code=1)
  if info['stopped_by'] == 'SIGINT':
    interrupts.exit_now(f'interrupted (SIGINT): saved step {info["step"]} in '
                        f'{pathlib.Path(_WORKDIR.value).absolute() / "checkpoints"}; rerun the same command to resume')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a bad flag or `--config.FIELD=VALUE` (unknown field, wrong type) is one line, exit 1."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'gfpgan_jax.train: error: {e}. Pass --helpfull to see the flags.')
  except (AttributeError, KeyError) as e:  # config_flags: an unknown (nested) config field
    text = str(e.args[0] if e.args else e).replace('\\n', '\n').replace("\\'", "'")
    key, _, hint = text.partition('\n')
    key, hint = key.strip(QUOTES), hint.strip(QUOTES)
    bad = [a.partition('=')[0] for a in argv[1:] if a.startswith('--config.') and f'.{key}' in a.partition('=')[0]]
    sys.exit(f'gfpgan_jax.train: error: unknown config field {key!r} in {bad[0] if bad else "--config"}'
             + (f'; {hint}' if hint else ''))


QUOTES = ' "\''


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
