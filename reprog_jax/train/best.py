"""Each seed's selected epochs so far: what a run reports and exports.

Two selections are kept per seed, each the first of equals:
- the best-test epoch, with the highest test accuracy (the PyTorch
  version's selection; optimistic, since it looks at the test split) among
  the epochs whose test split was evaluated (every epoch unless
  `config.test_every` says otherwise: `evaluation.must_test`);
- the validation epoch, with the highest accuracy on the seed's validation
  split (`inputs.RunData.validation`), when the run has one.
For each the run keeps that epoch's trained values, mapping sequence,
accuracy, epoch number and test reliability-diagram bins, one row per seed,
and checkpoints them with the state (`checkpoints.pack`), so that a resumed
run ends with the same selections as an uninterrupted one. The third
selection, the last epoch, needs nothing kept.
"""

from typing import Any

import flax.struct
import jax
import numpy as np

from reprog_jax.metrics import calibration

# The fields of each selection: the best-test epoch's, then the validation
# epoch's (its accuracy is the validation accuracy).
TEST_FIELDS = ("params", "mapping_sequence", "test_acc", "epoch",
               "reliability")
VALIDATION_FIELDS = ("val_params", "val_mapping_sequence", "val_acc",
                     "val_epoch", "val_reliability")


@flax.struct.dataclass
class Best:
  """Each seed's selected epochs so far; every field has a leading seed axis.

  Attributes:
    params: the best-test epoch's trained values (a pytree, on the host).
    mapping_sequence: the mapping used in it: (S, T) int32 sequences or
      (S, K, T) float32 matrices.
    test_acc: (S,) float64, its test accuracy (-1 before the first epoch).
    epoch: (S,) int32, its number (-1 before the first epoch).
    reliability: its test `calibration.CalibrationBins` fields, each
      (S, n_bins) float32, by field name.
    val_params, val_mapping_sequence, val_epoch, val_reliability: the same
      of the validation epoch (`val_epoch` -1: none yet, or no validation
      split).
    val_acc: (S,) float64, its validation accuracy (-1: none yet).
  """
  params: Any
  mapping_sequence: np.ndarray
  test_acc: np.ndarray
  epoch: np.ndarray
  reliability: dict[str, np.ndarray]
  val_params: Any
  val_mapping_sequence: np.ndarray
  val_acc: np.ndarray
  val_epoch: np.ndarray
  val_reliability: dict[str, np.ndarray]

  @classmethod
  def initial(cls, params, mappings) -> "Best":
    """Nothing kept yet: every later epoch improves on it."""
    num_seeds = len(mappings)
    mappings = np.asarray(mappings)
    # As checkpoints keep them: sequences int32, matrices float32.
    mappings = mappings.astype(np.float32 if mappings.ndim == 3 else np.int32)
    nothing = (params, mappings,
               np.full(num_seeds, -1.0), np.full(num_seeds, -1, np.int32),
               {name: np.zeros((num_seeds, calibration.DEFAULT_NUM_BINS),
                               np.float32)
                for name in calibration.CalibrationBins._fields})
    return cls(**dict(zip(TEST_FIELDS, nothing)),
               **dict(zip(VALIDATION_FIELDS, nothing)))

  def _pick(self, fields, this_epoch, improved) -> "Best":
    """Per seed, `this_epoch`'s values of `fields` where `improved` (S,)
    holds, else ours."""
    def one(new, old):
      new, old = np.asarray(new), np.asarray(old)
      return np.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new,
                      old).astype(old.dtype)
    return self.replace(**{
        ours: jax.tree.map(one, new, getattr(self, ours))
        for ours, new in zip(fields, this_epoch)})

  def improves_validation(self, val_accuracies) -> bool:
    """Whether `val_accuracies` (S,) would change some seed's validation
    epoch (`update`'s rule): that epoch's test split must be evaluated."""
    return val_accuracies is not None and bool(np.any(
        np.asarray(val_accuracies, np.float64) > self.val_acc))

  def update(self, epoch, params, mappings, accuracies, bins,
             val_accuracies=None) -> "Best":
    """Where a seed's test accuracy rose above its best-test epoch's, or its
    validation accuracy above its validation epoch's, this epoch's values
    replace the kept ones (the first of equals stays).

    Args:
      epoch: the epoch just evaluated.
      params: its trained values (on the host).
      mappings: (S, T) its mapping sequences.
      accuracies: (S,) its test accuracies, or None (its test split was
        not evaluated: it selects nothing on the test split).
      bins: per seed, its test `calibration.CalibrationBins` (None with
        `accuracies`).
      val_accuracies: (S,) its validation accuracies, or None (no
        validation split: the validation epoch stays unset).

    Raises:
      ValueError: a validation epoch would change without the test split
        evaluated (whose metrics and bins it keeps).
    """
    def this_epoch(score):
      return (params, np.asarray(mappings), score,
              np.full(len(score), epoch, np.int32),
              {name: np.stack([np.asarray(b) for b in per_seed])
               for name, per_seed in zip(calibration.CalibrationBins._fields,
                                         zip(*bins))})
    kept = self
    if accuracies is not None:
      accuracies = np.asarray(accuracies, np.float64)
      kept = self._pick(TEST_FIELDS, this_epoch(accuracies),
                        accuracies > self.test_acc)
    if not self.improves_validation(val_accuracies):
      return kept
    if bins is None:
      raise ValueError(f"epoch {epoch} improves a validation accuracy but "
                       f"its test split was not evaluated")
    val_accuracies = np.asarray(val_accuracies, np.float64)
    return kept._pick(VALIDATION_FIELDS, this_epoch(val_accuracies),
                      val_accuracies > self.val_acc)

  def fields(self) -> dict:
    """Every field by name: what `checkpoints.pack` saves."""
    return {name: getattr(self, name)
            for name in TEST_FIELDS + VALIDATION_FIELDS}
