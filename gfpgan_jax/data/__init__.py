"""Training data: on-accelerator degradations (blur, resize, noise, JPEG, colour) in JAX."""
