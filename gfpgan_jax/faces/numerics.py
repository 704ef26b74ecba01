"""Floating-point helpers that let the device reproduce OpenCV's and NumPy's rounding.

OpenCV computes warp coordinates in double, and at fixed points it rounds
intermediate values to float32. NumPy rounds every float32 operation on its
own. XLA's compiled code does not keep either order by itself, for three
reasons found on CPU:
* LLVM fuses a multiply that feeds an add into one FMA. It also narrows
  `float32(float64(a) * float64(b))` back to a float32 multiply and then fuses
  that.
* Chains of float64 adds are not always evaluated in the written order.
* Float64 division by a constant is not correctly rounded.

The remedies:
* Every value whose rounding matters goes through `rounded`, a select on a
  runtime condition. It changes no value, but it blocks fusion and reordering
  across it.
* `div_small_int` divides with one correction step.
* With `exact=True` the wide type ("hp") is float64. The device functions run
  under `jax.enable_x64(True)`, and nothing global is switched on. A product of
  two float32 numbers is exact in float64, so `fma32`/`mul32` round only once,
  as the reference does. `add32` may round twice, which is rare (it needs the
  float64 sum to land on a float32 tie).
* With `exact=False` everything stays float32, for backends whose float64
  support is slow or missing (TPU). Coordinates then lose precision, and a
  pixel can move by 1.
"""

import contextlib

import jax
import jax.numpy as jnp

Array = jax.Array
f32 = jnp.float32


def hp_dtype(exact: bool):
  """The wide dtype: float64 when `exact`, else float32."""
  return jnp.float64 if exact else jnp.float32


def precision_scope(exact: bool) -> contextlib.AbstractContextManager:
  """Context for tracing and calling the device functions: float64 on only when `exact`."""
  return jax.enable_x64(True) if exact else contextlib.nullcontext()


def rounded(x: Array) -> Array:
  """x itself, but the rounding of the operation that produced it can no longer be fused away.

  LLVM fuses a multiply that feeds an add into one FMA (XLA allows that
  contraction on CPU and GPU). An FMA skips the product's rounding that the
  reference does. A select on a runtime condition sits between the two and
  blocks the fusion. (A NaN would become 0; none occurs here.)
  """
  return jnp.where(x == x, x, jnp.zeros_like(x))  # pylint: disable=comparison-with-itself


def fma32(a: Array, b: Array, c: Array, hp) -> Array:
  """float32(a * b + c) rounded once, like a hardware FMA on float32 inputs."""
  return rounded((a.astype(hp) * b.astype(hp) + c.astype(hp)).astype(f32))


def mul32(a: Array, b: Array, hp) -> Array:
  """A float32 product rounded the way NumPy rounds it (immune to XLA's FMA contraction)."""
  return rounded((a.astype(hp) * b.astype(hp)).astype(f32))


def add32(a: Array, b: Array, hp) -> Array:
  """A float32 sum computed in hp and rounded to float32."""
  return rounded((a.astype(hp) + b.astype(hp)).astype(f32))


def sub32(a: Array, b: Array, hp) -> Array:
  """A float32 difference computed in hp and rounded to float32."""
  return rounded((a.astype(hp) - b.astype(hp)).astype(f32))


def div_small_int(x: Array, d: int, hp) -> Array:
  """x / d correctly rounded, for an integer 0 < d < 2**26 (XLA's CPU float64 division is not).

  In float64 the quotient gets one correction step. The residual x - q d is
  exact: q is split into 26-bit halves, and both products with d are exact.
  """
  if hp != jnp.float64:
    return x / d
  r = rounded
  q = r(x / d)
  c = r(q * 134217729.0)  # 2**27 + 1: Veltkamp split of q
  q_hi = r(c - r(c - q))
  q_lo = r(q - q_hi)
  res = r(r(x - r(q_hi * d)) - r(q_lo * d))
  return r(q + r(res / d))
