"""Temperature scaling in a run: held-out examples and what they change."""

import numpy as np
import pytest

from conftest import per_seed_records, smoke_config
from reprog_jax.metrics import calibration_host
from reprog_jax.train import inputs
from reprog_jax.train import loop as train
from reprog_jax.data import fewshot

TS_FIELDS = {"temperature", "test_ece_ts", "test_ece_adaptive_ts",
             "test_nll_ts"}


def _labels(sizes=(7, 9, 12, 3, 10), seed=0):
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
  return np.random.default_rng(seed).permutation(labels)


def _transcribed_holdout(labels, per_class, exclude, keep_per_class=0):
  """The documented rule as a plain loop: per class, one permutation by
  RandomState(0) drawn in class order; the first not excluded are kept."""
  rng = np.random.RandomState(0)
  held = []
  for c in sorted(set(labels.tolist())):
    members = rng.permutation([i for i, y in enumerate(labels) if y == c])
    outside = [i for i in members if i not in set(exclude)]
    held += outside[:max(0, min(per_class, len(outside) - keep_per_class))]
  return sorted(held)


@pytest.mark.parametrize("per_class, n_shot", [(1, 2), (4, 2), (20, 3),
                                               (5, 1)])
def test_holdout_is_outside_the_subset_and_follows_the_rule(per_class,
                                                            n_shot):
  labels = _labels()
  for seed in (0, 1, 7):
    pool = fewshot.few_shot_indices(labels, n_shot, seed)
    held = fewshot.calibration_holdout_indices(labels, per_class, pool)
    assert held.tolist() == _transcribed_holdout(labels, per_class, pool)
    assert not np.isin(held, pool).any()
    per_class_counts = np.bincount(labels[held], minlength=5)
    outside = np.bincount(labels, minlength=5) - n_shot
    np.testing.assert_array_equal(per_class_counts,
                                  np.minimum(per_class, outside))


def test_holdout_sets_of_seeds_overlap_and_carving_keeps_one_per_class():
  labels = _labels()
  pools = [fewshot.few_shot_indices(labels, 2, s) for s in range(3)]
  sets = [fewshot.calibration_holdout_indices(labels, 2, p) for p in pools]
  # One draw for every seed: each seed's set is the fixed order's first two
  # outside its own subset, so with small subsets the sets largely agree.
  union = np.unique(np.concatenate(sets))
  assert len(union) < sum(len(s) for s in sets)
  carved = fewshot.calibration_holdout_indices(labels, 20, keep_per_class=1)
  assert carved.tolist() == _transcribed_holdout(labels, 20, [], 1)
  np.testing.assert_array_equal(np.bincount(labels[carved]),
                                np.array([7, 9, 12, 3, 10]) - 1)


def test_a_seeds_holdout_is_the_same_alone_or_among_others():
  together = inputs.open_run_data(smoke_config("ilm_vp", n_shot=1),
                                  (0, 1, 2))
  for k, seed in enumerate((0, 1, 2)):
    alone = inputs.open_run_data(smoke_config("ilm_vp", n_shot=1), (seed,))
    np.testing.assert_array_equal(together.holdout[k], alone.holdout[0])
    np.testing.assert_array_equal(together.pools[k], alone.pools[0])
    assert not np.isin(together.holdout[k], together.pools[k]).any()
    assert len(together.holdout[k]) == 10  # Mock: 3 per class, 1 trains.


def test_full_split_has_no_holdout_unless_carved(capsys):
  config = smoke_config("ilm_vp", n_shot=-1, seeds=(0, 1))
  plain = inputs.open_run_data(config, (0, 1))
  assert plain.holdout is None
  assert "no temperature scaling" in capsys.readouterr().out
  np.testing.assert_array_equal(plain.pools[0],
                                np.arange(len(plain.train.labels)))
  config = smoke_config("ilm_vp", n_shot=-1, seeds=(0, 1),
                        calibration_carve_holdout=True,
                        calibration_holdout=1)
  carved = inputs.open_run_data(config, (0, 1))
  assert "no temperature scaling" not in capsys.readouterr().out
  held = carved.holdout[0]
  np.testing.assert_array_equal(carved.holdout[1], held)
  assert np.bincount(carved.train.labels[held]).tolist() == [1] * 10
  np.testing.assert_array_equal(
      carved.pools, np.tile(np.setdiff1d(np.arange(len(plain.pools[0])),
                                         held), (2, 1)))


def test_bad_calibration_holdout_is_refused():
  from reprog_jax import errors
  from reprog_jax.train import run_config
  with pytest.raises(errors.UserError, match="calibration_holdout must be"):
    run_config.check(smoke_config("ilm_vp", calibration_holdout=-1))


def _lp(tmp_path, name, **overrides):
  summary = train.train_and_evaluate(
      smoke_config("linear_probe", epochs=1, **overrides),
      str(tmp_path / name))
  return summary, per_seed_records(tmp_path / name)


def test_temperature_is_fitted_on_each_seeds_holdout_and_trains_nothing(
    tmp_path, monkeypatch):
  fitted = []
  real = calibration_host.fit_temperature

  def spy(logits, labels, mask):
    fitted.append((np.asarray(labels)[mask], real(logits, labels, mask)))
    return fitted[-1][1]

  monkeypatch.setattr(calibration_host, "fit_temperature", spy)
  seeds = (0, 1)
  summary, records = _lp(tmp_path, "ts", seeds=seeds)
  run_data = inputs.open_run_data(smoke_config("linear_probe"), seeds)
  assert len(fitted) == 2
  for k, seed in enumerate(seeds):
    # Seed k's own held-out examples, each once (their labels, in order).
    expected = run_data.train.labels[run_data.holdout[k]]
    np.testing.assert_array_equal(np.sort(fitted[k][0]), np.sort(expected))
    record = records[(0, seed)]
    assert record["temperature"] == fitted[k][1]
    assert 0.01 <= record["temperature"] <= 100
    assert TS_FIELDS <= set(summary["per_seed"][k]["best"])
  assert TS_FIELDS <= set(summary["seeds_mean_std"]["best"])
  # Without a hold-out: the same training and test figures, no TS fields.
  # (No validation split either: it would take the freed examples.)
  _, without = _lp(tmp_path, "none", seeds=seeds, calibration_holdout=0,
                   validation_per_class=0)
  for key, record in without.items():
    assert not TS_FIELDS & set(record)
    assert record == {k: v for k, v in records[key].items()
                      if k not in TS_FIELDS}


def test_full_split_run_without_and_with_a_carved_holdout(tmp_path, capsys):
  summary, records = _lp(tmp_path, "full", n_shot=-1)
  assert "no temperature scaling" in capsys.readouterr().out
  assert not TS_FIELDS & set(records[(0, 4)])
  assert not TS_FIELDS & set(summary["best"])
  carved, carved_records = _lp(tmp_path, "carved", n_shot=-1,
                               calibration_carve_holdout=True)
  assert TS_FIELDS <= set(carved_records[(0, 4)])
  # Mock data: 2 per class; one of each class is held out, one trains.
  assert summary["train_examples"] == 20
  assert carved["train_examples"] == 10
