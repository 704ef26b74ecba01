"""Array ops with the exact semantics of the official PyTorch code (no parameters)."""

from gfpgan_jax.ops.roi_align import roi_align

__all__ = ['roi_align']
