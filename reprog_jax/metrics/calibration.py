"""Calibration metrics in jnp: ECE, MCE, NLL, Brier score and accuracy.

The expected calibration error here is the standard top-label ECE of Guo et
al. (2017, "On Calibration of Modern Neural Networks"): each example's
confidence is its largest softmax probability; examples fall into
`n_bins = 15` equal-width bins `(lo, hi]` of confidence (a confidence exactly
on an edge goes into the lower bin); and

    ECE = sum over bins b of  |B_b| / n * |accuracy(B_b) - confidence(B_b)|,

over the whole evaluated split (`n` examples). MCE is the largest
`|accuracy - confidence|` over the non-empty bins (`mce_from_bins`).

Every metric takes an optional validity `mask` of shape `(N,)`, so padded
examples of a last, partial batch are excluded. Averages over zero valid
examples are NaN. Per-bin sums (`calibration_bins`) add up across batches,
so a sharded or batched evaluation can accumulate them; `bin_statistics`
turns them into a reliability diagram's per-bin accuracy and confidence.

The host-side metrics of a whole split (equal-mass ECE, temperature
scaling, the PyTorch version's logged quantity, the split reports) live in
`calibration_host`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_NUM_BINS = 15


class CalibrationBins(NamedTuple):
  """Per-bin sums over the (valid) examples; add two to merge their data.

  Attributes:
    count: Number of examples per bin, float32 of shape `(n_bins,)`.
    confidence_sum: Sum of the confidences of the examples in each bin.
    correct_sum: Number of correctly classified examples in each bin.
  """
  count: jax.Array
  confidence_sum: jax.Array
  correct_sum: jax.Array


class BinStatistics(NamedTuple):
  """What a reliability diagram plots, one entry per bin.

  Attributes:
    lower: Lower bin edges (excluded from the bin), shape `(n_bins,)`.
    upper: Upper bin edges (included in the bin).
    count: Number of examples per bin.
    accuracy: Fraction correct per bin; 0 for empty bins.
    confidence: Mean confidence per bin; 0 for empty bins.
  """
  lower: np.ndarray
  upper: np.ndarray
  count: jax.Array
  accuracy: jax.Array
  confidence: jax.Array


def bin_edges(n_bins: int = DEFAULT_NUM_BINS) -> np.ndarray:
  """Returns the `n_bins + 1` equal-width edges from 0 to 1 (float64)."""
  return np.linspace(0.0, 1.0, n_bins + 1)


def _weights(mask: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
  """Boolean validity of each example; all valid without a mask."""
  if mask is None:
    return jnp.ones(shape, bool)
  return jnp.asarray(mask).astype(bool)


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  valid = _weights(mask, values.shape)
  # `where`, not a product: a padded example's value may be inf or NaN.
  return (jnp.sum(jnp.where(valid, values, 0.0))
          / jnp.sum(valid, dtype=values.dtype))


def confidence_and_correct(probs: jax.Array,
                           labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Top-label confidence and correctness of each example.

  Args:
    probs: Class probabilities, shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.

  Returns:
    `(confidence, correct)`: the largest probability (float32) and whether
    its class (the first on ties) is the label (bool), both of shape `(N,)`.
  """
  probs = jnp.asarray(probs, jnp.float32)
  confidence = jnp.max(probs, axis=-1)
  correct = jnp.argmax(probs, axis=-1) == jnp.asarray(labels)
  return confidence, correct


def calibration_bins(
    probs: jax.Array,
    labels: jax.Array,
    n_bins: int = DEFAULT_NUM_BINS,
    mask: jax.Array | None = None,
) -> CalibrationBins:
  """Sums confidence and correctness per equal-width confidence bin.

  Bin `b` holds the confidences in `(b / n_bins, (b + 1) / n_bins]`; a
  confidence of exactly 0 (impossible for a softmax) goes into bin 0.

  Args:
    probs: Class probabilities, shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.
    n_bins: Number of bins.
    mask: Optional validity mask, shape `(N,)`.

  Returns:
    The per-bin sums over the valid examples.
  """
  confidence, correct = confidence_and_correct(probs, labels)
  # Edges are rounded from float64 to the confidence's dtype, so a value
  # written as e.g. float32(0.4) compares equal to the edge 0.4. Counting the
  # inner edges strictly below a confidence gives its (lo, hi] bin.
  inner_edges = jnp.asarray(bin_edges(n_bins)[1:-1], confidence.dtype)
  bin_index = jnp.searchsorted(inner_edges, confidence, side="left")
  valid = _weights(mask, confidence.shape)

  def per_bin(values):
    values = jnp.where(valid, values.astype(jnp.float32), 0.0)
    return jax.ops.segment_sum(values, bin_index, num_segments=n_bins)

  return CalibrationBins(
      count=per_bin(jnp.ones_like(confidence)),
      confidence_sum=per_bin(confidence),
      correct_sum=per_bin(correct))


def bin_statistics(bins: CalibrationBins) -> BinStatistics:
  """Per-bin accuracy and mean confidence, for a reliability diagram."""
  n_bins = bins.count.shape[-1]
  edges = bin_edges(n_bins)
  denominator = jnp.maximum(bins.count, 1.0)
  return BinStatistics(
      lower=edges[:-1], upper=edges[1:], count=bins.count,
      accuracy=bins.correct_sum / denominator,
      confidence=bins.confidence_sum / denominator)


def ece_from_bins(bins: CalibrationBins) -> jax.Array:
  """ECE from (possibly accumulated) per-bin sums; NaN if there are none."""
  # |B| / n * |acc - conf| = |correct_sum - confidence_sum| / n.
  gaps = jnp.abs(bins.correct_sum - bins.confidence_sum)
  return jnp.sum(gaps) / jnp.sum(bins.count)


def mce_from_bins(bins: CalibrationBins) -> jax.Array:
  """MCE: the largest gap over non-empty bins; NaN if all are empty."""
  stats = bin_statistics(bins)
  nonempty = bins.count > 0
  gaps = jnp.where(nonempty, jnp.abs(stats.accuracy - stats.confidence),
                   -jnp.inf)
  return jnp.where(jnp.any(nonempty), jnp.max(gaps), jnp.nan)


def ece(probs: jax.Array, labels: jax.Array, n_bins: int = DEFAULT_NUM_BINS,
        mask: jax.Array | None = None) -> jax.Array:
  """Top-label expected calibration error (Guo et al., 2017).

  Args:
    probs: Class probabilities (not logits), shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.
    n_bins: Number of equal-width confidence bins.
    mask: Optional validity mask, shape `(N,)`.

  Returns:
    A float32 scalar in `[0, 1]`.
  """
  return ece_from_bins(calibration_bins(probs, labels, n_bins, mask))



def nll(scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
        *, from_logits: bool = False) -> jax.Array:
  """Mean negative log-likelihood of the labels.

  Args:
    scores: Probabilities, or logits if `from_logits`, shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.
    mask: Optional validity mask, shape `(N,)`.
    from_logits: Whether `scores` are logits; then `log_softmax` is used,
      which is exact where `log(softmax)` would underflow.

  Returns:
    A float32 scalar. With probabilities, a label probability of 0 is
    clipped to the smallest normal float32, giving about 87.3, not inf.
  """
  scores = jnp.asarray(scores, jnp.float32)
  one_hot = jax.nn.one_hot(labels, scores.shape[-1], dtype=jnp.float32)
  if from_logits:
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    per_example = -jnp.sum(log_probs * one_hot, axis=-1)
  else:
    label_prob = jnp.sum(scores * one_hot, axis=-1)
    per_example = -jnp.log(jnp.maximum(label_prob,
                                       jnp.finfo(jnp.float32).tiny))
  return _masked_mean(per_example, mask)


def brier(probs: jax.Array, labels: jax.Array,
          mask: jax.Array | None = None) -> jax.Array:
  """Multi-class Brier score: mean over examples of `sum_k (p_k - y_k)^2`.

  Args:
    probs: Class probabilities, shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.
    mask: Optional validity mask, shape `(N,)`.

  Returns:
    A float32 scalar in `[0, 2]`.
  """
  probs = jnp.asarray(probs, jnp.float32)
  one_hot = jax.nn.one_hot(labels, probs.shape[-1], dtype=jnp.float32)
  return _masked_mean(jnp.sum((probs - one_hot) ** 2, axis=-1), mask)


def accuracy(scores: jax.Array, labels: jax.Array,
             mask: jax.Array | None = None) -> jax.Array:
  """Top-1 accuracy of probabilities or logits (same argmax), in `[0, 1]`."""
  correct = jnp.argmax(scores, axis=-1) == jnp.asarray(labels)
  return _masked_mean(correct.astype(jnp.float32), mask)


# Jitted: op by op, each of its ~40 operations compiles on first use per
# shape (seconds per run on a CPU, most of a small run's evaluation).
@functools.partial(jax.jit, static_argnames=("n_bins",))
def metrics_from_logits(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    *,
    n_bins: int = DEFAULT_NUM_BINS,
) -> dict[str, jax.Array]:
  """All metrics of one split from its logits (softmax taken here).

  Args:
    logits: Target-class logits, shape `(N, K)`, any float dtype.
    labels: Integer labels, shape `(N,)`.
    mask: Optional validity mask, shape `(N,)`.
    n_bins: Number of ECE/MCE bins.

  Returns:
    A dict of float32 scalars: `accuracy`, `ece`, `mce`, `nll`, `brier`.
  """
  # Softmax in float32 even when the network computed in bfloat16.
  logits = jnp.asarray(logits, jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  bins = calibration_bins(probs, labels, n_bins, mask)
  return {
      "accuracy": accuracy(logits, labels, mask),
      "ece": ece_from_bins(bins),
      "mce": mce_from_bins(bins),
      "nll": nll(logits, labels, mask, from_logits=True),
      "brier": brier(probs, labels, mask),
  }
