r"""The GFP-GAN v1 training recipe at 512 px on FFHQ (gfpgan.md section 3).

    python -m gfpgan_jax.train --config configs/ffhq.py --workdir DIR \
        --config.data.train_dir=datasets/ffhq/ffhq_512 --config.data.landmarks_path=landmarks.json \
        --config.init.decoder=StyleGAN2_512_Cmul1_FFHQ_B12G4_scratch_800k.pth \
        --config.init.arcface=arcface_resnet18.pth --config.init.vgg19=vgg19-dcbb9e9d.pth

Every default is the official value of `options/train_gfpgan_v1.yml`.
Variants (`--config configs/ffhq.py:NAME`):

* `demo`: the README's main job. A small model on the built-in faces of
  scikit-image (`gfpgan_jax/data/demo.py`), 64 px, all losses, a few minutes on
  2 CPU cores; random VGG/ArcFace weights (none can be downloaded), opted in
  with `init.allow_random_loss_networks`.
* `tiny`: a 32 px smoke configuration for tests (random VGG/ArcFace too).
* `clean`: the v1.2-v1.4 architecture (GFPGANv1Clean, channel_multiplier 2);
  those models were trained from unreleased bilinear checkpoints, so this is
  an extrapolation of the recipe (gfpgan.md 3.7).
"""

import ml_collections

VARIANTS = ('demo', 'tiny', 'clean')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is one of `VARIANTS` or None for the full recipe."""
  if arg not in (None, '', *VARIANTS):
    raise ValueError(f'unknown config variant {arg!r}; valid: {VARIANTS}')
  config = ml_collections.ConfigDict()
  config.seed = 0  # official manual_seed 0; everything random is a function of it
  config.total_steps = 800_000  # official total_iter
  config.dtype = 'float32'  # compute dtype of every network: 'float32' | 'bfloat16' (params stay float32)

  # ---------------------------------------------------------------- data ----
  config.data = ml_collections.ConfigDict()
  # Host-side grain pipeline (gfpgan_jax/data/input_pipeline.py): read, decode, flip, batch the GT.
  # 'folder' (PNG/JPEG tree, recursive) | 'lmdb' (a BasicSR .lmdb folder: data.mdb + meta_info.txt, official
  # io_backend lmdb; needs pip install '.[lmdb]') | 'tfds' (scripts/prepare_ffhq.py output)
  config.data.source = 'folder'
  config.data.train_dir = ''  # source='folder'/'lmdb': HQ faces, e.g. datasets/ffhq/ffhq_512 (official dataroot_gt)
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
  # Given LQ inputs (official dataroot_lq), matched to the GT by file name (any image extension), resized to
  # data.resolution like the GT. train_lq_dir: the degradations are skipped (LQ and GT flip together).
  # eval_lq_dir: real pairs (e.g. CelebA-Test) instead of the fixed synthetic degradations. '' = degrade.
  config.data.train_lq_dir = ''
  config.data.eval_lq_dir = ''

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
  dg.jpeg_range = (60.0, 100.0)  # JPEG quality ~ U(range), a float made an integer as below; None = off
  # 'round': to nearest (half to even), as the official run's OpenCV (<= 4.5.2, saturate_cast) did with the
  # float: qualities 60..100, half weight at the ends. 'floor': int(quality), 60..99 (newer OpenCV needs an int).
  dg.jpeg_quality_rounding = 'round'
  dg.color_jitter_prob = 0.3  # probability of the per-channel colour shift (official color_jitter_prob)
  dg.color_jitter_shift = 20.0  # colour shift ~ U(-shift, shift) per channel, 0-255 scale
  dg.gray_prob = 0.01  # probability of turning the LQ gray (0.299 R + 0.587 G + 0.114 B)
  dg.gt_gray = False  # also turn the GT gray when the LQ is (no-colourisation recipe); off in v1
  dg.color_jitter_pt_prob = 0.3  # probability of the torchvision colour jitter (ops in random order)
  dg.brightness = (0.5, 1.5)  # torchvision brightness factor range; None = op skipped
  dg.contrast = (0.5, 1.5)  # torchvision contrast factor range; None = op skipped
  dg.saturation = (0.0, 1.5)  # torchvision saturation factor range; None = op skipped
  dg.hue = (-0.1, 0.1)  # torchvision hue shift range (fraction of the hue circle); None = op skipped

  # --------------------------------------------------------------- model ----
  config.model = m = ml_collections.ConfigDict()
  m.generator = 'gfpganv1'  # 'gfpganv1' (paper, FIR) | 'gfpganv1clean' (v1.2-v1.4 inference arch)
  # Constructor options of the generator (gfpganv1 also takes resample_kernel and lr_mlp).
  m.generator_kwargs = ml_collections.ConfigDict(dict(
      out_size=512, num_style_feat=512, channel_multiplier=1, num_mlp=8, input_is_latent=True, different_w=True,
      narrow=1.0, sft_half=True))
  m.fix_decoder = True  # freeze the StyleGAN2 decoder (official fix_decoder); masked in the optimiser
  # StyleGAN2Discriminator options (out_size = data.resolution). The minibatch-stddev statistic follows the
  # official per-GPU batch: basicsr computes it on each GPU's batch_size_per_gpu=3 images with the group
  # min(3, stddev_group=4) = 3, so stddev_per_gpu_batch=3 splits our global batch of 12 into 4 consecutive
  # slices of 3, one per official GPU (0 = one slice, as one GPU). data.batch_size must be a multiple of it.
  m.discriminator_kwargs = ml_collections.ConfigDict(
      dict(channel_multiplier=1, stddev_group=4, stddev_per_gpu_batch=3, narrow=1.0))
  m.use_components = True  # eye/mouth discriminators and their losses (False = train_gfpgan_v1_simple.yml)
  m.use_identity = True  # ArcFace identity loss (False = simple yml)
  m.arcface_kwargs = ml_collections.ConfigDict(dict(block='IRBlock', layers=(2, 2, 2, 2), use_se=False))

  # ------------------------------------------------- pretrained weights ----
  # Official .pth files or converted checkpoint dirs (scripts/convert_torch_to_jax.py). '' = random init.
  config.init = i = ml_collections.ConfigDict()
  i.decoder = ''  # StyleGAN2 prior for G's decoder (official decoder_load_path, its params_ema)
  i.generator = ''  # a whole generator to fine-tune (replaces the decoder prior)
  i.discriminator = ''  # StyleGAN2Discriminator (official GFPGANv1_net_d.pth)
  i.d_left_eye = ''  # component discriminators (GFPGANv1_net_d_left_eye.pth, ...)
  i.d_right_eye = ''
  i.d_mouth = ''
  i.arcface = ''  # identity network (arcface_resnet18.pth); frozen
  i.vgg19 = ''  # perceptual network (torchvision vgg19-dcbb9e9d.pth); frozen
  # With vgg19/arcface empty the run stops before compiling (random loss networks make it meaningless),
  # unless this opts in to RANDOM ones (the demo and tiny variants, which have nothing to download).
  i.allow_random_loss_networks = False

  # --------------------------------------------------------------- losses ----
  config.loss = lc = ml_collections.ConfigDict()
  lc.pixel_weight = 0.1  # L1(out, gt)
  lc.pyramid_weight = 1.0  # L1 of the intermediate RGBs against the GT pyramid
  lc.remove_pyramid_loss = 50_000  # after this iteration the pyramid weight becomes 1e-12
  lc.perceptual_weight = 1.0  # VGG19 L1 on pre-ReLU features
  lc.style_weight = 50.0  # Gram-matrix L1 on the same features
  lc.vgg_layer_weights = ml_collections.ConfigDict(
      dict(conv1_2=0.1, conv2_2=0.1, conv3_4=1.0, conv4_4=1.0, conv5_4=1.0))
  lc.gan_weight = 0.1  # softplus (wgan_softplus) generator loss
  lc.r1_weight = 10.0  # R1 gamma
  lc.d_reg_every = 16  # lazy R1 period (also corrects D's Adam betas)
  lc.component_gan_weight = 1.0  # eye/mouth vanilla GAN loss
  lc.comp_style_weight = 200.0  # Gram loss on the component discriminators' features
  lc.identity_weight = 10.0  # L1 between ArcFace embeddings
  lc.eye_size = 80  # ROI-aligned patch sizes (face_ratio 1 at 512)
  lc.mouth_size = 120

  # ----------------------------------------------------------- optimisers ----
  config.optim = o = ml_collections.ConfigDict()
  o.g_lr = 2e-3
  o.g_betas = (0.0, 0.99)
  o.d_lr = 2e-3  # the official param group overrides lr * 16/17 (gfpgan.md 3.5)
  o.d_betas = (0.0, 0.99)  # raised to the power d_reg_every / (d_reg_every + 1) in code
  o.dc_lr = 2e-3
  o.dc_betas = (0.9, 0.99)
  o.eps = 1e-8
  o.milestones = (600_000, 700_000)  # MultiStepLR for all optimisers
  o.gamma = 0.5
  o.ema_decay = 0.5**(32 / 10_000)  # G-EMA per iteration (official, hard-coded)

  # ------------------------------------------------------- devices / mesh ----
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # data-parallel axis size; -1 = all devices / fsdp
  config.mesh.fsdp = 1  # FSDP axis size (1 = pure data parallel)
  config.mesh.fsdp_min_size = 2**18  # arrays smaller than this stay replicated under FSDP

  # ------------------------------------------------------------- cadences ----
  config.log_every_steps = 100  # official print_freq
  config.image_every_steps = 5_000  # LQ | output | GT grid to TensorBoard
  config.num_preview_images = 4
  config.checkpoint_every_steps = 5_000  # official save_checkpoint_freq
  config.keep_checkpoints = 3
  config.async_checkpoints = True
  config.eval_every_steps = 5_000  # official val_freq (needs data.eval_dir)
  config.eval_seed = 1234  # fixed degradations of the validation faces
  config.compilation_cache = True  # persistent XLA cache in WORKDIR/xla_cache (JAX_COMPILATION_CACHE_DIR wins)

  if arg == 'clean':
    m.generator = 'gfpganv1clean'
    m.generator_kwargs.channel_multiplier = 2
  elif arg in ('demo', 'tiny'):
    _small(config, arg)
  return config


def _small(config: ml_collections.ConfigDict, arg: str):
  """CPU-sized variants: every loss on, a narrow model and small images."""
  demo = arg == 'demo'
  res = 64 if demo else 32
  config.total_steps = 200 if demo else 3
  config.data.source = 'demo'  # built-in faces written into WORKDIR/demo_data
  config.init.allow_random_loss_networks = True  # no VGG19/ArcFace weights can be downloaded for the demo
  config.data.resolution = res
  config.data.batch_size = 4 if demo else 8
  config.data.eval_batch_size = 8
  config.data.worker_count = 0
  config.data.read_threads = 1
  config.data.degradation.blur_kernel_size = 11 if demo else 7
  config.data.degradation.blur_sigma = (0.1, 2.5)
  config.data.degradation.downsample_range = (0.8, 4.0)
  config.model.generator_kwargs.update(out_size=res, num_style_feat=64, narrow=0.25, num_mlp=2)
  config.model.fix_decoder = False  # no StyleGAN2 prior can be downloaded: the decoder has to learn too
  config.model.discriminator_kwargs.update(narrow=0.125, stddev_per_gpu_batch=0)  # one "GPU": groups of 4
  config.model.arcface_kwargs.layers = (1, 1, 1, 1)
  config.loss.eye_size = 16 if demo else 8
  config.loss.mouth_size = 24 if demo else 12
  config.loss.remove_pyramid_loss = 100 if demo else 2
  config.optim.milestones = (150, 180) if demo else (2,)
  config.optim.ema_decay = 0.5**(1 / 20)  # a 20-step half-life: the official one is ~300 steps
  config.log_every_steps = 20 if demo else 1
  config.image_every_steps = 50 if demo else 2
  config.checkpoint_every_steps = 100 if demo else 2
  config.eval_every_steps = 100 if demo else 3
  config.keep_checkpoints = 2
