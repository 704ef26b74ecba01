"""XLA compiler options for the compiled functions of gfpgan_jax (on the CPU: no YNNPACK fusions).

XLA:CPU (jaxlib 0.10) hands subgraphs of convolutions, reductions and
elementwise ops to YNNPACK "library fusions" by default. For these convolution
networks that is a slowdown on the CPU: a VGG19 forward at 64 px, batch 4, takes
104 ms with them and 50 ms without, the GFPGANv1Clean 512 forward 1.53 s and
1.39 s, the demo training step 1.31 s and 1.16 s (2 cores; `scripts/benchmark.py`).
They are also less accurate in the backward pass: the gradients of a small
GFPGANv1 are 1.7e-3 (worst leaf, relative L2) from a float64 reference with
them, 3.8e-4 without. `compiler_options()` switches them off for the functions
gfpgan_jax compiles: `jit(fn)` is `jax.jit` with them; pass them yourself as
`Lowered.compile(compiler_options=...)`.

It returns `{}` (XLA's defaults) on other backends, when the jaxlib does not
know the option (it is experimental and may go away), when the user chose the
setting in `XLA_FLAGS`, or with `GFPGAN_JAX_XLA_DEFAULTS=1`. Call it at compile
time, not at import: it looks at the default backend, which initialises JAX.
"""

from collections.abc import Callable
import functools
import logging
import os

import jax
import numpy as np

log = logging.getLogger(__name__)

# An empty list replaces XLA's default list of YNNPACK fusion types: none.
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def compiler_options() -> dict[str, str]:
  """Compiler options for this process's default backend (see the module docstring).

  Returns:
    A new dict (callers may extend it); `{}` where XLA's defaults stay.
  """
  return dict(CPU_OPTIONS) if _use_cpu_options() else {}


def jit(fn: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(fn, **jit_kwargs)` compiled with `compiler_options()` (decided when `jit` is called)."""
  return jax.jit(fn, compiler_options=compiler_options(), **jit_kwargs)


@functools.cache
def _use_cpu_options() -> bool:
  if os.environ.get('GFPGAN_JAX_XLA_DEFAULTS', '') not in ('', '0'):
    return False
  if jax.default_backend() != 'cpu':
    return False
  if any(name in os.environ.get('XLA_FLAGS', '') for name in CPU_OPTIONS):
    return False
  try:  # a jaxlib without the option rejects it at compile time
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(np.float32(0)).compile()
  except Exception as e:  # pylint: disable=broad-exception-caught
    log.info('XLA compiler options %s not supported by this jaxlib (%s); using the defaults', CPU_OPTIONS, e)
    return False
  return True


def enable_compilation_cache(enabled: bool, workdir: str | os.PathLike) -> str | None:
  """Turns on JAX's persistent compilation cache in `workdir/xla_cache`, unless one is set up already.

  A directory chosen before (`JAX_COMPILATION_CACHE_DIR`, `jax.config`, or an
  earlier call in this process) wins and is kept. With it, a resumed run loads
  its compiled steps from disk instead of recompiling them (compiles that took
  under `jax_persistent_cache_min_compile_time_secs`, 1 s by default, are not
  stored).

  Args:
    enabled: False: set nothing up (a directory chosen as above still applies).
    workdir: the run's directory.

  Returns:
    The cache directory in use, or None.
  """
  current = jax.config.jax_compilation_cache_dir
  if current or not enabled:
    return current or None
  path = os.path.join(os.fspath(workdir), 'xla_cache')
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  return path
