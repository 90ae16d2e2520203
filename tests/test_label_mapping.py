"""Tests for reprog_jax.model.label_mapping: ILM/FLM/RLM label mappings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reprog_jax.model import label_mapping


def reference_mapping(dist_matrix):
  """The PyTorch version's greedy matching (one source per target), in NumPy.

  Transcribes `predictive_distribution_based_multi_label_mapping` with
  `mlm_num = 1` and how `generate_label_mapping_by_frequency` reads the
  mapping sequence off the 0/1 mapping matrix.
  """
  dist_matrix = np.array(dist_matrix, np.int64)
  num_source, num_classes = dist_matrix.shape
  assert num_classes <= num_source
  mapping_matrix = np.zeros_like(dist_matrix)
  for _ in range(num_classes):
    loc = int(dist_matrix.argmax())  # Flattened, row-major, first on ties.
    row, col = loc // num_classes, loc % num_classes
    mapping_matrix[row, col] = 1
    dist_matrix[row] = -1
    if mapping_matrix[:, col].sum() == 1:
      dist_matrix[:, col] = -1
  pairs = np.argwhere(mapping_matrix)  # Like torch.nonzero: row-major.
  return pairs[:, 0][np.argsort(pairs[:, 1], kind="stable")]


def reference_dist_matrix(logits, labels, num_classes):
  """The PyTorch version's get_dist_matrix, in NumPy."""
  one_hot = np.eye(logits.shape[-1], dtype=np.int64)[logits.argmax(-1)]
  return np.stack([one_hot[labels == i].sum(0) for i in range(num_classes)],
                  axis=1)


def test_hand_made_example():
  counts = np.array([[5, 0, 1],
                     [2, 7, 0],
                     [0, 7, 3],
                     [4, 1, 6]])
  # 7 at (1, 1) comes before the tied 7 at (2, 1): target 1 -> source 1.
  # Rows 0, 2, 3 and columns 0, 2 remain; 6 at (3, 2): target 2 -> source 3.
  # Rows 0, 2 and column 0 remain; 5 at (0, 0): target 0 -> source 0.
  np.testing.assert_array_equal(label_mapping.greedy_mapping(counts),
                                [0, 1, 3])
  assert reference_mapping(counts).tolist() == [0, 1, 3]


def test_greedy_is_one_to_one_not_per_column_argmax():
  # Both targets are mostly predicted as source 0; target 0 has the larger
  # count, so target 1 falls back to its next source, 2.
  counts = np.array([[9, 8],
                     [0, 1],
                     [0, 5]])
  np.testing.assert_array_equal(label_mapping.greedy_mapping(counts), [0, 2])


def test_all_zero_counts_map_in_order():
  # Every entry ties at 0: the first free (row, column) wins each time.
  np.testing.assert_array_equal(
      label_mapping.greedy_mapping(np.zeros((5, 3), np.int32)), [0, 1, 2])


@pytest.mark.parametrize("shape,high", [
    ((6, 6), 2),      # T = S, many ties.
    ((10, 3), 2),     # 0/1 counts: ties everywhere.
    ((12, 5), 4),
    ((30, 7), 1),     # All zero.
    ((20, 20), 100),  # T = S, few ties.
    ((50, 10), 1000),
])
def test_matches_reference_on_random_counts(shape, high):
  rng = np.random.default_rng(shape[0] * 1000 + shape[1] + high)
  batch = rng.integers(0, high, size=(40,) + shape).astype(np.int32)
  # vmap: one compilation for 40 matrices, and the function must vmap.
  ours = np.asarray(jax.jit(jax.vmap(label_mapping.greedy_mapping))(batch))
  for counts, mapping_sequence in zip(batch, ours):
    np.testing.assert_array_equal(mapping_sequence, reference_mapping(counts))
    assert len(set(mapping_sequence.tolist())) == shape[1]


def test_ilm_matches_reference_on_logits():
  rng = np.random.default_rng(0)
  num_source, num_classes, n = 1000, 10, 500
  labels = rng.integers(0, num_classes, size=n)
  # Logits biased so that each class prefers a few source classes.
  logits = rng.normal(size=(n, num_source)).astype(np.float32)
  logits[np.arange(n), labels * 3 + rng.integers(0, 3, size=n)] += 3.0
  expected = reference_mapping(
      reference_dist_matrix(logits, labels, num_classes))
  ours = jax.jit(label_mapping.ilm, static_argnums=2)(logits, labels,
                                                      num_classes)
  assert ours.dtype == jnp.int32 and ours.shape == (num_classes,)
  np.testing.assert_array_equal(ours, expected)


def test_count_matrix_by_hand():
  # Predictions (argmax; row 3 ties between 1 and 2, first wins): 2, 0, 2, 1.
  logits = np.array([[0., 1., 5.],
                     [4., 1., 0.],
                     [0., 0., 2.],
                     [0., 3., 3.]], np.float32)
  labels = np.array([0, 0, 1, 1])
  expected = np.array([[1, 0],   # Source 0: one example of target 0.
                       [0, 1],   # Source 1: one of target 1.
                       [1, 1]])  # Source 2: one of each.
  counts = label_mapping.count_matrix(logits, labels, 2)
  assert counts.dtype == jnp.int32
  np.testing.assert_array_equal(counts, expected)
  np.testing.assert_array_equal(
      label_mapping.count_matrix(np.array([2, 0, 2, 1]), labels, 2,
                                 num_source=3), expected)


def test_count_matrix_mask_excludes_padding():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(12, 20)).astype(np.float32)
  labels = rng.integers(0, 4, size=12)
  mask = np.array([1] * 9 + [0] * 3, bool)
  # Padded examples carry garbage labels, including out-of-range ones.
  labels[9:] = [-1, 4, 1000]
  counts = label_mapping.count_matrix(logits, labels, 4, mask)
  np.testing.assert_array_equal(
      counts, reference_dist_matrix(logits[:9], labels[:9], 4))
  assert int(counts.sum()) == 9
  np.testing.assert_array_equal(
      label_mapping.ilm(logits, labels, 4, mask),
      reference_mapping(reference_dist_matrix(logits[:9], labels[:9], 4)))


def test_count_matrix_accumulates_over_batches():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(30, 15)).astype(np.float32)
  labels = rng.integers(0, 5, size=30)
  total = sum(label_mapping.count_matrix(logits[i:i + 8], labels[i:i + 8], 5)
              for i in range(0, 30, 8))
  np.testing.assert_array_equal(total,
                                reference_dist_matrix(logits, labels, 5))


def test_missing_class_gets_a_zero_column():
  logits = np.eye(4, dtype=np.float32)
  counts = label_mapping.count_matrix(logits, np.array([0, 0, 2, 2]), 3)
  assert counts.shape == (4, 3)
  np.testing.assert_array_equal(counts[:, 1], 0)


def test_too_many_target_classes_is_an_error():
  with pytest.raises(ValueError, match="num_classes <= number of source"):
    label_mapping.greedy_mapping(np.zeros((3, 4), np.int32))
  with pytest.raises(ValueError, match="num_classes <= number of source"):
    label_mapping.ilm(np.zeros((2, 3), np.float32), np.array([0, 1]), 4)
  with pytest.raises(ValueError, match="num_classes <= number of source"):
    label_mapping.rlm(0, 11, num_source=10)


def test_count_matrix_argument_errors():
  with pytest.raises(ValueError, match="num_source"):
    label_mapping.count_matrix(np.array([0, 1]), np.array([0, 1]), 2)
  with pytest.raises(ValueError, match="labels"):
    label_mapping.count_matrix(np.zeros((3, 5), np.float32),
                               np.array([0, 1]), 2)


def test_rlm_is_a_seeded_permutation_prefix():
  first = np.asarray(label_mapping.rlm(4, 10))
  assert first.dtype == np.int32 and first.shape == (10,)
  assert len(set(first.tolist())) == 10
  assert first.min() >= 0 and first.max() < 1000
  np.testing.assert_array_equal(label_mapping.rlm(4, 10), first)
  np.testing.assert_array_equal(label_mapping.rlm(jax.random.key(4), 10),
                                first)
  # A longer mapping from the same seed extends the shorter one.
  np.testing.assert_array_equal(label_mapping.rlm(4, 100)[:10], first)
  assert not np.array_equal(label_mapping.rlm(5, 10), first)
  # With T = S it is a whole permutation.
  np.testing.assert_array_equal(np.sort(label_mapping.rlm(3, 50, 50)),
                                np.arange(50))


def test_apply_mapping_selects_in_target_order():
  source_logits = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
  target_logits = label_mapping.apply_mapping(source_logits,
                                              jnp.array([5, 0, 2]))
  assert target_logits.shape == (2, 3, 3)
  # Row [1, 2] holds 30..35, i.e. source class c has logit 30 + c.
  np.testing.assert_array_equal(target_logits[1, 2], [35., 30., 32.])


def test_registry():
  assert label_mapping.get_label_mapping("ilm").remap_every_interval
  assert label_mapping.get_label_mapping("flm").from_predictions
  assert not label_mapping.get_label_mapping("flm").remap_every_interval
  assert not label_mapping.get_label_mapping("rlm").from_predictions
  assert label_mapping.get_label_mapping("blm").form == "bayesian"
  assert label_mapping.get_label_mapping("blmpp").statistic == "top_k"
  assert label_mapping.get_label_mapping("fullymap").form == "learned"
  with pytest.raises(ValueError, match="'blm', 'blmpp', 'flm', 'fullymap', "
                     "'ilm', 'rlm'"):
    label_mapping.get_label_mapping("best")


def test_mapping_epochs():
  ilm, flm, rlm = (label_mapping.get_label_mapping(n)
                   for n in ("ilm", "flm", "rlm"))
  assert [e for e in range(7) if ilm.is_mapping_epoch(e)] == list(range(7))
  assert [e for e in range(7) if ilm.is_mapping_epoch(e, 3)] == [0, 3, 6]
  assert [e for e in range(7) if flm.is_mapping_epoch(e, 3)] == [0]
  assert [e for e in range(7) if rlm.is_mapping_epoch(e)] == [0]


# --- BLM, BLM++ and matrix mappings ------------------------------------------
# Transcribed from the published description (Cai et al., NeurIPS 2024, as
# issue 19 states it), with plain loops, not from our code.


def described_blm(logits, labels, num_classes, lap):
  """Counts of (source argmax, target label); each source row divided by
  its total plus `lap`; each target column normalised to sum 1."""
  num_source = logits.shape[1]
  counts = np.zeros((num_source, num_classes), np.float64)
  for row, label in zip(logits, labels):
    counts[int(np.argmax(row)), int(label)] += 1
  return counts, _described_normalisation(counts, lap)


def described_blmpp(logits, labels, num_classes, lap, top_k):
  """As BLM, with each example adding its top-k softmax probabilities to
  its label's column instead of a count of 1 for its argmax."""
  num_source = logits.shape[1]
  sums = np.zeros((num_source, num_classes), np.float64)
  for row, label in zip(logits.astype(np.float64), labels):
    probabilities = np.exp(row - row.max())
    probabilities /= probabilities.sum()
    for source in np.argsort(-probabilities, kind="stable")[:top_k]:
      sums[source, int(label)] += probabilities[source]
  return sums, _described_normalisation(sums, lap)


def _described_normalisation(counts, lap):
  matrix = np.zeros_like(counts)
  for s in range(counts.shape[0]):
    total = counts[s].sum() + lap
    if total > 0:  # 0 / 0 (never predicted, lap 0): no weight.
      matrix[s] = counts[s] / total
  for t in range(counts.shape[1]):
    total = matrix[:, t].sum()
    if total > 0:
      matrix[:, t] /= total
  return matrix


def _random_logits(seed, n=200, num_source=30, num_classes=6):
  rng = np.random.default_rng(seed)
  # A few dominant sources, so that counts pile up as with a real network.
  logits = rng.normal(size=(n, num_source)).astype(np.float32)
  logits[:, :5] += 2.0 * rng.random(5).astype(np.float32)
  labels = rng.integers(0, num_classes, n)
  return logits, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_blm_matches_the_published_description(seed):
  logits, labels = _random_logits(seed)
  counts, expected = described_blm(logits, labels, 6, lap=1.0)
  ours = label_mapping.count_matrix(logits, labels, 6)
  np.testing.assert_array_equal(np.asarray(ours), counts)  # Exact counts.
  matrix = np.asarray(label_mapping.bayesian_matrix(ours, 1.0))
  np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-6)
  np.testing.assert_allclose(matrix.sum(0), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_blmpp_matches_the_published_description(seed):
  # More sources than top-3 slots filled: some never count (0 / 0 rows).
  logits, labels = _random_logits(seed, n=60, num_source=300)
  sums, expected = described_blmpp(logits, labels, 6, lap=0.0, top_k=3)
  # Summed over two batches, as the loop's mapping pass does.
  mask = np.ones(len(labels), bool)
  ours = sum(label_mapping.topk_probability_matrix(
      logits[part], labels[part], 6, mask[part], top_k=3)
             for part in (slice(0, 77), slice(77, None)))
  np.testing.assert_allclose(np.asarray(ours), sums, rtol=0, atol=1e-6)
  matrix = np.asarray(label_mapping.bayesian_matrix(ours, 0.0))
  np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-6)
  assert np.isfinite(matrix).all()  # Sources never in a top-3: weight 0.
  assert (sums.sum(1) == 0).any()


def test_blmpp_masked_rows_add_nothing():
  logits, labels = _random_logits(2, n=40)
  mask = np.arange(40) < 25
  labels = np.where(mask, labels, 99)  # Padding's junk labels.
  ours = label_mapping.topk_probability_matrix(logits, labels, 6, mask,
                                               top_k=2)
  expected, _ = described_blmpp(logits[:25], labels[:25], 6, 0.0, 2)
  np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-6)


def test_one_hot_matrix_gives_the_sequence_logits_and_losses_exactly():
  import optax
  rng = np.random.default_rng(7)
  logits = (rng.normal(size=(16, 1000)) * 30).astype(np.float32)
  sequence = rng.permutation(1000)[:10].astype(np.int32)
  one_hot = np.zeros((1000, 10), np.float32)
  one_hot[sequence, np.arange(10)] = 1.0
  by_index = label_mapping.apply_mapping(jnp.asarray(logits), sequence)
  by_matrix = jax.jit(label_mapping.apply_mapping)(jnp.asarray(logits),
                                                   jnp.asarray(one_hot))
  np.testing.assert_array_equal(np.asarray(by_matrix), np.asarray(by_index))
  labels = rng.integers(0, 10, 16)
  loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels)
  np.testing.assert_array_equal(np.asarray(loss(by_matrix)),
                                np.asarray(loss(by_index)))
  np.testing.assert_array_equal(label_mapping.dominant_sources(one_hot),
                                sequence)


# --- The published code at its experiments' settings ------------------------
# tmlr-group/BayesianLM's `mapping.py` (`blm_reweight_matrix`,
# `blmp_reweight_matrix`: their computation after the network's forward
# pass, transcribed in torch) at the settings of its `cfg.py`: lap 1 for
# both, BLM++'s k = int(topk_ratio * T) with topk_ratio 0.15.


def published_blm(fx0s, ys, lap=1):
  import torch  # pylint: disable=g-import-not-at-top
  fx = torch.nn.functional.one_hot(torch.argmax(fx0s, dim=-1),
                                   num_classes=fx0s.size(-1))
  freq_matrix = torch.cat([fx[ys == i].sum(0).unsqueeze(1)
                           for i in range(len(ys.unique()))], dim=1)
  classes_sum = torch.sum(freq_matrix, dim=1, keepdim=True)
  classes_sum = classes_sum + lap * torch.ones_like(classes_sum)
  matrix = torch.div(freq_matrix, classes_sum)
  target_sum = torch.sum(matrix, dim=0)
  return torch.div(matrix, target_sum)


def published_blmp(fx0, ys, lap, k):
  import torch  # pylint: disable=g-import-not-at-top
  probabilities = torch.nn.functional.softmax(fx0, dim=1)
  top_values, top_indices = torch.topk(probabilities, k, dim=1)
  probs = torch.zeros_like(probabilities)
  probs.scatter_(1, top_indices, top_values)
  matrix = torch.zeros((len(ys.unique()), probs.size(-1)))
  indices = ys.view(-1, 1).long().expand(-1, matrix.size(-1))
  matrix.scatter_add_(0, indices, probs)
  matrix = matrix.t()
  classes_sum = torch.sum(matrix, dim=1, keepdim=True)
  classes_sum = classes_sum + lap * torch.ones_like(classes_sum)
  matrix = torch.div(matrix, classes_sum)
  target_sum = torch.sum(matrix, dim=0)
  return torch.div(matrix, target_sum)


@pytest.mark.parametrize("mapping", ["blm", "blmpp"])
@pytest.mark.parametrize("dataset, num_classes", [("cifar10", 10),
                                                  ("cifar100", 100)])
def test_default_blm_and_blmpp_equal_the_published_experiments(
    mapping, dataset, num_classes):
  """Our BLM and BLM++ at their config defaults (the mapping pass's
  statistic summed over two batches, then the epoch's mapping) against
  the published functions at cfg.py's settings, on random logits of 1000
  sources where the published code is defined (every target has
  examples)."""
  import torch  # pylint: disable=g-import-not-at-top
  from reprog_jax.methods import compose, ilm_vp, readouts
  from reprog_jax.model import network as network_lib
  from reprog_jax.train import run_config
  config = run_config.method_config("ilm_vp", dataset).unlock()
  config.label_mapping = mapping
  method = compose.assemble("ilm_vp", ilm_vp.PARTS, config,
                            readouts.logits_of(network_lib.imagenet_classes()),
                            num_classes, 32)
  rng = np.random.default_rng(num_classes)
  n = 4 * num_classes
  logits = rng.normal(size=(n, 1000)).astype(np.float32) * 3
  logits[:, :20] += 4 * rng.random(20).astype(np.float32)
  labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
  statistic = method.mapping_statistic or label_mapping.count_matrix
  mask = np.ones(n, bool)
  sums = sum(np.asarray(statistic(logits[part], labels[part], num_classes,
                                  mask[part]))
             for part in (slice(0, n // 3), slice(n // 3, None)))
  ours = method.epoch_mapping(0, method.initial_mapping[None], [0],
                              lambda: sums[None])[0]
  fx0, ys = torch.from_numpy(logits), torch.from_numpy(labels)
  theirs = (published_blm(fx0, ys, lap=1) if mapping == "blm" else
            published_blmp(fx0, ys, lap=1, k=int(num_classes * 0.15)))
  theirs = theirs.numpy()
  assert ours.shape == theirs.shape == (1000, num_classes)
  assert np.isfinite(theirs).all()
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)
