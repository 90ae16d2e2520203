"""Visual prompts: learnable input-space programs around a downsized image.

The ILM-VP "expansive" prompt (Chen et al., CVPR 2023) places the target image,
resized to `s x s`, in the middle of a `224 x 224` canvas and learns the
pixels of the frame around it. The "padding" prompt (Bahng et al. 2022,
"Exploring Visual Prompts for Adapting Large-Scale Models") resizes the
image to the whole canvas and adds a learned border of width `pad` on top
of it. Only the program is trained; the network behind it stays frozen.

Layout differs from the PyTorch version on purpose: images and the program
are NHWC / HWC here (the layout Flax convolutions expect), NCHW / CHW there.
The arithmetic is the same element by element.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# torchvision's ImageNet statistics, which the frozen networks were trained
# with; RGB order, applied over a trailing channel axis.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: jax.Array) -> jax.Array:
  """Normalises `[0, 1]` RGB images with the ImageNet mean and std.

  Args:
    x: Images in `[0, 1]`, channels last, shape `(..., 3)`.

  Returns:
    `(x - mean) / std` per channel, in the dtype of `x`.
  """
  mean = jnp.asarray(IMAGENET_MEAN, dtype=x.dtype)
  std = jnp.asarray(IMAGENET_STD, dtype=x.dtype)
  return (x - mean) / std


def padding(image_size: int, output_size: int = 224) -> tuple[int, int]:
  """Returns the ILM-VP frame widths `(before, after)` for one spatial axis.

  `before` pads top/left, `after` pads bottom/right. When
  `output_size - image_size` is odd, the extra pixel goes before, as in the
  PyTorch version (`l = int((224 - s + 1) / 2)`, `r = int((224 - s) / 2)`).

  Args:
    image_size: Side `s` of the (square) target image.
    output_size: Side of the canvas the network sees.

  Returns:
    The pair `(l, r)` with `l + r + image_size == output_size`.

  Raises:
    ValueError: If `image_size` is not in `[1, output_size]`.
  """
  if not 0 < image_size <= output_size:
    raise ValueError(
        f"image_size must be in [1, output_size={output_size}], "
        f"got {image_size}.")
  # Integer division equals the reference's int() of a non-negative float.
  return (output_size - image_size + 1) // 2, (output_size - image_size) // 2


def frame_mask(image_size: int, output_size: int = 224) -> np.ndarray:
  """Returns the fixed prompt mask: 0 over the image area, 1 on the frame.

  Args:
    image_size: Side `s` of the target image.
    output_size: Side of the canvas.

  Returns:
    A float32 NumPy array of shape `(output_size, output_size, 1)`; the
    trailing axis broadcasts over the RGB channels.
  """
  before, after = padding(image_size, output_size)
  mask = np.ones((output_size, output_size, 1), np.float32)
  mask[before:output_size - after, before:output_size - after] = 0.0
  return mask


class ExpansivePrompt(nn.Module):
  """The ILM-VP expansive visual prompt.

  `output = normalize(pad(x, 0) + sigmoid(program) * mask)`, where the mask
  is 1 on the frame and 0 over the image. The program covers the whole canvas
  (3 * 224 * 224 = 150,528 parameters for 224) like the PyTorch version's,
  although the entries under the image never reach the output.

  Attributes:
    image_size: Side `s` of the square target images.
    output_size: Side of the canvas fed to the frozen network.
    normalize: Whether to apply ImageNet normalisation to the output.
    dtype: Dtype of the output, i.e. the frozen network's compute dtype.
      The program is float32, and so is the prompt's own arithmetic: in
      bfloat16, normalisation's `x - mean` cancels badly (0.5 - 0.485 comes
      out 4% off), and the few element-wise ops cost nothing next to the
      network.
  """
  image_size: int
  output_size: int = 224
  normalize: bool = True
  dtype: Any = jnp.float32

  def __post_init__(self):
    # Fail when the module is built, not at its first call inside a jit.
    padding(self.image_size, self.output_size)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Frames `x` with the program.

    Args:
      x: Images in `[0, 1]` of shape `(..., s, s, 3)`, usually
        `(N, s, s, 3)`; an unbatched `(s, s, 3)` works too, so the prompt
        can be vmapped.

    Returns:
      Prompted images of shape `(..., output_size, output_size, 3)` in
      `dtype`.
    """
    before, after = padding(self.image_size, self.output_size)
    if x.ndim < 3 or x.shape[-3:] != (self.image_size, self.image_size, 3):
      raise ValueError(
          f"Expected images of shape (..., {self.image_size}, "
          f"{self.image_size}, 3), got {x.shape}.")
    program = self.param(
        "program", nn.initializers.zeros,
        (self.output_size, self.output_size, 3), jnp.float32)
    mask = jnp.asarray(frame_mask(self.image_size, self.output_size))

    x = jnp.asarray(x, jnp.float32)
    pad_width = [(0, 0)] * (x.ndim - 3) + [(before, after), (before, after),
                                           (0, 0)]
    canvas = jnp.pad(x, pad_width, constant_values=0)
    # The sigmoid keeps the frame's pixels in (0, 1), the range of the image.
    out = canvas + jax.nn.sigmoid(program) * mask
    if self.normalize:
      out = imagenet_normalize(out)
    return out.astype(self.dtype)


def border_mask(output_size: int = 224, pad: int = 30) -> np.ndarray:
  """The padding prompt's mask: 1 on a border `pad` pixels wide, 0 inside.

  Returns:
    float32 `(output_size, output_size, 1)`.

  Raises:
    ValueError: If `pad` is not in `[1, output_size // 2]`.
  """
  if not 0 < pad <= output_size // 2:
    raise ValueError(f"pad must be in [1, output_size // 2 = "
                     f"{output_size // 2}], got {pad}.")
  mask = np.ones((output_size, output_size, 1), np.float32)
  mask[pad:output_size - pad, pad:output_size - pad] = 0.0
  return mask


class PaddingPrompt(nn.Module):
  """Bahng et al.'s padding prompt, on the whole image.

  `output = normalize(resize(x, output_size)) + program * mask`: the image
  is resized (bilinear, half-pixel centres, as PyTorch's `F.interpolate`
  with `align_corners=False`) to the canvas, normalised, and a learned
  border of width `pad` is added in the normalised space, as in Bahng et
  al.'s `PadPrompter` (which adds it to the preprocessed image). The
  program starts from a standard normal, as theirs (`torch.randn`), and
  covers the canvas like `ExpansivePrompt`'s; only the border reaches the
  output.

  Attributes:
    image_size: Side `s` of the square target images.
    output_size: Side of the canvas fed to the frozen network.
    pad: Width of the learned border (30 in Bahng et al.).
    dtype: Dtype of the output (see `ExpansivePrompt`).
  """
  image_size: int
  output_size: int = 224
  pad: int = 30
  dtype: Any = jnp.float32

  def __post_init__(self):
    border_mask(self.output_size, self.pad)  # Fails at build, not in a jit.
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Resizes `x` ((..., s, s, 3) in [0, 1]) and adds the border."""
    if x.ndim < 3 or x.shape[-3:] != (self.image_size, self.image_size, 3):
      raise ValueError(
          f"Expected images of shape (..., {self.image_size}, "
          f"{self.image_size}, 3), got {x.shape}.")
    program = self.param(
        "program", nn.initializers.normal(stddev=1.0),
        (self.output_size, self.output_size, 3), jnp.float32)
    mask = jnp.asarray(border_mask(self.output_size, self.pad))
    x = jnp.asarray(x, jnp.float32)
    shape = x.shape[:-3] + (self.output_size, self.output_size, 3)
    # Upsampling: no antialiasing to differ from PyTorch's bilinear.
    resized = jax.image.resize(x, shape, "bilinear", antialias=False)
    out = imagenet_normalize(resized) + program * mask
    return out.astype(self.dtype)


# Prompt kinds by name (`config.prompt`); the PyTorch version has only the
# expansive one.
PROMPTS = {
    "expansive": ExpansivePrompt,
    "padding": PaddingPrompt,
}


def get_prompt(name: str) -> type[nn.Module]:
  """Returns the prompt module class registered under `name`.

  Args:
    name: A key of `PROMPTS`.

  Raises:
    ValueError: If `name` is unknown; the message lists the valid names.
  """
  try:
    return PROMPTS[name]
  except KeyError:
    raise ValueError(
        f"Unknown prompt {name!r}; valid names: {sorted(PROMPTS)}.") from None
