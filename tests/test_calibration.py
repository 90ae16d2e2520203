"""Tests for reprog_jax.metrics.calibration and calibration_host: ECE
(equal-width and equal-mass), MCE, NLL, Brier, accuracy, temperature
scaling and the PyTorch version's logged quantity, against hand-computed
values, plain loops and `uncertainty-calibration` (the library the PyTorch
version imported, as `import calibration as cal`; our `test` extra installs
it)."""

import calibration as cal  # uncertainty-calibration, not ours.
import jax
import numpy as np
import pytest
from scipy import optimize

from reprog_jax.metrics import calibration
from reprog_jax.metrics import calibration_host


def _mce(probs, labels, n_bins=calibration.DEFAULT_NUM_BINS):
  """MCE as runs compute it: from the per-bin sums."""
  return calibration.mce_from_bins(calibration.calibration_bins(
      probs, labels, n_bins))


def reference_ece_mce(probs, labels, n_bins):
  """Guo et al. (2017) top-label ECE and MCE as a plain loop over bins."""
  probs = np.asarray(probs, np.float64)
  confidences = probs.max(axis=1)
  accuracies = probs.argmax(axis=1) == labels
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  ece, mce = 0.0, 0.0
  for lower, upper in zip(edges[:-1], edges[1:]):
    in_bin = (confidences > lower) & (confidences <= upper)
    if in_bin.any():
      gap = abs(accuracies[in_bin].mean() - confidences[in_bin].mean())
      ece += in_bin.mean() * gap
      mce = max(mce, gap)
  return ece, mce


def softmax(logits):
  logits = np.asarray(logits, np.float64)
  exp = np.exp(logits - logits.max(axis=1, keepdims=True))
  return exp / exp.sum(axis=1, keepdims=True)


# Four examples, two classes; 5 bins with edges 0, .2, .4, .6, .8, 1.
HAND_PROBS = np.array([[0.9, 0.1],   # label 0: confidence .9, correct
                       [0.8, 0.2],   # label 1: confidence .8, wrong
                       [0.3, 0.7],   # label 1: confidence .7, correct
                       [0.4, 0.6]],  # label 0: confidence .6, wrong
                      np.float32)
HAND_LABELS = np.array([0, 1, 1, 0])


def test_hand_computed_ece_and_mce():
  # Confidences on an edge go to the lower bin: .8 -> (.6, .8], .6 -> (.4, .6].
  # Bin (.4, .6]: {.6 wrong}: acc 0, conf .6, gap .6.
  # Bin (.6, .8]: {.8 wrong, .7 correct}: acc .5, conf .75, gap .25.
  # Bin (.8, 1]: {.9 correct}: acc 1, conf .9, gap .1.
  # ECE = (1 * .6 + 2 * .25 + 1 * .1) / 4 = 1.2 / 4 = .3; MCE = .6.
  # (Edges in the upper bin would give (2 * .15 + 2 * .35) / 4 = .25.)
  assert calibration.ece(HAND_PROBS, HAND_LABELS, n_bins=5) == pytest.approx(
      0.3, abs=1e-6)
  assert _mce(HAND_PROBS, HAND_LABELS, n_bins=5) == pytest.approx(
      0.6, abs=1e-6)


def test_hand_computed_bin_statistics():
  bins = calibration.calibration_bins(HAND_PROBS, HAND_LABELS, n_bins=5)
  stats = calibration.bin_statistics(bins)
  np.testing.assert_allclose(stats.lower, [0, .2, .4, .6, .8])
  np.testing.assert_allclose(stats.upper, [.2, .4, .6, .8, 1])
  np.testing.assert_array_equal(stats.count, [0, 0, 1, 2, 1])
  np.testing.assert_allclose(stats.accuracy, [0, 0, 0, .5, 1], atol=1e-7)
  np.testing.assert_allclose(stats.confidence, [0, 0, .6, .75, .9],
                             atol=1e-6)


def test_hand_computed_nll_brier_accuracy():
  # NLL = -(log .9 + log .2 + log .7 + log .4) / 4.
  expected_nll = -(np.log(.9) + np.log(.2) + np.log(.7) + np.log(.4)) / 4
  assert calibration.nll(HAND_PROBS, HAND_LABELS) == pytest.approx(
      expected_nll, rel=1e-6)
  # Brier per example: 2 * .1^2 = .02, 2 * .8^2 = 1.28, 2 * .3^2 = .18,
  # 2 * .6^2 = .72; mean = 2.2 / 4 = .55.
  assert calibration.brier(HAND_PROBS, HAND_LABELS) == pytest.approx(
      0.55, rel=1e-6)
  assert calibration.accuracy(HAND_PROBS, HAND_LABELS) == 0.5


@pytest.mark.parametrize("n_bins", [4, 5, 10, 15])
def test_confidence_on_every_edge_goes_to_the_lower_bin(n_bins):
  # Two classes: confidence 1 - p for p below 1/2, so the confidences span
  # the upper half of the edges. Each example sits exactly on an edge.
  edges = np.linspace(0, 1, n_bins + 1)
  on_edges = edges[edges > 0.5]
  probs = np.stack([on_edges, 1 - on_edges], axis=1).astype(np.float32)
  bins = calibration.calibration_bins(probs, np.zeros(len(on_edges), int),
                                      n_bins)
  expected_index = np.flatnonzero(edges > 0.5) - 1  # Bin (lo, hi]: hi's - 1.
  expected_count = np.zeros(n_bins)
  expected_count[expected_index] = 1
  np.testing.assert_array_equal(bins.count, expected_count)


def test_confidence_one_is_in_the_last_bin():
  bins = calibration.calibration_bins(np.eye(3, dtype=np.float32),
                                      np.array([0, 1, 0]))
  np.testing.assert_array_equal(bins.count, [0] * 14 + [3])
  # Two of three correct at confidence 1: ECE = |2/3 - 1| = 1/3.
  assert calibration.ece(np.eye(3), np.array([0, 1, 0])) == pytest.approx(
      1 / 3, rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_loop_on_random_inputs(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 400))
  num_classes = int(rng.integers(2, 30))
  n_bins = int(rng.choice([1, 5, 10, 15, 20]))
  # Temperatures from flat to peaked, so confidences fill many bins.
  logits = rng.normal(size=(n, num_classes)) * rng.uniform(0.1, 8.0)
  probs = softmax(logits).astype(np.float32)
  labels = rng.integers(0, num_classes, size=n)
  expected_ece, expected_mce = reference_ece_mce(probs, labels, n_bins)
  assert calibration.ece(probs, labels, n_bins) == pytest.approx(
      expected_ece, abs=1e-5)
  assert _mce(probs, labels, n_bins) == pytest.approx(
      expected_mce, abs=1e-5)


def test_perfect_calibration_gives_zero():
  # Ten examples at confidence .7 of which seven are right, and four at .5
  # (ties: argmax picks class 0) of which two are right.
  probs = np.array([[0.7, 0.3]] * 10 + [[0.5, 0.5]] * 4, np.float32)
  labels = np.array([0] * 7 + [1] * 3 + [0, 0, 1, 1])
  assert calibration.ece(probs, labels) == pytest.approx(0.0, abs=1e-6)
  assert _mce(probs, labels) == pytest.approx(0.0, abs=1e-6)


def test_mask_excludes_examples():
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(20, 6)).astype(np.float32) * 3
  labels = rng.integers(0, 6, size=20)
  mask = np.arange(20) < 13
  # Padding: wild logits and labels that are out of range or wrong.
  padded_logits = logits.copy()
  padded_logits[13:] = 50.0 * rng.normal(size=(7, 6))
  padded_labels = labels.copy()
  padded_labels[13:] = [-1, 6, 100, 0, 1, 2, 3]
  masked = calibration.metrics_from_logits(padded_logits, padded_labels, mask)
  subset = calibration.metrics_from_logits(logits[:13], labels[:13])
  tolerance = dict(rtol=1e-6, atol=1e-7)
  for name, value in subset.items():
    np.testing.assert_allclose(masked[name], value, err_msg=name, **tolerance)
  # And the mask really changed something.
  unmasked = calibration.metrics_from_logits(padded_logits,
                                             np.clip(padded_labels, 0, 5))
  assert unmasked["nll"] != pytest.approx(float(subset["nll"]))


def test_metrics_from_logits_match_numpy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(300, 10)) * 2.5
  labels = rng.integers(0, 10, size=300)
  probs = softmax(logits)
  expected_ece, expected_mce = reference_ece_mce(probs, labels, 15)
  one_hot = np.eye(10)[labels]
  expected = {
      "accuracy": np.mean(probs.argmax(1) == labels),
      "ece": expected_ece,
      "mce": expected_mce,
      "nll": -np.mean(np.log(probs[np.arange(300), labels])),
      "brier": np.mean(np.sum((probs - one_hot) ** 2, axis=1)),
  }
  metrics = jax.jit(calibration.metrics_from_logits)(
      logits.astype(np.float32), labels)
  assert set(metrics) == set(expected)
  for name, value in expected.items():
    assert float(metrics[name]) == pytest.approx(value, abs=1e-5), name


def test_bins_accumulate_across_batches():
  rng = np.random.default_rng(4)
  probs = softmax(rng.normal(size=(50, 5)) * 2).astype(np.float32)
  labels = rng.integers(0, 5, size=50)
  parts = [calibration.calibration_bins(probs[i:i + 16], labels[i:i + 16])
           for i in range(0, 50, 16)]
  total = jax.tree.map(lambda *xs: sum(xs), *parts)
  np.testing.assert_allclose(calibration.ece_from_bins(total),
                             calibration.ece(probs, labels), rtol=1e-5)
  np.testing.assert_allclose(calibration.mce_from_bins(total),
                             _mce(probs, labels), rtol=1e-5)


def test_nll_from_logits_and_zero_probability():
  logits = np.array([[0.0, 200.0]], np.float32)
  # log_softmax is exact: NLL of label 0 is 200 (log(1 + e^-200) ~ 0).
  assert calibration.nll(logits, np.array([0]), from_logits=True) == (
      pytest.approx(200.0, rel=1e-6))
  # From probabilities a zero is clipped to float32's tiny: -log(2^-126).
  assert calibration.nll(np.array([[1.0, 0.0]]), np.array([1])) == (
      pytest.approx(126 * np.log(2), rel=1e-6))


def test_no_valid_examples_gives_nan():
  metrics = calibration.metrics_from_logits(
      np.zeros((3, 4), np.float32), np.zeros(3, int), np.zeros(3, bool))
  for name, value in metrics.items():
    assert np.isnan(value), name


# --------------------------------------------------------------------------
# Against uncertainty-calibration
# --------------------------------------------------------------------------


def _random_probs(rng, n, num_classes, dtype):
  logits = rng.normal(size=(n, num_classes)) * rng.uniform(0.3, 6.0)
  return softmax(logits).astype(dtype), rng.integers(0, num_classes, size=n)


@pytest.mark.parametrize("n", [1, 7, 128, 1000, 4321])
def test_ece_equals_the_librarys_get_ece(n):
  rng = np.random.default_rng(n)
  probs, labels = _random_probs(rng, n, int(rng.integers(2, 50)), np.float32)
  # Ties at edges avoided: the library compares float32 confidences with
  # float64 edges i / 15, we with the edges rounded to float32; they differ
  # only for a confidence equal to a rounded edge.
  edges32 = calibration.bin_edges(15).astype(np.float32)
  assert not np.isin(probs.max(axis=1), edges32).any()
  assert float(calibration.ece(probs, labels)) == pytest.approx(
      cal.get_ece(probs, labels), abs=1e-6)


def test_ece_ties_on_edges_agree_with_the_library():
  # Edges 1/4, 1/2, 3/4 are exact in any precision: both put a confidence
  # on an edge into the lower bin.
  confidence = np.array([0.5, 0.5, 0.75, 0.75, 1.0, 0.6, 0.75, 0.9])
  probs = np.stack([confidence, 1 - confidence], axis=1)
  labels = np.array([0, 1, 0, 0, 1, 0, 1, 0])
  ours = float(calibration.ece(probs, labels, n_bins=4))
  assert ours == pytest.approx(cal.get_ece(probs, labels, num_bins=4),
                               abs=1e-7)
  # The upper-bin rule would give another number: the ties matter here.
  nudged = np.where(confidence < 1, confidence + 1e-9, confidence)
  upper_rule = reference_ece_mce(np.stack([nudged, 1 - nudged], axis=1),
                                 labels, 4)[0]
  assert ours != pytest.approx(upper_rule, abs=1e-3)


@pytest.mark.parametrize("n", [1, 2, 14, 15, 16, 100, 1001])
def test_adaptive_ece_equals_the_librarys_get_ece_em(n):
  rng = np.random.default_rng(100 + n)
  probs, labels = _random_probs(rng, n, int(rng.integers(2, 20)), np.float64)
  assert calibration_host.adaptive_ece(probs, labels) == pytest.approx(
      cal.get_ece_em(probs, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_adaptive_ece_with_ties_across_cuts_equals_the_library(seed):
  # Confidences on a coarse grid: many equal values straddle the cuts, and
  # equal midpoints merge bins; both then put the ties in the lower bin.
  rng = np.random.default_rng(seed)
  n = int(rng.integers(20, 300))
  confidence = rng.integers(6, 21, size=n) / 20.0
  probs = np.stack([confidence, 1 - confidence], axis=1)
  labels = rng.integers(0, 2, size=n)
  assert calibration_host.adaptive_ece(probs, labels) == pytest.approx(
      cal.get_ece_em(probs, labels), abs=1e-12)


def test_hand_computed_adaptive_ece():
  # HAND_PROBS' confidences .9 (right), .8 (wrong), .7 (right), .6 (wrong).
  # Two equal-mass bins: {.6, .7} and {.8, .9}, cut at .75.
  # Bin 1: confidence 1.3, correct 1: gap .3; bin 2: 1.7 vs 1: gap .7.
  # ECE = (.3 + .7) / 4 = .25.
  np.testing.assert_allclose(
      calibration_host.adaptive_bin_edges(HAND_PROBS.max(axis=1), 2),
      [.75, 1.0])
  assert calibration_host.adaptive_ece(HAND_PROBS, HAND_LABELS, 2) == (
      pytest.approx(0.25, abs=1e-6))
  # Four bins (one example each): mean |conf - correct| = (.1+.8+.3+.6)/4.
  assert calibration_host.adaptive_ece(HAND_PROBS, HAND_LABELS, 4) == (
      pytest.approx(0.45, abs=1e-6))
  # A mask keeps the first two only: bins {.8 wrong}, {.9 right} with 2 bins.
  assert calibration_host.adaptive_ece(HAND_PROBS, HAND_LABELS, 2,
                                  mask=[1, 1, 0, 0]) == pytest.approx(
                                      (0.1 + 0.8) / 2, abs=1e-6)
  assert np.isnan(calibration_host.adaptive_ece(HAND_PROBS, HAND_LABELS,
                                           mask=np.zeros(4)))


def _pytorch_version_quantity(logits, labels, batch_size=128):
  """The PyTorch version's test loop: get_ece per batch, summed, / n."""
  total = sum(cal.get_ece(logits[i:i + batch_size], labels[i:i + batch_size])
              for i in range(0, len(logits), batch_size))
  return total / len(logits)


@pytest.mark.parametrize("n, scale", [(1, 1.0), (127, 0.2), (128, 3.0),
                                      (129, 0.05), (600, 1.0)])
def test_pytorch_logged_quantity_equals_the_library_per_batch(n, scale):
  rng = np.random.default_rng(n)
  # Raw logits: negative, inside [0, 1] and above 1, as a network gives.
  logits = (rng.normal(size=(n, 10)) * scale + 0.5).astype(np.float32)
  labels = rng.integers(0, 10, size=n)
  assert calibration_host.pytorch_logged_quantity(logits, labels) == (
      pytest.approx(_pytorch_version_quantity(logits, labels), rel=1e-5,
                    abs=1e-9))


def test_pytorch_logged_quantity_is_not_an_ece():
  # Perfectly calibrated probabilities: ECE 0. As logits (what the PyTorch
  # version passed) the same numbers give ~0 too, but softmax'd logits of
  # a confident, always right model: ECE ~ 0 while the logged quantity sees
  # logits 5 in the last bin with accuracy 1: |5 - 1| per batch, / n again.
  logits = np.tile(np.array([[5.0, 0.0]], np.float32), (256, 1))
  labels = np.zeros(256, int)
  assert float(calibration.ece(softmax(logits), labels)) < 0.01
  # Per batch of 128: gap |5 - 1| = 4; two batches: 8 / 256.
  assert calibration_host.pytorch_logged_quantity(logits, labels) == (
      pytest.approx(8 / 256, rel=1e-6))
  assert _pytorch_version_quantity(logits, labels) == pytest.approx(
      8 / 256, rel=1e-6)


def test_pytorch_logged_quantity_mask_and_batches_of_valid_examples():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(300, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=300)
  mask = np.ones(300, bool)
  mask[[3, 150, 299]] = False
  padded = logits.copy()
  padded[~mask] = 100.0
  assert calibration_host.pytorch_logged_quantity(padded, labels, mask) == (
      pytest.approx(_pytorch_version_quantity(logits[mask], labels[mask]),
                    rel=1e-5))


# --------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------


def _nll_at(logits, labels, temperature):
  scaled = np.asarray(logits, np.float64) / temperature
  scaled -= scaled.max(axis=1, keepdims=True)
  log_p = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
  return -np.mean(log_p[np.arange(len(labels)), labels])


def test_temperature_of_a_known_binary_case():
  # Logits (a, -a): p(label) = sigmoid(+-2a / T); with a fraction q right
  # the NLL is least where sigmoid(2a / T) = q: T = 2a / log(q / (1 - q)).
  a, q = 3.0, 0.8
  logits = np.tile([[a, -a]], (10, 1))
  labels = np.array([0] * 8 + [1] * 2)
  assert calibration_host.fit_temperature(logits, labels) == pytest.approx(
      2 * a / np.log(q / (1 - q)), rel=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_temperature_minimises_the_nll(seed):
  rng = np.random.default_rng(seed)
  n, num_classes = int(rng.integers(5, 400)), int(rng.integers(2, 40))
  labels = rng.integers(0, num_classes, size=n)
  logits = rng.normal(size=(n, num_classes)) * rng.uniform(0.5, 10)
  logits[np.arange(n), labels] += rng.uniform(0.5, 6)  # Better than chance.
  found = calibration_host.fit_temperature(logits.astype(np.float32), labels)
  expected = optimize.minimize_scalar(
      lambda log_t: _nll_at(logits.astype(np.float32), labels,
                            np.exp(log_t)),
      bounds=np.log(calibration_host.TEMPERATURE_BOUNDS), method="bounded",
      options={"xatol": 1e-10}).x
  assert np.log(found) == pytest.approx(expected, abs=1e-4)
  for nearby in (found * 0.99, found * 1.01):
    assert _nll_at(logits, labels, found) <= _nll_at(logits, labels, nearby)


def test_temperature_is_clamped_where_the_nll_keeps_falling():
  logits = np.array([[4.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
  # Always right: sharper is always better, T -> 0.
  assert calibration_host.fit_temperature(logits, np.array([0, 1])) == 0.01
  # Always the lowest logit: flatter is always better, T -> inf.
  assert calibration_host.fit_temperature(logits, np.array([1, 0])) == 100.0


def test_temperature_ignores_masked_examples():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(40, 5)) * 3
  labels = rng.integers(0, 5, size=40)
  mask = np.arange(40) % 3 != 0
  wild = logits.copy()
  wild[~mask] = 1e4 * rng.normal(size=(int((~mask).sum()), 5))
  assert calibration_host.fit_temperature(wild, labels, mask) == (
      calibration_host.fit_temperature(logits[mask], labels[mask]))
  with pytest.raises(ValueError, match="no valid examples"):
    calibration_host.fit_temperature(logits, labels, np.zeros(40, bool))


def test_temperature_scaled_report():
  rng = np.random.default_rng(2)
  logits = (rng.normal(size=(200, 6)) * 4).astype(np.float32)
  labels = rng.integers(0, 6, size=200)
  for temperature in (1.0, 2.5, 0.3):
    probs = softmax(logits.astype(np.float64) / temperature)
    report = calibration_host.temperature_scaled_report(logits, labels,
                                                   temperature)
    assert report["ece_ts"] == pytest.approx(
        reference_ece_mce(probs, labels, 15)[0], abs=1e-5)
    assert report["ece_adaptive_ts"] == pytest.approx(
        cal.get_ece_em(probs, labels), abs=1e-5)
    assert report["nll_ts"] == pytest.approx(
        -np.mean(np.log(probs[np.arange(200), labels])), rel=1e-5)


def test_split_report_has_every_metric():
  rng = np.random.default_rng(3)
  logits = (rng.normal(size=(150, 4)) * 2).astype(np.float32)
  labels = rng.integers(0, 4, size=150)
  report = calibration_host.split_report(logits, labels)
  probs = softmax(logits)
  assert report["ece_adaptive"] == pytest.approx(
      cal.get_ece_em(probs, labels), abs=1e-6)
  assert report["pytorch_logged_quantity"] == pytest.approx(
      _pytorch_version_quantity(logits, labels), rel=1e-5)
  assert report["ece"] == pytest.approx(cal.get_ece(probs, labels), abs=1e-6)
  assert set(report) == {"accuracy", "ece", "mce", "nll", "brier",
                         "ece_adaptive", "pytorch_logged_quantity"}
  assert all(isinstance(v, float) for v in report.values())
