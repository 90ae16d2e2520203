"""What a training run logs each epoch: `metrics.jsonl` and TensorBoard.

`MetricWriter` appends one JSON record per epoch to `workdir/metrics.jsonl`
and mirrors every numeric metric as a TensorBoard scalar under
`workdir/tensorboard` (and, given a mirror, to Weights & Biases:
`wandb_log`); `read_metrics` reads the records back.

tensorboardX is imported inside the writer: importing it alone takes about
two seconds, and modules that only read metrics should not pay for it; and
without PyTorch (`_import_tensorboardx`), which it would import otherwise.

A full disk is raised in the main thread as an OSError naming the file
(`metrics.jsonl`, or the events file), never printed by tensorboardX's
writer thread (`_EventsFile`), so the run can say it in one line.
"""

import contextlib
import errno as errno_lib
import importlib.abc
import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from reprog_jax import fileio
from reprog_jax import layout

# Strict JSON has no NaN or infinity. They are written as these strings (the
# names JavaScript and Python's `json` give them) and `read_metrics` turns
# them back into floats, so a diverged run still leaves a valid file.
_NON_FINITE_NAMES = {"NaN": math.nan, "Infinity": math.inf,
                     "-Infinity": -math.inf}

# Each epoch phase's wall time (device work completed), in seconds.
PHASE_KEYS = ("seconds_mapping", "seconds_train", "seconds_validation",
              "seconds_test", "seconds_checkpoint")
# Timing, not results: what differs between two runs that computed the
# same, and stays out of every summary number.
TIMING_KEYS = ("train_images_per_second", "epoch_seconds") + PHASE_KEYS


# ---------------------------------------------------------------------------
# Metrics: metrics.jsonl and TensorBoard scalars.
# ---------------------------------------------------------------------------


def _plain_value(name: str, value: Any) -> bool | int | float | str:
  """Converts a metric to a JSON-able Python scalar (NumPy/JAX included)."""
  if isinstance(value, (bool, int, float, str)):
    return value
  # NumPy scalars, 0-d NumPy and JAX arrays all have `.item()`; anything
  # with more than one element is a mistake by the caller.
  if hasattr(value, "item") and np.size(value) == 1:
    return value.item()
  raise TypeError(
      f"Metric {name!r} must be a scalar (bool, int, float or str), got "
      f"{type(value).__name__} {value!r}.")


@contextlib.contextmanager
def _naming(path):
  """Within the block, a full disk raises an OSError naming `path` (a
  buffered write's error names no file)."""
  try:
    yield
  except OSError as e:
    if fileio.no_space(e) is None or e.filename:
      raise
    raise OSError(e.errno, e.strerror, path) from e


class _EventsFile:
  """TensorBoard's events file, whose failed writes (a full disk) are kept
  for the main thread (`MetricWriter`) to raise. Raised in tensorboardX's
  writer thread they would print a traceback and end the thread, whose
  queue would then fill and block the run; so after a failure the thread
  goes on, discarding what it writes.

  Args:
    file: the open events file (tensorboardX's `RecordWriter._writer`).
    path: its path.
  """

  def __init__(self, file, path):
    self._file = file
    self.path = path
    self.error = None

  def _guarded(self, write):
    if self.error is not None:
      return
    try:
      write()
    except OSError as e:
      if fileio.no_space(e) is None:
        raise
      self.error = e

  def write(self, data):
    self._guarded(lambda: self._file.write(data))

  def flush(self):
    # `RecordWriter.flush` fsyncs only a file with `fileno`: done here.
    self._guarded(lambda: (self._file.flush(), os.fsync(self._file.fileno())))

  def close(self):
    try:
      self._file.close()
    except OSError as e:
      if fileio.no_space(e) is None:
        raise
      self.error = self.error or e


def _guard_events_file(summary_writer) -> _EventsFile | None:
  """Puts an `_EventsFile` between tensorboardX 2.x's record writer and its
  file (None if its structure is another version's: failures then raise
  where tensorboardX raises them)."""
  try:
    # pylint: disable=protected-access
    records = summary_writer.file_writer.event_writer._ev_writer
    records = records._py_recordio_writer
    guard = _EventsFile(records._writer, records.path)
    records._writer = guard
  except AttributeError:
    return None
  return guard


def _json_value(value: bool | int | float | str) -> bool | int | float | str:
  if isinstance(value, float) and not math.isfinite(value):
    return "NaN" if math.isnan(value) else (
        "Infinity" if value > 0 else "-Infinity")
  return value


def is_number(value: Any) -> bool:
  """True for an int or float metric (not a bool)."""
  # bool is an int subclass but not a quantity worth a curve.
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_line(line: str) -> dict[str, Any]:
  record = json.loads(line)
  return {key: _NON_FINITE_NAMES.get(value, value)
          if isinstance(value, str) else value
          for key, value in record.items()}


def _complete_lines(path: str) -> list[str]:
  """The newline-terminated lines of `path`; a torn last line is dropped."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  # A line is only complete once its newline is on disk: anything after the
  # last newline was cut off by a crash mid-write.
  return text.split("\n")[:-1]


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads the per-epoch records a `MetricWriter` wrote.

  Args:
    workdir: The run's directory, holding `metrics.jsonl`.

  Returns:
    One dict per complete line, in file order; `[]` if there is no file.
    The strings `"NaN"`, `"Infinity"` and `"-Infinity"` are returned as the
    floats they stand for. An incomplete last line (a crash while writing
    it) is ignored.
  """
  path = os.path.join(workdir, layout.METRICS_FILE)
  if not os.path.exists(path):
    return []
  return [_parse_line(line) for line in _complete_lines(path) if line.strip()]


class _NoTorchInThisThread(importlib.abc.MetaPathFinder):
  """Makes `import torch` fail in the thread that installs it, only."""

  def __init__(self):
    self.thread = threading.get_ident()

  def find_spec(self, name, path=None, target=None):  # pylint: disable=unused-argument
    if name == "torch" and threading.get_ident() == self.thread:
      raise ImportError("torch is not imported for tensorboardX")
    return None


def _import_tensorboardx():
  """tensorboardX, without importing PyTorch if nothing has yet.

  tensorboardX's writer imports torch where it is installed (the `torch`
  extra), only to accept torch tensors, which nothing here passes; that
  import costs 2-4 s a run on a CPU. Its `try: import torch` then takes
  the ImportError path, as on a machine without PyTorch.
  """
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  finder = _NoTorchInThisThread()
  sys.meta_path.insert(0, finder)
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,redefined-outer-name
  finally:
    sys.meta_path.remove(finder)
  return tensorboardX


class MetricWriter:
  """Writes per-epoch metrics to `metrics.jsonl` and TensorBoard.

  Each `write` appends one line `{"epoch": ..., <metrics>}` and flushes and
  fsyncs it, so a crash loses at most the line being written. Non-finite
  floats are stored as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`
  (see `read_metrics`). Numeric metrics (not bools or strings) also become
  TensorBoard scalars, tag = metric name, step = epoch.

  To resume, call `truncate_after(restored_epoch)` before writing: the file
  then holds exactly what an uninterrupted run would have written, and
  TensorBoard is told to discard the old run's later steps.

  Usable as a context manager; `close` flushes TensorBoard.

  Args:
    workdir: The run's directory; created if missing.
    mirror: Optional second sink of the TensorBoard scalars and images
      (e.g. a `wandb_log.Run`): `scalars({tag: number}, step)`,
      `image(tag, path_png, step)` and `close()`, which `close` calls.
  """

  def __init__(self, workdir: str, mirror=None):
    self.workdir = workdir
    self.mirror = mirror
    self.path = os.path.join(workdir, layout.METRICS_FILE)
    self.tensorboard_dir = os.path.join(workdir, layout.TENSORBOARD_DIR)
    os.makedirs(workdir, exist_ok=True)
    self._drop_torn_line()
    self._file = open(self.path, "a", encoding="utf-8")
    self._summary_writer = None
    self._events = None  # Its `_EventsFile`.
    self._purge_step = None

  def _drop_torn_line(self):
    """Cuts a partial last line left by a crash, so appends start clean."""
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb+") as f:
      data = f.read()
      if data and not data.endswith(b"\n"):
        f.truncate(data.rfind(b"\n") + 1)

  def _tensorboard(self):
    # Created on first use, so that a `truncate_after` right after
    # construction can still set `purge_step` on the only writer.
    if self._summary_writer is None:
      tensorboardX = _import_tensorboardx()
      # Event files are named by the second and opened with "wb": a second
      # writer in the same second (a quick resume) would overwrite the
      # first's file. A nanosecond suffix keeps names unique and in the
      # order TensorBoard reads them.
      with _naming(self.tensorboard_dir):
        self._summary_writer = tensorboardX.SummaryWriter(
            self.tensorboard_dir, purge_step=self._purge_step,
            filename_suffix=f".{time.time_ns():020d}")
      self._events = _guard_events_file(self._summary_writer)
    return self._summary_writer

  def _raise_events_error(self):
    """Raises, naming the events file, a write of it that failed (in
    either thread)."""
    if self._events is not None and self._events.error is not None:
      error = self._events.error
      raise OSError(error.errno or errno_lib.ENOSPC,
                    error.strerror or os.strerror(errno_lib.ENOSPC),
                    self._events.path) from error

  def write(self, epoch: int, metrics: Mapping[str, Any],
            seed: int | None = None, tag_prefix: str = ""):
    """Appends the metrics of one epoch (of one seed).

    Args:
      epoch: The epoch number, written under the key `"epoch"`.
      metrics: Metric name -> scalar (Python, NumPy or 0-d JAX; bool, int,
        float or str).
      seed: If given, written under the key `"seed"` after the epoch (a
        run with several seeds writes one record per seed and epoch).
      tag_prefix: Prefix of the TensorBoard tags, e.g. `"seed_3/"`.

    Raises:
      ValueError: If `metrics` has a key `"epoch"` or `"seed"`.
      TypeError: If a value is not a scalar.
    """
    for reserved in ("epoch", "seed"):
      if reserved in metrics:
        raise ValueError(f"{reserved!r} is reserved; pass it as the "
                         f"`{reserved}` argument.")
    values = {name: _plain_value(name, value)
              for name, value in metrics.items()}
    record = {"epoch": int(epoch)}
    if seed is not None:
      record["seed"] = int(seed)
    record.update({name: _json_value(v) for name, v in values.items()})
    with _naming(self.path):
      self._file.write(json.dumps(record, allow_nan=False) + "\n")
      self._file.flush()
      os.fsync(self._file.fileno())
    writer = self._tensorboard()
    scalars = {tag_prefix + name: value for name, value in values.items()
               if is_number(value)}
    for tag, value in scalars.items():
      writer.add_scalar(tag, value, global_step=int(epoch))
    if self.mirror is not None:
      self.mirror.scalars(scalars, int(epoch))
    # Once an epoch is cheap, and lets TensorBoard show the run live rather
    # than every `flush_secs` (120 s).
    writer.flush()
    self._raise_events_error()

  def truncate_after(self, epoch: int):
    """Keeps only the records with `epoch <= epoch`, for a resumed run.

    The file is rewritten atomically (`fileio.write_text`), so a crash
    leaves either the old or the new file. Later
    TensorBoard events are purged from step `epoch + 1` on.

    Args:
      epoch: The last epoch whose record is kept (the restored checkpoint's).
    """
    self._file.close()
    kept = [line for line in _complete_lines(self.path)
            if line.strip() and _parse_line(line)["epoch"] <= epoch]
    with _naming(self.path):
      fileio.write_text(self.path, "".join(line + "\n" for line in kept))
    self._file = open(self.path, "a", encoding="utf-8")
    self._purge_step = int(epoch) + 1
    if self._summary_writer is not None:
      # The purge marker is written only when a writer opens its file.
      self._summary_writer.close()
      self._summary_writer = None

  def image(self, tag: str, path_png: str, epoch: int):
    """Adds a PNG file (e.g. from the plot functions) as a TensorBoard image.

    Args:
      tag: TensorBoard tag, e.g. `"label_mapping"`.
      path_png: The image file.
      epoch: The step.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(path_png) as picture:
      pixels = np.asarray(picture.convert("RGB"))
    self._tensorboard().add_image(tag, pixels, global_step=int(epoch),
                                  dataformats="HWC")
    self._tensorboard().flush()
    self._raise_events_error()
    if self.mirror is not None:
      self.mirror.image(tag, path_png, int(epoch))

  def close(self, quietly=False):
    """Closes the metrics file, TensorBoard and the mirror; raises a write
    that failed on a full disk, unless `quietly` (another error is on its
    way)."""
    try:
      self._file.close()
      if self._summary_writer is not None:
        with _naming(self.tensorboard_dir):
          self._summary_writer.close()
        self._summary_writer = None
        self._raise_events_error()
    except OSError as e:
      if not (quietly and fileio.no_space(e) is not None):
        raise
    finally:
      self._summary_writer = None
      if self.mirror is not None:
        self.mirror.close()
        self.mirror = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, kind, value, tb):
    self.close(quietly=value is not None)
