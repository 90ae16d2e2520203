"""ILM-VP (`ilm_vp`): a learned prompt in front of the frozen network, and
a label mapping from its 1000 ImageNet classes to the target's.

Both are options of this one method (its name and its sweep directory `vp`
stay those of the paper's ILM-VP):

- `config.label_mapping`: 'ilm' (default), 'flm', 'rlm' (one-to-one
  sequences, the paper's), 'blm', 'blmpp' (Bayesian-guided matrices, Cai et
  al. 2024) or 'fullymap' (a Dense S -> T trained with the prompt, AutoVP);
  see `model/label_mapping.py`.
- `config.prompt`: 'expansive' (default: a frame around the downsized image,
  the paper's) or 'padding' (Bahng et al. 2022: the image resized to the
  canvas, a learned border on it); see `model/prompts.py`.

Everything about it is here, in `SPEC`: its `Method` (`visual_prompt`), its
config fields and checks, its smoke sizes, its PyTorch export layout and
its benchmark reference."""

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from reprog_jax import errors
from reprog_jax.methods.base import Method, MethodSpec
from reprog_jax.metrics import mapping_plot
from reprog_jax.metrics import prompt_plots
from reprog_jax.model import label_mapping
from reprog_jax.model import network as network_lib
from reprog_jax.model import prompts

# BLM's and BLM++'s Laplace term when `config.lap` is unset (the issue's
# defaults; the published BLM++ config uses 1).
DEFAULT_LAP = {"blm": 1.0, "blmpp": 0.0}
# FullyMap's trained values, beside the prompt's `program`: target logits
# are `source_logits @ kernel + bias`.
KERNEL, BIAS = "mapping_kernel", "mapping_bias"


def visual_prompt(image_size: int, num_classes: int, output_size: int = 224,
                  mapping: str = "ilm", mapping_interval: int = 1,
                  source_class_names: Sequence[str] | None = None, *,
                  prompt: str = "expansive", pad: int = 30,
                  lap: float | None = None, top_k: int = 3) -> Method:
  """A learned prompt and a label mapping.

  Args:
    image_size: the target images' side (32 or 128 in the paper).
    num_classes: T, the target classes (at most the source classes for a
      one-to-one mapping).
    output_size: the canvas the network sees (224 in the paper).
    mapping: a key of `label_mapping.LABEL_MAPPINGS`.
    mapping_interval: ILM, BLM and BLM++ remap every this many epochs.
    source_class_names: the network's output classes, in order; None:
      ImageNet's 1000.
    prompt: 'expansive' or 'padding' (`prompts.PROMPTS`).
    pad: the padding prompt's border width.
    lap: BLM's Laplace term; None: 1 for BLM, 0 for BLM++.
    top_k: BLM++'s top-k.
  """
  if source_class_names is None:
    source_class_names = network_lib.imagenet_classes()
  num_source = len(source_class_names)
  kind = label_mapping.get_label_mapping(mapping)
  if kind.form == "sequence" and num_classes > num_source:
    raise errors.ConfigError(
        f"{num_classes} classes; ILM-VP maps each to a distinct source "
        f"class, so at most the network's {num_source} (or pass "
        f"--config.label_mapping=blm, blmpp or fullymap)")
  if prompt == "padding":
    module = prompts.PaddingPrompt(image_size=image_size,
                                   output_size=output_size, pad=pad)
  else:
    module = prompts.ExpansivePrompt(image_size=image_size,
                                     output_size=output_size)
  if lap is None:
    lap = DEFAULT_LAP.get(mapping, 0.0)
  learned = kind.form == "learned"

  def init(rng):
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    params = dict(module.init(rng, dummy)["params"])
    if learned:  # torch.nn.Linear's default init, as AutoVP's (ResNets).
      bound = 1.0 / np.sqrt(num_source)
      kernel_rng, bias_rng = jax.random.split(jax.random.fold_in(rng, 1))
      params[KERNEL] = jax.random.uniform(
          kernel_rng, (num_source, num_classes), jnp.float32, -bound, bound)
      params[BIAS] = jax.random.uniform(bias_rng, (num_classes,),
                                        jnp.float32, -bound, bound)
    return params

  def prompted(trainable, images):
    return module.apply({"params": {"program": trainable["program"]}},
                        images)

  def scores(trainable, network, images):
    # The prompt computes in float32; the network casts to its dtype.
    source = network_lib.forward(network, prompted(trainable, images))
    if not learned:
      return source
    return jnp.matmul(source.astype(jnp.float32), trainable[KERNEL],
                      precision=jax.lax.Precision.HIGHEST) + trainable[BIAS]

  epoch_mapping, initial = _mapping_schedule(kind, mapping_interval,
                                             num_classes, num_source, lap)

  def pictures(plot_dir, trainable, test_counts, mapping, examples,
               class_names, title):
    paths = {"label_mapping": os.path.join(plot_dir, "label_mapping.png")}
    if learned or label_mapping.is_matrix(mapping):
      matrix = trainable[KERNEL] if learned else mapping
      mapping_plot.plot_mapping_matrix(
          np.asarray(matrix), class_names, source_class_names,
          paths["label_mapping"], title=title,
          what="Dense kernel weight" if learned else "BLM weight")
    else:
      prompt_plots.plot_label_mapping(test_counts, mapping, class_names,
                                      source_class_names,
                                      paths["label_mapping"], title=title)
    if prompt == "expansive":  # A sigmoid frame: its own picture.
      paths["prompt"] = os.path.join(plot_dir, "prompt.png")
      prompt_plots.plot_prompt(np.asarray(trainable["program"]), image_size,
                               paths["prompt"], title=title)
    # What the frozen network sees: test images inside the learned prompt.
    paths["prompted_examples"] = os.path.join(plot_dir,
                                              "prompted_examples.png")
    prompt_plots.plot_prompted_examples(
        np.asarray(prompted(trainable, examples)),
        paths["prompted_examples"], columns=4, title=title)
    return paths

  statistic = None
  if kind.statistic == "top_k":
    statistic = functools.partial(_topk_statistic, top_k=top_k)
  return Method("ilm_vp", init, scores,
                num_classes if learned else num_source, initial,
                epoch_mapping, pictures, mapping_statistic=statistic)


def _topk_statistic(scores, labels, num_classes, mask, *, top_k):
  return label_mapping.topk_probability_matrix(scores, labels, num_classes,
                                               mask, top_k=top_k)


def _mapping_schedule(kind, mapping_interval, num_classes, num_source, lap):
  """(epoch_mapping, initial mapping) of a label-mapping kind."""
  if kind.form == "learned":  # The Dense layer maps; the rest is identity.
    identity = np.arange(num_classes, dtype=np.int32)
    return (lambda epoch, current, seeds, count_pass: current), identity
  if kind.form == "bayesian":
    initial = np.zeros((num_source, num_classes), np.float32)
    blm = jax.jit(jax.vmap(functools.partial(label_mapping.bayesian_matrix,
                                             lap=lap)))
    remap = lambda seeds, count_pass: np.asarray(blm(count_pass()))
  else:
    initial = np.zeros(num_classes, np.int32)
    greedy = jax.jit(jax.vmap(label_mapping.greedy_mapping))

    def remap(seeds, count_pass):
      if kind.from_predictions:
        return np.asarray(greedy(count_pass()))
      return np.stack([np.asarray(label_mapping.rlm(s, num_classes,
                                                    num_source))
                       for s in seeds])

  def epoch_mapping(epoch, current, seeds, count_pass):
    if not kind.is_mapping_epoch(epoch, mapping_interval):
      return current
    return remap(seeds, count_pass)

  return epoch_mapping, initial


def _build(config, network, num_classes, image_size):
  # The prompt works in front of any network; the mapping needs its classes.
  return visual_prompt(image_size, num_classes, config.prompt_output_size,
                       config.label_mapping, config.mapping_interval,
                       network_lib.class_names(network),
                       **_variant_fields(config))


def _variant_fields(config) -> dict:
  """The prompt and label-mapping options of `config`, their defaults where
  it lacks them (a config built before they existed)."""
  return {"prompt": config.get("prompt", "expansive"),
          "pad": config.get("pad", 30), "lap": config.get("lap"),
          "top_k": config.get("top_k", 3)}


def _configure(config):
  # The target image's side inside the frame; None: the dataset's (32 or
  # 128), also after --config.data.name=... overrides.
  config.image_size = config_dict.placeholder(int)
  config.prompt_output_size = 224  # What the frozen network sees.
  # 'ilm', 'flm' (once), 'rlm' (random), 'blm', 'blmpp' or 'fullymap'.
  config.label_mapping = "ilm"
  config.mapping_interval = 1  # ILM, BLM, BLM++: remap every this many.
  config.lap = config_dict.placeholder(float)  # BLM(++): None: 1 / 0.
  config.top_k = 3  # BLM++: each example's most probable sources counted.
  config.prompt = "expansive"  # Or 'padding' (Bahng et al.).
  config.pad = 30  # The padding prompt's border width.


def _check(config, image_size):
  label_mapping.get_label_mapping(config.label_mapping)  # Lists the names.
  fields = _variant_fields(config)
  if fields["prompt"] not in prompts.PROMPTS:
    raise errors.ConfigError(
        f"config: prompt {fields['prompt']!r} is not one of "
        f"{', '.join(prompts.PROMPTS)}")
  if config.mapping_interval < 1:
    return f"mapping_interval must be >= 1, got {config.mapping_interval}"
  if not 0 < image_size <= config.prompt_output_size:
    return (f"image_size {image_size} must be in "
            f"[1, prompt_output_size={config.prompt_output_size}]")
  if fields["prompt"] == "padding" and not (
      0 < fields["pad"] <= config.prompt_output_size // 2):
    return (f"pad {fields['pad']} must be in [1, prompt_output_size // 2 = "
            f"{config.prompt_output_size // 2}]")
  if fields["lap"] is not None and not fields["lap"] >= 0:
    return f"lap must be >= 0, got {fields['lap']}"
  if not 1 <= fields["top_k"] <= label_mapping.NUM_IMAGENET_CLASSES:
    return f"top_k must be in [1, 1000], got {fields['top_k']}"
  return None


# The variant fields and their defaults: a run with other values is a
# variant of ILM-VP, e.g. 'blmpp' or 'blmpp-padding' (`MethodSpec.variant`).
VARIANT_DEFAULTS = (("label_mapping", "ilm"), ("prompt", "expansive"))


def _variant(config):
  return "-".join(str(config.get(field)) for field, default in
                  VARIANT_DEFAULTS if config.get(field, default) != default)


def _smoke(config):
  config.prompt_output_size = 64  # Fully convolutional: any size runs.
  config.pad = 8


def _to_pytorch(params, mapping, image_size, config=None):
  """One seed's prompt and mapping as PyTorch tensors' arrays.

  `visual_prompt_dict`: `program` and `mask`, (3, H, W) float32, what the
  PyTorch version's `ExpansiveVisualPrompt` loads (`normalize(pad(x) +
  sigmoid(program) * mask)`); for the padding prompt the same arrays as
  `padding_prompt_dict`, for `normalize(resize(x)) + program * mask`.
  The mapping: `mapping_sequence` (T,) int64 (`logits[:, seq]`),
  `mapping_matrix` (S, T) float32 (BLM's key: `logits @ matrix`), or for
  FullyMap `output_mapping_dict` (`weight` (T, S), `bias` (T,): a
  `torch.nn.Linear(S, T)` on the logits, AutoVP's `output_mapping.layers`).
  """
  prompt = (config or {}).get("prompt", "expansive")
  program = np.asarray(params["program"], np.float32)  # (H, W, 3)
  if prompt == "padding":
    mask = prompts.border_mask(program.shape[0], config["pad"])
  else:
    mask = prompts.frame_mask(image_size, program.shape[0])
  mask = np.broadcast_to(mask, program.shape)
  chw = lambda a: np.ascontiguousarray(np.transpose(a, (2, 0, 1)))
  key = "padding_prompt_dict" if prompt == "padding" else "visual_prompt_dict"
  out = {key: {"program": chw(program), "mask": chw(mask)}}
  if KERNEL in params:
    out["output_mapping_dict"] = {
        "weight": np.ascontiguousarray(
            np.asarray(params[KERNEL], np.float32).T),
        "bias": np.asarray(params[BIAS], np.float32)}
  elif label_mapping.is_matrix(mapping):
    out["mapping_matrix"] = np.asarray(mapping, np.float32)
  else:
    out["mapping_sequence"] = np.asarray(mapping, np.int64)
  return out


SPEC = MethodSpec(
    name="ilm_vp", short="vp", label="VP", family="prompt", build=_build,
    configure=_configure, check=_check, smoke=_smoke, variant=_variant,
    variant_fields=tuple(field for field, _ in VARIANT_DEFAULTS),
    to_pytorch=_to_pytorch,
    torch_reference="reprog_jax.tools.torch_reference:build_variant_reference")
