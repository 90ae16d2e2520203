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
leaves the previous epoch's checkpoint intact. A run writes them in the
background (`saver.Saver`); the record is written after the commit, by a
thread `finish` waits for. A full disk is one line (`CheckpointWriteError`,
`disk_full`), with no thread's traceback (`full_disk`).
"""

import contextlib
import json
import os
import threading
from typing import Any
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.train import best as best_lib
from reprog_jax.train import full_disk


class CheckpointError(errors.UserError):
  """A checkpoint that cannot be read; the message is one line."""


class DiskFullError(errors.UserError):
  """A write of the run that found the disk full (or the quota spent): one
  line saying what, that nothing committed was lost, and how to go on."""


class CheckpointWriteError(DiskFullError):
  """A checkpoint (or its record) that could not be written; one line."""


def new_manager(workdir, asynchronous=False) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, layout.CHECKPOINTS_DIR)),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True,
          enable_async_checkpointing=asynchronous,
          # A save killed before its commit leaves a temporary directory
          # (`<epoch>.orbax-checkpoint-tmp`); the next run's manager
          # removes it before saving that epoch again.
          cleanup_tmp_directories=True))


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


# The background thread that waits for the last save's commit and records
# its files (on process 0), and what failed: `finish` joins it and raises.
_recording = {"thread": None, "failure": None}


def record_in_background(workdir, epoch, commit=None) -> None:
  """Starts the thread that waits for `commit()` (the commit of the
  checkpoint of `epoch`; None: committed already), then records its files'
  sizes and hashes in it (process 0; see `restore`). `finish` joins it.

  Killed before the record lands (at any instant: it is written
  atomically), the checkpoint is complete but unrecorded: it is then
  restored unchecked, as checkpoints of older versions are.
  """
  def work():
    try:
      if commit is not None:
        commit()
    except BaseException as e:  # pylint: disable=broad-except
      _recording["failure"] = (e, workdir, epoch, "commit")
      return
    _record(workdir, epoch)

  # Not a daemon: the interpreter waits for it at exit.
  thread = threading.Thread(target=work, name=f"checkpoint-record-{epoch}")
  _recording["thread"] = thread
  thread.start()


def save(workdir, tree) -> None:
  """Saves `tree` (from `pack`) as the checkpoint of its epoch and returns
  once Orbax has committed it; its record is written in the background
  (`finish` waits for it). A run saves through its `saver.Saver`, whose
  writes overlap the next epoch."""
  finish()  # The previous record lands before Orbax may delete its epoch.
  epoch = int(tree["epoch"])
  with full_disk.quiet():
    manager = new_manager(workdir)
    try:
      manager.save(epoch, args=ocp.args.StandardSave(tree), force=True)
    except Exception as e:  # pylint: disable=broad-except
      full_disk.drain(manager)
      full_disk.drop_failed_reads()
      failed = e
    else:
      failed = None
      manager.close()
  if failed is not None:
    full_disk.ignore_closed_loop_callbacks()
    if fileio.no_space(failed) is None:
      raise failed
    raise write_error(workdir, epoch, failed) from None
  record_in_background(workdir, epoch)


def _record(workdir, epoch) -> None:
  """Writes the record of the committed checkpoint of `epoch` (process 0);
  what fails is kept for `finish`."""
  if jax.process_index() != 0:
    return
  step = _step_dir(workdir, epoch)
  path = os.path.join(step, layout.CHECKPOINT_MANIFEST)
  try:
    records = fileio.file_records(step, ".",
                                  skip={layout.CHECKPOINT_MANIFEST})
    fileio.write_json(path, records, indent=1)
  except BaseException as e:  # pylint: disable=broad-except
    if isinstance(e, OSError) and fileio.no_space(e) and not e.filename:
      named = OSError(e.errno, e.strerror, path)  # Say which file.
      named.__cause__, e = e, named
    _recording["failure"] = (e, workdir, epoch, "record")


def finish() -> None:
  """Waits until the last saved checkpoint is committed and its files
  recorded; raises what failed (a full disk: `CheckpointWriteError`)."""
  thread, _recording["thread"] = _recording["thread"], None
  if thread is not None:
    thread.join()
  failure, _recording["failure"] = _recording["failure"], None
  if failure is None:
    return
  error, workdir, epoch, phase = failure
  if phase == "commit" and fileio.no_space(error) is not None:
    raise write_error(workdir, epoch, error) from None
  # A failed record (the checkpoint is committed: restored unchecked, as
  # if killed before it) is raised as it is; a full disk is one line at
  # the top (`disk_full`).
  raise error


def write_error(workdir, epoch, error) -> CheckpointWriteError:
  """The one line of a checkpoint write that found the disk full."""
  # Orbax's writer gave up midway: the writes it had not started are
  # coroutines never awaited, which Python reports when it collects them
  # (at exit, after this line, on some runs): not for the user.
  warnings.filterwarnings("ignore", full_disk.UNAWAITED_WRITE, RuntimeWarning)
  where = fileio.written_file(error)
  return CheckpointWriteError(
      f"{_step_dir(workdir, epoch)}: writing the checkpoint of epoch "
      f"{epoch} failed: no space left on device"
      f"{f' (writing {where})' if where else ''}; nothing committed was "
      f"lost ({_kept(workdir)}); free space and run the same command to "
      f"resume")


def disk_full(workdir, error) -> DiskFullError | None:
  """A full disk in `error`, raised by any write of the run in `workdir`
  (its metrics, figures, summary, cached features), as one line; None if
  `error` is no full disk or is already one line."""
  if isinstance(error, errors.UserError) or fileio.no_space(error) is None:
    return None
  where = fileio.written_file(error) or workdir
  return DiskFullError(
      f"{where}: writing failed: no space left on device; nothing "
      f"committed was lost ({_kept(workdir)}); free space and run the same "
      f"command to resume")


def full_disk_in_one_line(workdir, work):
  """`work()` (writes of the run in `workdir`), a full disk under it raised
  as its one line (`disk_full`): the form in which it can reach the other
  processes of a run (`processes.each_checks`, `processes.lead_only`)."""
  try:
    return work()
  except Exception as e:  # pylint: disable=broad-except
    full = disk_full(workdir, e)
    if full is None:
      raise
    raise full from None


def _kept(workdir) -> str:
  latest = _committed(workdir)
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
  return _committed(workdir)


def _committed(workdir) -> int | None:
  """The latest committed epoch on disk (an uncommitted temporary
  directory is none)."""
  directory = os.path.join(workdir, layout.CHECKPOINTS_DIR)
  if not os.path.isdir(directory):
    return None
  return max(ocp.step.checkpoint_steps(os.path.abspath(directory)),
             default=None)


def restore(workdir, like: Any, epoch: int | None = None,
            manager: ocp.CheckpointManager | None = None) -> dict:
  """Restores the checkpoint of `epoch` (default: the latest) with the
  structure, dtypes and shardings of `like` (a `pack` tree of the same run:
  restoring needs the
  optimiser state's structure); its 'best' is a `best.Best` again.

  Every process of a run calls it, with the same `epoch` (the lead's
  `latest_epoch`, broadcast), through the run's one `manager` (None: a
  manager of its own).
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
  with (contextlib.nullcontext(manager) if manager else
        new_manager(workdir)) as restoring:
    try:
      tree = restoring.restore(epoch, args=ocp.args.StandardRestore(abstract))
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
    full_disk.drop_failed_reads()
    raise CheckpointError(_unreadable(_step_dir(workdir, epoch), epoch,
                                      reason))
  tree["best"] = best_lib.Best(**jax.tree.map(np.asarray, tree["best"]))
  tree["mapping_sequence"] = np.asarray(tree["mapping_sequence"])
  tree["epoch"] = int(tree["epoch"])
  return tree


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
