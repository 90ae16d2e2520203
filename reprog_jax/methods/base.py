"""What every adaptation method is: the `Method` the loop runs, and the
`MethodSpec` the registry (`reprog_jax.methods`) keeps of it.

Every method ends in a mapping: target logits are
`scores[..., mapping_sequence]`. A method whose scores are already the
target logits (linear probing) keeps the identity mapping.
"""

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

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




@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Everything the package knows of one method, asked by name.

  Attributes:
    name: the registry key and `config.method` (e.g. 'ilm_vp').
    short: its directory name in a sweep (e.g. 'vp').
    label: its name in tables and figures (e.g. 'VP').
    family: 'prompt' (reprogramming: the network's own head, a learned
      input; the paper's claim 1 is about these) or 'probe' (a new head).
    build: `(config, network, num_classes, image_size) -> Method`.
  """

  name: str
  short: str
  label: str
  family: str
  build: Callable[..., Method]
