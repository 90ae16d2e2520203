"""Training checkpoints (Orbax): the last epoch's and the best epoch's.

What is saved after every epoch is exactly what a resumed run needs to end
with the result of an uninterrupted one: the trained values, the optimiser
state and step, the epoch, the best test accuracy so far, the mapping
sequence and the RNG key. Data order needs no state: the loaders derive each
epoch's order from (seed, epoch).

  workdir/checkpoints/<epoch>/   the last completed epoch (one kept)
  workdir/best/<epoch>/          the epoch with the best test accuracy

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so an interrupted save leaves the previous checkpoint intact.
"""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

LAST, BEST = "checkpoints", "best"


def _manager(workdir, which) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, which)),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def pack(state, *, epoch, best_acc, best_epoch, mapping_sequence, rng) -> dict:
  """The checkpointed tree (arrays only, so Orbax stores it as is)."""
  return {
      "state": state,
      "epoch": np.asarray(epoch, np.int32),
      "best_acc": np.asarray(best_acc, np.float64),
      "best_epoch": np.asarray(best_epoch, np.int32),
      "mapping_sequence": np.asarray(mapping_sequence, np.int32),
      "rng": jax.random.key_data(rng),
  }


def unpack(tree) -> dict:
  """Inverse of `pack`: Python scalars and a typed RNG key."""
  return {
      "state": tree["state"],
      "epoch": int(tree["epoch"]),
      "best_acc": float(tree["best_acc"]),
      "best_epoch": int(tree["best_epoch"]),
      "mapping_sequence": np.asarray(tree["mapping_sequence"]),
      "rng": jax.random.wrap_key_data(tree["rng"]),
  }


def save(workdir, tree, *, best: bool) -> None:
  """Saves `tree` (from `pack`) as the best checkpoint, then as the last.

  Best first: the last checkpoint records the best epoch, so it must never
  name a best checkpoint that a crash kept from being written.
  """
  epoch = int(tree["epoch"])
  for which in (BEST, LAST) if best else (LAST,):
    with _manager(workdir, which) as manager:
      manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)
      manager.wait_until_finished()


def latest_epoch(workdir, which=LAST) -> int | None:
  """The epoch of the last complete checkpoint, or None."""
  if not os.path.isdir(os.path.join(workdir, which)):
    return None
  with _manager(workdir, which) as manager:
    return manager.latest_step()


def restore(workdir, like: Any, which=LAST) -> dict:
  """Restores the latest checkpoint with the structure of `like` (a `pack`
  tree of the same run: restoring needs the optimiser state's structure)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  with _manager(workdir, which) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"{workdir}/{which}: no checkpoint")
    return unpack(manager.restore(step,
                                  args=ocp.args.StandardRestore(abstract)))
