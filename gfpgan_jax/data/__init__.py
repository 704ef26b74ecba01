"""Training data: the host input pipeline and the on-accelerator degradations (blur, resize, noise, JPEG, colour)."""
