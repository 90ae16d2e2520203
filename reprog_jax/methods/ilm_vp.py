"""ILM-VP (`ilm_vp`): a learned frame of pixels around the downsized target
image in front of the frozen network, and a label mapping (ILM, FLM or RLM)
from its 1000 ImageNet classes to the target's.

Everything about it is here, in `SPEC`: its `Method` (`visual_prompt`), its
config fields and checks, its smoke sizes, its PyTorch export layout and
its benchmark reference."""

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from reprog_jax import errors
from reprog_jax.methods.base import Method, MethodSpec
from reprog_jax.metrics import plots
from reprog_jax.model import label_mapping
from reprog_jax.model import network as network_lib
from reprog_jax.model import prompts


def visual_prompt(image_size: int, num_classes: int, output_size: int = 224,
                  mapping: str = "ilm", mapping_interval: int = 1,
                  source_class_names: Sequence[str] | None = None) -> Method:
  """ILM-VP: a learned frame around the image and a label mapping.

  Args:
    image_size: the target images' side (32 or 128 in the paper).
    num_classes: T, the target classes (at most the source classes).
    output_size: the canvas the network sees (224 in the paper).
    mapping: 'ilm', 'flm' or 'rlm' (`label_mapping.LABEL_MAPPINGS`).
    mapping_interval: ILM remaps every this many epochs.
    source_class_names: the network's output classes, in order; None:
      ImageNet's 1000.
  """
  if source_class_names is None:
    source_class_names = network_lib.imagenet_classes()
  num_source = len(source_class_names)
  if num_classes > num_source:
    raise errors.ConfigError(
        f"{num_classes} classes; ILM-VP maps each to a distinct source "
        f"class, so at most the network's {num_source}")
  prompt = prompts.ExpansivePrompt(image_size=image_size,
                                   output_size=output_size)
  kind = label_mapping.get_label_mapping(mapping)
  greedy = jax.jit(jax.vmap(label_mapping.greedy_mapping))

  def init(rng):
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return prompt.init(rng, dummy)["params"]

  def scores(trainable, network, images):
    # The prompt computes in float32; the network casts to its dtype.
    return network_lib.forward(network, prompt.apply({"params": trainable},
                                                  images))

  def epoch_mapping(epoch, current, seeds, count_pass):
    if not kind.is_mapping_epoch(epoch, mapping_interval):
      return current
    if kind.from_predictions:
      return np.asarray(greedy(count_pass()))
    return np.stack([np.asarray(label_mapping.rlm(s, num_classes,
                                                  num_source))
                     for s in seeds])

  def pictures(plot_dir, trainable, test_counts, mapping_sequence, examples,
               class_names, title):
    paths = {name: os.path.join(plot_dir, f"{name}.png") for name in
             ("label_mapping", "prompt", "prompted_examples")}
    plots.plot_label_mapping(test_counts, mapping_sequence, class_names,
                             source_class_names, paths["label_mapping"],
                             title=title)
    plots.plot_prompt(np.asarray(trainable["program"]), image_size,
                      paths["prompt"], title=title)
    # What the frozen network sees: test images inside the learned frame.
    plots.plot_prompted_examples(
        np.asarray(prompt.apply({"params": trainable}, examples)),
        paths["prompted_examples"], columns=4, title=title)
    return paths

  return Method("ilm_vp", init, scores, num_source,
                np.zeros(num_classes, np.int32), epoch_mapping, pictures)


def _build(config, network, num_classes, image_size):
  # The prompt works in front of any network; the mapping needs its classes.
  return visual_prompt(image_size, num_classes, config.prompt_output_size,
                       config.label_mapping, config.mapping_interval,
                       network_lib.class_names(network))


def _configure(config):
  # The target image's side inside the frame; None: the dataset's (32 or
  # 128), also after --config.data.name=... overrides.
  config.image_size = config_dict.placeholder(int)
  config.prompt_output_size = 224  # What the frozen network sees.
  config.label_mapping = "ilm"  # 'ilm', 'flm' (once) or 'rlm' (random).
  config.mapping_interval = 1  # ILM: remap every this many epochs.


def _check(config, image_size):
  label_mapping.get_label_mapping(config.label_mapping)  # Lists the names.
  if config.mapping_interval < 1:
    return f"mapping_interval must be >= 1, got {config.mapping_interval}"
  if not 0 < image_size <= config.prompt_output_size:
    return (f"image_size {image_size} must be in "
            f"[1, prompt_output_size={config.prompt_output_size}]")
  return None


def _smoke(config):
  config.prompt_output_size = 64  # Fully convolutional: any size runs.


def _to_pytorch(params, mapping_sequence, image_size):
  """The PyTorch version's `visual_prompt_dict` (what its
  `ExpansiveVisualPrompt.load_state_dict` takes: `program` and `mask`,
  (3, H, W) float32) and `mapping_sequence` ((T,) int64); target logits are
  `network(prompt(x))[:, mapping_sequence]` there."""
  program = np.asarray(params["program"], np.float32)  # (H, W, 3)
  mask = np.broadcast_to(prompts.frame_mask(image_size, program.shape[0]),
                         program.shape)
  chw = lambda a: np.ascontiguousarray(np.transpose(a, (2, 0, 1)))
  return {"visual_prompt_dict": {"program": chw(program), "mask": chw(mask)},
          "mapping_sequence": np.asarray(mapping_sequence, np.int64)}


SPEC = MethodSpec(
    name="ilm_vp", short="vp", label="VP", family="prompt", build=_build,
    configure=_configure, check=_check, smoke=_smoke,
    to_pytorch=_to_pytorch,
    torch_reference="reprog_jax.tools.torch_reference:build_prompt_reference")
