"""Host-side calibration metrics of a whole split (NumPy, float64).

Equal-mass ECE, temperature scaling, the PyTorch version's logged quantity
and the per-split reports the loop writes; the binned jnp metrics they
build on are in `calibration`.

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
"""

import jax
import numpy as np

from reprog_jax.metrics import calibration

# The metrics' default number of bins.
DEFAULT_NUM_BINS = calibration.DEFAULT_NUM_BINS

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


def calibration_bins(logits, labels, mask=None,
                     n_bins: int = DEFAULT_NUM_BINS
                     ) -> list[calibration.CalibrationBins]:
  """Each seed's reliability-diagram sums of its (S, N, T) `logits`, in one
  vectorised NumPy pass over all seeds.

  The same bins as `calibration.calibration_bins` of the float32 softmax
  (float32 confidences, edges rounded to float32, bins `(lo, hi]`), from
  logits already on the host: no device round trip per seed. The sums are
  taken in float64 and stored as float32.

  Args:
    logits: (S, N, T) scores of S seeds on the same N examples.
    labels: (N,) integer labels.
    mask: optional (N,) validity (padding rows are False).
    n_bins: number of equal-width bins.

  Returns:
    S `calibration.CalibrationBins` of (n_bins,) float32 NumPy arrays.
  """
  logits = np.asarray(logits, np.float32)
  num_seeds, n = logits.shape[:2]
  probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
  probs /= probs.sum(axis=-1, keepdims=True)
  confidence = probs.max(axis=-1)  # (S, N) float32
  correct = probs.argmax(axis=-1) == np.asarray(labels)[None]
  valid = _valid_rows(mask, n)
  inner = calibration.bin_edges(n_bins)[1:-1].astype(np.float32)
  # One bincount over all seeds: seed k's bins are k * n_bins + bin.
  index = (np.searchsorted(inner, confidence[:, valid], side="left")
           + n_bins * np.arange(num_seeds)[:, None]).ravel()

  def per_bin(values):
    sums = np.bincount(index, np.asarray(values[:, valid], np.float64).ravel(),
                       minlength=num_seeds * n_bins)
    return sums.reshape(num_seeds, n_bins).astype(np.float32)

  sums = [per_bin(np.ones_like(confidence)), per_bin(confidence),
          per_bin(correct)]
  return [calibration.CalibrationBins(*(s[k] for s in sums))
          for k in range(num_seeds)]


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
  report = {k: float(v) for k, v in calibration.metrics_from_logits(
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
  return {"ece_ts": float(calibration.ece(probs, labels, n_bins, mask)),
          "ece_adaptive_ts": adaptive_ece(probs, labels, n_bins, mask),
          "nll_ts": float(calibration.nll(scaled, labels, mask,
                                          from_logits=True))}
