"""Several few-shot seeds in one jitted step equal separate runs."""


import numpy as np
import pytest

from conftest import assert_records_close, per_seed_records, smoke_config
from reprog_jax.train import checkpoints
from reprog_jax.train import inputs
from reprog_jax.train import run_config
from reprog_jax.train import loop as train
from reprog_jax.data import pipeline

TOLERANCE = 1e-4
SEEDS = (0, 1)


def assert_trained_values_close(ours, theirs):
  """Trained values within TOLERANCE, allowing for Adam's amplification.

  Adam divides each entry's gradient by that entry's own running scale, so
  a prompt pixel whose exact gradient is ~0 moves by a sizeable fraction of
  the learning rate in the direction of its rounding noise, which a change
  of batch shape changes. Such pixels are rare (see
  `test_vmapped_gradient_equals_each_seeds_own` for the exact comparison,
  before Adam): all but 0.1 % of the entries must agree to TOLERANCE, and
  none by more than a tenth of the learning rate.
  """
  diff = np.abs(np.asarray(ours) - np.asarray(theirs))
  assert np.mean(diff <= TOLERANCE) >= 0.999, diff.max()
  assert diff.max() <= 1e-3


# The smoke runs' network, except for ILM-VP's: its prompt starts at zero,
# a constant frame, whose exact ties in the max-pool windows a 1-ulp
# difference between batch shapes breaks either way (see
# `test_vmapped_gradient_equals_each_seeds_own`). Through `resnet_mini`'s
# 16-channel stem that flips the sign of some pixels' first gradient, which
# Adam turns into steps a learning rate apart, and the prompts drift apart
# by more than TOLERANCE within the smoke run's 2 epochs while the losses
# agree; through ResNet-18's, such a gradient moves by about 1 %, and the
# prompts stay within TOLERANCE.
NETWORKS = {"ilm_vp": "resnet18", "linear_probe": "resnet_mini"}


def _config(name, **overrides):
  """The smoke preset (2 epochs: a resumed run still trains one) on the
  method's network."""
  return smoke_config(name, random_network=NETWORKS[name], **overrides)


def _run(workdir, name, **overrides):
  summary = train.train_and_evaluate(_config(name, **overrides), str(workdir))
  return summary, per_seed_records(workdir), checkpoints.read(workdir)


def _runs(name, root):
  """A run with SEEDS vmapped (counting image decodes) and one run per
  seed alone."""
  decoded = []
  real = pipeline.load_uint8_image
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(pipeline, "load_uint8_image",
                  lambda *a: decoded.append(1) or real(*a))
    # Its figures too (`test_plots_per_seed`).
    together = _run(root / "together", name, seeds=SEEDS, plot_interval=10)
  alone = [_run(root / f"seed{s}", name, seed=s) for s in SEEDS]
  return name, root, together, alone, len(decoded)


@pytest.fixture(scope="module")
def vp_runs(tmp_path_factory):
  return _runs("ilm_vp", tmp_path_factory.mktemp("ilm_vp"))


@pytest.fixture(scope="module")
def lp_runs(tmp_path_factory):
  return _runs("linear_probe", tmp_path_factory.mktemp("linear_probe"))


@pytest.fixture(params=["vp_runs", "lp_runs"])
def runs(request):
  return request.getfixturevalue(request.param)


def test_each_vmapped_seed_equals_its_run_alone(runs):
  _, _, (summary, records, saved), alone, _ = runs
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
        assert_trained_values_close(mine[name][k], leaf[0])
  # The seeds really differ: own subsets, orders and initial values.
  first, second = (summary["per_seed"][k]["last"] for k in range(2))
  assert first["train_loss"] != second["train_loss"]


def test_vmapped_gradient_equals_each_seeds_own():
  import jax
  import optax
  from reprog_jax import methods
  from reprog_jax.model import network as network_lib
  from reprog_jax.train import sharding
  from reprog_jax.train import steps
  # The smoke runs' tiny network: the same layers (max-pool included) as
  # any ResNet's, in a fraction of ResNet-18's compile time.
  network = network_lib.random_network("resnet_mini")
  sgd = optax.sgd(1.0)  # One step from zero: minus the gradient.
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (3, 5, 16, 16, 3), np.uint8),
           "label": rng.integers(0, 10, (3, 5)).astype(np.int32),
           "mask": np.arange(5) < np.array([[5], [3], [4]])}
  for method in (methods.ilm_vp.visual_prompt(16, 10, 48),
                 methods.linear_probe.linear_probe(
                     network.model.num_features, 10)):
    mappings = np.tile(method.initial_mapping, (3, 1))
    if method.name == "ilm_vp":
      mappings = rng.permutation(1000)[:30].reshape(3, 10)
    step = steps.make_train_step(method, sgd, sharding.Layout.create(3))
    # Random trained values, not the zero program: a constant frame puts
    # exact ties in the network's max-pool windows, and then a 1-ulp
    # difference in accumulation order between the two batch shapes routes
    # the (equally valid) subgradient elsewhere on some CPUs (AVX2).
    start = steps.init_state(method, sgd, (0, 1, 2))
    start = start.replace(params=jax.tree.map(
        lambda p: rng.normal(0, 1, p.shape).astype(np.float32), start.params))
    state, metrics = step(start, network, mappings, batch)
    for k, seed in enumerate((0, 1, 2)):
      alone = steps.init_state(method, sgd, (seed,))
      alone = alone.replace(params=jax.tree.map(lambda p: p[k:k + 1],
                                                start.params))
      alone, alone_metrics = step(
          alone, network, mappings[k:k + 1],
          jax.tree.map(lambda x: x[k:k + 1], batch))
      # Float32 rounding of losses up to ~13: relative, not absolute.
      assert float(metrics["loss"][k]) == pytest.approx(
          float(alone_metrics["loss"][0]), rel=1e-6)
      for ours, theirs in zip(jax.tree.leaves(state.params),
                              jax.tree.leaves(alone.params)):
        scale = np.abs(np.asarray(theirs)).max()
        np.testing.assert_allclose(ours[k], theirs[0], rtol=0,
                                   atol=1e-5 * scale)


def test_summary_reports_each_seed_and_their_spread(runs):
  _, _, (summary, records, _), _, _ = runs
  accs = [p["best"]["test_acc"] for p in summary["per_seed"]]
  spread = summary["seeds_mean_std"]["best"]["test_acc"]
  assert spread["mean"] == pytest.approx(np.mean(accs))
  assert spread["std"] == pytest.approx(np.std(accs, ddof=1))
  assert spread["std_ddof"] == 1 and spread["n_seeds"] == len(accs)
  assert "best" not in summary  # Only a single-seed run has one best.
  for k, seed in enumerate(SEEDS):
    mine = [r for (e, s), r in sorted(records.items()) if s == seed]
    assert summary["per_seed"][k]["last"] == mine[-1]
    assert summary["per_seed"][k]["best"]["test_acc"] == max(
        r["test_acc"] for r in mine)


def test_plots_per_seed(runs):
  name, root, _, _, _ = runs
  plots = root / "together" / "plots"
  assert (plots / "curves.png").exists()
  for seed in SEEDS:
    assert (plots / f"seed_{seed}" / "reliability.png").exists()
    assert (plots / f"seed_{seed}" / "label_mapping.png").exists() == (
        name == "ilm_vp")


def test_resumed_run_with_seeds_ends_identical(vp_runs, tmp_path):
  name, root, (summary, records, saved), _, _ = vp_runs
  config = _config(name, seeds=SEEDS)
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


def test_a_second_epoch_decodes_no_image(vp_runs):
  # Every image once: the seeds' training subsets (their union), the test
  # split and the seeds' calibration hold-outs (their union), not once per
  # epoch, label-mapping pass or seed.
  name, _, _, _, decoded = vp_runs
  config = smoke_config(name, seeds=SEEDS)
  run_data = inputs.open_run_data(config, SEEDS)
  assert decoded == len(np.unique(run_data.pools)) + len(
      run_data.test.labels) + len(np.unique(np.concatenate(run_data.holdout)))


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
