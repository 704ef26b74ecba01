r"""The GFP-GAN v1 training recipe at 512 px on FFHQ (gfpgan.md section 3).

    python -m gfpgan_jax.train --config configs/ffhq.py --workdir DIR

Every default is the official value of `options/train_gfpgan_v1.yml`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config. `arg` selects a variant (none yet)."""
  del arg
  config = ml_collections.ConfigDict()

  # ---------------------------------------------------------------- data ----
  config.data = ml_collections.ConfigDict()
  # Host-side input pipeline fields go here (grain source, batch, shuffle, ...).

  # Degradation model, applied on the accelerator inside the training step.
  config.data.degradation = ml_collections.ConfigDict()

  return config
