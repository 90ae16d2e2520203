"""A full disk, said once: what Orbax's threads print when a checkpoint
write fails, kept quiet, and their work drained, so that the run's one-line
error (`checkpoints.CheckpointWriteError`, `checkpoints.disk_full`) is the
only thing on stderr.

A failed save makes Orbax log the same error several times with its
traceback (the thread that failed, every `wait_until_finished`, the commit
thread), and writes still in flight end later in threads and event loops
that print their own. `quiet` drops exactly those: records that carry a
full disk (or TensorStore's 'Event loop is closed' after Orbax gave up on
its loop); any other error is still reported. `drain` waits for every
thread of a failed save to end, so that none prints after the error line.
"""

import contextlib
import gc
import logging
import sys
import warnings

from reprog_jax import fileio

# Loggers Orbax and asyncio report through.
_LOGGERS = ("absl", "asyncio")


def _closed_loop(error) -> bool:
  return (isinstance(error, RuntimeError)
          and str(error) == "Event loop is closed")


def said_elsewhere(error) -> bool:
  """Whether `error` is what the run's one line says (a full disk) or its
  echo (a write ending after Orbax closed its event loop)."""
  return fileio.no_space(error) is not None or _closed_loop(error)


class _FullDiskRecords(logging.Filter):
  """Drops the log records of a full disk: their error is said once, by
  the run."""

  def filter(self, record) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and said_elsewhere(error):
      return False
    return fileio.no_space(Exception(record.getMessage())) is None


@contextlib.contextmanager
def quiet():
  """Within the block, Orbax's and asyncio's reports of a full disk, and
  the 'Event loop is closed' errors of writes ending after a failed save,
  print nothing; any other error still does."""
  records = _FullDiskRecords()
  loggers = [logging.getLogger(name) for name in _LOGGERS]
  hook = sys.unraisablehook
  for logger in loggers:
    logger.addFilter(records)
  sys.unraisablehook = _unraisable_without(hook, said_elsewhere)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(records)
    sys.unraisablehook = hook


def _unraisable_without(unraisablehook, drop):
  def hook(unraisable):
    if not drop(unraisable.exc_value):
      unraisablehook(unraisable)
  return hook


def drain(manager, attempts=8) -> None:
  """Closes `manager` after a failed save, waiting for each of its
  background threads (each `close` re-raises one thread's error once and
  goes on to the next), so that no thread is left to print later.
  Errors that are not a full disk are raised: they are not the one the run
  reports."""
  for _ in range(attempts):
    try:
      manager.close()
      return
    except Exception as e:  # pylint: disable=broad-except
      if not said_elsewhere(e):
        raise


# Python's warning for a write Orbax gave up before starting (a coroutine
# collected unawaited): not for the user, who gets the run's one line.
UNAWAITED_WRITE = r"coroutine .* was never awaited"


def drop_failed_reads() -> None:
  """Collects the asyncio tasks of a failed save or restore now, quietly:
  left to the garbage collector, each would log a multi-line 'Task
  exception was never retrieved' or 'Exception ignored in' traceback after
  the run's one-line error (and a write it never started, a coroutine
  never awaited: a RuntimeWarning)."""
  asyncio_log = logging.getLogger("asyncio")
  level, hook = asyncio_log.level, sys.unraisablehook
  asyncio_log.setLevel(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", UNAWAITED_WRITE, RuntimeWarning)
      gc.collect()
  finally:
    asyncio_log.setLevel(level)
    sys.unraisablehook = hook


def ignore_closed_loop_callbacks() -> None:
  """From now on, drops the 'Event loop is closed' errors of a failed
  save's writes that end later (after the run's error line, even at
  exit): each would print a traceback. Any other error is still
  reported."""
  sys.unraisablehook = _unraisable_without(sys.unraisablehook, _closed_loop)
  previous = sys.excepthook

  def hook(kind, value, tb):
    if not _closed_loop(value):
      previous(kind, value, tb)

  sys.excepthook = hook
