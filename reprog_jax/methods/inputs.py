"""Input transforms: what the frozen network sees of a [0, 1] image.

- `NONE`: the image as the loader gives it (resized to `image_size`, 224
  by default, as the PyTorch version's linear probing), ImageNet-normalised.
- `EXPANSIVE`: ILM-VP's prompt (`prompts.ExpansivePrompt`): the image at
  `image_size` (unset: the dataset's 32 or 128) in the middle of a
  `prompt_output_size` canvas, a learned sigmoid frame around it.
- `PADDING`: Bahng et al.'s prompt (`prompts.PaddingPrompt`): the image
  resized to the canvas, a learned border `pad` pixels wide added on it.
- `PROMPT`: `EXPANSIVE` or `PADDING`, as `config.prompt` says (default
  'expansive').

Each prompt trains one array, `program` (H, W, 3), and exports it with its
mask as the PyTorch version's `visual_prompt_dict` (or
`padding_prompt_dict`), NCHW.
"""

import os

import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from reprog_jax.methods import parts
from reprog_jax.metrics import prompt_plots
from reprog_jax.model import prompts

# The prompt's trained array, in the method's trained values.
PROGRAM = "program"


def _plain_fields(config):
  # Images are resized to this side and ImageNet-normalised, no
  # augmentation, as the PyTorch version's linear probing.
  config.image_size = 224


def _plain_smoke(config):
  config.image_size = 64


def _plain(config, image_size) -> parts.BuiltInput:
  del config, image_size  # Nothing to build: normalisation only.
  return parts.BuiltInput(
      apply=lambda trained, images: prompts.imagenet_normalize(images))


NONE = parts.Input(name="none", transforms=False, build=_plain,
                   configure=_plain_fields, smoke=_plain_smoke)


def _canvas_fields(config):
  # The target image's side inside the canvas; None: the dataset's (32 or
  # 128), also after --config.data.name=... overrides.
  config.image_size = config_dict.placeholder(int)
  config.prompt_output_size = 224  # What the frozen network sees.


def _canvas_smoke(config):
  config.prompt_output_size = 64  # Fully convolutional: any size runs.


def _check_canvas(config, image_size):
  if not 0 < image_size <= config.prompt_output_size:
    return (f"image_size {image_size} must be in "
            f"[1, prompt_output_size={config.prompt_output_size}]")
  return None


def _prompt_input(module, image_size, pictures) -> parts.BuiltInput:
  """A prompt module as an input part: `program` trained, from `rng`."""

  def init(rng):
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return dict(module.init(rng, dummy)["params"])

  def apply(trained, images):
    # The prompt computes in float32; the network casts to its dtype.
    return module.apply({"params": {PROGRAM: trained[PROGRAM]}}, images)

  def draw(plot_dir, trained, examples, title):
    paths = pictures(plot_dir, trained, title)
    # What the frozen network sees: test images inside the learned prompt.
    paths["prompted_examples"] = os.path.join(plot_dir,
                                              "prompted_examples.png")
    prompt_plots.plot_prompted_examples(
        np.asarray(apply(trained, examples)), paths["prompted_examples"],
        columns=4, title=title)
    return paths

  return parts.BuiltInput(apply=apply, init=init, pictures=draw)


def _chw(array):
  return np.ascontiguousarray(np.transpose(array, (2, 0, 1)))


def _expansive(config, image_size) -> parts.BuiltInput:
  module = prompts.ExpansivePrompt(image_size=image_size,
                                   output_size=config["prompt_output_size"])

  def frame(plot_dir, trained, title):  # A sigmoid frame: its own picture.
    path = os.path.join(plot_dir, "prompt.png")
    prompt_plots.plot_prompt(np.asarray(trained[PROGRAM]), image_size, path,
                             title=title)
    return {"prompt": path}

  return _prompt_input(module, image_size, frame)


def _export_expansive(params, image_size, config):
  """`visual_prompt_dict`: `program` and `mask`, (3, H, W) float32, what
  the PyTorch version's `ExpansiveVisualPrompt` loads (`normalize(pad(x) +
  sigmoid(program) * mask)`)."""
  del config  # The image side and the program's say it all.
  program = np.asarray(params[PROGRAM], np.float32)  # (H, W, 3)
  mask = np.broadcast_to(prompts.frame_mask(image_size, program.shape[0]),
                         program.shape)
  return {"visual_prompt_dict": {"program": _chw(program),
                                 "mask": _chw(mask)}}


EXPANSIVE = parts.Input(
    name="expansive", transforms=True, build=_expansive,
    export=_export_expansive, configure=_canvas_fields, check=_check_canvas,
    smoke=_canvas_smoke)


def _padding_fields(config):
  _canvas_fields(config)
  config.pad = 30  # The border's width (Bahng et al.'s --prompt_size).


def _padding_smoke(config):
  _canvas_smoke(config)
  config.pad = 8


def _check_padding(config, image_size):
  problem = _check_canvas(config, image_size)
  if problem:
    return problem
  pad = config.get("pad", 30)  # A config from before the padding prompt.
  if not 0 < pad <= config.prompt_output_size // 2:
    return (f"pad {pad} must be in [1, prompt_output_size // 2 = "
            f"{config.prompt_output_size // 2}]")
  return None


def _padding(config, image_size) -> parts.BuiltInput:
  module = prompts.PaddingPrompt(image_size=image_size,
                                 output_size=config["prompt_output_size"],
                                 pad=config.get("pad", 30))
  return _prompt_input(module, image_size, lambda *args: {})


def _export_padding(params, image_size, config):
  """`padding_prompt_dict`: the same arrays for `normalize(resize(x)) +
  program * mask` (bilinear, `align_corners=False`)."""
  del image_size  # The whole image is resized to the canvas.
  program = np.asarray(params[PROGRAM], np.float32)
  mask = np.broadcast_to(prompts.border_mask(program.shape[0],
                                             config.get("pad", 30)),
                         program.shape)
  return {"padding_prompt_dict": {"program": _chw(program),
                                  "mask": _chw(mask)}}


PADDING = parts.Input(
    name="padding", transforms=True, build=_padding, export=_export_padding,
    configure=_padding_fields, check=_check_padding, smoke=_padding_smoke)

# `config.prompt` ('expansive' or 'padding') picks the prompt.
PROMPT = parts.choice("prompt", "expansive",
                      {"expansive": EXPANSIVE, "padding": PADDING})
