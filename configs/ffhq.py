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
  # gfpgan_jax/data/degradations.py; official FFHQDegradationDataset (gfpgan.md 3.1).
  # A probability of 0 or None, or a range of None, turns its op off.
  dg = config.data.degradation = ml_collections.ConfigDict()
  dg.blur_kernel_size = 41  # odd side of the Gaussian blur kernels (grid -20..20)
  dg.kernel_list = ('iso', 'aniso')  # blur kernel types (only these two are implemented)
  dg.kernel_prob = (0.5, 0.5)  # probability of each kernel type
  dg.blur_sigma = (0.1, 10.0)  # sigma_x, sigma_y ~ U(range) in pixels; aniso angle ~ U(-pi, pi)
  dg.blur_method = 'fft'  # 'fft' (O(HW log HW)) or 'conv' (depthwise conv); same result
  dg.downsample_range = (0.8, 8.0)  # scale s ~ U(range); shrink to (int(h // s), int(w // s)), INTER_LINEAR
  dg.noise_range = (0.0, 20.0)  # Gaussian noise sigma ~ U(range) on the 0-255 scale; None = no noise
  dg.jpeg_range = (60.0, 100.0)  # JPEG quality ~ U(range), truncated to int like the official code; None = off
  dg.color_jitter_prob = 0.3  # probability of the per-channel colour shift (official color_jitter_prob)
  dg.color_jitter_shift = 20.0  # colour shift ~ U(-shift, shift) per channel, 0-255 scale
  dg.gray_prob = 0.01  # probability of turning the LQ gray (0.299 R + 0.587 G + 0.114 B)
  dg.gt_gray = False  # also turn the GT gray when the LQ is (no-colourisation recipe); off in v1
  dg.color_jitter_pt_prob = 0.3  # probability of the torchvision colour jitter (ops in random order)
  dg.brightness = (0.5, 1.5)  # torchvision brightness factor range; None = op skipped
  dg.contrast = (0.5, 1.5)  # torchvision contrast factor range; None = op skipped
  dg.saturation = (0.0, 1.5)  # torchvision saturation factor range; None = op skipped
  dg.hue = (-0.1, 0.1)  # torchvision hue shift range (fraction of the hue circle); None = op skipped

  return config
