"""The claims' verdicts on sweeps with known truth (summary.json files
written directly, no training), and their statistics against scipy."""

import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from reprog_jax.study import claims
from reprog_jax.study import report
from reprog_jax.study import statistics

SEEDS = (0, 1, 2, 3, 4)
# Per-seed noise shared by dense and ticket (same seed, same subset): the
# paired differences are what the test sees.
NOISE = np.array([0.00, 0.03, -0.02, 0.01, -0.03])


def summary(method, network, kind, dataset, n_shot, acc, ece,
            source_top1=None):
  """A summary.json as `summary.write` lays it out: per seed (the first
  len(acc) of SEEDS) a 'best' and a 'last' record with the given
  accuracies and ECEs (lists, one per seed)."""
  seeds = SEEDS[:len(acc)]
  per_seed = []
  for k, seed in enumerate(seeds):
    record = {"epoch": 3, "seed": seed, "test_acc": acc[k],
              "test_ece": ece[k], "test_ece_adaptive": ece[k],
              "test_pytorch_logged_quantity": 2 * ece[k]}
    per_seed.append({"seed": seed, "best": record,
                     "last": {**record, "epoch": 4}})
  network_meta = {"dir": f"/nonexistent/{network}", "arch": "resnet18",
                  "dense": kind == "dense"}
  if source_top1 is not None:
    network_meta["source_top1"] = source_top1
  return {"method": method, "dataset": dataset, "n_shot": n_shot,
          "seeds": list(seeds), "network": network_meta,
          "sparsity": {"global_remaining_percent":
                           100.0 if kind == "dense" else 20.0,
                       "remaining_percent": 100.0 if kind == "dense" else 19.},
          "per_seed": per_seed}


def write(directory, cells):
  """cells: {(method, network, kind, dataset): (acc list, ece list[,
  source_top1])}; writes each as a 10-shot run."""
  for (method, network, kind, dataset), values in cells.items():
    path = directory / method / network / dataset
    os.makedirs(path, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(
        summary(method, network, kind, dataset, 10, *values)))
  return report.collect(directory)


def sweep(tmp_path, vp_ticket, vp_dense=0.6, lp_ticket=0.8, lp_dense=0.8,
          ece_dense=0.05, ece_ticket=0.05, sources=(None, None)):
  """One dataset, one ticket; the accuracies are means around which every
  seed moves by NOISE (the same for dense and ticket)."""
  acc = lambda mean: list(mean + NOISE)
  ece = lambda mean: list(mean + NOISE / 10)
  return write(tmp_path, {
      ("ilm_vp", "dense", "dense", "cifar10"):
          (acc(vp_dense), ece(ece_dense), sources[0]),
      ("ilm_vp", "lt", "ticket", "cifar10"):
          (acc(vp_ticket), ece(ece_ticket), sources[1]),
      ("linear_probe", "dense", "dense", "cifar10"):
          (acc(lp_dense), ece(ece_dense), sources[0]),
      ("linear_probe", "lt", "ticket", "cifar10"):
          (acc(lp_ticket), ece(ece_ticket), sources[1])})


def verdicts(cells, claim, metric="test_acc", selection="best_test"):
  return [c["verdict"] for c in cells if c["claim"] == claim
          and c["metric"] == metric and c["selection"] == selection]


# --------------------------------------------------------------------------
# Claim 1
# --------------------------------------------------------------------------


def test_ticket_better_at_vp_is_not_claim_one(tmp_path):
  cells = claims.cells(sweep(tmp_path, vp_ticket=0.65))
  assert verdicts(cells, "1") == ["not held"]
  (cell,) = [c for c in cells if c["claim"] == "1"
             and c["selection"] == "best_test"]
  assert cell["method"] == "ilm_vp"  # The prompt family only.
  assert cell["diff_mean"] == pytest.approx(-0.05)
  assert claims.overall("1", [cell])[0] == "not held"


def test_equal_accuracy_is_not_claim_one(tmp_path):
  cells = claims.cells(sweep(tmp_path, vp_ticket=0.6))
  assert verdicts(cells, "1") == ["not held"]
  # Zero variance of the differences, mean 0: p = 1.
  (cell,) = [c for c in cells if c["claim"] == "1"
             and c["selection"] == "last"]
  assert cell["p_value"] == 1.0 and cell["ci_low"] == cell["ci_high"] == 0


def test_clearly_worse_over_five_seeds_is_claim_one(tmp_path):
  rows = sweep(tmp_path, vp_ticket=0.5, sources=(76.1, 75.6))
  cells = claims.cells(rows)
  assert verdicts(cells, "1") == ["held"]
  assert verdicts(cells, "1", selection="last") == ["held"]
  cell = next(c for c in cells if c["claim"] == "1")
  assert cell["n_seeds"] == 5 and cell["source_gap_pp"] == pytest.approx(0.5)
  assert claims.overall("1", [cell])[0] == "held"
  # Upstream no longer similar: not the paper's claim.
  cells = claims.cells(rows, claims.Options(similar_source_pp=0.4))
  assert verdicts(cells, "1") == ["not held"]


def test_claim_one_without_source_accuracy_says_so(tmp_path):
  cells = claims.cells(sweep(tmp_path, vp_ticket=0.5))
  one = [c for c in cells if c["claim"] == "1"]
  assert [c["verdict"] for c in one] == ["held", "held"]
  assert all(c["source_gap_pp"] is None for c in one)
  assert claims.overall("1", one)[0] == "held (source similarity not checked)"
  text = open(report.write(tmp_path)["report.md"]).read()
  assert "**held** (source similarity not checked)" in text


def test_noisy_gap_is_not_significant(tmp_path):
  # 2 pp mean gap, seeds disagreeing by far more: not held at alpha 0.05.
  rows = write(tmp_path, {
      ("ilm_vp", "d", "dense", "x"): ([0.6, 0.5, 0.7], [0.1] * 3),
      ("ilm_vp", "t", "ticket", "x"): ([0.5, 0.6, 0.64], [0.1] * 3)})
  cell = next(c for c in claims.cells(rows) if c["claim"] == "1")
  assert cell["diff_mean"] == pytest.approx(0.02)
  assert cell["p_value"] > 0.05 and cell["verdict"] == "not held"


# --------------------------------------------------------------------------
# Claim 2
# --------------------------------------------------------------------------


def test_equal_ece_is_inconclusive(tmp_path):
  cells = claims.cells(sweep(tmp_path, vp_ticket=0.6))
  for metric in claims.CLAIM_TWO_METRICS:
    mine = [c for c in cells if c["claim"] == "2" and c["metric"] == metric]
    assert {c["method"] for c in mine} == {"ilm_vp", "linear_probe"}
    assert {c["verdict"] for c in mine} == {"inconclusive"}
    assert claims.overall("2", mine)[0] == "inconclusive"


def test_dense_better_calibrated_everywhere_is_claim_two(tmp_path):
  cells = claims.cells(sweep(tmp_path, vp_ticket=0.6, ece_ticket=0.09))
  two = [c for c in cells if c["claim"] == "2"]
  assert {c["verdict"] for c in two} == {"held"}
  assert claims.overall("2", two)[0] == "held"


def test_ticket_better_calibrated_in_one_cell_contradicts_claim_two(
    tmp_path):
  # Dense better calibrated on 'a', the ticket clearly better on 'b'.
  acc = list(0.6 + NOISE)
  rows = write(tmp_path, {
      ("linear_probe", "d", "dense", "a"): (acc, list(0.05 + NOISE / 10)),
      ("linear_probe", "t", "ticket", "a"): (acc, list(0.09 + NOISE / 10)),
      ("linear_probe", "d", "dense", "b"): (acc, list(0.09 + NOISE / 10)),
      ("linear_probe", "t", "ticket", "b"): (acc, list(0.05 + NOISE / 10))})
  cells = [c for c in claims.cells(rows) if c["claim"] == "2"
           and c["metric"] == "test_ece" and c["selection"] == "best_test"]
  assert {c["dataset"]: c["verdict"] for c in cells} == {
      "a": "held", "b": "contradicted"}
  verdict, sentence = claims.overall("2", cells)
  assert verdict == "contradicted"
  assert sentence == "1 held, 1 contradicted"
  text = open(report.write(tmp_path)["report.md"]).read()
  assert "**ECE (`test_ece`): contradicted** (1 held, 1 contradicted)" in text


def test_fewer_than_two_paired_seeds_is_not_testable(tmp_path):
  rows = write(tmp_path, {
      ("linear_probe", "d", "dense", "a"): ([0.5, 0.6], [0.1, 0.2]),
      ("linear_probe", "t", "ticket", "a"): ([0.5], [0.2])})
  # The ticket ran seed 0 only.
  cells = claims.cells(rows)
  assert cells and {c["verdict"] for c in cells} == {"not testable"}
  assert all(c["n_seeds"] == 0 and c["p_value"] is None for c in cells)


# --------------------------------------------------------------------------
# Statistics against scipy, Holm as published
# --------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["greater", "less"])
def test_paired_test_equals_scipy(direction):
  rng = np.random.default_rng(0)
  dense, ticket = rng.normal(0.6, 0.05, 7), rng.normal(0.58, 0.05, 7)
  got = statistics.paired(dict(enumerate(dense)), dict(enumerate(ticket)),
                          direction)
  expected = stats.ttest_rel(dense, ticket, alternative=direction)
  opposite = stats.ttest_rel(
      dense, ticket, alternative="less" if direction == "greater"
      else "greater")
  assert got.p_value == pytest.approx(expected.pvalue, rel=1e-10)
  assert got.p_opposite == pytest.approx(opposite.pvalue, rel=1e-10)
  d = dense - ticket
  half = stats.t.ppf(0.975, 6) * np.std(d, ddof=1) / math.sqrt(7)
  assert got.ci_low == pytest.approx(d.mean() - half, rel=1e-10)
  assert got.ci_high == pytest.approx(d.mean() + half, rel=1e-10)
  assert got.diff_mean == pytest.approx(d.mean())
  assert (got.dense_mean, got.ticket_mean) == pytest.approx(
      (dense.mean(), ticket.mean()))


def test_paired_uses_only_the_seeds_both_have():
  got = statistics.paired({0: 0.5, 1: 0.7, 2: 0.9, 7: 0.1},
                          {1: 0.6, 2: 0.6, 0: 0.4, 5: 0.3}, "greater")
  expected = stats.ttest_rel([0.5, 0.7, 0.9], [0.4, 0.6, 0.6],
                             alternative="greater")
  assert got.n == 3 and got.p_value == pytest.approx(expected.pvalue)
  assert statistics.paired({0: 1.0}, {0: 0.5}, "greater") is None


def test_zero_variance_rule():
  # 0.5 - 0.4 and 0.6 - 0.5 differ by float rounding only.
  rounded = statistics.paired({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}, "greater")
  assert (rounded.p_value, rounded.p_opposite) == (0.0, 1.0)
  # Exact binary fractions: the differences are exactly 0.25 twice.
  up = statistics.paired({0: 0.75, 1: 0.625}, {0: 0.5, 1: 0.375}, "greater")
  assert (up.p_value, up.p_opposite) == (0.0, 1.0)
  assert up.ci_low == up.ci_high == 0.25
  down = statistics.paired({0: 0.75, 1: 0.625}, {0: 0.5, 1: 0.375}, "less")
  assert (down.p_value, down.p_opposite) == (1.0, 0.0)


def holm_transcribed(p_values, alpha):
  """Holm (1979) as published: sort ascending; reject H_(i) while p_(i) <=
  alpha / (m - i + 1) (i from 1); stop at the first that is not."""
  order = sorted(range(len(p_values)), key=lambda i: p_values[i])
  rejected = set()
  for rank, i in enumerate(order):
    if p_values[i] > alpha / (len(p_values) - rank):
      break
    rejected.add(i)
  return rejected


def test_holm_hand_computed_and_as_published():
  # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, then
  # 0.04 * 1 = 0.04 raised to the running maximum 0.06.
  assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
      [0.03, 0.06, 0.06, 0.02])
  # None is outside the family (m = 2): 0.2 * 2, then max(0.4, 0.3 * 1).
  assert statistics.holm([0.3, None, 0.2]) == pytest.approx([0.4, None, 0.4])
  assert statistics.holm([0.5, 0.9]) == [1.0, 1.0]  # Capped at 1.
  rng = np.random.default_rng(1)
  for _ in range(50):
    p = list(rng.uniform(0, 0.1, rng.integers(1, 8)))
    adjusted = statistics.holm(p)
    for alpha in (0.01, 0.05, 0.1):
      assert {i for i, a in enumerate(adjusted) if a <= alpha} == (
          holm_transcribed(p, alpha))


# --------------------------------------------------------------------------
# claims.csv recomputed from seeds.csv with scipy
# --------------------------------------------------------------------------


def recompute_claims(directory, alpha=0.05, similar_source_pp=1.0):
  """Checks claims.csv against seeds.csv: the same cells, and each cell's
  numbers and verdict recomputed with scipy (paired t, Holm transcribed).

  Returns:
    claims.csv's rows.
  """
  with open(os.path.join(directory, "seeds.csv")) as f:
    seeds = list(csv.DictReader(f))
  with open(os.path.join(directory, "claims.csv")) as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == claims.COLUMNS if rows else True
  values, kinds, sources, arch = {}, {}, {}, {}
  for s in seeds:
    key = (s["dataset"], s["n_shot"], s["network"], s["method"],
           s["selection"])
    values.setdefault(key, {})[s["seed"]] = s
    kinds[s["network"]], arch[s["network"]] = s["kind"], s["arch"]
    if s["source_top1"]:
      sources[s["network"]] = float(s["source_top1"])
  # Every cell: dense x ticket of one architecture x method x selection.
  expected = set()
  for dataset, n_shot, network, method, selection in values:
    if kinds[network] != "dense":
      continue
    for ticket in {k[2] for k in values if k[:2] == (dataset, n_shot)
                   and kinds[k[2]] == "ticket"}:
      if arch[ticket] != arch[network]:
        continue
      metrics = list(claims.CLAIM_TWO_METRICS)
      if claims.family(method) == "prompt":
        metrics.append("test_acc")
      expected |= {(m, selection, dataset, n_shot, network, ticket, method)
                   for m in metrics}
  assert {(r["metric"], r["selection"], r["dataset"], r["n_shot"],
           r["dense"], r["ticket"], r["method"]) for r in rows} == expected
  families = {}
  for r in rows:
    direction = "greater" if r["claim"] == "1" else "less"
    dense = values[(r["dataset"], r["n_shot"], r["dense"], r["method"],
                    r["selection"])]
    ticket = values[(r["dataset"], r["n_shot"], r["ticket"], r["method"],
                     r["selection"])]
    common = sorted(set(dense) & set(ticket), key=int)
    a = np.array([float(dense[s][r["metric"]]) for s in common])
    b = np.array([float(ticket[s][r["metric"]]) for s in common])
    assert int(r["n_seeds"]) == len(common)
    d = a - b
    # Zero variance up to float rounding, as documented.
    if np.std(d, ddof=1) <= 1e-12 * max(abs(a).max(), abs(b).max()):
      inside = d.mean() > 0 if direction == "greater" else d.mean() < 0
      p = 0.0 if inside else 1.0
      p_opp = 0.0 if (d.mean() != 0 and not inside) else 1.0
      low = high = d.mean()
    else:
      p = stats.ttest_rel(a, b, alternative=direction).pvalue
      p_opp = stats.ttest_rel(a, b, alternative="less" if direction ==
                              "greater" else "greater").pvalue
      half = stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(
          len(d))
      low, high = d.mean() - half, d.mean() + half
    for key, value in (("dense_mean", a.mean()), ("ticket_mean", b.mean()),
                       ("diff_mean", d.mean()), ("ci_low", low),
                       ("ci_high", high), ("p_value", p)):
      assert float(r[key]) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    gap = (sources[r["dense"]] - sources[r["ticket"]]
           if r["dense"] in sources and r["ticket"] in sources else None)
    assert (r["source_gap_pp"] == "") == (gap is None)
    if gap is not None:
      assert float(r["source_gap_pp"]) == pytest.approx(gap)
    families.setdefault((r["claim"], r["metric"], r["selection"],
                         r["method"]), []).append((r, p, p_opp, gap))
  for members in families.values():
    held = holm_transcribed([m[1] for m in members], alpha)
    against = holm_transcribed([m[2] for m in members], alpha)
    for i, (r, _, _, gap) in enumerate(members):
      if r["claim"] == "1":
        similar = gap is None or abs(gap) <= similar_source_pp
        expected_verdict = "held" if i in held and similar else "not held"
      else:
        expected_verdict = ("held" if i in held else "contradicted"
                            if i in against else "inconclusive")
      assert r["verdict"] == expected_verdict, r
  return rows


def test_claims_csv_recomputed_from_seeds_csv(tmp_path):
  acc = lambda mean: list(mean + NOISE)
  cells = {}
  for dataset, vp_ticket, source in (("a", 0.5, 75.8), ("b", 0.59, 74.0),
                                     ("c", 0.62, 75.9)):
    cells[("ilm_vp", "dense", "dense", dataset)] = (
        acc(0.6), list(0.05 + NOISE / 7), 76.1)
    # One ticket per dataset: a network has one source accuracy.
    cells[("ilm_vp", f"lt_{dataset}", "ticket", dataset)] = (
        acc(vp_ticket), list(0.06 + NOISE[::-1] / 9), source)
    cells[("linear_probe", "dense", "dense", dataset)] = (
        acc(0.8), list(0.04 + NOISE / 5), 76.1)
    cells[("linear_probe", f"lt_{dataset}", "ticket", dataset)] = (
        list(0.8 + NOISE[::-1]), list(0.04 + NOISE / 5), source)
  write(tmp_path, cells)
  written = report.write(tmp_path)
  assert {"seeds.csv", "claims.csv"} <= set(written)
  rows = recompute_claims(tmp_path)
  assert {r["verdict"] for r in rows} >= {"held", "not held"}
  # The source gap of 'b' (2.1 pp) keeps it from claim 1.
  one = {r["dataset"]: r["verdict"] for r in rows if r["claim"] == "1"
         and r["selection"] == "best_test"}
  assert one == {"a": "held", "b": "not held", "c": "not held"}
  with open(tmp_path / "seeds.csv") as f:
    header = next(csv.reader(f))
  assert header[:12] == ["dataset", "n_shot", "network", "kind", "method",
                         "seed", "selection", "epoch", "test_acc", "test_ece",
                         "test_ece_adaptive", "test_pytorch_logged_quantity"]
  # Other options, the same recomputation.
  report.write(tmp_path, claims.Options(alpha=0.01, similar_source_pp=3.0))
  recompute_claims(tmp_path, alpha=0.01, similar_source_pp=3.0)


# --------------------------------------------------------------------------
# Why runs are paired by seed
# --------------------------------------------------------------------------


def test_a_seed_gives_dense_and_ticket_the_same_subset_and_order(tmp_path):
  """The few-shot subset and the training order depend only on the seed,
  the dataset and n_shot, never on the network."""
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import smoke_config  # pylint: disable=g-import-not-at-top
  from reprog_jax import methods  # pylint: disable=g-import-not-at-top
  from reprog_jax.model import network as network_lib  # pylint: disable=g-import-not-at-top
  from reprog_jax.model import pruning  # pylint: disable=g-import-not-at-top
  from reprog_jax.train import inputs  # pylint: disable=g-import-not-at-top
  from reprog_jax.train import sharding  # pylint: disable=g-import-not-at-top

  config = smoke_config("linear_probe", seeds=(0, 1, 2),
                        cache_features=False)
  dense = network_lib.random_network("resnet18", seed=0)
  params = jax.device_get(dense.params)
  ticket = network_lib.random_network("resnet18", seed=1).replace(
      masks=pruning.prune(params, jax.device_get(dense.masks),
                          remaining=0.5))
  seeds = (0, 1, 2)
  served = []
  for k, network in enumerate((dense, ticket)):
    run_data = inputs.open_run_data(config, seeds)
    method = methods.build(config, network, run_data.num_classes,
                           config.image_size)
    loaded = inputs.load(run_data, config, seeds=seeds,
                         image_size=config.image_size, method=method,
                         network=network, eval_network=network,
                         layout=sharding.Layout.create(1),
                         workdir=str(tmp_path / str(k)))
    orders = [loaded.train_batches.epoch_order(epoch) for epoch in range(3)]
    # Rows of the decoded store -> positions in the training split.
    served.append([np.where(o >= 0, loaded.train.split_positions[o], -1)
                   for o in orders])
    served[-1].append(run_data.pools)
  for ours, theirs in zip(*served):
    np.testing.assert_array_equal(ours, theirs)
  # Not trivially equal: the seeds draw different subsets.
  pools = served[0][-1]
  assert not np.array_equal(np.sort(pools[0]), np.sort(pools[1]))


def test_a_pair_never_run_with_a_method_has_no_cell(tmp_path):
  # LP ran on the dense network and both tickets; VP on the dense network
  # and one ticket only (as a sweep may run a variant on some networks):
  # the other ticket gets no VP cell at all, not a "not testable" one.
  acc, ece = [0.5, 0.6, 0.7], [0.05, 0.06, 0.07]
  rows = write(tmp_path, {
      ("linear_probe", "dense", "dense", "cifar10"): (acc, ece),
      ("linear_probe", "lt_a", "ticket", "cifar10"): (acc, ece),
      ("linear_probe", "lt_b", "ticket", "cifar10"): (acc, ece),
      ("ilm_vp", "dense", "dense", "cifar10"): (acc, ece),
      ("ilm_vp", "lt_a", "ticket", "cifar10"): (acc, ece)})
  found = {(c["ticket"], c["method"]) for c in claims.cells(rows)
           if c["claim"] == "2" and c["metric"] == "test_ece"}
  assert found == {("lt_a", "linear_probe"), ("lt_b", "linear_probe"),
                   ("lt_a", "ilm_vp")}
