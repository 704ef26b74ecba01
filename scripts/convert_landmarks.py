r"""Converts the official eye/mouth landmarks file once, so training needs no PyTorch.

    python scripts/convert_landmarks.py \
        --input experiments/pretrained_models/FFHQ_eye_mouth_landmarks_512.pth \
        --output landmarks.json

The official `.pth` (gfpgan.md 2.5) is a pickled dict keyed by the zero-padded
image index (`'00000042'`) whose values are `{'left_eye': [x, y, half_len],
'right_eye': [...], 'mouth': [...]}` of numpy float64 numbers, in 512-pixel
coordinates, image left/right, eye half length before the 1.4 enlargement.
It is read with `torch.load(..., weights_only=False)` (needed since torch 2.6:
the file pickles numpy scalars; only convert files you trust).

`--output` is written with the same keys and structure as plain JSON (Python
floats; JSON keeps float64 exactly), or as `.npz` (`index` int64 [N],
`locations` float64 [N, 3, 3]). Point `config.data.landmarks_path` or
`scripts/prepare_ffhq.py --landmarks` at it. Images are later matched to
entries by file name (`00042.png` -> `00000042`).
"""

import argparse

from gfpgan_jax.data import landmarks as landmarks_lib


def main(argv=None) -> int:
  """Runs the conversion; returns the number of entries written."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--input', required=True, help='FFHQ_eye_mouth_landmarks_512.pth (or .json/.npz)')
  parser.add_argument('--output', required=True, help='landmarks.json or landmarks.npz')
  args = parser.parse_args(argv)
  table = landmarks_lib.load_landmarks(args.input)
  if not table:
    raise ValueError(f'{args.input} holds no landmarks')
  landmarks_lib.save_landmarks(table, args.output)
  print(f'Wrote {len(table)} entries (indices {min(table)}..{max(table)}) to {args.output}')
  return len(table)


def _main() -> None:
  """`main`, with the faults a user can cause as one line instead of a traceback."""
  import pickle  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  try:
    main()
  except (ImportError, ValueError, OSError) as e:  # no torch (the message says how to install it), bad files
    sys.exit(f'error: {e}')
  except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, AttributeError) as e:
    first = (str(e).strip().splitlines() or [''])[0][:200]
    sys.exit(f'error: {sys.argv[sys.argv.index("--input") + 1] if "--input" in sys.argv else "the input"} is not a '
             f'readable landmarks file (truncated, or not a .pth?): {type(e).__name__}: {first}')


if __name__ == '__main__':
  _main()
