"""The two adaptation methods behind one small interface.

A `Method` says what is trained, how a batch becomes scores, which label
mapping each epoch uses and what pictures it draws; the training loop
(`train.py`) never asks which method runs. The frozen network comes in as
an argument (a `networks.Network` pytree), never closed over, so one
compiled step serves any ticket of the same architecture.

Every method ends in a mapping: target logits are
`scores[..., mapping_sequence]`. ILM-VP's scores are the network's 1000
ImageNet logits and its mapping is a label mapping (ILM, FLM or RLM);
linear probing's scores are already the target logits and its mapping is
the identity.

- ILM-VP (`visual_prompt`): trains the `ExpansivePrompt` program in front
  of the frozen network.
- Linear probing (`linear_probe`): trains a new Dense head on the frozen
  network's pooled features. Those features depend on nothing trained
  (`encode`), so the loop may compute them once and train on them.
"""

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reprog_jax import errors
from reprog_jax import label_mapping
from reprog_jax import networks
from reprog_jax import plots
from reprog_jax import prompts

Trainable = Any
# (epoch, current (S, T) mapping, seeds, count_pass) -> (S, T) mapping.
# `count_pass()` runs the network over each seed's training set and returns
# the (S, num_scores, T) counts of (argmax score, label) pairs.
EpochMapping = Callable[[int, np.ndarray, Sequence[int],
                         Callable[[], np.ndarray]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Method:
  """What one adaptation method trains and computes.

  Attributes:
    name: the registry key.
    init: `rng -> trainable` initial values (one seed's).
    scores: `(trainable, network, inputs) -> (N, num_scores)`, float32;
      target logits are `scores[:, mapping_sequence]`.
    num_scores: K, the width of `scores`.
    initial_mapping: (T,) int32, the mapping before any epoch.
    epoch_mapping: the mapping sequence of each epoch (see `EpochMapping`).
    pictures: `(plot_dir, trainable, test_counts, mapping_sequence,
      examples, class_names, title) -> {tag: png path}` for one seed: what
      the method draws after an epoch; `test_counts` is the (K, T) count of
      (argmax score, label) over the test split, `examples` a few [0, 1]
      test images, `title` the first title line(s) of every figure.
    encode: `(network, images) -> inputs`, the frozen computation before
      anything trained (linear probing's pooled features), or None when
      `scores` takes the images themselves. Its outputs may be computed
      once and cached.
  """

  name: str
  init: Callable[[jax.Array], Trainable]
  scores: Callable[..., jax.Array]
  num_scores: int
  initial_mapping: np.ndarray
  epoch_mapping: EpochMapping
  pictures: Callable[..., dict]
  encode: Callable[..., jax.Array] | None = None


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
    source_class_names = networks.imagenet_classes()
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
    return networks.forward(network, prompt.apply({"params": trainable},
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


def linear_probe(num_features: int, num_classes: int) -> Method:
  """Linear probing: a new `num_classes`-way head on pooled features.

  The head starts as PyTorch's `nn.Linear` default: kernel and bias uniform
  in +-1/sqrt(num_features).
  """

  def init(rng):
    bound = 1.0 / jnp.sqrt(num_features)
    k_kernel, k_bias = jax.random.split(rng)
    return {"kernel": jax.random.uniform(k_kernel, (num_features, num_classes),
                                         jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k_bias, (num_classes,), jnp.float32,
                                       -bound, bound)}

  def encode(network, images):
    return networks.forward(network, prompts.imagenet_normalize(images),
                            features_only=True)

  def scores(trainable, network, features):
    del network  # Everything frozen happened in `encode`.
    return features @ trainable["kernel"] + trainable["bias"]

  def epoch_mapping(epoch, current, seeds, count_pass):
    del epoch, seeds, count_pass  # LP maps nothing: the identity throughout.
    return current

  def pictures(*args):
    del args  # Reliability and curves (the loop's) say it all.
    return {}

  return Method("linear_probe", init, scores, num_classes,
                np.arange(num_classes, dtype=np.int32), epoch_mapping,
                pictures, encode)


def _visual_prompt_from(config, network, num_classes, image_size):
  # The prompt works in front of any network; the mapping needs its classes.
  return visual_prompt(image_size, num_classes, config.prompt_output_size,
                       config.label_mapping, config.mapping_interval,
                       networks.class_names(network))


def _linear_probe_from(config, network, num_classes, image_size):
  del config, image_size  # Only the feature width matters.
  return linear_probe(network.model.num_features, num_classes)


# Method name -> builder `(config, network, num_classes, image_size)`.
METHODS = {
    "ilm_vp": _visual_prompt_from,
    "linear_probe": _linear_probe_from,
}


def build(config, network, num_classes: int, image_size: int) -> Method:
  """The method `config.method` names, for `network` and `num_classes`.

  Raises:
    errors.ConfigError: an unknown method; the message lists the valid
      names.
  """
  try:
    builder = METHODS[config.method]
  except KeyError:
    raise errors.ConfigError(f"config: method {config.method!r} is not one "
                             f"of {', '.join(METHODS)}") from None
  return builder(config, network, num_classes, image_size)

