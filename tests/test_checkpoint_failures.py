"""Checkpoints that fail for other reasons than damage: a write that finds
the disk full (Orbax's, in its background threads; the checkpoint's
record; TensorBoard's writer thread) is one line (which write, where,
nothing committed lost, how to go on), with no thread's traceback, and the
re-run resumes; a failure between processes during a restore is never
reported as a damaged checkpoint."""

import errno
import inspect
import os
import pathlib
import subprocess
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from conftest import copy_stopped_run, lp_config
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.metrics import metric_writer
from reprog_jax.train import checkpoints
from reprog_jax.train import loop as train


ROOT = pathlib.Path(__file__).resolve().parents[1]
RESUME = ("free space and run the same command to resume")


def _fill_disk_under(prefix):
  """A full disk for etils' writes under `prefix` (Orbax's metadata and
  JSON files; no small filesystem to fill here: the writes themselves
  fail, as they would): the `PosixGPath` methods to patch."""
  real = {name: getattr(epath.gpath.PosixGPath, name)
          for name in ("write_text", "write_bytes")}

  def full(name):
    def write(self, *args, **kwargs):
      if str(self).startswith(prefix):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
      return real[name](self, *args, **kwargs)
    return write

  return {name: full(name) for name in real}


def _no_thread_left_to_print():
  """No thread of a failed save still runs (one would print later)."""
  return [t.name for t in threading.enumerate()
          if t is not threading.main_thread() and not t.daemon
          and t.is_alive()]


def _rerun_finishes(workdir, capfd):
  summary = train.train_and_evaluate(lp_config(), str(workdir))
  assert summary["method"] == "linear_probe"
  assert checkpoints.latest_epoch(workdir) == 1
  assert [r["epoch"] for r in metric_writer.read_metrics(workdir)] == [0, 1]
  return capfd.readouterr()


def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                       capfd, stopped_run):
  copy_stopped_run(tmp_path, stopped_run)
  # The disk fills while Orbax's background writer writes epoch 1's files.
  step_1 = str(tmp_path / "checkpoints" / "1")
  for name, write in _fill_disk_under(step_1).items():
    monkeypatch.setattr(epath.gpath.PosixGPath, name, write)
  with pytest.raises(checkpoints.CheckpointWriteError) as error:
    train.train_and_evaluate(lp_config(), str(tmp_path))
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(
      f"{step_1}: writing the checkpoint of epoch 1 failed: no space left on "
      f"device (writing {step_1}")
  assert message.endswith(
      f"nothing committed was lost (the checkpoint of epoch 0 is intact); "
      f"{RESUME}")
  # Orbax's background threads' tracebacks are not shown besides it, and
  # none is left to print later.
  assert _no_thread_left_to_print() == []
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Exception" not in err, err
  assert checkpoints.latest_epoch(tmp_path) == 0

  monkeypatch.undo()  # Space freed.
  assert "resuming" in _rerun_finishes(tmp_path, capfd).out


class _FillingEventsFile:
  """A TensorBoard events file on a disk that is full: writes are taken
  (buffered), each flush fails, naming no file (as a buffered write)."""

  def __init__(self, path):
    self._file = open(path, "wb")
    self.write = self._file.write
    self.fileno = self._file.fileno
    self.close = self._file.close

  def flush(self):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_under_tensorboard_is_one_line(tmp_path, monkeypatch,
                                                   capfd, stopped_run):
  from tensorboardX import record_writer
  copy_stopped_run(tmp_path, stopped_run)
  monkeypatch.setattr(record_writer, "open_file", _FillingEventsFile)
  with pytest.raises(checkpoints.DiskFullError) as error:
    train.train_and_evaluate(lp_config(), str(tmp_path))
  events = max((tmp_path / "tensorboard").iterdir(),
               key=lambda p: p.stat().st_mtime)  # This run's file.
  assert str(error.value) == (
      f"{events}: writing failed: no space left on device; nothing "
      f"committed was lost (the checkpoint of epoch 0 is intact); {RESUME}")
  # Not from its writer thread either (it would say 'Exception in thread').
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Exception" not in err, err
  monkeypatch.undo()
  _rerun_finishes(tmp_path, capfd)


def test_a_full_disk_under_the_figures_names_the_checkpoint_written_meanwhile(
    tmp_path, monkeypatch, stopped_run):
  # Epoch 1's figures are drawn while its checkpoint is written: the line
  # comes once that is committed, and names it.
  copy_stopped_run(tmp_path, stopped_run)
  figure = tmp_path / "plots" / "figure.png"

  def plots(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(figure))

  monkeypatch.setattr(train, "_plots", plots)
  with pytest.raises(checkpoints.DiskFullError) as error:
    train.train_and_evaluate(lp_config(plot_interval=1), str(tmp_path))
  assert str(error.value) == (
      f"{figure}: writing failed: no space left on device; nothing "
      f"committed was lost (the checkpoint of epoch 1 is intact); {RESUME}")
  assert checkpoints.latest_epoch(tmp_path) == 1


def test_a_full_disk_under_the_record_is_one_line(tmp_path, monkeypatch,
                                                  capfd, stopped_run):
  copy_stopped_run(tmp_path, stopped_run)
  real = fileio.write_json

  def write_json(path, *args, **kwargs):
    if str(path).endswith(layout.CHECKPOINT_MANIFEST):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(path, *args, **kwargs)

  monkeypatch.setattr(fileio, "write_json", write_json)
  with pytest.raises(checkpoints.DiskFullError) as error:
    train.train_and_evaluate(lp_config(), str(tmp_path))
  record = tmp_path / "checkpoints" / "1" / layout.CHECKPOINT_MANIFEST
  # Epoch 1 is committed, only its record is missing: restored unchecked,
  # as a checkpoint killed before its record is.
  assert str(error.value) == (
      f"{record}: writing failed: no space left on device; nothing "
      f"committed was lost (the checkpoint of epoch 1 is intact); {RESUME}")
  assert "Traceback" not in capfd.readouterr().err
  monkeypatch.undo()
  out = _rerun_finishes(tmp_path, capfd).out
  assert "resuming" in out and "after epoch 1" in out


# `_fill_disk_under` travels as its source: importing this module there
# would import conftest's torch, seconds of the process's start.
_MAIN_ON_A_FULL_DISK = """
import errno, os, sys
from absl import app
from etils import epath
from reprog_jax import main
{fill_disk_under}
for name, write in _fill_disk_under({step!r}).items():
  setattr(epath.gpath.PosixGPath, name, write)
sys.argv = ["main", "--workdir={workdir}",
            "--config=configs/linear_probe.py:smoke",
            "--config.epochs=2", "--config.image_size=32",
            "--config.progress=False"]
app.run(main.main, flags_parser=main.parse_flags)
"""


def test_a_full_disk_on_the_command_line_is_exactly_one_line(
    tmp_path, capfd, stopped_run):
  copy_stopped_run(tmp_path, stopped_run)
  step_1 = tmp_path / "checkpoints" / "1"
  script = _MAIN_ON_A_FULL_DISK.format(
      fill_disk_under=inspect.getsource(_fill_disk_under), step=str(step_1),
      workdir=tmp_path)
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                        env=dict(os.environ), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  # All of stderr, to the process's end: no thread printed after it.
  assert proc.stderr.count("\n") == 1, proc.stderr[-3000:]
  assert proc.stderr.startswith(
      f"reprog_jax.main: error: {step_1}: writing the checkpoint of epoch 1 "
      f"failed: no space left on device")
  assert proc.stderr.rstrip().endswith(RESUME)
  _rerun_finishes(tmp_path, capfd)


@pytest.mark.parametrize("error", [
    jax.errors.JaxRuntimeError("DEADLINE_EXCEEDED: barrier timed out"),
    AssertionError("sync_global_devices name mismatch"),
    ValueError("an Orbax hiccup after the files checked out")])
def test_a_restore_failing_on_good_files_is_not_called_damage(
    tmp_path, monkeypatch, error):
  tree = {"epoch": np.asarray(0, np.int32), "x": np.arange(3.0)}
  checkpoints.save(str(tmp_path), tree)

  def failing(*args, **kwargs):
    raise error

  monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
  # The files match their record (or it is a collective's error): the
  # error keeps its traceback, and no advice to delete anything.
  with pytest.raises(type(error)) as raised:
    checkpoints.restore(str(tmp_path), tree, 0)
  assert raised.value is error
  if isinstance(error, ValueError):
    # Without the record, the same error cannot be told from damage.
    (tmp_path / "checkpoints" / "0" / layout.CHECKPOINT_MANIFEST).unlink()
    with pytest.raises(checkpoints.CheckpointError,
                       match="cannot be read .*delete that directory"):
      checkpoints.restore(str(tmp_path), tree, 0)
