"""No host work between short epochs: reliability bins of every seed in one
NumPy pass, checkpoint files recorded in the background after Orbax
commits, and figures only every `plot_interval` epochs and the last."""

import json
import os
import threading

import jax
import numpy as np
import pytest

from conftest import smoke_config
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.metrics import calibration
from reprog_jax.metrics import calibration_host
from reprog_jax.train import checkpoints
from reprog_jax.train import loop as train


def test_host_bins_of_every_seed_equal_the_jnp_bins_of_each():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 200, 7)).astype(np.float32)
  labels = rng.integers(0, 7, 200)
  valid = rng.random(200) > 0.2
  labels[~valid] = -1  # As padding rows carry.
  got = calibration_host.calibration_bins(logits, labels, mask=valid)
  assert len(got) == 3
  for k in range(3):
    want = calibration.calibration_bins(
        jax.nn.softmax(logits[k]), labels, mask=valid)
    np.testing.assert_array_equal(got[k].count, np.asarray(want.count))
    assert got[k].count.sum() == valid.sum()
    for field in ("confidence_sum", "correct_sum"):
      np.testing.assert_allclose(getattr(got[k], field),
                                 np.asarray(getattr(want, field)), rtol=1e-5)
    assert all(np.asarray(f).dtype == np.float32 for f in got[k])


def _tree(epoch):
  return {"epoch": np.asarray(epoch, np.int32), "x": np.arange(64.0)}


def test_checkpoint_files_are_recorded_in_the_background(tmp_path,
                                                         monkeypatch):
  release = threading.Event()
  records = fileio.file_records

  def slow_records(*args, **kwargs):
    assert release.wait(60)  # Hashing a large checkpoint, say.
    return records(*args, **kwargs)

  monkeypatch.setattr(fileio, "file_records", slow_records)
  checkpoints.save(tmp_path, _tree(0))
  step = tmp_path / layout.CHECKPOINTS_DIR / "0"
  manifest = step / layout.CHECKPOINT_MANIFEST
  # save returned with Orbax's write committed, its record still pending.
  assert step.is_dir() and not manifest.exists()
  release.set()
  checkpoints.finish()
  assert json.loads(manifest.read_text()) == records(
      str(step), ".", skip={layout.CHECKPOINT_MANIFEST})
  # The next save waits for nothing more, and its record lands too.
  checkpoints.save(tmp_path, _tree(1))
  assert checkpoints.latest_epoch(tmp_path) == 1  # Waits for the record.
  assert (tmp_path / layout.CHECKPOINTS_DIR / "1"
          / layout.CHECKPOINT_MANIFEST).exists()
  assert not step.exists()  # One kept, as before.


def test_a_failed_record_is_raised_by_finish(tmp_path, monkeypatch):
  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(fileio, "write_json", full_disk)
  checkpoints.save(tmp_path, _tree(0))
  with pytest.raises(OSError, match="No space left"):
    checkpoints.finish()
  checkpoints.finish()  # Raised once, then cleared.


def test_plot_interval_0_draws_no_figure(tmp_path, monkeypatch):
  plotted = []
  monkeypatch.setattr(train, "_plots", lambda *args: plotted.append(args))
  config = smoke_config("linear_probe", epochs=2, image_size=32,
                        plot_interval=0)
  train.train_and_evaluate(config, str(tmp_path), stop_after_epoch=0)
  train.train_and_evaluate(config, str(tmp_path))
  assert plotted == [] and os.listdir(tmp_path / "plots") == []
  assert (tmp_path / "summary.json").exists()
  config.plot_interval = -1
  from reprog_jax import errors  # pylint: disable=g-import-not-at-top
  from reprog_jax.train import run_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError,
                     match=r"plot_interval must be >= 0 .*got -1$"):
    run_config.check(config)


def test_figures_every_interval_and_the_last(tmp_path, monkeypatch):
  plotted = []
  plots = train._plots
  monkeypatch.setattr(train, "_plots", lambda run, writer, epoch, *rest: (
      plotted.append(epoch), plots(run, writer, epoch, *rest)))
  config = smoke_config("linear_probe", epochs=5, image_size=32,
                        plot_interval=2)
  train.train_and_evaluate(config, str(tmp_path))
  assert plotted == [1, 3, 4]
  assert (tmp_path / "plots" / "reliability.png").exists()
  assert os.path.exists(tmp_path / layout.CHECKPOINTS_DIR / "4"
                        / layout.CHECKPOINT_MANIFEST)
