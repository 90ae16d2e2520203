"""Training checkpoints (Orbax): one per epoch, holding the best values too.

What is saved after every epoch is exactly what a resumed run needs to end
with the result of an uninterrupted one, for every seed of the run: the
trained values, the optimiser state and step, the mapping sequences, the
epoch, and each seed's selected epochs so far (`best.Best`: the best-test
and the validation epoch) with their accuracy, trained values, mapping and
reliability-diagram bins. Data order needs no state: it derives from (seed,
epoch). A checkpoint of an earlier version, without the validation epoch,
is refused (`outdated`): its run cannot end as a run of this one would.

  workdir/checkpoints/<epoch>/   the last completed epoch (one kept), with
                                 reprog_jax_files.json: its files' sizes and
                                 sha256, checked before a restore reads them

The best values live inside the same checkpoint rather than in a second
one, so there is no moment at which the two could disagree: a save is one
Orbax write to a temporary directory renamed when complete, and a crash
leaves the previous epoch's checkpoint intact.
"""

import contextlib
import errno
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


class CheckpointWriteError(errors.UserError):
  """A checkpoint that could not be written (a full disk); one line."""


# What a full disk or an exhausted quota raises, through whichever layer.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _manager(workdir) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, layout.CHECKPOINTS_DIR)),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def pack(state, *, epoch, mappings, best) -> dict:
  """The checkpointed tree.

  Args:
    state: the `steps.TrainState` (leading seed axis).
    epoch: the epoch just completed.
    mappings: (S, T) mapping sequences (int32) or (S, K, T) mapping
      matrices (float32) used in that epoch.
    best: each seed's selected epochs so far (`best.Best`); saved as a
      dict of its fields, so checkpoints stay plain nested dicts of arrays
      (`read`, the exporter).
  """
  mapping_fields = ("mapping_sequence", "val_mapping_sequence")
  dtypes = {"test_acc": np.float64, "val_acc": np.float64,
            "epoch": np.int32, "val_epoch": np.int32,
            "reliability": np.float32, "val_reliability": np.float32}
  return {
      "state": state,
      "epoch": np.asarray(epoch, np.int32),
      "mapping_sequence": _mapping_array(mappings),
      "best": {name: (_mapping_array(value) if name in mapping_fields else
                      value if name not in dtypes else
                      jax.tree.map(lambda x, t=dtypes[name]: np.asarray(x, t),
                                   value))
               for name, value in best.fields().items()},
  }


def _mapping_array(mappings) -> np.ndarray:
  """Sequences as int32 (as ever), matrices as float32."""
  mappings = np.asarray(mappings)
  return mappings.astype(np.float32 if mappings.ndim == 3 else np.int32)


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
  try:
    # Orbax's background writer logs each failure with its traceback (a
    # full disk: five); what failed is raised here, and said once.
    with _quiet_absl(), _manager(workdir) as manager:
      manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)
      manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    if not _is_no_space(e):
      raise
    no_space = e
  else:
    no_space = None
  if no_space is not None:
    _drop_failed_reads()
    _ignore_closed_loop_callbacks()
    raise CheckpointWriteError(
        f"{_step_dir(workdir, epoch)}: writing the checkpoint of epoch "
        f"{epoch} failed: no space left on device{_where(no_space)}; "
        f"nothing committed was lost ({_kept(workdir)}); free space and run "
        f"the same command to resume") from None
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


@contextlib.contextmanager
def _quiet_absl():
  absl_log = logging.getLogger("absl")
  level, hooks = absl_log.level, (sys.excepthook, sys.unraisablehook)
  absl_log.setLevel(logging.CRITICAL)
  _ignore_closed_loop_callbacks()
  try:
    yield
  finally:
    absl_log.setLevel(level)
    sys.excepthook, sys.unraisablehook = hooks


def _closed_loop(error) -> bool:
  return (isinstance(error, RuntimeError)
          and str(error) == "Event loop is closed")


def _without_closed_loop(excepthook):
  """`excepthook`, quiet for 'Event loop is closed': what TensorStore's
  callbacks print (through `sys.excepthook`) when a failed save's writes
  end after Orbax gave up on its event loop."""
  def hook(kind, value, tb):
    if not _closed_loop(value):
      excepthook(kind, value, tb)
  return hook


def _is_no_space(error) -> bool:
  """Whether `error`, or one it was raised from, is a full disk: an OSError
  with ENOSPC or EDQUOT, or TensorStore's text for it."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
      return True
    if any(os.strerror(code) in str(error) for code in _NO_SPACE):
      return True
    error = error.__cause__ or error.__context__
  return False


def _where(error) -> str:
  """' (writing FILE)' for the first error in `error`'s chain that names
  its file; '' if none does."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.filename:
      return f" (writing {error.filename})"
    error = error.__cause__ or error.__context__
  return ""


def _kept(workdir) -> str:
  latest = latest_epoch(workdir)
  return ("no epoch had been checkpointed yet" if latest is None else
          f"the checkpoint of epoch {latest} is intact")


def _step_dir(workdir, epoch) -> str:
  return os.path.join(workdir, layout.CHECKPOINTS_DIR, str(epoch))


def _is_collective(error) -> bool:
  """Whether `error` is a failure between processes (a barrier's timeout
  or mismatch, a collective's runtime error), not one of the files."""
  return isinstance(error, (jax.errors.JaxRuntimeError, AssertionError))


def _check_files(workdir, epoch) -> bool:
  """Raises `CheckpointError` if a file of the checkpoint of `epoch`
  differs from what `save` recorded: before Orbax reads anything, whose
  failed background reads would print tracebacks after our error.

  Returns:
    Whether the files were checked (a checkpoint killed before its record
    was written, or of an older version, has none).
  """
  step = _step_dir(workdir, epoch)
  path = os.path.join(step, layout.CHECKPOINT_MANIFEST)
  if not os.path.exists(path):
    return False
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
  return True


def _unreadable(step, epoch, reason) -> str:
  return (f"{step}: the checkpoint of epoch {epoch} cannot be read "
          f"({reason}); delete that directory to start the run over, or use "
          f"another --workdir")


def outdated(workdir) -> str | None:
  """Why the latest checkpoint in `workdir` cannot be resumed by this
  version ('a checkpoint ... of an earlier version ...'), or None (no
  checkpoint, or one of this version).

  Reads Orbax's tree metadata file itself: a `CheckpointManager` would be
  a barrier of every process, and a multi-host run's lead asks alone.
  """
  epoch = latest_epoch(workdir)
  if epoch is None:
    return None
  _check_files(workdir, epoch)  # A damaged one is refused as such.
  path = os.path.join(_step_dir(workdir, epoch), "default", "_METADATA")
  try:
    with open(path) as f:
      keys = json.load(f)["tree_metadata"].keys()
  # Unreadable here means unreadable for `restore` too, which then says so
  # in one line; this check only tells versions apart.
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None
  if any(key.startswith("('best', 'val_acc'") for key in keys):
    return None
  return (f"a checkpoint (epoch {epoch}) of an earlier version, which kept "
          f"no validation-selected epoch")


def latest_epoch(workdir) -> int | None:
  """The epoch of the last complete (finalized) checkpoint, or None.

  Reads the directory only: unlike a `CheckpointManager`, whose
  construction is a barrier of every process, any one process may ask (a
  multi-host run's lead does, and broadcasts the answer).
  """
  finish()  # This process's last save is recorded (or its error raised).
  directory = os.path.join(workdir, layout.CHECKPOINTS_DIR)
  if not os.path.isdir(directory):
    return None
  return max(ocp.step.checkpoint_steps(os.path.abspath(directory)),
             default=None)


def restore(workdir, like: Any, epoch: int | None = None) -> dict:
  """Restores the checkpoint of `epoch` (default: the latest) with the
  structure, dtypes and shardings of `like` (a `pack` tree of the same run:
  restoring needs the
  optimiser state's structure); its 'best' is a `best.Best` again.

  Every process of a run calls it, with the same `epoch` (the lead's
  `latest_epoch`, broadcast).
  """
  finish()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  # A run's checkpoint (`pack`, with its best record) of an older version.
  problem = outdated(workdir) if "best" in like else None
  if problem:
    raise CheckpointError(
        f"{workdir} holds {problem}; pass --config.overwrite=True to start "
        f"the run over, or use another --workdir")
  epoch = latest_epoch(workdir) if epoch is None else epoch
  if epoch is None:
    raise FileNotFoundError(
        f"{workdir}/{layout.CHECKPOINTS_DIR}: no checkpoint")
  verified = _check_files(workdir, epoch)
  with _manager(workdir) as manager:
    try:
      tree = manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    # Orbax and TensorStore raise many types (even bare Exception) for a
    # truncated or corrupted file. But a failed barrier or collective is no
    # damage, and files that match their record are intact: never advise
    # deleting those.
    except Exception as e:  # pylint: disable=broad-except
      if verified or _is_collective(e):
        raise
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


def _ignore_closed_loop_callbacks() -> None:
  """From now on, drops the 'Event loop is closed' errors of a failed
  save's writes that end later: each would print a traceback after our
  one-line error. Any other error is still reported."""
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _closed_loop(unraisable.exc_value):
      previous(unraisable)

  sys.unraisablehook = hook
  sys.excepthook = _without_closed_loop(sys.excepthook)


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
