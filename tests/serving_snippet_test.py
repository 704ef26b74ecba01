"""The serving lines of README.md and of each export's README.txt run as they are, with the packages they list."""

import importlib.metadata
import json
import os
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

from gfpgan_jax import export as export_lib
from gfpgan_jax import inference
from gfpgan_jax.convert import archs
from gfpgan_jax.convert import checkpoint
from gfpgan_jax.testing import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = dict(out_size=32, channel_multiplier=1, narrow=0.25, num_style_feat=64, num_mlp=2)

# Runs argv[1] (a file of Python source) as __main__, then writes `restored` to argv[2] (.npy). Importable: the
# standard library and the files of the distributions whose directories argv[3] (.json) lists; anything else in
# site-packages (optional imports of jax or orbax that a fresh venv lacks) is ModuleNotFoundError, and gfpgan_jax
# too. argv[4] (.json) gets the top-level modules that were refused.
_RUNNER = '''
import importlib.abc, importlib.machinery, json, os, site, sys

code, restored_path, allowed_path, refused_path = sys.argv[1:5]
ALLOWED = set(json.load(open(allowed_path)))
SITE = tuple(os.path.realpath(d) + os.sep for d in site.getsitepackages() + [site.getusersitepackages()])
refused = set()

class OnlyListed(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'gfpgan_jax':
      raise ImportError('serving must not import ' + name)
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    origin = spec and spec.origin not in (None, 'namespace') and os.path.realpath(spec.origin)
    if origin and origin.startswith(SITE) and os.path.dirname(origin) not in ALLOWED:
      refused.add(name.split('.')[0])
      raise ModuleNotFoundError(f'No module named {name!r} (not installed by the listed packages)', name=name)
    return None

sys.meta_path.insert(0, OnlyListed())
namespace = {'__name__': '__main__'}
try:
  exec(compile(open(code).read(), code, 'exec'), namespace)
finally:
  json.dump(sorted(refused), open(refused_path, 'w'))
import numpy as np
np.save(restored_path, np.asarray(namespace['restored']))
'''


def _python_block(text: str, needle: str) -> str:
  """The ```python fenced block of `text` that contains `needle`."""
  blocks = [b for b in re.findall(r'```python\n(.*?)```', text, re.S) if needle in b]
  assert len(blocks) == 1, f'expected one python block with {needle!r}, found {len(blocks)}'
  return blocks[0]


def _canonical(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _closure(packages) -> set[str]:
  """The installed distributions that `pip install PACKAGES` brings: them and their requirements, no extras."""
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  seen, todo = set(), [_canonical(p) for p in packages]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    for line in importlib.metadata.requires(name) or ():
      req = Requirement(line)
      if req.marker is None or req.marker.evaluate({'extra': ''}):
        todo.append(_canonical(req.name))
  return seen


def _allowed_dirs(packages) -> list[str]:
  """The directories holding the files of `packages` and their requirements."""
  dirs = set()
  for name in _closure(packages):
    for f in importlib.metadata.distribution(name).files or ():
      dirs.add(os.path.dirname(os.path.realpath(f.locate())))
  return sorted(dirs)


def _run(code: str, cwd: pathlib.Path, tmp: pathlib.Path, packages=export_lib.SERVING_PACKAGES, expect_ok=True):
  """Runs `code` in a fresh process that can import only `packages` (and their requirements)."""
  (tmp / 'snippet.py').write_text(code)
  (tmp / 'allowed.json').write_text(json.dumps(_allowed_dirs(packages)))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('PYTHONPATH', None)
  env.pop('XLA_FLAGS', None)
  r = procs.run([sys.executable, '-c', _RUNNER, str(tmp / 'snippet.py'), str(tmp / 'restored.npy'),
                 str(tmp / 'allowed.json'), str(tmp / 'refused.json')], cwd=cwd, env=env, capture_output=True,
                text=True, timeout=300)
  refused = json.loads((tmp / 'refused.json').read_text())
  if not expect_ok:
    assert r.returncode != 0
    return r.stderr, refused
  assert r.returncode == 0, r.stderr[-3000:]
  return np.load(tmp / 'restored.npy'), refused


def _reference(variables, noise: str):
  module, _ = archs.build('gfpganv1clean', **TINY)
  fn = jax.jit(inference.make_restore_fn(module, randomize_noise=noise == 'random'))
  key = jax.random.key(np.uint32(0))
  return np.asarray(fn(variables, np.zeros((2, TINY['out_size'], TINY['out_size'], 3), np.uint8), key))


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory):
  variables = archs.init('gfpganv1clean', jax.random.key(0), **TINY)
  variables = jax.tree.map(np.asarray, variables)
  return checkpoint.save(tmp_path_factory.mktemp('ckpt') / 'ckpt', variables, 'gfpganv1clean', TINY), variables


def test_readme_snippet_runs_verbatim_with_only_the_listed_packages(tiny_ckpt, tmp_path):
  readme = (ROOT / 'README.md').read_text()
  code = _python_block(readme, 'jax.export.deserialize')
  assert code == export_lib.load_snippet()
  assert f'```bash\n{export_lib.INSTALL_LINE}\n```' in readme  # the packages it needs, listed
  # The README's relative path, from the directory a user runs it in.
  export_lib.export(tiny_ckpt[0], tmp_path / export_lib.README_EXPORT_DIR, platforms=('cpu',))
  restored, refused = _run(code, tmp_path, tmp_path)
  np.testing.assert_array_equal(restored, _reference(tiny_ckpt[1], 'stored'))
  assert restored.shape == (2, 32, 32, 3) and restored.dtype == np.uint8
  print('optional modules refused (a fresh venv lacks them):', refused)
  # The allow-list bites: without flatbuffers (jax.export's deserializer; not a requirement of jax) it fails.
  err, refused = _run(code, tmp_path, tmp_path, packages=('jax', 'orbax-checkpoint'), expect_ok=False)
  assert 'flatbuffers' in refused and 'flatbuffers' in err, err[-2000:]


@pytest.mark.parametrize('noise', ['stored', 'random'])
def test_export_readme_txt_runs_verbatim_from_anywhere(tiny_ckpt, tmp_path, noise):
  out = export_lib.export(tiny_ckpt[0], tmp_path / 'some' / '..' / 'exp', noise=noise, platforms=('cpu',))
  text = (out / export_lib.README_FILE).read_text()
  real = str((tmp_path / 'exp').resolve())
  assert f'export_dir = {real!r}' in text  # the export's real absolute path, not the README's example
  assert export_lib.INSTALL_LINE in text
  code = _python_block(text, 'jax.export.deserialize')
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  restored, _ = _run(code, elsewhere, tmp_path)
  np.testing.assert_array_equal(restored, _reference(tiny_ckpt[1], noise))
