"""Few-shot subsets and stratified hold-out cuts, as index arrays.

Everything here works on a split's label array and returns indices into it,
so the same code serves tfds, folder and mock data, and the training code can
draw the subsets of several seeds at once and vmap over them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reprog_jax.data.errors import DataError


def _check_n_shot(n_shot: int) -> int:
  if isinstance(n_shot, bool) or int(n_shot) != n_shot:
    raise DataError(f'n_shot must be an integer, got {n_shot!r}.')
  n_shot = int(n_shot)
  if n_shot == 0 or n_shot < -1:
    raise DataError(f'n_shot must be -1 (full split) or at least 1, got '
                    f'{n_shot}.')
  return n_shot


def shot_name(n_shot: int) -> str:
  """The one display form of a few-shot budget: '10-shot', or 'full' for
  the whole split (-1); also a sweep cell's directory name."""
  return 'full' if n_shot == -1 else f'{n_shot}-shot'


def few_shot_indices(
    labels: np.ndarray,
    n_shot: int,
    seed: int,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
  """Draws `n_shot` examples per class, the PyTorch version's way.

  For each class in label order, the class's indices are shuffled with a
  NumPy `RandomState(seed)` and the first `n_shot` kept; the concatenation is
  then shuffled with the same generator. (The PyTorch version seeds NumPy's
  global generator, which is a `RandomState`, so the draws are the same ones
  for the same label array.)

  Args:
    labels: int array (N,), the label of every example of the split.
    n_shot: examples per class, or -1 for the whole split.
    seed: seed of the draw.
    num_classes: if given, classes are 0..num_classes-1 and a class without
      examples is an error; otherwise the classes present in `labels`.
    class_names: optional names, only used in error messages.

  Returns:
    int64 indices into `labels`: `n_shot * num_classes` of them, in shuffled
    order; or `arange(N)` when `n_shot == -1`.

  Raises:
    DataError: if `n_shot` is 0 or below -1, or exceeds the size of a class
      (the message names the smallest class and its size).
  """
  n_shot = _check_n_shot(n_shot)
  labels = np.asarray(labels)
  if n_shot == -1:
    return np.arange(len(labels), dtype=np.int64)
  classes = (np.arange(num_classes) if num_classes is not None
             else np.unique(labels))
  counts = np.array([np.count_nonzero(labels == c) for c in classes])
  if len(counts) and counts.min() < n_shot:
    smallest = int(classes[np.argmin(counts)])
    named = (f' ({class_names[smallest]!r})' if class_names is not None
             else '')
    raise DataError(
        f'n_shot={n_shot} exceeds the size of class {smallest}{named}, which '
        f'has {counts.min()} examples; use n_shot <= {counts.min()} or -1.')
  rng = np.random.RandomState(seed)
  chosen = []
  for c in classes:
    members = np.flatnonzero(labels == c)
    rng.shuffle(members)
    chosen.append(members[:n_shot])
  chosen = np.concatenate(chosen).astype(np.int64)
  rng.shuffle(chosen)
  return chosen


def few_shot_indices_multi(
    labels: np.ndarray,
    n_shot: int,
    seeds: Sequence[int],
    **kwargs,
) -> np.ndarray:
  """The few-shot subsets of several seeds, stacked.

  Args:
    labels: int array (N,), the label of every example of the split.
    n_shot: examples per class, or -1 for the whole split.
    seeds: one seed per subset.
    **kwargs: passed to `few_shot_indices`.

  Returns:
    int64 array (len(seeds), K): row i is `few_shot_indices(labels, n_shot,
    seeds[i])`. Every row has the same length K because every class gives
    exactly `n_shot` examples, which is what lets the training code vmap.
  """
  return np.stack([few_shot_indices(labels, n_shot, s, **kwargs)
                   for s in seeds])


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Cuts one split into a train and a stratified held-out test part.

  Exactly `sklearn.model_selection.train_test_split(range(N),
  test_size=fraction, stratify=labels, random_state=seed)`, the call the
  PyTorch version makes for EuroSAT (over `D.samples`, in `ImageFolder`
  order): scikit-learn itself draws the cut, so it stays equal where a
  class's share is not a whole number (sklearn then spends extra random
  draws on which classes round up).

  Args:
    labels: int array (N,).
    fraction: share held out, in (0, 1).
    seed: `random_state` of the cut.

  Returns:
    (train_indices, test_indices): disjoint, covering 0..N-1, each in the
    order `train_test_split` returns them (the order the PyTorch code's
    two datasets would have had, so few-shot draws are the ones it meant).

  Raises:
    DataError: a class too small to be cut (sklearn needs two examples per
      class, and at least one per class on each side).
  """
  # Imported here: scikit-learn takes seconds to import, and only EuroSAT
  # needs it.
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels)
  try:
    train, test = model_selection.train_test_split(
        np.arange(len(labels), dtype=np.int64), test_size=fraction,
        stratify=labels, random_state=seed)
  except ValueError as e:
    raise DataError(
        f'cannot hold out a stratified {fraction:.0%} of {len(labels)} '
        f'examples in {len(np.unique(labels))} classes ({e}); every class '
        'needs more examples.') from e
  return train.astype(np.int64), test.astype(np.int64)


# The calibration hold-out and the validation split are drawn with fixed
# seeds, not the run's: a seed then gets the same held-out examples alone or
# among other seeds, and the sets of several seeds overlap (fewer images to
# decode). Two seeds, so that the two draws are independent orders.
CALIBRATION_HOLDOUT_SEED = 0
VALIDATION_SEED = 1


def calibration_holdout_indices(
    labels: np.ndarray,
    per_class: int,
    exclude: np.ndarray | Sequence[int] = (),
    *,
    keep_per_class: int = 0,
    seed: int = CALIBRATION_HOLDOUT_SEED,
) -> np.ndarray:
  """Up to `per_class` examples of each class outside `exclude`, to fit a
  temperature on.

  For each class in label order, all of the class's indices are permuted
  with one `RandomState(seed)` (the same permutations whatever `exclude`
  is), and the first `per_class` of them not in `exclude` are held out; a
  class with fewer such examples gives what it has, less `keep_per_class`.

  Args:
    labels: int array (N,), the label of every example of the split.
    per_class: examples held out per class (at most).
    exclude: indices never held out (a seed's few-shot subset).
    keep_per_class: how many of each class's non-excluded examples stay out
      of the held-out set (1 when carving it out of the training data, so
      every class still trains).
    seed: seed of the permutations.

  Returns:
    Sorted int64 indices into `labels`, disjoint from `exclude`.
  """
  labels = np.asarray(labels)
  excluded = np.zeros(len(labels), bool)
  excluded[np.asarray(exclude, np.int64)] = True
  rng = np.random.RandomState(seed)
  held_out = []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    members = members[~excluded[members]]
    take = min(per_class, max(len(members) - keep_per_class, 0))
    held_out.append(members[:take])
  return np.sort(np.concatenate(held_out or [np.zeros(0, np.int64)])).astype(
      np.int64)


def validation_indices(
    labels: np.ndarray,
    per_class: int,
    exclude: np.ndarray | Sequence[int] = (),
    *,
    keep_per_class: int = 0,
    seed: int = VALIDATION_SEED,
) -> np.ndarray:
  """Up to `per_class` examples of each class outside `exclude`, to select
  a seed's epoch on (model selection that never looks at the test split).

  The rule of `calibration_holdout_indices`, with the validation seed: per
  class in label order, one permutation of all the class's indices by
  `RandomState(seed)`; the first `per_class` not in `exclude` are kept (a
  class with fewer gives what it has, less `keep_per_class`). Pass a seed's
  few-shot subset and its temperature hold-out as `exclude`, so that the
  three sets are disjoint. Only the labels matter: a dense and a ticket run
  of one seed get the same validation examples.

  Args:
    labels: int array (N,), the label of every example of the split.
    per_class: validation examples per class (at most).
    exclude: indices never drawn (the seed's subset and hold-out).
    keep_per_class: how many of each class's non-excluded examples stay out
      of the validation split (1 when carving it out of the training data).
    seed: seed of the permutations.

  Returns:
    Sorted int64 indices into `labels`, disjoint from `exclude`.
  """
  return calibration_holdout_indices(labels, per_class, exclude,
                                     keep_per_class=keep_per_class, seed=seed)
