#!/usr/bin/env bash
# Fills .device_wheels/ (git-ignored) with what scripts/device_benchmark.sh needs on the bare GPU image
# (Python 3.12, jax 0.11 + CUDA, flax, optax, orbax-checkpoint, torch 2.11 + CUDA, opencv, pillow, scikit-image,
# absl, etils, cloudpickle, protobuf, chex, ... are already there; see /work/.library/device/KINDS.md):
#
#   * wheels/: the project's other dependencies (pyproject.toml) for CPython 3.12 on manylinux x86-64, without
#     their dependencies (each needed one is listed here). tensorflow-datasets, imageio-ffmpeg and the video/TFDS
#     paths are left out: the benchmark does not import them (and imageio-ffmpeg alone is ~30 MB).
#   * official-src.tar.gz: the official sources that gfpgan_jax/testing/official.py fetches with pip
#     (gfpgan 1.3.8, basicsr 1.4.2, facexlib 0.3.0, realesrgan 0.3.0, torchvision 0.28.0), unpacked as its cache
#     (`src/` with `.complete`); the GPU machine cannot download, so device_benchmark.sh unpacks this and points
#     GFPGAN_JAX_OFFICIAL_DIR at it.
#
# Usage (from the repository root, with the project's Python environment active):
#   bash scripts/fetch_device_wheels.sh            # then: bash scripts/device_benchmark.sh OUTDIR (on the GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.device_wheels
PY=${PYTHON:-python}
mkdir -p "$DEST/wheels"
# Versions as in the development environment (pyproject.toml's ranges allow them).
PACKAGES=(
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0   # grain and what it imports that the image lacks
  ml-collections==1.1.0 clu==0.0.12 dm-pix==0.4.5 tensorboardX==2.6.5
)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST/wheels" "${PACKAGES[@]}"

# The official sources, fetched the way the tests fetch them, into a private cache, then packed.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
GFPGAN_JAX_OFFICIAL_DIR="$WORK/official" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
  'from gfpgan_jax.testing import official; print("official sources:", official.fetch())'
tar -czf "$DEST/official-src.tar.gz.tmp" -C "$WORK/official" src
mv "$DEST/official-src.tar.gz.tmp" "$DEST/official-src.tar.gz"
du -sh "$DEST"/* | sed 's/^/  /'
echo "done: carry $DEST to the GPU machine (at most 64 MiB travel per call)"
