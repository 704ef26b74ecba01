#!/usr/bin/env bash
# One-shot GPU benchmark (issue 12, item 8): ours beside the official PyTorch models on the same GPU.
#
#   GFPGANv1Clean 512 inference, img/s at batch 1, 8, 32: ours float32 and bfloat16, official float32 and fp16
#     autocast                                                    (scripts/benchmark.py infer)
#   the full v1 training step at 512, batch 12, img/s, float32 and bfloat16, with the MFU from XLA's cost
#     analysis (H200 peaks: bf16 989 TFLOP/s dense, fp32 67 TFLOP/s), beside the official optimize_parameters
#                                                                 (scripts/benchmark.py train)
#   the on-device degradations at 512, pairs/s, beside the official OpenCV pipeline on one CPU thread
#                                                                 (scripts/benchmark.py data)
#
# On the bare GPU image (Python 3.12, jax 0.11 + CUDA, torch 2.11 + CUDA, ...), from the repository root, after
# `bash scripts/fetch_device_wheels.sh` here filled .device_wheels/ (carried along):
#   bash scripts/device_benchmark.sh OUTDIR          # about 8 minutes; OUTDIR gets *.json and the logs
#   DEVICE_BENCH_SMALL=1 bash scripts/device_benchmark.sh OUTDIR   # every stage at a tiny size (CPU: a check)
# With the device tool: run(command='bash scripts/device_benchmark.sh $OUT', carry=['.device_wheels']).
#
# Training figures are plain iterations (the R1 one, 1 in 16, is not timed: its compile would not fit). The
# official code runs without its compiled CUDA ops (basicsr's upfirdn2d/fused_act and torchvision's roi_align
# have pure-PyTorch stand-ins, gfpgan_jax/testing/official.py), as everywhere in this project.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
START=$(date +%s)

# ---- environment: the carried wheels and the official sources (no network there)
SITE=${DEVICE_BENCH_SITE:-/tmp/gfpgan_jax_site}
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -d .device_wheels/wheels ] && [ "$PYVER" != 3.12 ]; then
  echo "python $PYVER: not installing the carried Python 3.12 wheels (the dependencies must be installed)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif [ -d .device_wheels/wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .device_wheels/wheels/*.whl || { echo "installing .device_wheels/wheels failed" >&2; exit 1; }
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -f .device_wheels/official-src.tar.gz ]; then
  export GFPGAN_JAX_OFFICIAL_DIR=${GFPGAN_JAX_OFFICIAL_DIR:-/tmp/gfpgan_jax_official}
  if [ ! -f "$GFPGAN_JAX_OFFICIAL_DIR/src/.complete" ]; then
    mkdir -p "$GFPGAN_JAX_OFFICIAL_DIR" && tar -xzf .device_wheels/official-src.tar.gz -C "$GFPGAN_JAX_OFFICIAL_DIR"
  fi
fi
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}  # torch shares the GPU (infer)
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/env.txt"
import jax, torch, sys
print('python', sys.version.split()[0], '| jax', jax.__version__, jax.devices(), '| torch', torch.__version__,
      'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
import flax, optax, orbax.checkpoint, ml_collections, cv2  # noqa: F401
from gfpgan_jax.testing import official
print('official sources:', official.fetch())
PYEOF
[ "${PIPESTATUS[0]}" = 0 ] || { echo "environment check failed (see above)" >&2; exit 1; }

if [ "${DEVICE_BENCH_SMALL:-0}" != 0 ]; then
  INFER=(--size 64 --batch-sizes 1,2 --iters 1)
  TRAIN=(--config tiny --batch 2 --rounds 1 --iters 1 --warmup 0 --deg-images 1 --dtypes float32,bfloat16)
  DATA=(--resolution 64 --batch-size 2 --iters 1 --ref-images 1 --blur-methods '')
  LIMITS=(300 600 120)
else
  INFER=(--size 512 --batch-sizes 1,8,32 --iters 10)
  TRAIN=(--config '' --resolution 512 --batch 12 --rounds 2 --iters 3 --warmup 1 --deg-images 8
         --dtypes float32,bfloat16)
  DATA=(--resolution 512 --batch-size 32 --iters 10 --ref-images 8 --blur-methods fft)
  LIMITS=(150 260 50)  # caps, s: at most ~8 minutes with the setup
fi

# fp16 autocast is a GPU figure (on a CPU, torch emulates it slowly).
TORCH_DTYPES=$("$PY" -c 'import torch; print("float32,float16" if torch.cuda.is_available() else "float32")')

status=0
stage() {  # name, time limit (s), benchmark.py arguments...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s; $(( $(date +%s) - START )) s so far)"
  timeout "$limit" "$PY" scripts/benchmark.py "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" \
    | grep -v -e '^WARNING' -e '^I[0-9]' -e '^W[0-9]'
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "=== $name FAILED (exit $rc; $OUT/$name.log)"; status=1; }
}
stage infer "${LIMITS[0]}" infer "${INFER[@]}" --dtypes float32,bfloat16 --torch-dtypes "$TORCH_DTYPES" --no-uint8
stage train "${LIMITS[1]}" train "${TRAIN[@]}" --r1-iters 0 --no-torch-flops
stage data "${LIMITS[2]}" data "${DATA[@]}" --host-workers ''

"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
  p = out / f'{name}.json'
  return json.loads(p.read_text()) if p.exists() else None
lines = ['| measurement | ours | official PyTorch | ratio |', '| --- | --- | --- | --- |']
infer = load('infer')
if infer:
  rows = infer['rows']
  for b in sorted({r['batch'] for r in rows}):
    get = lambda impl: next((r['images_per_s'] for r in rows if r['impl'] == impl and r['batch'] == b), None)
    for ours, theirs in (('jax_float32', 'official_pytorch'), ('jax_bfloat16', 'official_pytorch_fp16')):
      o, t = get(ours), get(theirs)
      if o:
        label = 'fp16 autocast' if theirs.endswith('_fp16') else 'float32'
        lines.append(f"| infer batch {b}, ours {ours[4:]} vs official {label} | {o:.2f} img/s | "
                     + (f"{t:.2f} img/s | {o / t:.2f}x |" if t else '- | - |'))
train = load('train')
if train:
  t = train['main']['torch']
  for j in train['main']['jax']:
    mfu = j.get('mfu', {}).get('plain')
    lines.append(f"| train step {train['config']['resolution']} px, batch {train['config']['batch']}, {j['impl'][4:]}"
                 f" (plain) | {j['images_per_s_plain']:.2f} img/s" + (f", MFU {mfu * 100:.1f}%" if mfu else '')
                 + ' | ' + (f"{t['images_per_s_plain']:.2f} img/s | "
                            f"{j['images_per_s_plain'] / t['images_per_s_plain']:.2f}x |" if t else '- | - |'))
data = load('data')
if data:
  lines.append(f"| degradations {data['resolution']} px | {data['jax']['pairs_per_s']:.1f} pairs/s | "
               f"{data['opencv']['pairs_per_s']:.1f} pairs/s (OpenCV, 1 thread) | "
               f"{data['ratio_jax_over_opencv']:.1f}x |")
(out / 'summary.md').write_text('\n'.join(lines) + '\n')
print('\n'.join(lines))
PYEOF
echo "=== done in $(( $(date +%s) - START )) s; results in $OUT"
exit $status
