"""Label mappings: which source (ImageNet) class stands for each target class.

A visually prompted network still outputs source logits, shape `(..., S)` with
`S = 1000`. A *mapping sequence* of length `T` (the number of target classes)
picks one distinct source class per target class, and the target logits are
`source_logits[..., mapping_sequence]` (`apply_mapping`).

Three ways to choose it, as in the PyTorch version:

- ILM (iterative label mapping): from the network's predictions over the
  training set with the current prompt, count how often each target class is
  predicted as each source class (`count_matrix`), then match greedily
  (`greedy_mapping`). Recomputed at the start of every epoch with
  `epoch % mapping_interval == 0`.
- FLM (frequency label mapping): the same computation, done once with the
  initial prompt, before training, and then kept.
- RLM (random label mapping): the first `T` entries of a seeded random
  permutation of the source classes (`rlm`).

Beyond one-to-one, a mapping may be a `(S, T)` matrix `W` of weights, and
the target logits `source_logits @ W` (`apply_mapping` takes either; a
one-hot matrix gives the sequence's logits exactly):

- BLM (Bayesian-guided label mapping, Cai et al., NeurIPS 2024): from the
  same counts as ILM, each source row divided by its total plus a Laplace
  term `lap`, then each target column normalised to sum 1
  (`bayesian_matrix`). Recomputed on ILM's schedule.
- BLM++: the same, from the sum over each target class's examples of their
  top-k softmax probabilities (`topk_probability_matrix`) instead of the
  argmax counts.
- FullyMap (AutoVP, Tsao et al., ICLR 2024): a Dense layer S -> T trained
  with the prompt; it is part of the method's scores, not a mapping here.

"Every epoch" versus "once" is the training loop's business; this module only
computes mappings. The counts are a sum over examples, so the loop can run the
network batch by batch, add up `count_matrix` of each batch, and call
`greedy_mapping` on the total.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reprog_jax import errors

NUM_IMAGENET_CLASSES = 1000


def count_matrix(
    source_outputs: jax.Array,
    labels: jax.Array,
    num_classes: int,
    mask: jax.Array | None = None,
    *,
    num_source: int | None = None,
) -> jax.Array:
  """Counts target examples per (predicted source class, target class).

  Entry `[s, t]` is the number of (valid) examples of target class `t` whose
  argmax source class is `s`: the PyTorch version's `dist_matrix`. Counts of
  several batches add up to the counts of their union.

  Unlike the PyTorch version, which builds one column per label present in
  the data, there is always one column per target class; a class without
  examples gets a zero column.

  Args:
    source_outputs: Either source logits of shape `(N, S)` (floating point;
      the argmax over the last axis is taken, first index on ties) or
      integer source predictions of shape `(N,)` (then `num_source` is
      required).
    labels: Integer target labels, shape `(N,)`.
    num_classes: Number of target classes `T`.
    mask: Optional validity mask, shape `(N,)`; examples where it is false
      or 0 are not counted (padding of a last, partial batch). Their labels
      may be anything, even out of range.
    num_source: Number of source classes `S`, for integer predictions only.

  Returns:
    An int32 array of shape `(S, T)`.

  Raises:
    ValueError: On inconsistent shapes or a missing `num_source`.
  """
  source_outputs = jnp.asarray(source_outputs)
  if jnp.issubdtype(source_outputs.dtype, jnp.integer):
    if source_outputs.ndim != 1:
      raise ValueError(
          "Integer source predictions must have shape (N,), got "
          f"{source_outputs.shape}.")
    if num_source is None:
      raise ValueError("num_source is required with integer predictions.")
    predictions = source_outputs
  else:
    if source_outputs.ndim != 2:
      raise ValueError(
          f"Source logits must have shape (N, S), got {source_outputs.shape}.")
    if num_source is not None and num_source != source_outputs.shape[-1]:
      raise ValueError(
          f"num_source={num_source} disagrees with the logits' last axis "
          f"({source_outputs.shape[-1]}).")
    num_source = source_outputs.shape[-1]
    predictions = jnp.argmax(source_outputs, axis=-1)
  labels = jnp.asarray(labels)
  if labels.shape != predictions.shape:
    raise ValueError(
        f"labels must have shape {predictions.shape}, got {labels.shape}.")
  if mask is None:
    weights = jnp.ones(predictions.shape, jnp.int32)
  else:
    weights = jnp.asarray(mask).astype(bool).astype(jnp.int32)
  # Masked-out examples add 0 wherever their (maybe out-of-range) label
  # points; "drop" also keeps an index past the end from being clamped.
  return jnp.zeros((num_source, num_classes), jnp.int32).at[
      predictions, labels].add(weights, mode="drop")


def greedy_mapping(counts: jax.Array) -> jax.Array:
  """Greedy one-to-one matching of target classes to source classes.

  `T` times: take the largest entry of `counts` (argmax over the row-major
  flattened `S x T` matrix, so the first one on ties), assign its target
  class `t*` to its source class `s*`, and set row `s*` and column `t*` to
  -1. This is the PyTorch version's loop with one source class per target.
  Counts are non-negative, so a removed row or column is never picked again
  while a valid entry remains. Jittable.

  Args:
    counts: Shape `(S, T)` with `T <= S`, non-negative, e.g. the output of
      `count_matrix` summed over the training set.

  Returns:
    The mapping sequence: int32 of shape `(T,)`, distinct entries in
    `[0, S)`; entry `t` is the source class of target class `t`.

  Raises:
    ValueError: If `counts` is not 2-D or has more columns than rows.
  """
  counts = jnp.asarray(counts)
  if counts.ndim != 2:
    raise ValueError(f"counts must have shape (S, T), got {counts.shape}.")
  num_source, num_classes = counts.shape
  if num_classes > num_source:
    raise ValueError(
        f"A one-to-one label mapping needs num_classes <= number of source "
        f"classes; got {num_classes} target classes for {num_source} source "
        "classes.")
  # -1 marks a used row/column, so the dtype must be signed.
  if not (jnp.issubdtype(counts.dtype, jnp.signedinteger)
          or jnp.issubdtype(counts.dtype, jnp.floating)):
    counts = counts.astype(jnp.int32)

  def assign_one(_, carry):
    remaining, mapping_sequence = carry
    flat_index = jnp.argmax(remaining.reshape(-1))
    source, target = jnp.divmod(flat_index, num_classes)
    mapping_sequence = mapping_sequence.at[target].set(source)
    remaining = remaining.at[source, :].set(-1).at[:, target].set(-1)
    return remaining, mapping_sequence

  initial = (counts, jnp.zeros((num_classes,), jnp.int32))
  _, mapping_sequence = jax.lax.fori_loop(0, num_classes, assign_one, initial)
  return mapping_sequence


def ilm(
    source_logits: jax.Array,
    labels: jax.Array,
    num_classes: int,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Frequency-based label mapping from one array of source logits.

  `greedy_mapping(count_matrix(...))`. For a training set too large for one
  array, accumulate `count_matrix` over batches instead. ILM and FLM both use
  this; they differ only in when the training loop calls it.

  Args:
    source_logits: Shape `(N, S)`.
    labels: Integer target labels, shape `(N,)`.
    num_classes: Number of target classes `T <= S`.
    mask: Optional validity mask, shape `(N,)`.

  Returns:
    The int32 mapping sequence of shape `(T,)`.
  """
  return greedy_mapping(count_matrix(source_logits, labels, num_classes, mask))


def rlm(
    key_or_seed: jax.Array | int,
    num_classes: int,
    num_source: int = NUM_IMAGENET_CLASSES,
) -> jax.Array:
  """Random label mapping: the first `T` entries of a random permutation.

  The PyTorch version draws `torch.randperm(1000)` from its global seed; the
  JAX permutation of the same seed is a different one, so the two agree in
  distribution, not entry by entry.

  Args:
    key_or_seed: A JAX PRNG key or an integer seed.
    num_classes: Number of target classes `T`.
    num_source: Number of source classes `S`.

  Returns:
    int32 of shape `(T,)`, distinct entries in `[0, S)`.

  Raises:
    ValueError: If `num_classes > num_source`.
  """
  if num_classes > num_source:
    raise ValueError(
        f"A one-to-one label mapping needs num_classes <= number of source "
        f"classes; got {num_classes} target classes for {num_source} source "
        "classes.")
  if isinstance(key_or_seed, (int, np.integer)):
    key_or_seed = jax.random.key(int(key_or_seed))
  permutation = jax.random.permutation(key_or_seed, num_source)
  return permutation[:num_classes].astype(jnp.int32)


def topk_probability_matrix(
    source_logits: jax.Array,
    labels: jax.Array,
    num_classes: int,
    mask: jax.Array | None = None,
    *,
    top_k: int = 3,
) -> jax.Array:
  """BLM++'s statistic: per (source class, target class), the summed top-k
  softmax probabilities of that target's examples.

  Each example's softmax over the source classes keeps its `top_k` largest
  probabilities (the others count 0), added to its label's column. Sums of
  several batches add up to the sums of their union, as `count_matrix`'s.

  Args:
    source_logits: Shape `(N, S)`.
    labels: Integer target labels, shape `(N,)`.
    num_classes: Number of target classes `T`.
    mask: Optional validity mask, shape `(N,)`; false rows add nothing.
    top_k: How many of each example's most probable sources count.

  Returns:
    A float32 array of shape `(S, T)`.
  """
  source_logits = jnp.asarray(source_logits, jnp.float32)
  num_source = source_logits.shape[-1]
  probabilities = jax.nn.softmax(source_logits, axis=-1)
  values, indices = jax.lax.top_k(probabilities, top_k)  # (N, k) each.
  if mask is not None:
    values = values * jnp.asarray(mask).astype(jnp.float32)[:, None]
  labels = jnp.broadcast_to(jnp.asarray(labels)[:, None], indices.shape)
  return jnp.zeros((num_source, num_classes), jnp.float32).at[
      indices, labels].add(values, mode="drop")


def bayesian_matrix(counts: jax.Array, lap: float) -> jax.Array:
  """BLM's mapping matrix from (source, target) counts or probability sums.

  `W[s, t] = (c[s, t] / (sum_t' c[s, t'] + lap))`, then each column divided
  by its sum, so that every target's weights sum to 1: an estimate of
  P(target | source) turned into weights over the sources of each target.
  Where a denominator is 0 (a source never predicted with `lap` = 0, or a
  target without examples) the weights are 0: the published code's 0 / 0
  would make them NaN.

  Args:
    counts: Shape `(S, T)`, non-negative (`count_matrix` or
      `topk_probability_matrix` summed over the training set).
    lap: The Laplace term added to each source's total (BLM: 1).

  Returns:
    float32 `(S, T)`; each column sums to 1 (or is all 0).
  """
  counts = jnp.asarray(counts, jnp.float32)
  row_totals = jnp.sum(counts, axis=1, keepdims=True) + lap
  given_source = jnp.where(row_totals > 0,
                           counts / jnp.where(row_totals > 0, row_totals, 1),
                           0.0)
  column_totals = jnp.sum(given_source, axis=0, keepdims=True)
  return jnp.where(column_totals > 0, given_source
                   / jnp.where(column_totals > 0, column_totals, 1), 0.0)


def is_matrix(mapping) -> bool:
  """Whether one seed's mapping is an `(S, T)` matrix (else a `(T,)`
  sequence)."""
  return np.ndim(mapping) == 2


def apply_mapping(source_logits: jax.Array, mapping: jax.Array) -> jax.Array:
  """Target logits from source logits, by a mapping sequence or matrix.

  Args:
    source_logits: Shape `(..., S)`.
    mapping: Integer `(T,)`, a mapping sequence, or float `(S, T)`, a
      mapping matrix.

  Returns:
    Shape `(..., T)`: for a sequence, `[..., t]` is
    `source_logits[..., mapping[t]]` (a gather: bit-exact, and what the
    PyTorch version does); for a matrix, `source_logits @ mapping` in full
    float32 (an accelerator's default TF32 would round it).
  """
  if is_matrix(mapping):
    return jnp.matmul(source_logits.astype(jnp.float32), mapping,
                      precision=jax.lax.Precision.HIGHEST)
  return jnp.take(source_logits, mapping, axis=-1)


def dominant_sources(mapping) -> np.ndarray:
  """Each target's mapped source: a sequence itself, or a matrix's source
  of largest weight per target column (first on ties); (T,) int."""
  mapping = np.asarray(mapping)
  if is_matrix(mapping):
    return np.argmax(mapping, axis=0)
  return mapping


class LabelMapping(NamedTuple):
  """How a label mapping is chosen, for the training loop.

  Attributes:
    name: The registry key.
    from_predictions: True if computed from the prompted network's outputs
      on the training set; False if drawn at random by `rlm` or learned.
    remap_every_interval: True if recomputed at the start of every epoch
      with `epoch % mapping_interval == 0` (ILM, BLM, BLM++); False if
      computed once, before training (FLM, RLM).
    form: 'sequence' (a one-to-one `(T,)` sequence: ILM, FLM, RLM),
      'bayesian' (a `(S, T)` matrix by `bayesian_matrix`: BLM, BLM++) or
      'learned' (a Dense layer trained with the prompt: FullyMap).
    statistic: what the mapping pass sums over the training set: 'argmax'
      (`count_matrix`) or 'top_k' (`topk_probability_matrix`, BLM++).
  """
  name: str
  from_predictions: bool
  remap_every_interval: bool
  form: str = "sequence"
  statistic: str = "argmax"

  def is_mapping_epoch(self, epoch: int, mapping_interval: int = 1) -> bool:
    """Whether to (re)compute the mapping at the start of `epoch` (0-based).

    Epoch 0 always needs one: "once, before training" is the start of epoch
    0, and ILM's `0 % mapping_interval == 0` includes it too.
    """
    if self.remap_every_interval:
      return epoch % mapping_interval == 0
    return epoch == 0


LABEL_MAPPINGS = {
    "ilm": LabelMapping("ilm", from_predictions=True,
                        remap_every_interval=True),
    "flm": LabelMapping("flm", from_predictions=True,
                        remap_every_interval=False),
    "rlm": LabelMapping("rlm", from_predictions=False,
                        remap_every_interval=False),
    "blm": LabelMapping("blm", from_predictions=True,
                        remap_every_interval=True, form="bayesian"),
    "blmpp": LabelMapping("blmpp", from_predictions=True,
                          remap_every_interval=True, form="bayesian",
                          statistic="top_k"),
    "fullymap": LabelMapping("fullymap", from_predictions=False,
                             remap_every_interval=False, form="learned"),
}


def get_label_mapping(name: str) -> LabelMapping:
  """Returns the label mapping kind registered under `name`.

  Args:
    name: A key of `LABEL_MAPPINGS`.

  Raises:
    errors.ConfigError: If `name` is unknown; the message lists the valid
      names.
  """
  try:
    return LABEL_MAPPINGS[name]
  except KeyError:
    raise errors.ConfigError(
        f"Unknown label mapping {name!r}; valid names: "
        f"{sorted(LABEL_MAPPINGS)}.") from None
