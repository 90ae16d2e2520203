"""Linear probing (`linear_probe`): a new linear head on the frozen
network's pooled features. Those features depend on nothing trained
(`encode`), so the loop may compute them once and train on them.

Everything about it is here, in `SPEC`: its `Method` (`linear_probe`), its
config field, its smoke size, its PyTorch export layout and its benchmark
reference."""

import jax
import jax.numpy as jnp
import numpy as np

from reprog_jax.methods.base import Method, MethodSpec
from reprog_jax.model import network as network_lib
from reprog_jax.model import prompts


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
    return network_lib.forward(network, prompts.imagenet_normalize(images),
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


def _build(config, network, num_classes, image_size):
  del config, image_size  # Only the feature width matters.
  return linear_probe(network.model.num_features, num_classes)


def _configure(config):
  # Images are resized to this side and ImageNet-normalised, no
  # augmentation, as the PyTorch version's linear probing.
  config.image_size = 224


def _smoke(config):
  config.image_size = 64


def _to_pytorch(params, mapping_sequence, image_size, config=None):
  """The PyTorch version's `fc_dict` (what its `network.fc` loads: `weight`
  (T, F) and `bias` (T,), float32); the mapping is the identity."""
  del mapping_sequence, image_size, config  # The head is all there is.
  # Ours is (in, out), as Flax's Dense; torch.nn.Linear's weight is (out, in).
  return {"fc_dict": {
      "weight": np.ascontiguousarray(
          np.asarray(params["kernel"], np.float32).T),
      "bias": np.asarray(params["bias"], np.float32)}}


SPEC = MethodSpec(
    name="linear_probe", short="lp", label="LP", family="probe",
    build=_build, configure=_configure, smoke=_smoke, encodes=True,
    to_pytorch=_to_pytorch,
    torch_reference="reprog_jax.tools.torch_reference:build_head_reference")
