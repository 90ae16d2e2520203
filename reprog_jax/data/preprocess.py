"""Per-example preprocessing: decode, convert to RGB, resize.

The PyTorch version feeds PIL images to `transforms.Resize((s, s))` (PIL's
bilinear filter, which antialiases when shrinking) and `ToTensor` (divide by
255). We call the same PIL operations and keep the uint8 result, so our
pixels divided by 255 (on the model side, with ImageNet normalisation)
equal its pixels; only the layout differs (HWC here, CHW there).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_rgb_image(raw: bytes | np.ndarray) -> Image.Image:
  """Decodes encoded bytes, or wraps a uint8 array, as an RGB PIL image.

  Args:
    raw: an encoded image (PNG, JPEG, PPM, ...) or a uint8 array (H, W),
      (H, W, 1), (H, W, 3) or (H, W, 4), as tfds mock data gives.

  Returns:
    An RGB image (grayscale, palette, RGBA and CMYK are converted the way
    torchvision's `pil_loader` does, with `convert('RGB')`).
  """
  if isinstance(raw, (bytes, bytearray, memoryview, np.bytes_)):
    image = Image.open(io.BytesIO(bytes(raw)))
  else:
    array = np.asarray(raw)
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    image = Image.fromarray(array)
  return image if image.mode == 'RGB' else image.convert('RGB')


def load_uint8_image(raw: bytes | np.ndarray, size: int) -> np.ndarray:
  """Decodes, converts to RGB and resizes one raw image.

  Args:
    raw: encoded bytes or a uint8 array (see `to_rgb_image`).
    size: output side: the VP size (32 or 128) or 224 for linear probing.

  Returns:
    uint8 array (size, size, 3).
  """
  image = to_rgb_image(raw)
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, dtype=np.uint8)
