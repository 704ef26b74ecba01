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
  # Host-side grain pipeline (gfpgan_jax/data/input_pipeline.py): read, decode, flip, batch the GT.
  config.data.source = 'folder'  # 'folder' (PNG/JPEG tree, recursive) | 'tfds' (scripts/prepare_ffhq.py output)
  config.data.train_dir = ''  # source='folder': HQ faces, e.g. datasets/ffhq/ffhq_512 (official dataroot_gt)
  config.data.tfds_data_dir = ''  # source='tfds': the --output folder of scripts/prepare_ffhq.py
  config.data.tfds_name = 'ffhq_gfpgan'  # source='tfds': dataset name
  config.data.tfds_split = 'train'  # source='tfds': split
  config.data.resolution = 512  # GT side in pixels (official out_size); other sizes are Lanczos-resized
  config.data.batch_size = 12  # global batch: official batch_size_per_gpu 3 x 4 GPUs; split over processes
  config.data.shuffle = True  # official use_shuffle; grain shuffles globally (a permutation, no buffer)
  config.data.seed = 0  # seed of the shuffle and flip streams (official manual_seed 0)
  config.data.use_hflip = True  # random horizontal flip with p=0.5, boxes mirrored (official use_hflip)
  config.data.crop_components = True  # emit loc_left_eye/loc_right_eye/loc_mouth boxes (needs landmarks)
  config.data.landmarks_path = ''  # .json (scripts/convert_landmarks.py) / .npz / .pth; '' = from TFDS data
  config.data.landmarks_resolution = 512  # pixel frame of the landmarks file (FFHQ_eye_mouth_landmarks_512)
  config.data.eye_enlarge_ratio = 1.4  # eyes' half length is multiplied by this (official eye_enlarge_ratio)
  config.data.worker_count = 6  # grain mp_prefetch processes per host (official num_worker_per_gpu 6); 0 = in-process
  config.data.worker_buffer_size = 2  # batches buffered by each worker process
  config.data.read_threads = 2  # threads per process computing batches (grain ReadOptions.num_threads)
  config.data.prefetch_size = 4  # batches buffered per process by those threads (ReadOptions.prefetch_buffer_size)
  config.data.eval_dir = ''  # held-out HQ faces for validation (finite, sorted, no flip); '' = no eval
  config.data.eval_batch_size = 12  # global eval batch (the last one is padded; see batch['mask'])

  # Degradation model, applied on the accelerator inside the training step.
  config.data.degradation = ml_collections.ConfigDict()

  return config
