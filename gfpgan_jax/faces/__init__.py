"""Face alignment and paste-back of the whole-photo pipeline (facexlib's FaceRestoreHelper, in JAX).

RGB in, RGB out. The per-pixel work (warps, mask blurs and erosions, the
blend, the LANCZOS4 background resize) runs on the device and reproduces
OpenCV's arithmetic. The small host-side pieces are the same OpenCV calls the
official code makes (`estimateAffinePartial2D`, `invertAffineTransform`,
`getGaussianKernel`). See `align`, `paste`, `masks`, `warp` and `resize`.
"""

from gfpgan_jax.faces.align import align_faces
from gfpgan_jax.faces.align import estimate_affines
from gfpgan_jax.faces.align import face_template
from gfpgan_jax.faces.align import FFHQ_TEMPLATE_512
from gfpgan_jax.faces.detect import FaceSet
from gfpgan_jax.faces.detect import load_detector
from gfpgan_jax.faces.detect import RetinaFaceDetector
from gfpgan_jax.faces.detect import select_faces
from gfpgan_jax.faces.haar import HaarDetector
from gfpgan_jax.faces.image_io import to_rgb8
from gfpgan_jax.faces.masks import MASK_COLORMAP
from gfpgan_jax.faces.paste import inverse_affines
from gfpgan_jax.faces.paste import output_size
from gfpgan_jax.faces.paste import parse_net_input
from gfpgan_jax.faces.paste import paste_faces
from gfpgan_jax.faces.resize import resize_lanczos4
from gfpgan_jax.faces.select import center_face
from gfpgan_jax.faces.select import largest_face

__all__ = [
    'align_faces', 'center_face', 'estimate_affines', 'face_template', 'FaceSet', 'FFHQ_TEMPLATE_512', 'HaarDetector',
    'inverse_affines', 'largest_face', 'load_detector', 'MASK_COLORMAP', 'output_size', 'parse_net_input',
    'paste_faces', 'resize_lanczos4', 'RetinaFaceDetector', 'select_faces', 'to_rgb8'
]
