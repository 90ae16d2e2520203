"""A checkpoint write that finds the disk full: one line (which write, where,
nothing committed lost, how to go on), and the re-run resumes."""

import errno
import os

import pytest
from etils import epath

from conftest import smoke_config
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
