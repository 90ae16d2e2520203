"""Training checkpoints (Orbax): one per epoch, holding the best values too.

What is saved after every epoch is exactly what a resumed run needs to end
with the result of an uninterrupted one, for every seed of the run: the
trained values, the optimiser state and step, the mapping sequences, the
epoch, and each seed's best epoch so far with its test accuracy, trained
values and mapping. Data order needs no state: it derives from (seed,
epoch).

  workdir/checkpoints/<epoch>/   the last completed epoch (one kept)

The best values live inside the same checkpoint rather than in a second
one, so there is no moment at which the two could disagree: a save is one
Orbax write to a temporary directory renamed when complete, and a crash
leaves the previous epoch's checkpoint intact.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

LAST = "checkpoints"


def _manager(workdir) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, LAST)),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def pack(state, *, epoch, mappings, best) -> dict:
  """The checkpointed tree.

  Args:
    state: the `steps.TrainState` (leading seed axis).
    epoch: the epoch just completed.
    mappings: (S, T) mapping sequences used in that epoch.
    best: {'params', 'mapping_sequence', 'test_acc', 'epoch'}, each seed's
      best epoch so far (leading seed axis).
  """
  return {
      "state": state,
      "epoch": np.asarray(epoch, np.int32),
      "mapping_sequence": np.asarray(mappings, np.int32),
      "best": {"params": best["params"],
               "mapping_sequence": np.asarray(best["mapping_sequence"],
                                              np.int32),
               "test_acc": np.asarray(best["test_acc"], np.float64),
               "epoch": np.asarray(best["epoch"], np.int32)},
  }


def save(workdir, tree) -> None:
  """Saves `tree` (from `pack`) as the checkpoint of its epoch."""
  with _manager(workdir) as manager:
    manager.save(int(tree["epoch"]), args=ocp.args.StandardSave(tree),
                 force=True)
    manager.wait_until_finished()


def latest_epoch(workdir) -> int | None:
  """The epoch of the last complete checkpoint, or None."""
  if not os.path.isdir(os.path.join(workdir, LAST)):
    return None
  with _manager(workdir) as manager:
    return manager.latest_step()


def restore(workdir, like: Any) -> dict:
  """Restores the latest checkpoint with the structure, dtypes and
  shardings of `like` (a `pack` tree of the same run: restoring needs the
  optimiser state's structure)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  with _manager(workdir) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      raise FileNotFoundError(f"{workdir}/{LAST}: no checkpoint")
    tree = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
  tree["best"] = jax.tree.map(np.asarray, tree["best"])
  tree["mapping_sequence"] = np.asarray(tree["mapping_sequence"])
  tree["epoch"] = int(tree["epoch"])
  return tree


def read(workdir) -> dict:
  """The latest checkpoint as saved, without knowing the run's structure
  (nested dicts of NumPy arrays; `state` as a dict), for inspection and
  export, whatever devices it was saved from."""
  with ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, LAST)),
      item_handlers=ocp.StandardCheckpointHandler()) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      raise FileNotFoundError(f"{workdir}/{LAST}: no checkpoint")
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
        manager.item_metadata(epoch).tree)
    tree = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
  return jax.tree.map(np.asarray, tree)
