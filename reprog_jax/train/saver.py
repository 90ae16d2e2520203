"""A run's checkpoints, written behind its work: one asynchronous Orbax
`CheckpointManager` for the whole run.

`Saver.save` returns once the arrays are copied off the devices; Orbax
writes the files while the next epoch runs, and a background thread waits
for their commit, then records them (`checkpoints.record_in_background`:
process 0). So a `kill -9` at any instant leaves the previous checkpoint
and one of: an uncommitted temporary directory (ignored, and removed by
the next run's manager), a committed checkpoint without its record
(restored unchecked), or a recorded one; a re-run resumes from the latest
committed epoch and ends as an uninterrupted run. The record of epoch e
lands before the save of epoch e + 1 starts, so before Orbax may delete
epoch e.

With several processes, every wait for the last save agrees
(`processes.each_checks`): a save or record that failed on one process
(process 0 alone writes the records) ends every process at once with its
line, instead of leaving the others in the next save's collective.
"""

import contextlib
import time

import orbax.checkpoint as ocp

from reprog_jax import fileio
from reprog_jax.train import checkpoints
from reprog_jax.train import full_disk
from reprog_jax.train import processes


class Saver:
  """The run's one checkpoint manager, saving in the background.

  Every process of a run constructs it (a collective) and calls `save`
  alike; it is closed on every exit path (`close`: the last save is waited
  for, so nothing committed is lost and no thread prints after the run's
  error line).

  Attributes:
    workdir: the run's directory.
    manager: the Orbax `CheckpointManager` (restores go through it too).
    waited: seconds the caller spent in `save` and `wait` (`take_waited`).
  """

  def __init__(self, workdir):
    self.workdir = workdir
    self.waited = 0.0
    self._drained = False
    self._quiet = contextlib.ExitStack()
    # While it lives, a full disk's reports by Orbax's threads stay quiet:
    # the run says it once.
    self._quiet.enter_context(full_disk.quiet())
    try:
      self.manager = checkpoints.new_manager(workdir, asynchronous=True)
    except BaseException:
      self._quiet.close()
      raise

  def save(self, tree) -> None:
    """Starts saving `tree` (from `checkpoints.pack`) as the checkpoint of
    its epoch, once the previous one is committed and recorded (raising
    what failed there)."""
    started = time.time()
    try:
      self._finish()
      epoch = int(tree["epoch"])
      try:
        self.manager.save(epoch, args=ocp.args.StandardSave(tree),
                          force=True)
      except Exception as e:  # pylint: disable=broad-except
        self._drain()
        if fileio.no_space(e) is None:
          raise
        raise checkpoints.write_error(self.workdir, epoch, e) from None
      checkpoints.record_in_background(self.workdir, epoch, self._commit)
    finally:
      self.waited += time.time() - started

  def _commit(self) -> None:
    """Waits for Orbax's commit of the last save (in the record's thread);
    if it failed, for every thread of that save to end first."""
    try:
      self.manager.wait_until_finished()
    except BaseException:
      self._drain()
      raise

  def _drain(self) -> None:
    self._drained = True
    full_disk.drain(self.manager)
    full_disk.drop_failed_reads()

  def wait(self) -> None:
    """Blocks until the last save is committed and recorded; raises what
    failed (a full disk: `checkpoints.CheckpointWriteError`, one line)."""
    started = time.time()
    try:
      self._finish()
    finally:
      self.waited += time.time() - started

  def _finish(self) -> None:
    """`checkpoints.finish`, agreed by every process: a failure on any
    (a full disk: one line) is raised on all of them."""
    processes.each_checks(lambda: checkpoints.full_disk_in_one_line(
        self.workdir, checkpoints.finish))

  def take_waited(self) -> float:
    """The seconds spent in `save` and `wait` since the last call."""
    waited, self.waited = self.waited, 0.0
    return waited

  def close(self, quietly=False) -> None:
    """Waits for the last save and closes the manager; raises what failed,
    unless `quietly` and it is a full disk (another error is on its way,
    and the line it prints says which checkpoint is intact)."""
    try:
      checkpoints.finish()
    except Exception as e:  # pylint: disable=broad-except
      if not (quietly and (isinstance(e, checkpoints.DiskFullError)
                           or fileio.no_space(e) is not None)):
        raise
    finally:
      try:
        if not self._drained:
          self.manager.close()
      finally:
        self._quiet.close()
        if self._drained:  # Once the hooks `quiet` replaced are back.
          full_disk.ignore_closed_loop_callbacks()

  def __enter__(self) -> "Saver":
    return self

  def __exit__(self, kind, value, tb) -> None:
    self.close(quietly=value is not None)
