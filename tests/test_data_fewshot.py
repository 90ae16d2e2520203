"""Few-shot sampling and the stratified hold-out cut."""

import numpy as np
import pytest

from reprog_jax import data


def _reference_few_shot(labels, n_shot, seed):
  """The PyTorch version's procedure (reference section 6), transcribed.

  It seeds NumPy's global generator, shuffles each class's index list in
  class order, keeps the first n, then shuffles the union.
  """
  np.random.seed(seed)
  chosen = []
  for c in sorted(set(labels.tolist())):
    members = [i for i, y in enumerate(labels) if y == c]
    np.random.shuffle(members)
    chosen.extend(members[:n_shot])
  np.random.shuffle(chosen)
  return np.array(chosen)


def _labels(num_classes=5, sizes=(7, 9, 12, 8, 10), seed=0):
  labels = np.concatenate([np.full(n, c) for c, n in
                           zip(range(num_classes), sizes)])
  return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize('n_shot,seed', [(1, 0), (3, 4), (7, 11)])
def test_matches_the_reference_procedure(n_shot, seed):
  labels = _labels()
  np.testing.assert_array_equal(data.few_shot_indices(labels, n_shot, seed),
                                _reference_few_shot(labels, n_shot, seed))


def test_exactly_n_per_class_without_repeats():
  labels = _labels()
  chosen = data.few_shot_indices(labels, 4, seed=3)
  assert len(chosen) == len(set(chosen.tolist())) == 20
  np.testing.assert_array_equal(np.bincount(labels[chosen]), [4] * 5)


def test_seeds_differ_and_repeat():
  labels = _labels()
  a = data.few_shot_indices(labels, 5, seed=1)
  b = data.few_shot_indices(labels, 5, seed=2)
  assert set(a.tolist()) != set(b.tolist())
  np.testing.assert_array_equal(a, data.few_shot_indices(labels, 5, seed=1))


def test_full_split():
  labels = _labels()
  np.testing.assert_array_equal(data.few_shot_indices(labels, -1, seed=0),
                                np.arange(len(labels)))


def test_multi_stacks_the_single_draws():
  labels = _labels()
  stacked = data.few_shot_indices_multi(labels, 2, seeds=[0, 1, 2])
  assert stacked.shape == (3, 10)
  for row, seed in zip(stacked, [0, 1, 2]):
    np.testing.assert_array_equal(row,
                                  data.few_shot_indices(labels, 2, seed))
  assert len({tuple(sorted(r)) for r in stacked.tolist()}) == 3


@pytest.mark.parametrize('n_shot', [0, -2, 2.5])
def test_invalid_budget(n_shot):
  with pytest.raises(data.DataError, match='n_shot'):
    data.few_shot_indices(_labels(), n_shot, seed=0)


def test_budget_above_smallest_class_names_it():
  with pytest.raises(data.DataError) as error:
    data.few_shot_indices(_labels(), 8, seed=0,
                          class_names=['a', 'b', 'c', 'd', 'e'])
  message = str(error.value)
  # Class 0 is the smallest one, with 7 examples.
  assert "class 0 ('a')" in message and '7 examples' in message


def test_absent_class_is_an_error_when_classes_are_known():
  labels = np.array([0, 0, 1, 1])
  with pytest.raises(data.DataError, match='class 2'):
    data.few_shot_indices(labels, 1, seed=0, num_classes=3)


def test_stratified_holdout():
  labels = _labels(sizes=(10, 20, 30, 40, 50))
  train, test = data.stratified_holdout(labels, 0.1, seed=1)
  assert not set(train.tolist()) & set(test.tolist())
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])),
                                np.arange(len(labels)))
  np.testing.assert_array_equal(np.bincount(labels[test]), [1, 2, 3, 4, 5])
  again = data.stratified_holdout(labels, 0.1, seed=1)[1]
  np.testing.assert_array_equal(test, again)
  assert not np.array_equal(test, data.stratified_holdout(labels, 0.1, 2)[1])
