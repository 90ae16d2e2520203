"""Checkpoints behind the work (`saver.Saver`): epoch e's write overlaps
epoch e + 1's steps, its record lands only once Orbax has committed it, and
a `kill -9` at any instant resumes to the result of an uninterrupted run
(each intermediate state on disk recreated from real checkpoints)."""

import asyncio
import json
import shutil
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
# Where Orbax commits a save (renames its temporary directory), and that
# directory's suffix: private modules, so that the tests stop at the very
# step whose order they check.
from orbax.checkpoint._src.path import atomicity
from orbax.checkpoint._src.path import atomicity_types

from conftest import per_seed_records, smoke_config
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.train import checkpoints
from reprog_jax.train import loop as train
from reprog_jax.train import passes

EPOCHS = 3


def _config():
  return smoke_config("linear_probe", epochs=EPOCHS, image_size=32)


def _committed(workdir):
  return sorted(ocp.step.checkpoint_steps(
      str((workdir / layout.CHECKPOINTS_DIR).resolve())))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run, watched: when epoch 0's save was committed
  (after epoch 1's steps had started?) and what was committed when each
  record was written."""
  workdir = tmp_path_factory.mktemp("async") / "whole"
  training_epoch_1 = threading.Event()
  overlapped, committed_at_record = [], []
  real_commit, real_train = atomicity.on_commit_callback, passes.train_epoch
  real_records = fileio.file_records

  async def commit(tmp_dir, **kwargs):
    if tmp_dir.get_final().name == "0":
      # A save on the critical path would wait here in vain (and fail).
      overlapped.append(await asyncio.to_thread(training_epoch_1.wait, 120))
    return await real_commit(tmp_dir, **kwargs)

  def train_epoch(run, state, mappings, epoch):
    if epoch == 1:
      training_epoch_1.set()
    return real_train(run, state, mappings, epoch)

  def file_records(root, under, skip=()):
    committed_at_record.append((root, _committed(workdir)))
    return real_records(root, under, skip)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(atomicity, "on_commit_callback", commit)
    patch.setattr(passes, "train_epoch", train_epoch)
    patch.setattr(fileio, "file_records", file_records)
    summary = train.train_and_evaluate(_config(), str(workdir))
  return workdir, summary, overlapped, committed_at_record


def test_epoch_0s_write_overlaps_epoch_1s_steps(reference):
  _, _, overlapped, _ = reference
  assert overlapped == [True]


def test_each_record_is_written_after_its_commit(reference):
  workdir, _, _, committed_at_record = reference
  steps = workdir / layout.CHECKPOINTS_DIR
  assert [root for root, _ in committed_at_record] == [
      str(steps / str(e)) for e in range(EPOCHS)]
  for epoch, (_, committed) in enumerate(committed_at_record):
    assert epoch in committed  # Committed: no longer a temporary directory.
  assert _committed(workdir) == [EPOCHS - 1]  # One kept.
  assert (steps / str(EPOCHS - 1) / layout.CHECKPOINT_MANIFEST).exists()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """Jobs stopped after epoch 0 and after epoch 1: their workdirs."""
  root = tmp_path_factory.mktemp("stopped")
  train.train_and_evaluate(_config(), str(root / "0"), stop_after_epoch=0)
  shutil.copytree(root / "0", root / "1")
  train.train_and_evaluate(_config(), str(root / "1"), stop_after_epoch=1)
  return root / "0", root / "1"


def _killed_while_saving_epoch_1(workdir, job_0, job_1, state):
  """`workdir` as a kill -9 left it while (or just after) epoch 1's
  checkpoint was written, epoch 2 running: epoch 1's metrics line is
  written (it precedes its save) and epoch 0's checkpoint is committed and
  recorded."""
  shutil.copytree(job_1, workdir)  # Its metrics: epochs 0 and 1.
  steps = workdir / layout.CHECKPOINTS_DIR
  shutil.copytree(job_0 / layout.CHECKPOINTS_DIR / "0", steps / "0")
  if state == "uncommitted":
    # Orbax was still writing: a temporary directory, part of the files.
    tmp = steps / ("1" + atomicity_types.TMP_DIR_SUFFIX)
    (steps / "1").rename(tmp)
    (tmp / layout.CHECKPOINT_MANIFEST).unlink()
    largest = max((p for p in tmp.rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
      f.truncate(largest.stat().st_size // 2)
  elif state == "committed, unrecorded":
    (steps / "1" / layout.CHECKPOINT_MANIFEST).unlink()
  elif state == "recorded, epoch 0 half deleted":
    largest = max((p for p in (steps / "0").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    largest.unlink()
  else:
    assert state == "recorded"


@pytest.mark.parametrize("state", [
    "uncommitted", "committed, unrecorded", "recorded",
    "recorded, epoch 0 half deleted"])
def test_a_kill_at_any_instant_of_a_save_resumes_to_the_same_result(
    reference, stopped, tmp_path, state):
  whole, whole_summary, _, _ = reference
  workdir = tmp_path / "w"
  _killed_while_saving_epoch_1(workdir, *stopped, state)
  resumed = train.train_and_evaluate(_config(), str(workdir))
  assert per_seed_records(workdir) == per_seed_records(whole)
  for key in ("per_seed", "seeds_mean_std"):
    assert resumed[key] == whole_summary[key]
  ours, theirs = (checkpoints.read(w) for w in (workdir, whole))
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)
  # Nothing left of the interrupted save; one checkpoint, recorded.
  steps = workdir / layout.CHECKPOINTS_DIR
  assert sorted(p.name for p in steps.iterdir()) == [str(EPOCHS - 1)]
  assert json.loads((steps / str(EPOCHS - 1)
                     / layout.CHECKPOINT_MANIFEST).read_text())
