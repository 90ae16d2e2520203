"""Training checkpoints (Orbax): one per epoch, holding the best values too.

What is saved after every epoch is exactly what a resumed run needs to end
with the result of an uninterrupted one, for every seed of the run: the
trained values, the optimiser state and step, the mapping sequences, the
epoch, and each seed's best epoch so far with its test accuracy, trained
values, mapping and reliability-diagram bins. Data order needs no state: it
derives from (seed, epoch).

  workdir/checkpoints/<epoch>/   the last completed epoch (one kept), with
                                 reprog_jax_files.json: its files' sizes and
                                 sha256, checked before a restore reads them

The best values live inside the same checkpoint rather than in a second
one, so there is no moment at which the two could disagree: a save is one
Orbax write to a temporary directory renamed when complete, and a crash
leaves the previous epoch's checkpoint intact.
"""

import gc
import json
import logging
import os
import sys
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.train import best as best_lib


class CheckpointError(errors.UserError):
  """A checkpoint that cannot be read; the message is one line."""


def _manager(workdir) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, layout.CHECKPOINTS_DIR)),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def pack(state, *, epoch, mappings, best) -> dict:
  """The checkpointed tree.

  Args:
    state: the `steps.TrainState` (leading seed axis).
    epoch: the epoch just completed.
    mappings: (S, T) mapping sequences used in that epoch.
    best: each seed's best epoch so far (`best.Best`); saved as a dict
      of its fields, so checkpoints stay plain nested dicts of arrays
      (`read`, the exporter) and those of earlier versions restore.
  """
  return {
      "state": state,
      "epoch": np.asarray(epoch, np.int32),
      "mapping_sequence": np.asarray(mappings, np.int32),
      "best": {"params": best.params,
               "mapping_sequence": np.asarray(best.mapping_sequence,
                                              np.int32),
               "test_acc": np.asarray(best.test_acc, np.float64),
               "epoch": np.asarray(best.epoch, np.int32),
               "reliability": {name: np.asarray(sums, np.float32)
                               for name, sums in best.reliability.items()}},
  }


# The background thread recording the last saved checkpoint's files (on
# process 0), and what it raised: `finish` joins it and re-raises.
_recording = {"thread": None, "error": None}


def save(workdir, tree) -> None:
  """Saves `tree` (from `pack`) as the checkpoint of its epoch; once Orbax
  has committed it, a background thread records its files' sizes and
  hashes in it (see `restore`), so the next epoch need not wait for the
  hashing. `finish` waits for that record."""
  finish()  # The previous record lands before Orbax may delete its epoch.
  epoch = int(tree["epoch"])
  with _manager(workdir) as manager:
    manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)
    manager.wait_until_finished()
  if jax.process_index() == 0:
    # Committed by now. Killed before the record lands (at any instant:
    # it is written atomically), the checkpoint is complete but
    # unrecorded: it is then restored unchecked, as checkpoints of older
    # versions are. Not a daemon: the interpreter waits for it at exit.
    thread = threading.Thread(target=_record, args=(workdir, epoch),
                              name=f"checkpoint-record-{epoch}")
    _recording["thread"] = thread
    thread.start()


def _record(workdir, epoch) -> None:
  try:
    step = _step_dir(workdir, epoch)
    records = fileio.file_records(step, ".",
                                  skip={layout.CHECKPOINT_MANIFEST})
    fileio.write_json(os.path.join(step, layout.CHECKPOINT_MANIFEST),
                      records, indent=1)
  except BaseException as e:  # pylint: disable=broad-except
    _recording["error"] = e  # Raised in the main thread by `finish`.


def finish() -> None:
  """Waits until the last saved checkpoint's files are recorded; raises
  what recording them raised (e.g. a full disk)."""
  thread, _recording["thread"] = _recording["thread"], None
  if thread is not None:
    thread.join()
  error, _recording["error"] = _recording["error"], None
  if error is not None:
    raise error


def _step_dir(workdir, epoch) -> str:
  return os.path.join(workdir, layout.CHECKPOINTS_DIR, str(epoch))


def _check_files(workdir, epoch) -> None:
  """Raises `CheckpointError` if a file of the checkpoint of `epoch`
  differs from what `save` recorded: before Orbax reads anything, whose
  failed background reads would print tracebacks after our error."""
  step = _step_dir(workdir, epoch)
  path = os.path.join(step, layout.CHECKPOINT_MANIFEST)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      records = json.load(f)
  except (OSError, ValueError) as e:
    records = e
  problem = (None if fileio.is_wellformed(records) else
             f"{path} is unreadable")
  problem = problem or fileio.first_difference(step, records)
  if problem:
    raise CheckpointError(_unreadable(step, epoch, problem))


def _unreadable(step, epoch, reason) -> str:
  return (f"{step}: the checkpoint of epoch {epoch} cannot be read "
          f"({reason}); delete that directory to start the run over, or use "
          f"another --workdir")


def latest_epoch(workdir) -> int | None:
  """The epoch of the last complete checkpoint, or None."""
  finish()
  if not os.path.isdir(os.path.join(workdir, layout.CHECKPOINTS_DIR)):
    return None
  with _manager(workdir) as manager:
    return manager.latest_step()


def restore(workdir, like: Any) -> dict:
  """Restores the latest checkpoint with the structure, dtypes and
  shardings of `like` (a `pack` tree of the same run: restoring needs the
  optimiser state's structure); its 'best' is a `best.Best` again."""
  finish()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  with _manager(workdir) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      raise FileNotFoundError(
          f"{workdir}/{layout.CHECKPOINTS_DIR}: no checkpoint")
    _check_files(workdir, epoch)
    try:
      tree = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    # Orbax and TensorStore raise many types (even bare Exception) for a
    # truncated or corrupted file; every one means "unreadable".
    except Exception as e:  # pylint: disable=broad-except
      reason = errors.first_line(e, 200, root_cause=True)
    else:
      reason = None
  if reason is not None:
    _drop_failed_reads()
    raise CheckpointError(_unreadable(_step_dir(workdir, epoch), epoch,
                                      reason))
  tree["best"] = best_lib.Best(**jax.tree.map(np.asarray, tree["best"]))
  tree["mapping_sequence"] = np.asarray(tree["mapping_sequence"])
  tree["epoch"] = int(tree["epoch"])
  return tree


def _drop_failed_reads() -> None:
  """Collects the asyncio tasks of a failed restore now, quietly: left to
  the garbage collector, each would log a multi-line 'Task exception was
  never retrieved' or 'Exception ignored in' traceback after our one-line
  error."""
  asyncio_log = logging.getLogger("asyncio")
  level, hook = asyncio_log.level, sys.unraisablehook
  asyncio_log.setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  try:
    gc.collect()
  finally:
    asyncio_log.setLevel(level)
    sys.unraisablehook = hook


def read(workdir) -> dict:
  """The latest checkpoint as saved, without knowing the run's structure
  (nested dicts of NumPy arrays; `state` as a dict), for inspection and
  export, whatever devices it was saved from."""
  finish()
  with ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, layout.CHECKPOINTS_DIR)),
      item_handlers=ocp.StandardCheckpointHandler()) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      raise FileNotFoundError(
          f"{workdir}/{layout.CHECKPOINTS_DIR}: no checkpoint")
    _check_files(workdir, epoch)
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
        manager.item_metadata(epoch).tree)
    tree = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
  return jax.tree.map(np.asarray, tree)
