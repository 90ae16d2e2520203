"""Calibration metrics: ECE, MCE, NLL, Brier score and accuracy.

The expected calibration error here is the standard top-label ECE of Guo et
al. (2017, "On Calibration of Modern Neural Networks"): each example's
confidence is its largest softmax probability; examples fall into
`n_bins = 15` equal-width bins `(lo, hi]` of confidence (a confidence exactly
on an edge goes into the lower bin); and

    ECE = sum over bins b of  |B_b| / n * |accuracy(B_b) - confidence(B_b)|,

over the whole evaluated split (`n` examples). MCE is the largest
`|accuracy - confidence|` over the non-empty bins.

The adaptive (equal-mass) ECE (`adaptive_ece`; Nixon et al. 2019,
"Measuring Calibration in Deep Learning") is the same sum over bins that
hold equal numbers of examples, with exactly the bins of
`uncertainty-calibration`'s `get_ece_em`: the sorted confidences are cut by
`np.array_split` into `min(15, n)` consecutive groups (the first `n % 15`
one larger); each inner edge is the midpoint (float64) of the two
confidences either side of a cut, the last edge is 1; equal edges merge;
and bins are `(lo, hi]` as above, so confidences tied across a cut all go
into the lower bin (which then holds more than its share).

Temperature scaling (Guo et al., 2017): `fit_temperature` finds the T > 0
minimising the NLL of `logits / T` on held-out examples; the test metrics
are then recomputed on `logits / T` (accuracy does not change).

Deliberate difference from the PyTorch version. Its reported "ECE" is
`uncertainty-calibration`'s `get_ece` (top-label, 15 equal-width bins,
plug-in estimate) called on the raw *logits* of each test batch rather than on
softmax probabilities; the per-batch values are summed and the sum is divided
by the number of test examples. That is not an ECE: the "confidence" is the
largest logit, not a probability (values outside [0, 1] land in the end
bins), and since each batch value is already an average over its batch,
dividing the sum by the number of examples again shrinks it by roughly the
batch size (128). Its numbers are therefore not comparable with ours, nor
with any ECE in the literature. We report the standard ECE on probabilities
over the whole split, plus MCE, NLL and the Brier score; and, for comparison
with its logs only, that quantity itself (`pytorch_logged_quantity`).

Every metric takes an optional validity `mask` of shape `(N,)`, so padded
examples of a last, partial batch are excluded. Averages over zero valid
examples are NaN. Per-bin sums (`calibration_bins`) add up across batches,
so a sharded or batched evaluation can accumulate them; `bin_statistics`
turns them into a reliability diagram's per-bin accuracy and confidence.
"""

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


def mce(probs: jax.Array, labels: jax.Array, n_bins: int = DEFAULT_NUM_BINS,
        mask: jax.Array | None = None) -> jax.Array:
  """Maximum calibration error: the largest per-bin `|acc - conf|`.

  Args:
    probs: Class probabilities, shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.
    n_bins: Number of equal-width confidence bins.
    mask: Optional validity mask, shape `(N,)`.

  Returns:
    A float32 scalar in `[0, 1]`.
  """
  return mce_from_bins(calibration_bins(probs, labels, n_bins, mask))


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


# --------------------------------------------------------------------------
# Host-side metrics (NumPy, float64): equal-mass ECE, temperature scaling and
# the PyTorch version's logged quantity.
# --------------------------------------------------------------------------

# The PyTorch version's test batch size: its logged quantity is per batch.
PYTORCH_TEST_BATCH_SIZE = 128
# Where a fitted temperature is clamped: beyond them the held-out NLL is
# still falling (held-out examples all right with a margin: T -> 0; or no
# better than chance: T -> inf), and the limit itself is no usable T.
TEMPERATURE_BOUNDS = (0.01, 100.0)


def _valid_rows(mask, n: int) -> np.ndarray:
  return (np.ones(n, bool) if mask is None
          else np.asarray(mask).astype(bool).reshape(n))


def _top_label(probs, labels, mask) -> tuple[np.ndarray, np.ndarray]:
  """Float64 confidence and correctness of the valid examples."""
  probs = np.asarray(probs)
  valid = _valid_rows(mask, len(probs))
  probs, labels = probs[valid], np.asarray(labels)[valid]
  confidence = probs.max(axis=-1).astype(np.float64)
  return confidence, probs.argmax(axis=-1) == labels


def _binned_gap(confidence, correct, edges) -> float:
  """`sum_b |sum conf - sum correct| / n` with bins `(e_{b-1}, e_b]`; a
  value above the last edge (or at most the first) goes to the end bin."""
  index = np.minimum(np.searchsorted(edges, confidence, side="left"),
                     len(edges) - 1)
  gap = np.bincount(index, confidence - correct, minlength=len(edges))
  return float(np.sum(np.abs(gap)) / len(confidence))


def adaptive_bin_edges(confidence, n_bins: int = DEFAULT_NUM_BINS
                       ) -> np.ndarray:
  """Upper edges of the equal-mass bins of these confidences (see the
  module docstring), ending with 1; `uncertainty-calibration`'s
  `get_equal_bins`."""
  ordered = np.sort(np.asarray(confidence, np.float64))
  groups = np.array_split(ordered, min(n_bins, len(ordered)))
  inner = [(low[-1] + high[0]) / 2.0 for low, high in zip(groups[:-1],
                                                          groups[1:])]
  return np.unique(np.array(inner + [1.0]))


def adaptive_ece(probs, labels, n_bins: int = DEFAULT_NUM_BINS,
                 mask=None) -> float:
  """Top-label ECE with equal-mass bins (see the module docstring).

  Args:
    probs: Class probabilities, shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.
    n_bins: Number of bins (fewer if there are fewer examples, or ties).
    mask: Optional validity mask, shape `(N,)`.

  Returns:
    A float in `[0, 1]`; NaN without valid examples.
  """
  confidence, correct = _top_label(probs, labels, mask)
  if not len(confidence):
    return float("nan")
  return _binned_gap(confidence, correct,
                     adaptive_bin_edges(confidence, n_bins))


def pytorch_logged_quantity(logits, labels, mask=None, *,
                            batch_size: int = PYTORCH_TEST_BATCH_SIZE,
                            n_bins: int = DEFAULT_NUM_BINS) -> float:
  """What the PyTorch version logged as "ECE"; NOT an expected calibration
  error (see the module docstring).

  A transcription of `uncertainty-calibration`'s `get_ece(logits, labels)`
  (top-label, `n_bins` equal-width bins with upper edges `i / n_bins`, the
  largest *logit* as confidence, compared in float64: a logit above 1 goes
  to the last bin, one at most `1 / n_bins` to the first), applied to each
  batch of `batch_size` consecutive valid examples (the last one smaller),
  summed and divided by the number of valid examples.

  Args:
    logits: Raw target logits, shape `(N, K)`, in test-split order.
    labels: Integer labels, shape `(N,)`.
    mask: Optional validity mask, shape `(N,)`.
    batch_size: The PyTorch version's test batch size.
    n_bins: Number of bins.

  Returns:
    A float; NaN without valid examples.
  """
  confidence, correct = _top_label(logits, labels, mask)
  if not len(confidence):
    return float("nan")
  edges = np.array([i * 1.0 / n_bins for i in range(1, n_bins + 1)])
  total = sum(_binned_gap(confidence[i:i + batch_size],
                          correct[i:i + batch_size], edges)
              for i in range(0, len(confidence), batch_size))
  return total / len(confidence)


def fit_temperature(logits, labels, mask=None, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
  """Guo et al.'s temperature: the T > 0 minimising the mean NLL of
  `softmax(logits / T)` on these (held-out) examples.

  The NLL is convex in `1 / T`, and its slope there is
  `mean(E_softmax[z] - z_label)`, increasing; so bisection on the sign of
  that slope over `log(1 / T)` (in float64, to the last bits of T) finds the
  minimum, deterministically. Where the minimum lies beyond `bounds` the
  nearer bound is returned.

  Args:
    logits: Target logits, shape `(N, K)`.
    labels: Integer labels, shape `(N,)`.
    mask: Optional validity mask, shape `(N,)`.
    bounds: `(smallest, largest)` temperature.

  Returns:
    The temperature, a float in `bounds`.

  Raises:
    ValueError: without valid examples.
  """
  logits = np.asarray(logits, np.float64)
  valid = _valid_rows(mask, len(logits))
  logits, labels = logits[valid], np.asarray(labels)[valid]
  if not len(logits):
    raise ValueError("fit_temperature: no valid examples")
  label_logit = np.take_along_axis(logits, labels[:, None], axis=1)[:, 0]

  def slope(log_beta):  # d NLL / d beta at beta = 1 / T = exp(log_beta).
    scaled = logits * np.exp(log_beta)
    p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.mean(np.sum(p * logits, axis=1) - label_logit)

  low, high = np.log(1.0 / bounds[1]), np.log(1.0 / bounds[0])
  if slope(low) >= 0:
    return float(bounds[1])
  if slope(high) <= 0:
    return float(bounds[0])
  while high - low > 1e-13:
    middle = (low + high) / 2
    if slope(middle) > 0:
      high = middle
    else:
      low = middle
  return float(np.exp(-(low + high) / 2))


def split_report(logits, labels, mask=None, *,
                 n_bins: int = DEFAULT_NUM_BINS) -> dict[str, float]:
  """Every metric of one split, as Python floats.

  Args:
    logits: Target logits, shape `(N, K)`, in split order.
    labels: Integer labels, shape `(N,)`.
    mask: Optional validity mask, shape `(N,)`.
    n_bins: Number of bins of every binned metric.

  Returns:
    `metrics_from_logits`'s `accuracy`, `ece`, `mce`, `nll`, `brier`, plus
    `ece_adaptive` and `pytorch_logged_quantity`.
  """
  logits = np.asarray(logits, np.float32)
  report = {k: float(v) for k, v in metrics_from_logits(
      logits, labels, mask, n_bins=n_bins).items()}
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  report["ece_adaptive"] = adaptive_ece(probs, labels, n_bins, mask)
  report["pytorch_logged_quantity"] = pytorch_logged_quantity(
      logits, labels, mask, n_bins=n_bins)
  return report


def temperature_scaled_report(logits, labels, temperature: float, mask=None,
                              *, n_bins: int = DEFAULT_NUM_BINS
                              ) -> dict[str, float]:
  """`ece_ts`, `ece_adaptive_ts` and `nll_ts`: the calibration metrics of
  `logits / temperature` (accuracy is unchanged by a temperature)."""
  scaled = np.asarray(np.asarray(logits, np.float64) / temperature,
                      np.float32)
  probs = np.asarray(jax.nn.softmax(scaled, axis=-1))
  return {"ece_ts": float(ece(probs, labels, n_bins, mask)),
          "ece_adaptive_ts": adaptive_ece(probs, labels, n_bins, mask),
          "nll_ts": float(nll(scaled, labels, mask, from_logits=True))}
