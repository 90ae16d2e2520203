"""What every adaptation method is: the `Method` the loop runs, and the
`MethodSpec` the registry (`reprog_jax.methods`) keeps of it.

Every method ends in a mapping: target logits are
`scores[..., mapping_sequence]`, or `scores @ mapping_matrix` for a matrix
mapping (`label_mapping.apply_mapping`). A method whose scores are already
the target logits (linear probing, ILM-VP with FullyMap) keeps the identity
mapping.
"""

import dataclasses
import importlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from reprog_jax import errors

Trainable = Any
# (epoch, current mappings, seeds, count_pass) -> mappings, each (S, T)
# sequences or (S, K, T) matrices. `count_pass()` runs the network over
# each seed's training set and returns the (S, num_scores, T) sums of the
# method's `mapping_statistic` (by default, counts of (argmax score, label)
# pairs).
EpochMapping = Callable[[int, np.ndarray, Sequence[int],
                         Callable[[], np.ndarray]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Method:
  """What one adaptation method trains and computes.

  Attributes:
    name: the registry key.
    init: `rng -> trainable` initial values (one seed's).
    scores: `(trainable, network, inputs) -> (N, num_scores)`, float32;
      target logits are `label_mapping.apply_mapping(scores, mapping)`.
    num_scores: K, the width of `scores`.
    initial_mapping: the mapping before any epoch: (T,) int32, a sequence,
      or (K, T) float32, a matrix; every epoch's has its shape and dtype.
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
    mapping_statistic: `(scores, labels, num_classes, mask) -> (K, T)`
      float32, what the mapping pass sums over each seed's training set for
      `epoch_mapping` (BLM++'s top-k probabilities); None: the int32 counts
      of (argmax score, label), `label_mapping.count_matrix`.
  """

  name: str
  init: Callable[[jax.Array], Trainable]
  scores: Callable[..., jax.Array]
  num_scores: int
  initial_mapping: np.ndarray
  epoch_mapping: EpochMapping
  pictures: Callable[..., dict]
  encode: Callable[..., jax.Array] | None = None
  mapping_statistic: Callable[..., jax.Array] | None = None


def _no_fields(config) -> None:
  del config  # The base config's fields are all this method needs.


def _no_variant(config) -> str:
  del config  # One form only.
  return ""


def _no_problem(config, image_size) -> None:
  del config, image_size  # Nothing of its own to check.


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Everything the package knows of one method, asked by name.

  A method module defines one (`SPEC`) and the registry
  (`reprog_jax.methods`) keeps it: the configs, the config checks, the
  loop, the sweep, the report, the exporter and the benchmark ask it, so
  adding a method is adding its module.

  Attributes:
    name: the registry key and `config.method` (e.g. 'ilm_vp').
    short: its directory name in a sweep (e.g. 'vp').
    label: its name in tables and figures (e.g. 'VP').
    family: 'prompt' (reprogramming: the network's own head, a learned
      input; the paper's claim 1 is about these) or 'probe' (a new head).
    build: `(config, network, num_classes, image_size) -> Method`.
    configure: `config -> None`, adds the method's own fields, with their
      defaults, to the base config (`train.run_config.base_config`);
      `image_size`, the loader's image side, is one of them (unset: the
      dataset's reprogramming size, 32 or 128).
    check: `(config, image_size) -> problem or None`: one line saying what
      is wrong with the method's fields (it may also raise
      `errors.ConfigError` itself); `image_size` is the side the loader
      will use.
    smoke: `config -> None`, shrinks the method's fields for a smoke run
      (seconds on a CPU), after the base fields are shrunk.
    encodes: whether its `Method` has `encode` (frozen features computed
      once); the benchmark asks this before building anything.
    to_pytorch: `(params, mapping, image_size, config) -> dict`, one seed's
      trained values and mapping (`config`: the run's config as a dict) as
      the PyTorch version's checkpoint holds them: its key names, NumPy
      arrays in PyTorch's layouts (`python -m convert export` turns them
      into tensors); None: not exportable.
    torch_reference: 'module:function' naming a builder of the method's
      PyTorch reference step, `(config, torch_network, mapping_sequence,
      image_size, device, amp) -> reference` (see
      `reprog_jax.tools.torch_reference`); a name, imported only when the
      benchmark asks, so that this package never imports torch. None: no
      reference.
    variant: `config -> str`, which variant of the method a config (a
      ConfigDict or its JSON dict) runs: '' for the method's defaults,
      else a short name ('blmpp', 'padding'); the sweep puts it in a cell's
      directory name and the report tests the claims per variant.
    variant_fields: the config fields a study may vary per cell
      (`label_mapping` and `prompt` for ILM-VP).
  """

  name: str
  short: str
  label: str
  family: str
  build: Callable[..., Method]
  configure: Callable[[Any], None] = _no_fields
  check: Callable[[Any, int], str | None] = _no_problem
  smoke: Callable[[Any], None] = _no_fields
  encodes: bool = False
  to_pytorch: Callable[[dict, np.ndarray, int, dict], dict] | None = None
  torch_reference: str | None = None

  variant: Callable[[Any], str] = _no_variant
  variant_fields: tuple[str, ...] = ()

  def torch_reference_builder(self) -> Callable[..., Any]:
    """The function `torch_reference` names, imported now.

    Raises:
      errors.ConfigError: the method has no PyTorch reference.
    """
    if not self.torch_reference:
      raise errors.ConfigError(
          f"method {self.name!r} has no PyTorch reference step")
    module, function = self.torch_reference.split(":")
    return getattr(importlib.import_module(module), function)
