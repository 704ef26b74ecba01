"""The repository's `scripts/` as importable modules, for the tests.

    from gfpgan_jax.testing import scripts
    bench_train = scripts.load('bench_train')   # scripts/bench_train.py

The scripts are not part of the installed package: they live beside it in a
source checkout (an editable install, as `.ci/run` makes). `load` puts
`scripts/` on `sys.path` and imports the script under its own name, so a script
that imports a sibling (`bench_step_parity` imports `bench_train`) gets the
same module object as the test, once per process.
"""

import importlib
import pathlib
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / 'scripts'


def load(name: str) -> types.ModuleType:
  """Imports `scripts/<name>.py`.

  Args:
    name: the script's file name without `.py`, e.g. 'bench_train'.

  Returns:
    The module (cached in `sys.modules` under `name`).

  Raises:
    FileNotFoundError: there is no such script, e.g. when gfpgan_jax is
      installed from a wheel rather than a source checkout.
  """
  path = SCRIPTS / f'{name}.py'
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist: the tests that use scripts/ need a source checkout of '
                            "gfpgan_jax installed in editable mode (pip install -e '.[torch,dev]')")
  if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
  return importlib.import_module(name)
