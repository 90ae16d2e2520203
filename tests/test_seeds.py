"""Several few-shot seeds in one jitted step equal separate runs."""

import json

import numpy as np
import pytest

from conftest import assert_records_close, per_seed_records, smoke_config
from reprog_jax import checkpoints, inputs, run_config, train

TOLERANCE = 1e-4
SEEDS = (0, 1)


def _run(workdir, name, **overrides):
  summary = train.train_and_evaluate(
      smoke_config(name, epochs=3, **overrides), str(workdir))
  return summary, per_seed_records(workdir), checkpoints.read(workdir)


@pytest.fixture(scope="module", params=["ilm_vp", "linear_probe"])
def runs(request, tmp_path_factory):
  """A run with SEEDS vmapped and one run per seed alone."""
  root = tmp_path_factory.mktemp(request.param)
  together = _run(root / "together", request.param, seeds=SEEDS)
  alone = [_run(root / f"seed{s}", request.param, seed=s) for s in SEEDS]
  return request.param, root, together, alone


def test_each_vmapped_seed_equals_its_run_alone(runs):
  _, _, (summary, records, saved), alone = runs
  assert summary["seeds"] == list(SEEDS)
  assert [p["seed"] for p in summary["per_seed"]] == list(SEEDS)
  for k, (seed_summary, seed_records, seed_saved) in enumerate(alone):
    assert_records_close(records, seed_records, TOLERANCE)
    ours, theirs = summary["per_seed"][k], seed_summary["per_seed"][0]
    assert ours["mapping_sequence"] == theirs["mapping_sequence"]
    assert ours["best"]["epoch"] == theirs["best"]["epoch"]
    for key in ("test_acc", "test_ece", "train_loss"):
      assert ours["best"][key] == pytest.approx(theirs["best"][key],
                                                abs=TOLERANCE)
    for path in ("state", "best"):
      mine = saved[path]["params"]
      for name, leaf in seed_saved[path]["params"].items():
        np.testing.assert_allclose(mine[name][k], leaf[0], rtol=0,
                                   atol=TOLERANCE)
  # The seeds really differ: own subsets, orders and initial values.
  first, second = (summary["per_seed"][k]["last"] for k in range(2))
  assert first["train_loss"] != second["train_loss"]


def test_summary_reports_each_seed_and_their_spread(runs):
  _, _, (summary, records, _), _ = runs
  accs = [p["best"]["test_acc"] for p in summary["per_seed"]]
  spread = summary["seeds_mean_std"]["best"]["test_acc"]
  assert spread["mean"] == pytest.approx(np.mean(accs))
  assert spread["std"] == pytest.approx(np.std(accs))
  assert "best" not in summary  # Only a single-seed run has one best.
  for k, seed in enumerate(SEEDS):
    mine = [r for (e, s), r in sorted(records.items()) if s == seed]
    assert summary["per_seed"][k]["last"] == mine[-1]
    assert summary["per_seed"][k]["best"]["test_acc"] == max(
        r["test_acc"] for r in mine)


def test_plots_per_seed(runs):
  name, root, _, _ = runs
  plots = root / "together" / "plots"
  assert (plots / "curves.png").exists()
  for seed in SEEDS:
    assert (plots / f"seed_{seed}" / "reliability.png").exists()
    assert (plots / f"seed_{seed}" / "label_mapping.png").exists() == (
        name == "ilm_vp")


def test_resumed_run_with_seeds_ends_identical(runs, tmp_path):
  name, root, (summary, records, saved), _ = runs
  config = smoke_config(name, epochs=3, seeds=SEEDS)
  assert train.train_and_evaluate(config, str(tmp_path),
                                  stop_after_epoch=0) == {}
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert per_seed_records(tmp_path) == records
  for key in ("per_seed", "seeds_mean_std"):
    assert resumed[key] == summary[key]
  again = checkpoints.read(tmp_path)
  for path in ("state", "best"):
    for leaf, other in zip(
        np.asarray(list(again[path]["params"].values())[0]),
        np.asarray(list(saved[path]["params"].values())[0])):
      np.testing.assert_array_equal(leaf, other)


def test_full_split_seeds_share_examples_and_differ_in_order():
  config = smoke_config("ilm_vp", seeds=(0, 1, 2), n_shot=-1)
  run_data = inputs.open_run_data(config, run_config.seeds(config))
  assert (run_data.pools == run_data.pools[0]).all()
  from reprog_jax import data
  sampler = data.Sampler(run_data.pools, (0, 1, 2), batch_size=4,
                         shuffle=True)
  orders = sampler.epoch_order(0)
  assert not np.array_equal(orders[0], orders[1])
  assert sorted(orders[0]) == sorted(orders[1])


@pytest.mark.parametrize("seeds, message", [
    ((), "seeds is empty"),
    ((1, 2, 1), r"seeds \(1, 2, 1\) repeat \[1\]"),
    ((0, -3), "non-negative integers"),
])
def test_bad_seeds_are_refused(seeds, message):
  with pytest.raises(ValueError, match=message):
    run_config.check(smoke_config("ilm_vp", seeds=seeds))
