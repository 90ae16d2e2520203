"""Tests for reprog_jax.calibration: ECE, MCE, NLL, Brier, accuracy."""

import jax
import numpy as np
import pytest

from reprog_jax import calibration


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
  assert calibration.mce(HAND_PROBS, HAND_LABELS, n_bins=5) == pytest.approx(
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
  assert calibration.mce(probs, labels, n_bins) == pytest.approx(
      expected_mce, abs=1e-5)


def test_perfect_calibration_gives_zero():
  # Ten examples at confidence .7 of which seven are right, and four at .5
  # (ties: argmax picks class 0) of which two are right.
  probs = np.array([[0.7, 0.3]] * 10 + [[0.5, 0.5]] * 4, np.float32)
  labels = np.array([0] * 7 + [1] * 3 + [0, 0, 1, 1])
  assert calibration.ece(probs, labels) == pytest.approx(0.0, abs=1e-6)
  assert calibration.mce(probs, labels) == pytest.approx(0.0, abs=1e-6)


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
                             calibration.mce(probs, labels), rtol=1e-5)


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
