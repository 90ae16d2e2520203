"""Each seed's best epoch (`best.Best`) and its checkpoint round trip."""

import jax
import jax.numpy as jnp
import numpy as np

from reprog_jax.metrics import calibration
from reprog_jax.train import best as best_lib
from reprog_jax.train import checkpoints


def _bins(value):
  """Per-bin sums whose every entry is `value` (one seed's)."""
  return calibration.CalibrationBins(
      *[np.full(calibration.DEFAULT_NUM_BINS, value, np.float32)
        for _ in calibration.CalibrationBins._fields])


def test_update_keeps_each_seeds_first_best_epoch():
  best = best_lib.Best.initial({"w": np.zeros((3, 2), np.float32)},
                               np.zeros((3, 4), np.int32))
  assert best.test_acc.tolist() == [-1, -1, -1]
  best = best.update(0, {"w": np.full((3, 2), 1, np.float32)},
                     np.full((3, 4), 1), [0.5, 0.2, 0.7],
                     [_bins(1), _bins(1), _bins(1)])
  # Epoch 1: seed 0 ties (the first of equals stays), seed 1 rises, seed 2
  # falls.
  best = best.update(1, {"w": np.full((3, 2), 2, np.float32)},
                     np.full((3, 4), 2), [0.5, 0.3, 0.1],
                     [_bins(2), _bins(2), _bins(2)])
  assert best.epoch.tolist() == [0, 1, 0] and best.epoch.dtype == np.int32
  assert best.test_acc.tolist() == [0.5, 0.3, 0.7]
  np.testing.assert_array_equal(best.params["w"][:, 0], [1, 2, 1])
  np.testing.assert_array_equal(best.mapping_sequence[:, 0], [1, 2, 1])
  assert best.mapping_sequence.dtype == np.int32
  np.testing.assert_array_equal(best.reliability["count"][:, 0], [1, 2, 1])
  # Without a validation split, no validation epoch is kept.
  assert best.val_epoch.tolist() == [-1, -1, -1]


def test_update_keeps_each_seeds_first_validation_epoch():
  best = best_lib.Best.initial({"w": np.zeros((2, 2), np.float32)},
                               np.zeros((2, 4), np.int32))
  # Per epoch: (test accuracies, validation accuracies) of seeds 0 and 1.
  epochs = [([0.5, 0.5], [0.3, 0.4]), ([0.4, 0.6], [0.6, 0.4]),
            ([0.9, 0.2], [0.6, 0.2])]
  for epoch, (test, val) in enumerate(epochs):
    best = best.update(epoch, {"w": np.full((2, 2), epoch, np.float32)},
                       np.full((2, 4), epoch), test,
                       [_bins(epoch), _bins(epoch)], val_accuracies=val)
  # Validation: seed 0 rises at 1 and ties at 2, seed 1 ties at 1: the
  # first of equals. Test: its own epochs, whatever validation picked.
  assert best.val_epoch.tolist() == [1, 0] and best.epoch.tolist() == [2, 1]
  assert best.val_acc.tolist() == [0.6, 0.4]
  np.testing.assert_array_equal(best.val_params["w"][:, 0], [1, 0])
  np.testing.assert_array_equal(best.val_mapping_sequence[:, 0], [1, 0])
  np.testing.assert_array_equal(best.val_reliability["count"][:, 0], [1, 0])
  np.testing.assert_array_equal(best.params["w"][:, 0], [2, 1])


def test_checkpoint_round_trips_best(tmp_path):
  state = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)}
  mappings = np.array([[3, 1], [0, 2]])
  best = best_lib.Best.initial({"w": np.ones((2, 3), np.float32)}, mappings)
  best = best.update(4, {"w": np.full((2, 3), 7, np.float32)}, mappings,
                     [0.25, 0.5], [_bins(3), _bins(4)],
                     val_accuracies=[0.125, 0.75])
  checkpoints.save(str(tmp_path), checkpoints.pack(
      state, epoch=4, mappings=mappings, best=best))
  like = checkpoints.pack({"w": jnp.zeros((2, 3), jnp.float32)}, epoch=0,
                          mappings=np.zeros_like(mappings),
                          best=best_lib.Best.initial(
                              {"w": np.zeros((2, 3), np.float32)}, mappings))
  restored = checkpoints.restore(str(tmp_path), like)
  assert restored["epoch"] == 4
  assert isinstance(restored["best"], best_lib.Best)
  # Every field of both selections, with its dtype.
  for ours, saved in zip(jax.tree.leaves(restored["best"].fields()),
                         jax.tree.leaves(best.fields())):
    np.testing.assert_array_equal(ours, saved)
    assert ours.dtype == saved.dtype
  assert restored["best"].val_epoch.tolist() == [4, 4]
  # On disk, a plain dict of arrays, as checkpoints of earlier versions.
  assert sorted(checkpoints.read(str(tmp_path))["best"]) == [
      "epoch", "mapping_sequence", "params", "reliability", "test_acc",
      "val_acc", "val_epoch", "val_mapping_sequence", "val_params",
      "val_reliability"]
