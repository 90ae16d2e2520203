"""Each seed's best epoch so far: what a run reports and exports at the end.

A seed's best epoch is the one with its highest test accuracy (the first of
equals); the run keeps that epoch's trained values, mapping sequence,
accuracy, epoch number and reliability-diagram bins, one row per seed, and
checkpoints them with the state (`checkpoints.pack`).
"""

from typing import Any

import flax.struct
import jax
import numpy as np

from reprog_jax.metrics import calibration


@flax.struct.dataclass
class Best:
  """Each seed's best epoch so far; every field has a leading seed axis.

  Attributes:
    params: the trained values of that epoch (a pytree, on the host).
    mapping_sequence: the mapping used in it: (S, T) int32 sequences or
      (S, K, T) float32 matrices.
    test_acc: (S,) float64, its test accuracy (-1 before the first epoch).
    epoch: (S,) int32, its number (-1 before the first epoch).
    reliability: its test `calibration.CalibrationBins` fields, each
      (S, n_bins) float32, by field name.
  """
  params: Any
  mapping_sequence: np.ndarray
  test_acc: np.ndarray
  epoch: np.ndarray
  reliability: dict[str, np.ndarray]

  @classmethod
  def initial(cls, params, mappings) -> "Best":
    """Nothing kept yet: every later epoch improves on it."""
    num_seeds = len(mappings)
    return cls(params=params,
               mapping_sequence=np.asarray(mappings).copy(),
               test_acc=np.full(num_seeds, -1.0),
               epoch=np.full(num_seeds, -1, np.int32),
               reliability={name: np.zeros((num_seeds,
                                            calibration.DEFAULT_NUM_BINS),
                                           np.float32)
                            for name in calibration.CalibrationBins._fields})

  def pick(self, other: "Best", improved: np.ndarray) -> "Best":
    """Per seed, `other`'s values where `improved` (S,) holds, else ours."""
    def one(new, old):
      new, old = np.asarray(new), np.asarray(old)
      return np.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new,
                      old).astype(old.dtype)
    return jax.tree.map(one, other, self)

  def update(self, epoch, params, mappings, accuracies, bins) -> "Best":
    """Where a seed's test accuracy rose above its best, this epoch's
    values replace the kept ones (the first of equals stays).

    Args:
      epoch: the epoch just evaluated.
      params: its trained values (on the host).
      mappings: (S, T) its mapping sequences.
      accuracies: (S,) its test accuracies.
      bins: per seed, its test `calibration.CalibrationBins`.
    """
    accuracies = np.asarray(accuracies, np.float64)
    this_epoch = Best(
        params=params, mapping_sequence=np.asarray(mappings),
        test_acc=accuracies,
        epoch=np.full(len(accuracies), epoch, np.int32),
        reliability={name: np.stack([np.asarray(b) for b in per_seed])
                     for name, per_seed in zip(
                         calibration.CalibrationBins._fields, zip(*bins))})
    return self.pick(this_epoch, accuracies > self.test_acc)
