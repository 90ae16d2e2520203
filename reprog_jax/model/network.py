"""A frozen source network as one pytree, and its forward pass.

A `Network` is one pytree (the module static, the frozen `params`,
`batch_stats` and `masks` as leaves), kept apart from anything trained:
training code passes it whole to its jitted steps.

    from reprog_jax.model import network_dir
    net = network_dir.load("runs/resnet50")
    logits = net.logits(x)        # x: float32 NHWC, ImageNet-normalised
    feats = net.features(x)       # (N, 2048) pooled features for LP
    print(net.sparsity()["remaining_percent"])

The directory format (`save`, `load`) is `network_dir.py`; a summary and a
prediction of a directory is `python -m convert inspect DIR [--image PATH]`.
"""

import functools
import json
from importlib import resources
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from reprog_jax.model import masks as masks_lib
from reprog_jax.model import resnet

# What every network description (`meta`) says it is; `network_dir` writes
# and checks it.
FORMAT = "reprog-jax-network"
FORMAT_VERSION = 1


def imagenet_classes() -> list[str]:
  """The 1000 ImageNet class names, in torchvision's index order."""
  text = resources.files("reprog_jax.model").joinpath("imagenet_classes.txt")
  return text.read_text().splitlines()


def class_names(network) -> list[str]:
  """A network's output classes, in order: `meta['class_names']` if it
  names them, ImageNet's for 1000 outputs, else '0', '1', ..."""
  names = network.meta.get("class_names")
  if names:
    return list(names)
  num_classes = network.model.num_classes
  if num_classes == 1000:
    return imagenet_classes()
  return [str(i) for i in range(num_classes)]


def abstract_variables(arch: str, num_classes: int = 1000):
  """Shapes and dtypes of `{'params', 'batch_stats'}` for `arch`, no compute."""
  model = resnet.get_architecture(arch)(num_classes=num_classes)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


@flax.struct.dataclass
class Network:
  """A frozen network (dense or lottery ticket) as one pytree.

  The module is static (part of the jit cache key); the three trees are
  device-resident leaves, passed whole to every jitted step, so one
  compiled program serves any ticket of the same architecture and nothing
  is baked into a program as a constant. (`meta_json` is static too: a
  network with another description is traced again, and its program,
  the same, is found in the persistent compilation cache.)

  Attributes:
    model: the flax `ResNet` (static); its `dtype` is the compute dtype.
    params, batch_stats: the network's trees.
    masks: the mask tree (see `masks.py`): 0/1 on the prunable kernels,
      `None` elsewhere; all ones for a dense network.
    meta_json: the directory's `meta.json`, as text (static and hashable);
      read it through `meta`.
  """

  model: Any = flax.struct.field(pytree_node=False)
  params: Any
  batch_stats: Any
  masks: Any
  meta_json: str = flax.struct.field(pytree_node=False, default="{}")

  @property
  def meta(self) -> dict:
    """The network's description (`meta.json`)."""
    return json.loads(self.meta_json)

  @property
  def arch(self) -> str:
    return self.meta["arch"]

  def with_dtype(self, dtype) -> "Network":
    """The same network computing in `dtype` (parameters stay float32)."""
    if jnp.dtype(self.model.dtype) == jnp.dtype(dtype):
      return self
    return self.replace(model=self.model.clone(dtype=dtype))

  def logits(self, x) -> jax.Array:
    """(N, num_classes) float32 logits of ImageNet-normalised NHWC `x`."""
    return forward(self, jnp.asarray(x, jnp.float32))

  def features(self, x) -> jax.Array:
    """(N, num_features) pooled features, the input of a linear probe."""
    return forward(self, jnp.asarray(x, jnp.float32), features_only=True)

  def sparsity(self) -> dict:
    """The sparsity report (see `masks.sparsity`)."""
    return masks_lib.sparsity(self.params, self.masks)


@functools.partial(jax.jit, static_argnames=("features_only",))
def forward(network: Network, x, features_only=False):
  """The frozen forward pass, masks applied, as one jitted function.

  Args:
    network: the `Network` (module static, trees as arguments).
    x: float (N, H, W, 3), ImageNet-normalised.
    features_only: return pooled features instead of logits.
  """
  variables = {"params": masks_lib.apply(network.params, network.masks),
               "batch_stats": network.batch_stats}
  return network.model.apply(variables, x, features_only=features_only)


def make_network(model, params, batch_stats, masks, meta: dict) -> Network:
  """Puts the trees on the default device and wraps them as a `Network`."""
  return Network(model=model, params=jax.device_put(params),
                 batch_stats=jax.device_put(batch_stats),
                 masks=jax.device_put(masks),
                 meta_json=json.dumps(meta, sort_keys=True))


# Kept per process: the same arguments give the same (frozen) network, and
# tracing the initialisation costs seconds per call (compiling it more: a
# process other than 0 of a multi-process run never finds it in XLA's
# persistent cache, which only process 0 writes). Only concrete networks
# are kept: one made inside a transformation (`jax.eval_shape` of a
# function that calls this) holds tracers that must not outlive it.
_RANDOM_NETWORKS: dict = {}
_RANDOM_NETWORKS_KEPT = 2


def random_network(arch: str, seed: int = 0, dtype=jnp.float32) -> Network:
  """A randomly initialised dense network, for smoke runs without a file.

  Flax's initialisation, identity BatchNorm statistics; its predictions mean
  nothing. Its `meta` says so (`sources.weights.random_init`).
  """
  key = (arch, seed, jnp.dtype(dtype).name)
  if key in _RANDOM_NETWORKS:
    return _RANDOM_NETWORKS[key]
  network = _new_random_network(arch, seed, dtype)
  if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(
      (network.params, network.batch_stats, network.masks))):
    if len(_RANDOM_NETWORKS) >= _RANDOM_NETWORKS_KEPT:
      del _RANDOM_NETWORKS[next(iter(_RANDOM_NETWORKS))]  # The oldest.
    _RANDOM_NETWORKS[key] = network
  return network


def _new_random_network(arch: str, seed: int, dtype) -> Network:
  model = resnet.get_architecture(arch)(dtype=dtype)
  variables = jax.jit(model.init)(jax.random.key(seed),
                                  jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
          "num_classes": 1000, "dense": True, "ticket": None,
          "sources": {"weights": {"random_init": True, "seed": seed,
                                  "initialiser": "flax"}}}
  return make_network(model, params, variables["batch_stats"],
                      masks_lib.dense(params), meta)
