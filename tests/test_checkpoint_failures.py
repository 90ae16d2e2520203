"""Checkpoints that fail for other reasons than damage: a write that finds
the disk full is one line (which write, where, nothing committed lost, how
to go on) and the re-run resumes; a failure between processes during a
restore is never reported as a damaged checkpoint."""

import errno
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from conftest import smoke_config
from reprog_jax import layout
from reprog_jax.metrics import metric_writer
from reprog_jax.train import checkpoints
from reprog_jax.train import loop as train


def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                       capfd):
  config = smoke_config("linear_probe", epochs=2, image_size=32)
  train.train_and_evaluate(config, str(tmp_path), stop_after_epoch=0)
  capfd.readouterr()
  # The disk fills while Orbax's background writer writes epoch 1's files
  # (no small filesystem to fill here: the write itself fails, as it would).
  step_1 = str(tmp_path / "checkpoints" / "1")
  real = {name: getattr(epath.gpath.PosixGPath, name)
          for name in ("write_text", "write_bytes")}

  def full(name):
    def write(self, *args, **kwargs):
      if str(self).startswith(step_1):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
      return real[name](self, *args, **kwargs)
    return write

  for name in real:
    monkeypatch.setattr(epath.gpath.PosixGPath, name, full(name))
  with pytest.raises(checkpoints.CheckpointWriteError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(
      f"{step_1}: writing the checkpoint of epoch 1 failed: no space left on "
      f"device (writing {step_1}")
  assert message.endswith(
      "nothing committed was lost (the checkpoint of epoch 0 is intact); "
      "free space and run the same command to resume")
  # Orbax's background threads' tracebacks are not shown besides it.
  assert "Traceback" not in capfd.readouterr().err
  assert checkpoints.latest_epoch(tmp_path) == 0

  monkeypatch.undo()  # Space freed.
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert "resuming" in capfd.readouterr().out
  assert checkpoints.latest_epoch(tmp_path) == 1
  assert [r["epoch"] for r in metric_writer.read_metrics(tmp_path)] == [0, 1]
  assert summary["method"] == "linear_probe"


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
