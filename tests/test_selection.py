"""Model selection on a validation split: its examples, the epoch it picks,
resuming, and old checkpoints."""

import json

import jax
import numpy as np
import pytest

from conftest import smoke_config
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.data import fewshot
from reprog_jax.metrics import metric_writer
from reprog_jax.model import network as network_lib
from reprog_jax.model import pruning
from reprog_jax.train import checkpoints
from reprog_jax.train import inputs
from reprog_jax.train import loop as train
from reprog_jax.train import passes
from reprog_jax.train import run_config
from reprog_jax.train import sharding
from reprog_jax.train import workdir as workdir_lib

# Mock data with 6 examples per class: 2 train, 1 is held out for the
# temperature, 2 validate (one is left over).
WITH_VALIDATION = dict(n_shot=2, data__mock_num_examples=60,
                       calibration_holdout=1, validation_per_class=2)


def _transcribed(labels, per_class, exclude, keep_per_class=0):
  """The documented rule as a plain loop: per class, one permutation by
  RandomState(1) drawn in class order; the first not excluded are kept."""
  rng = np.random.RandomState(1)
  kept = []
  for c in sorted(set(labels.tolist())):
    members = rng.permutation([i for i, y in enumerate(labels) if y == c])
    outside = [i for i in members if i not in set(exclude)]
    kept += outside[:max(0, min(per_class, len(outside) - keep_per_class))]
  return sorted(kept)


def test_validation_rows_follow_the_rule_outside_subset_and_holdout():
  sizes = (7, 9, 12, 3, 10)
  labels = np.random.default_rng(0).permutation(
      np.concatenate([np.full(n, c) for c, n in enumerate(sizes)]))
  for seed in (0, 1, 7):
    pool = fewshot.few_shot_indices(labels, 2, seed)
    held = fewshot.calibration_holdout_indices(labels, 2, pool)
    exclude = np.concatenate([pool, held])
    validation = fewshot.validation_indices(labels, 3, exclude)
    assert validation.tolist() == _transcribed(labels, 3, exclude)
    assert not np.isin(validation, exclude).any()
    # Class 3 has 3 examples: 2 train and 1 is held out, none validates.
    np.testing.assert_array_equal(np.bincount(labels[validation],
                                              minlength=5), [3, 3, 3, 0, 3])


def test_each_seeds_validation_is_its_own_alone_or_among_others():
  config = smoke_config("ilm_vp", **WITH_VALIDATION)
  together = inputs.open_run_data(config, (0, 1, 2))
  labels = together.train.labels
  for k, seed in enumerate((0, 1, 2)):
    validation, pool = together.validation[k], together.pools[k]
    assert not np.isin(validation, pool).any()
    assert not np.isin(validation, together.holdout[k]).any()
    assert np.bincount(labels[validation]).tolist() == [2] * 10
    alone = inputs.open_run_data(config, (seed,))
    np.testing.assert_array_equal(alone.validation[0], validation)
  # Not one set for all: the seeds' subsets differ, so do their sets.
  assert not all(np.array_equal(together.validation[0], v)
                 for v in together.validation[1:])


def test_dense_and_ticket_runs_are_served_the_same_validation_rows(tmp_path):
  config = smoke_config("linear_probe", cache_features=False,
                        **WITH_VALIDATION)
  seeds = (0, 1)
  dense = network_lib.random_network("resnet18", 0)
  ticket = dense.replace(masks=pruning.prune(
      jax.device_get(dense.params), jax.device_get(dense.masks),
      remaining=0.5))
  served = []
  for k, net in enumerate((dense, ticket)):
    run_data = inputs.open_run_data(config, seeds)
    loaded = inputs.load(
        run_data, config, seeds=seeds, image_size=config.image_size,
        method=methods.build(config, net, run_data.num_classes,
                             config.image_size),
        network=net, eval_network=net, layout=sharding.Layout.create(1),
        workdir=str(tmp_path / str(k)))
    served.append([loaded.validation.split_positions, loaded.validation_rows,
                   loaded.validation.rows])
    # Each seed's rows of the union are exactly its validation examples.
    for rows, mine in zip(loaded.validation_rows, run_data.validation):
      np.testing.assert_array_equal(
          loaded.validation.split_positions[rows], mine)
  for ours, theirs in zip(*served):
    np.testing.assert_array_equal(ours, theirs)


def test_full_split_has_no_validation_unless_carved(capsys):
  config = smoke_config("ilm_vp", n_shot=-1, seeds=(0, 1),
                        data__mock_num_examples=60, calibration_holdout=1,
                        validation_per_class=2)
  plain = inputs.open_run_data(config, (0, 1))
  assert plain.validation is None
  assert "validation_carve=True" in capsys.readouterr().out
  every = np.arange(len(plain.train.labels))
  np.testing.assert_array_equal(plain.pools[0], every)
  config.validation_carve = config.calibration_carve_holdout = True
  carved = inputs.open_run_data(config, (0, 1))
  validation, held = carved.validation[0], carved.holdout[0]
  np.testing.assert_array_equal(carved.validation[1], validation)
  assert np.bincount(carved.train.labels[validation]).tolist() == [2] * 10
  assert not np.isin(validation, held).any()
  # Training keeps everything else: 6 - 1 - 2 = 3 per class.
  np.testing.assert_array_equal(
      carved.pools, np.tile(np.setdiff1d(every, np.concatenate(
          [validation, held])), (2, 1)))


def test_too_few_examples_means_no_validation_split(capsys):
  # Default mock size: 3 per class, 2 train and 1 is held out.
  run_data = inputs.open_run_data(smoke_config("ilm_vp"), (0,))
  assert run_data.validation is None
  assert "no validation split" in capsys.readouterr().out


def test_bad_validation_per_class_is_refused():
  with pytest.raises(errors.UserError, match="validation_per_class must be"):
    run_config.check(smoke_config("ilm_vp", validation_per_class=-1))


# --------------------------------------------------------------------------
# The epoch it picks, in a run
# --------------------------------------------------------------------------


# Designed validation accuracies per (epoch, seed), with ties: seed 0 picks
# epoch 1 (epoch 2 ties it), seed 1 picks epoch 0 (epoch 2 ties it).
DESIGNED = {0: (0.2, 0.5), 1: (0.6, 0.1), 2: (0.6, 0.5), 3: (0.4, 0.3)}


def _designed_validate(real):
  """`passes.validate` with each seed's `val_acc` replaced by DESIGNED's
  (the real one kept as `real_val_acc`)."""
  def validate(run, state, mappings):
    metrics = real(run, state, mappings)
    epoch = int(state.step[0]) // len(run.inputs.train_batches) - 1
    for k, seed_metrics in enumerate(metrics):
      seed_metrics["real_val_acc"] = seed_metrics["val_acc"]
      seed_metrics["val_acc"] = DESIGNED[epoch][k]
    return metrics
  return validate


def _config(**overrides):
  return smoke_config("linear_probe", seeds=(0, 1), epochs=4,
                      **WITH_VALIDATION, **overrides)


SCORED = []  # (desc, the store rows each seed was scored on): designed_run.


def _recording(score_pass):
  def recorded(run, params, mappings, store, sampler, desc, **kwargs):
    logits, order, counts = score_pass(run, params, mappings, store, sampler,
                                       desc, **kwargs)
    SCORED.append((desc, np.broadcast_to(order, logits.shape[:2])))
    return logits, order, counts
  return recorded


@pytest.fixture(scope="module")
def designed_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("selection") / "run"
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(passes, "validate", _designed_validate(passes.validate))
    patch.setattr(passes, "score_pass", _recording(passes.score_pass))
    summary = train.train_and_evaluate(_config(), str(workdir))
  return workdir, summary


def test_each_seed_is_scored_on_its_own_held_out_rows_only(designed_run):
  """Validation and temperature hold-out: seed k's logits are computed for
  its own rows, each once, not for the union of every seed's rows; the
  test split is scored whole for every seed."""
  run_data = inputs.open_run_data(_config(), (0, 1))
  splits = {"validation": run_data.validation, "held-out": run_data.holdout}
  scored = {desc for desc, _ in SCORED}
  assert scored == {"validation", "held-out", "test"}
  for desc, order in SCORED:
    if desc == "test":
      assert all(sorted(o[o >= 0]) == list(range(len(run_data.test.labels)))
                 for o in order)
      continue
    positions = np.unique(np.concatenate(splits[desc]))  # The store's rows.
    for k, mine in enumerate(splits[desc]):
      rows = order[k][order[k] >= 0]
      np.testing.assert_array_equal(rows, np.flatnonzero(
          np.isin(positions, mine)))  # Its own, in store order, once.
    assert (order >= 0).sum() < 2 * len(positions)  # Never the union twice.


def test_validation_epoch_is_the_first_argmax_of_val_acc(designed_run):
  workdir, summary = designed_run
  records = metric_writer.read_metrics(workdir)
  saved = checkpoints.read(workdir)["best"]
  for k, seed in enumerate((0, 1)):
    mine = [r for r in records if r["seed"] == seed]
    accuracies = [r["val_acc"] for r in mine]
    first_best = accuracies.index(max(accuracies))  # The first of ties.
    assert first_best == (1, 0)[k]
    record = summary["per_seed"][k]["validation"]
    assert record["epoch"] == first_best == saved["val_epoch"][k]
    assert record == {key: v for key, v in mine[first_best].items()
                      if key not in metric_writer.TIMING_KEYS}
    assert saved["val_acc"][k] == max(accuracies)
    # That epoch's test reliability bins: every test example once, and the
    # gaps add up to that epoch's test ECE.
    bins = summary["per_seed"][k]["validation_reliability"]
    counts = np.array(bins["count"])
    assert counts.sum() == summary["test_examples"]
    gaps = counts * np.abs(np.subtract(bins["accuracy"], bins["confidence"]))
    assert gaps.sum() / counts.sum() == pytest.approx(record["test_ece"],
                                                      abs=1e-6)
  means = summary["seeds_mean_std"]["validation"]["test_acc"]
  assert means["mean"] == pytest.approx(np.mean(
      [p["validation"]["test_acc"] for p in summary["per_seed"]]))
  assert list(summary["seeds_mean_std"]) == ["validation", "best", "last"]


def test_val_acc_is_the_accuracy_on_the_seeds_own_validation_rows(
    designed_run):
  """Recomputed from the cached validation features and the last epoch's
  checkpointed head, on the seed's validation examples only."""
  workdir, _ = designed_run
  run_data = inputs.open_run_data(_config(), (0, 1))
  with np.load(workdir / "features" / "validation.npz") as stored:
    features, labels = stored["features"], stored["labels"]
  positions = np.unique(np.concatenate(run_data.validation))
  np.testing.assert_array_equal(labels, run_data.train.labels[positions])
  head = checkpoints.read(workdir)["state"]["params"]
  last = [r for r in metric_writer.read_metrics(workdir) if r["epoch"] == 3]
  for k, mine in enumerate(run_data.validation):
    rows = np.isin(positions, mine)
    logits = features[rows] @ head["kernel"][k] + head["bias"][k]
    expected = np.mean(logits.argmax(-1) == labels[rows])
    assert last[k]["real_val_acc"] == pytest.approx(expected, abs=1e-6)
    assert 0 <= last[k]["val_ece"] <= 1


def test_resumed_run_keeps_the_same_validation_record(designed_run,
                                                      tmp_path, monkeypatch):
  workdir, summary = designed_run
  monkeypatch.setattr(passes, "validate", _designed_validate(passes.validate))
  assert train.train_and_evaluate(_config(), str(tmp_path),
                                  stop_after_epoch=1) == {}
  resumed = train.train_and_evaluate(_config(), str(tmp_path))
  for k in range(2):
    for key in ("validation", "validation_mapping_sequence",
                "validation_reliability"):
      assert resumed["per_seed"][k][key] == summary["per_seed"][k][key]
  ours, theirs = (checkpoints.read(w)["best"] for w in (tmp_path, workdir))
  for name in ("val_epoch", "val_acc", "val_mapping_sequence"):
    np.testing.assert_array_equal(ours[name], theirs[name])
  for a, b in zip(jax.tree.leaves(ours["val_params"]),
                  jax.tree.leaves(theirs["val_params"])):
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# Checkpoints of an earlier version
# --------------------------------------------------------------------------


def test_checkpoint_without_the_validation_record_is_refused(tmp_path,
                                                             capsys):
  config = smoke_config("ilm_vp")
  workdir = str(tmp_path / "old")
  dtype = run_config.compute_dtype(config)
  workdir_lib.prepare(config, workdir, dtype)  # This config's config.json.
  # What an earlier version saved: the best-test epoch only.
  checkpoints.save(workdir, {
      "state": {"w": np.zeros((1, 2), np.float32)},
      "epoch": np.asarray(0, np.int32),
      "mapping_sequence": np.zeros((1, 3), np.int32),
      "best": {"params": {"w": np.zeros((1, 2), np.float32)},
               "mapping_sequence": np.zeros((1, 3), np.int32),
               "test_acc": np.zeros(1), "epoch": np.zeros(1, np.int32),
               "reliability": {"count": np.zeros((1, 15), np.float32)}}})
  for refuse in (lambda: workdir_lib.prepare(config, workdir, dtype),
                 lambda: checkpoints.restore(workdir, {"best": {}})):
    with pytest.raises(errors.UserError) as caught:
      refuse()
    message = str(caught.value)
    assert "\n" not in message and "--config.overwrite=True" in message
    assert "earlier version" in message
    assert "delete that directory" not in message
  config.overwrite = True
  workdir_lib.prepare(config, workdir, dtype)
  assert checkpoints.latest_epoch(workdir) is None
  assert "overwrite: deleting the run" in capsys.readouterr().out
  assert json.loads((tmp_path / "old" / "config.json").read_text())
