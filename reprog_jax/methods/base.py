"""What every adaptation method is: the `Method` the loop runs, and the
`MethodSpec` the registry (`reprog_jax.methods`) keeps of it.

Every method ends in a mapping: target logits are
`scores[..., mapping_sequence]`, or `scores @ mapping_matrix` for a matrix
mapping (`label_mapping.apply_mapping`). A method whose scores are already
the target logits (linear probing, a trained head of any kind) keeps the
identity mapping, the default.

Most methods are compositions of parts (`methods/parts.py`: an input
transform, a readout and an output), made by `compose.compose`, which
fills in everything here; a method written by hand fills in a `Method` and
a `MethodSpec` itself and states only what it has.
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
# Which claims a method enters (`MethodSpec.family`).
FAMILIES = ("prompt", "probe", "hybrid")


def keep_mapping(epoch, current, seeds, count_pass):
  """The default `epoch_mapping`: no mapping pass, the mapping unchanged."""
  del epoch, seeds, count_pass  # Nothing to recompute.
  return current


def no_pictures(*args) -> dict:
  """The default `pictures`: nothing beyond the loop's own figures."""
  del args  # Reliability and curves (the loop's) say it all.
  return {}


@dataclasses.dataclass(frozen=True)
class Method:
  """What one adaptation method trains and computes.

  Only `name`, `init`, `scores` and `num_scores` are required; the rest
  default to a method without a label mapping: the identity mapping, no
  mapping pass, no pictures of its own, no frozen encoder.

  Attributes:
    name: the registry key.
    init: `rng -> trainable` initial values (one seed's).
    scores: `(trainable, network, inputs) -> (N, num_scores)`, float32;
      target logits are `label_mapping.apply_mapping(scores, mapping)`.
    num_scores: K, the width of `scores`.
    initial_mapping: the mapping before any epoch: (T,) int32, a sequence,
      or (K, T) float32, a matrix; every epoch's has its shape and dtype.
      Default (None): the identity, `arange(num_scores)` (scores are the
      target logits).
    epoch_mapping: the mapping sequence of each epoch (see `EpochMapping`);
      default: the current one, unchanged, and no mapping pass.
    pictures: `(plot_dir, trainable, test_counts, mapping_sequence,
      examples, class_names, title) -> {tag: png path}` for one seed: what
      the method draws after an epoch; `test_counts` is the (K, T) count of
      (argmax score, label) over the test split, `examples` a few [0, 1]
      test images, `title` the first title line(s) of every figure.
      Default: nothing.
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
  initial_mapping: np.ndarray | None = None
  epoch_mapping: EpochMapping = keep_mapping
  pictures: Callable[..., dict] = no_pictures
  encode: Callable[..., jax.Array] | None = None
  mapping_statistic: Callable[..., jax.Array] | None = None

  def __post_init__(self):
    if self.initial_mapping is None:  # The identity: scores are the logits.
      object.__setattr__(self, "initial_mapping",
                         np.arange(self.num_scores, dtype=np.int32))


def _no_fields(config) -> None:
  del config  # The base config's fields are all this method needs.


def _no_variant(config) -> str:
  del config  # One form only.
  return ""


def _no_problem(config, image_size) -> None:
  del config, image_size  # Nothing of its own to check.


def _as_recorded(flat: dict) -> dict:
  return flat


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Everything the package knows of one method, asked by name.

  A method module defines one (`SPEC`, usually by `compose.compose`) and the
  registry (`reprog_jax.methods`) keeps it: the configs, the config checks,
  the loop, the sweep, the report, the exporter and the benchmark ask it,
  so adding a method is adding its module.

  Attributes:
    name: the registry key and `config.method` (e.g. 'ilm_vp').
    short: its directory name in a sweep (e.g. 'vp'); unique, as `name`.
    label: its name in tables and figures (e.g. 'VP').
    family: which of the paper's claims it enters: 'prompt'
      (reprogramming: a learned input and the network's own head; claim 1
      is about these), 'probe' (only a new head, on the untransformed
      input) or 'hybrid' (anything else, e.g. a prompt with a new head:
      tables of its own, never claim 1). A composed method's comes from
      its parts (`parts.Composition.family`); a hand-written one states it.
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
      (seconds on a CPU), after the base fields are shrunk; a smoke study
      applies it to every cell too.
    encodes: whether its `Method` has `encode` (frozen features computed
      once); the benchmark asks this before building anything.
    to_pytorch: `(params, mapping, image_size, config) -> dict`, one seed's
      trained values and mapping (`config`: the run's config as a flat
      dict, or None for the defaults) as the PyTorch version's checkpoint
      holds them: its key names, NumPy arrays in PyTorch's layouts
      (`python -m convert export` turns them into tensors); None: not
      exportable.
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
    comparable: `flat config -> flat config`, a run's recorded config
      (`config.json`, flattened; this version's or an older one's) as this
      version reads it, for deciding whether a run resumes: fields its
      parts do not use dropped, values an older version left implicit made
      explicit. Applied to both sides of the comparison.
    module: the module that defines it, recorded with every run so that
      export, sweep and report can import it again (`methods.find`);
      `methods.register` fills it in from its caller when None.
    parts: the `parts.Composition` it was composed of, or None (written
      by hand).
  """

  name: str
  short: str
  label: str
  family: str | None = None
  build: Callable[..., Method] | None = None
  configure: Callable[[Any], None] = _no_fields
  check: Callable[[Any, int], str | None] = _no_problem
  smoke: Callable[[Any], None] = _no_fields
  encodes: bool = False
  to_pytorch: Callable[[dict, np.ndarray, int, dict], dict] | None = None
  torch_reference: str | None = None

  variant: Callable[[Any], str] = _no_variant
  variant_fields: tuple[str, ...] = ()
  comparable: Callable[[dict], dict] = _as_recorded
  module: str | None = None
  parts: Any = None

  def __post_init__(self):
    family = self.family
    if self.parts is not None:
      family = self.parts.family
      if self.family not in (None, family):
        raise errors.ConfigError(
            f"method {self.name!r}: family {self.family!r} contradicts its "
            f"parts' {family!r}; leave family out of a composed method")
      object.__setattr__(self, "family", family)
    if family not in FAMILIES:
      raise errors.ConfigError(
          f"method {self.name!r}: family {family!r} is not one of "
          f"{', '.join(FAMILIES)}")

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
