"""Parity cases of the bilinear family (filled in by its implementation)."""

from gfpgan_jax.testing.cases.base import Case

CASES: list[Case] = []
