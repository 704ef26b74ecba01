"""Parity cases of the parsenet family (filled in by its implementation)."""

from gfpgan_jax.testing.cases.base import Case

CASES: list[Case] = []
