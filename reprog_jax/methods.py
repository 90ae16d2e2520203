"""The two adaptation methods behind one small interface.

A `Method` says what is trained and how a batch of target images becomes
target logits; the training loop (`train.py`) is shared. Everything frozen —
the network's `params`, `batch_stats` and lottery-ticket `masks` — comes in
as the `frozen` argument (`Network.frozen`), never closed over, so one
compiled step serves any ticket of the same architecture and the trees are
never copied into the program as constants.

- ILM-VP (`visual_prompt`): trains the `ExpansivePrompt` program; the frozen
  network's 1000 source logits are mapped to the target classes by a
  mapping sequence (`label_mapping`).
- Linear probing (`linear_probe`): trains a new Dense head on the frozen
  network's pooled features; no label mapping.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from reprog_jax import label_mapping
from reprog_jax import networks
from reprog_jax import prompts

Trainable = Any
Frozen = dict  # {'params', 'batch_stats', 'masks'}


@dataclasses.dataclass(frozen=True)
class Method:
  """What one adaptation method trains and computes.

  Attributes:
    name: 'ilm_vp' or 'linear_probe'.
    uses_label_mapping: whether `logits` needs a mapping sequence (then
      `logits` is `apply_mapping(source_logits(...), mapping_sequence)`).
    init: `rng -> trainable` initial values.
    network_input: `(trainable, images) -> what the frozen network sees`
      (the prompted canvas for VP, the normalised images for LP).
    logits: `(trainable, frozen, images, mapping_sequence) -> (N, T)` target
      logits; `images` are [0, 1] NHWC; `mapping_sequence` is ignored by
      methods without a label mapping.
    source_logits: `(trainable, frozen, images) -> (N, 1000)`, the frozen
      network's own outputs (what label mappings are computed from), or None.
  """

  name: str
  uses_label_mapping: bool
  init: Callable[[jax.Array], Trainable]
  network_input: Callable[..., jax.Array]
  logits: Callable[..., jax.Array]
  source_logits: Callable[..., jax.Array] | None = None


def _run_network(model, frozen, x, features_only=False):
  return networks.forward(model, frozen["params"], frozen["batch_stats"],
                          frozen["masks"], x, features_only=features_only)


def visual_prompt(model, image_size: int, output_size: int = 224) -> Method:
  """ILM-VP on the frozen `model` (a `resnet.ResNet`).

  Args:
    model: the frozen network's module; its `dtype` is the compute dtype.
    image_size: the target images' side (32 or 128 in the paper).
    output_size: the canvas the network sees (224 in the paper).
  """
  prompt = prompts.ExpansivePrompt(image_size=image_size,
                                   output_size=output_size, dtype=model.dtype)

  def init(rng):
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return prompt.init(rng, dummy)["params"]

  def network_input(trainable, images):
    return prompt.apply({"params": trainable}, images)

  def source_logits(trainable, frozen, images):
    return _run_network(model, frozen, network_input(trainable, images))

  def logits(trainable, frozen, images, mapping_sequence):
    return label_mapping.apply_mapping(
        source_logits(trainable, frozen, images), mapping_sequence)

  return Method("ilm_vp", True, init, network_input, logits, source_logits)


def linear_probe(model, num_classes: int) -> Method:
  """Linear probing: a new `num_classes`-way head on `model`'s features.

  The head starts as PyTorch's `nn.Linear` default: kernel and bias uniform
  in +-1/sqrt(fan_in).
  """
  fan_in = model.num_features

  def init(rng):
    bound = 1.0 / jnp.sqrt(fan_in)
    k_kernel, k_bias = jax.random.split(rng)
    return {"kernel": jax.random.uniform(k_kernel, (fan_in, num_classes),
                                         jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k_bias, (num_classes,), jnp.float32,
                                       -bound, bound)}

  def network_input(trainable, images):
    del trainable  # Nothing trained comes before the network.
    return prompts.imagenet_normalize(images)

  def logits(trainable, frozen, images, mapping_sequence=None):
    del mapping_sequence  # LP maps nothing.
    features = _run_network(model, frozen, network_input(trainable, images),
                            features_only=True)
    return features @ trainable["kernel"] + trainable["bias"]

  return Method("linear_probe", False, init, network_input, logits)
