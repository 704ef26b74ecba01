"""Parity cases, one module per network family (see `gfpgan_jax.testing.parity_cases`)."""
