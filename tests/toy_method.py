"""A toy method from outside the package, written by hand (not from parts:
see `parts_method.py` for that): everything about it in this one module,
registered on import (`REPROG_JAX_METHODS=toy_method`). It states only what
it has (`Method`'s defaults: no pictures, no mapping pass).

Logit bias (`toy_bias`): the frozen network's own ImageNet logits plus a
learned bias per source class; target class t is source class t (a fixed
identity-prefix mapping). Also a config file of its own:
`--config=tests/toy_method.py:smoke`.
"""

import math

import jax.numpy as jnp
import numpy as np

from reprog_jax import methods
from reprog_jax.methods.base import Method, MethodSpec
from reprog_jax.model import network as network_lib
from reprog_jax.model import prompts

NAME = "toy_bias"


def _build(config, network, num_classes, image_size):
  del image_size  # The network sees the images as they come.
  num_source = len(network_lib.class_names(network))

  def init(rng):
    del rng  # Deterministic start: the configured constant.
    return {"bias": jnp.full((num_source,), config.bias_init, jnp.float32)}

  def scores(trainable, network, images):
    logits = network_lib.forward(network, prompts.imagenet_normalize(images))
    return logits.astype(jnp.float32) + trainable["bias"]

  # The mapping never changes: target t is source t.
  return Method(NAME, init, scores, num_source,
                initial_mapping=np.arange(num_classes, dtype=np.int32))


def _configure(config):
  config.image_size = 32
  config.bias_init = 0.0  # Every source class's starting bias.


def _check(config, image_size):
  del image_size
  if not math.isfinite(config.bias_init):
    return f"bias_init must be a finite number, got {config.bias_init}"
  return None


def _smoke(config):
  config.image_size = 16


def _to_pytorch(params, mapping_sequence, image_size, config=None):
  del image_size, config
  return {"bias": np.asarray(params["bias"], np.float32),
          "mapping_sequence": np.asarray(mapping_sequence, np.int64)}


SPEC = MethodSpec(name=NAME, short="toy", label="Toy", family="probe",
                  build=_build, configure=_configure, check=_check,
                  smoke=_smoke, to_pytorch=_to_pytorch)
methods.register(SPEC)


def get_config(arg=None):
  """This method's presets, as `reprog_jax/configs/<method>.py` has."""
  from reprog_jax.train import run_config  # pylint: disable=g-import-not-at-top
  return run_config.method_config(NAME, arg)
