"""Per-example preprocessing: decode, convert to RGB, resize.

The PyTorch version feeds PIL images to `transforms.Resize((s, s))` (PIL's
bilinear filter, which antialiases when shrinking) and `ToTensor` (divide by
255). We call the same PIL operations and keep the uint8 result, so our
pixels divided by 255 (on the model side, with ImageNet normalisation)
equal its pixels; only the layout differs (HWC here, CHW there).

A file that does not decode is one line (`unreadable`) naming the dataset,
the split, the example and its file, and the doctor's command that lists
every such file.
"""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
from PIL import Image

from reprog_jax import errors
from reprog_jax.data.errors import DataError

# What PIL raises for a file that is not a readable image: an unknown
# format or a truncated one (OSError, UnidentifiedImageError among them),
# a broken chunk (SyntaxError, ValueError, EOFError), a decompression bomb.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError,
                 Image.DecompressionBombError)


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


def check_image(raw: bytes | np.ndarray, *, quick: bool = False) -> None:
  """Raises what decoding `raw` raises (`DECODE_ERRORS`), or nothing.

  Args:
    raw: encoded bytes or a uint8 array (see `to_rgb_image`).
    quick: only identify the file (its header), without decoding pixels.
  """
  if quick:
    if isinstance(raw, (bytes, bytearray, memoryview, np.bytes_)):
      Image.open(io.BytesIO(bytes(raw)))
    return
  to_rgb_image(raw).load()


@dataclasses.dataclass(frozen=True)
class Origin:
  """Which split some examples come from, for the line naming a bad file.

  Attributes:
    dataset: the registry name.
    split: 'train' or 'test'.
    doctor: the command listing every unreadable file ('' for none).
  """
  dataset: str = ''
  split: str = ''
  doctor: str = ''


def unreadable(origin: Origin, source, index: int,
               error: Exception) -> DataError:
  """The one line for example `index` of `source` that cannot be read.

  Args:
    origin: the split it belongs to.
    source: the split's source; its `locate(index)` names the file.
    index: the example's index in `source`.
    error: what reading or decoding it raised.
  """
  locate = getattr(source, 'locate', None)
  where = locate(index) if locate else f'item {index}'
  # PIL names an in-memory file by its address: no use to anyone.
  reason = re.sub(r'\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>', '',
                  errors.first_line(error))
  head = (f'{origin.dataset} ({origin.split} split), example {index}'
          if origin.dataset else f'example {index}')
  tail = (f'; list every unreadable file with: {origin.doctor}'
          if origin.doctor else '')
  return DataError(f'{head}: cannot read {where} ({reason}){tail}')
