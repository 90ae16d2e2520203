"""The test split only where a selection needs it (`config.test_every`):
which epochs are tested, `validation` and `last` bit-identical to
test_every=1's, `best` among the tested epochs, a job split in two equal to
one, and each epoch's phase times."""

import json

import jax
import numpy as np
import pytest

from conftest import smoke_config
from reprog_jax import errors
from reprog_jax.metrics import metric_writer
from reprog_jax.train import best as best_lib
from reprog_jax.train import checkpoints
from reprog_jax.train import evaluation
from reprog_jax.train import loop as train
from reprog_jax.train import passes
from reprog_jax.train import run_config

# Mock data with 6 examples per class: 2 train, 1 is held out for the
# temperature, 2 validate.
WITH_VALIDATION = dict(n_shot=2, data__mock_num_examples=60,
                       calibration_holdout=1, validation_per_class=2)
# Designed validation accuracies per (epoch, seed): seed 0 improves at
# epochs 0 and 2, seed 1 at 0 and 3 (ties and falls improve nothing).
DESIGNED = {0: (0.2, 0.3), 1: (0.2, 0.1), 2: (0.5, 0.3), 3: (0.4, 0.6),
            4: (0.5, 0.6), 5: (0.1, 0.2)}
EPOCHS = len(DESIGNED)


def _expected_tested(every, val, epochs):
  """The documented rule, transcribed: every epoch (1), every k-th (k),
  where some seed's validation accuracy exceeds all its earlier ones, and
  the last."""
  tested = set()
  for epoch in range(epochs):
    improved = any(val[epoch][s] > max([v[s] for v in val[:epoch]],
                                       default=-np.inf)
                   for s in range(len(val[epoch])))
    if (every == 1 or (every > 1 and (epoch + 1) % every == 0) or improved
        or epoch == epochs - 1):
      tested.add(epoch)
  return tested


@pytest.mark.parametrize("every", [0, 1, 2, 4])
@pytest.mark.parametrize("val", [
    [DESIGNED[e] for e in range(EPOCHS)],
    [(0.5,)] * 7,  # Never better after the first.
    [(0.1,), (0.2,), (0.2,), (0.15,), (0.3,), (0.3,), (0.2,)]])
def test_the_tested_epochs_follow_the_rule(every, val):
  config = smoke_config("linear_probe", epochs=len(val), test_every=every)
  num_seeds = len(val[0])
  best = best_lib.Best.initial({"w": np.zeros((num_seeds, 1))},
                               np.zeros((num_seeds, 3), np.int32))
  tested = set()
  for epoch, accuracies in enumerate(val):
    held_out = [{"val_acc": a} for a in accuracies]
    test = evaluation.must_test(config, epoch, best, held_out)
    if test:
      tested.add(epoch)
    bins = None
    if test:
      bins = [_bins() for _ in accuracies]
    best = best.update(epoch, {"w": np.zeros((num_seeds, 1))},
                       np.zeros((num_seeds, 3), np.int32),
                       [0.5] * num_seeds if test else None, bins,
                       val_accuracies=accuracies)
  assert tested == _expected_tested(every, val, len(val))


def _bins():
  from reprog_jax.metrics import calibration
  return calibration.CalibrationBins(
      *[np.zeros(calibration.DEFAULT_NUM_BINS, np.float32)
        for _ in calibration.CalibrationBins._fields])


def test_without_a_validation_split_only_the_last_epoch_is_tested():
  config = smoke_config("linear_probe", epochs=3, test_every=0)
  best = best_lib.Best.initial({"w": np.zeros((1, 1))},
                               np.zeros((1, 3), np.int32))
  # Held-out examples give a temperature, no validation accuracy.
  held_out = [{"temperature": 1.5}]
  assert [evaluation.must_test(config, e, best, held_out)
          for e in range(3)] == [False, False, True]


def test_a_validation_epoch_cannot_change_untested():
  best = best_lib.Best.initial({"w": np.zeros((1, 1))},
                               np.zeros((1, 3), np.int32))
  with pytest.raises(ValueError, match="not evaluated"):
    best.update(0, {"w": np.ones((1, 1))}, np.zeros((1, 3), np.int32),
                None, None, val_accuracies=[0.5])


@pytest.mark.parametrize("value", [-1, True])
def test_a_bad_test_every_is_refused(value):
  config = smoke_config("linear_probe")
  config.unlock()
  config.test_every = value
  with pytest.raises(errors.ConfigError, match="test_every must be an "
                     "integer >= 0"):
    run_config.check(config)


# --------------------------------------------------------------------------
# In a run: test_every=0 against test_every=1, and a job split in two
# --------------------------------------------------------------------------


def _designed_validate(real):
  def validate(run, state, mappings):
    metrics = real(run, state, mappings)
    epoch = int(state.step[0]) // len(run.inputs.train_batches) - 1
    for k, seed_metrics in enumerate(metrics):
      seed_metrics["val_acc"] = DESIGNED[epoch][k]
    return metrics
  return validate


def _config(every):
  return smoke_config("linear_probe", seeds=(0, 1), epochs=EPOCHS,
                      test_every=every, image_size=32, **WITH_VALIDATION)


def _results(workdir):
  """metrics.jsonl by (epoch, seed) without timings, the summary, the
  checkpoint."""
  records = {(r["epoch"], r["seed"]): {
      k: v for k, v in r.items() if k not in metric_writer.TIMING_KEYS}
             for r in metric_writer.read_metrics(workdir)}
  summary = json.loads((workdir / "summary.json").read_text())
  return records, summary, checkpoints.read(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """test_every=1 and =0 uninterrupted, and =0 stopped after epoch 1 (not
  a tested epoch) then resumed; stdout of the runs."""
  root = tmp_path_factory.mktemp("test_every")
  out = {}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(passes, "validate", _designed_validate(passes.validate))
    for name, every in (("every", 1), ("needed", 0)):
      train.train_and_evaluate(_config(every), str(root / name))
    stopped = str(root / "stopped")
    import contextlib
    import io
    for stop in (1, None):
      text = io.StringIO()
      with contextlib.redirect_stdout(text):
        train.train_and_evaluate(_config(0), stopped, stop_after_epoch=stop)
      out[stop] = text.getvalue()
  return root, out


BEST_KEYS = ("best_test_acc", "best_epoch")  # The running best-test record.


def _without(record, prefixes):
  return {k: v for k, v in record.items()
          if not k.startswith(prefixes) and k not in BEST_KEYS}


def test_only_the_needed_epochs_are_tested_and_their_records_are_exact(runs):
  root, _ = runs
  every, _, _ = _results(root / "every")
  needed, summary, _ = _results(root / "needed")
  tested = _expected_tested(0, [DESIGNED[e] for e in range(EPOCHS)], EPOCHS)
  assert tested == {0, 2, 3, 5}
  assert set(needed) == set(every)
  for (epoch, seed), record in needed.items():
    if epoch in tested:
      # Bit for bit, every metric of the epoch.
      assert _without(record, ()) == _without(every[epoch, seed], ())
      assert "test_acc" in record and "test_ece_ts" in record
    else:
      # Untested: no test metrics, everything else as test_every=1's.
      assert not any(k.startswith("test_") for k in record)
      assert _without(record, ()) == _without(every[epoch, seed],
                                              ("test_",))
      assert record["val_acc"] == DESIGNED[epoch][seed]
  assert summary["test_every"] == 0 and summary["tested_epochs"] == 4
  assert summary["best_test_over"] == "tested epochs"


def test_validation_and_last_are_bit_identical_best_is_among_tested(runs):
  root, _ = runs
  every, every_summary, every_saved = _results(root / "every")
  _, summary, saved = _results(root / "needed")
  assert every_summary["best_test_over"] == "every epoch"
  for k, seed in enumerate((0, 1)):
    ours, theirs = summary["per_seed"][k], every_summary["per_seed"][k]
    for which in ("validation", "last"):
      assert _without(ours[which], ()) == _without(theirs[which], ())
    for key in ("validation_reliability", "validation_mapping_sequence",
                "mapping_sequence"):
      assert ours[key] == theirs[key]
    best = max((r for (e, s), r in every.items()
                if s == seed and e in (0, 2, 3, 5)),
               key=lambda r: (r["test_acc"], -r["epoch"]))
    assert _without(ours["best"], ()) == _without(best, ())
  for name in ("val_epoch", "val_acc", "val_mapping_sequence"):
    np.testing.assert_array_equal(saved["best"][name],
                                  every_saved["best"][name])
  _assert_trees_equal(saved["best"]["val_params"],
                      every_saved["best"]["val_params"])
  _assert_trees_equal(saved["state"], every_saved["state"])


def _assert_trees_equal(ours, theirs):
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)


def test_a_job_split_at_an_untested_epoch_records_what_one_job_does(runs):
  root, out = runs
  stopped, summary, saved = _results(root / "stopped")
  needed, needed_summary, needed_saved = _results(root / "needed")
  assert stopped == needed
  for key in ("per_seed", "seeds_mean_std", "tested_epochs"):
    assert summary[key] == needed_summary[key]
  _assert_trees_equal(saved["state"], needed_saved["state"])
  # Where the job stopped, the test split was shown, not recorded.
  line = [l for l in out[1].splitlines() if l.startswith("epoch 1:")]
  assert "test acc" in line[0] and "not recorded" in line[0]
  assert "stopped after epoch 1" in out[1]


def test_the_note_says_what_cannot_be_selected_and_lines_show_phases(runs):
  _, out = runs
  note = [l for l in out[1].splitlines() if l.startswith("NOTE: test_every")]
  assert note == [
      "NOTE: test_every=0: the test split is evaluated only where a seed's "
      "validation accuracy improves and at the last epoch; `validation` "
      "and `last` are exact, but `best` (best test accuracy, the PyTorch "
      "version's selection) is the best among those tested epochs only: "
      "--config.test_every=1 selects over every epoch"]
  line = [l for l in out[None].splitlines() if l.startswith("epoch 4:")][0]
  assert "test not evaluated" in line
  assert line.endswith("s]") and "[map " in line and " ckpt " in line


def test_each_epoch_records_its_phase_times(runs):
  root, _ = runs
  records = metric_writer.read_metrics(root / "needed")
  for record in records:
    times = {k: record[k] for k in metric_writer.PHASE_KEYS}
    assert all(t >= 0 for t in times.values())
    assert times["seconds_train"] > 0 and times["seconds_validation"] > 0
    # Phases of this epoch lie within its wall time (the checkpoint wait
    # may include the previous epoch's hand-over, just before it).
    assert (sum(times.values()) - times["seconds_checkpoint"]
            <= record["epoch_seconds"])
    assert (times["seconds_test"] > 0) == ("test_acc" in record)
  summary = json.loads((root / "needed" / "summary.json").read_text())
  assert not set(metric_writer.TIMING_KEYS) & set(
      summary["seeds_mean_std"]["last"])
