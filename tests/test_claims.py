"""The claims' verdicts on sweeps with known truth (summary.json files
written directly, no training), each recomputed independently from
seeds.csv and study.json (`recompute_verdicts`)."""

import json
import math
import os

import numpy as np
import pytest

from reprog_jax import methods
from reprog_jax.study import claims
from reprog_jax.study import report
from recompute_verdicts import recompute

SEEDS = tuple(range(8))
# Per-seed noise shared by dense and ticket (same seed, same subset) and a
# smaller per-network one: the paired differences vary a little.
NOISE = np.array([0.00, 0.03, -0.02, 0.01, -0.03, 0.02, -0.01, 0.015])
JITTER = np.array([0.004, -0.003, 0.001, -0.002, 0.003, -0.004, 0.002, 0.0])


def summary(method, network, kind, dataset, n_shot, acc, ece,
            source_top1=None, validation=True, config=None, module=None):
  """A summary.json as `summary.write` lays it out: per seed (the first
  len(acc) of SEEDS) a 'validation', 'best' and 'last' record with the
  given accuracies and ECEs (lists, one per seed)."""
  seeds = SEEDS[:len(acc)]
  per_seed = []
  for k, seed in enumerate(seeds):
    record = {"epoch": 3, "seed": seed, "test_acc": acc[k],
              "test_ece": ece[k], "test_ece_adaptive": ece[k],
              "test_pytorch_logged_quantity": 2 * ece[k]}
    entry = {"seed": seed, "best": record, "last": {**record, "epoch": 4}}
    if validation:
      entry["validation"] = {**record, "epoch": 2}
    per_seed.append(entry)
  network_meta = {"dir": f"/nonexistent/{network}", "arch": "resnet18",
                  "dense": kind == "dense", "source_top1": source_top1}
  result = {"method": method, "dataset": dataset, "n_shot": n_shot,
            "seeds": list(seeds), "network": network_meta,
            "sparsity": {"global_remaining_percent":
                             100.0 if kind == "dense" else 20.0,
                         "remaining_percent":
                             100.0 if kind == "dense" else 19.0},
            "per_seed": per_seed, "config": config or {}}
  if module:
    result["method_module"] = module
  return result


def write(directory, cells, **kwargs):
  """cells: {(method, network, kind, dataset): (acc list, ece list[,
  source_top1])}; writes each as a 10-shot run under
  <method>/<network>/<dataset>."""
  for (method, network, kind, dataset), values in cells.items():
    path = directory / method / network / dataset
    os.makedirs(path, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(
        summary(method, network, kind, dataset, 10, *values, **kwargs)))


def write_study(directory, runs, **analysis):
  """A study.json planning `runs` [(method, network, kind, dataset)] (as
  `write` lays them out), with `analysis` fields."""
  study = {"networks": {}, "methods": [], "datasets": [], "n_shots": [10],
           "seeds": list(SEEDS), **analysis}
  (directory / "study.json").write_text(json.dumps({
      "study": study, "cells": [f"{m}/{n}/{d}" for m, n, _, d in runs],
      "runs": [{"cell": f"{m}/{n}/{d}", "method": m, "variant": "",
                "network": n, "kind": k, "dataset": d, "n_shot": 10}
               for m, n, k, d in runs]}))


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
  """The claims need no figures (test_report.py tests them): seconds
  saved per test."""
  monkeypatch.setattr(report.figures, "figures", lambda *a, **k: {})


def acc(mean, n=8, jitter=0.0):
  return list(mean + NOISE[:n] + jitter * JITTER[:n])


def ece(mean, n=8, jitter=0.0):
  return list(mean + NOISE[:n] / 10 + jitter * JITTER[:n] / 10)


def analysed(directory):
  report.write(directory)
  recompute(directory)  # Every number and word, independently.
  return report.analyse(directory, warn=False)


def cell_of(result, claim, dataset=None, method=None):
  _, _, cells = result.primary(claim)
  return [c for c in cells if dataset in (None, c["dataset"])
          and method in (None, c["method"])]


# --------------------------------------------------------------------------
# Claim 1, known truth
# --------------------------------------------------------------------------


def three_datasets(tmp_path, ticket_a, sources=(76.1, 75.8), n=8):
  """VP on datasets a, b, c: the ticket at `ticket_a` on a, level with the
  dense network (0.6) elsewhere; per-network jitter keeps a spread."""
  cells = {}
  for dataset, ticket in (("a", ticket_a), ("b", 0.6), ("c", 0.6)):
    cells[("ilm_vp", "dense", "dense", dataset)] = (
        acc(0.6, n), ece(0.05, n), sources[0])
    cells[("ilm_vp", "lt", "ticket", dataset)] = (
        acc(ticket, n, jitter=1.0), ece(0.05, n, jitter=1.0), sources[1])
  write(tmp_path, cells)


def test_ticket_clearly_worse_in_one_dataset_over_8_seeds_holds_claim_one(
    tmp_path):
  three_datasets(tmp_path, ticket_a=0.5)
  result = analysed(tmp_path)
  verdicts = {c["dataset"]: c["verdict"] for c in cell_of(result, "1")}
  assert verdicts == {"a": "held", "b": "inconclusive", "c": "inconclusive"}
  _, overall, cells = result.primary("1")
  assert overall["verdict"] == "held" and overall["family_size"] == 3
  a = next(c for c in cells if c["dataset"] == "a")
  assert a["n_seeds"] == 8 and a["units"] == "pp"
  assert a["diff_mean"] == pytest.approx(10.0 - 100 * np.mean(JITTER),
                                         rel=1e-9)
  assert a["selection"] == "validation" and a["analysis"] == "primary"


def test_ticket_better_is_reversed_and_claim_one_not_shown(tmp_path):
  three_datasets(tmp_path, ticket_a=0.7)
  result = analysed(tmp_path)
  verdicts = {c["dataset"]: c["verdict"] for c in cell_of(result, "1")}
  assert verdicts["a"] == "reversed"
  _, overall, _ = result.primary("1")
  assert overall["verdict"] == "not shown"
  assert overall["reversed"] == 1 and overall["inconclusive"] == 2
  text = (tmp_path / "report.md").read_text()
  assert ("**Claim 1: tickets are not universal reprogrammers: not shown** "
          "(1 reversed, 2 inconclusive)") in text


def test_source_gap_of_two_pp_is_not_applicable(tmp_path):
  three_datasets(tmp_path, ticket_a=0.5, sources=(76.0, 74.0))
  result = analysed(tmp_path)
  cells = cell_of(result, "1")
  assert {c["verdict"] for c in cells} == {"not applicable"}
  assert all(c["p_value"] is None and c["family_size"] == 0 for c in cells)
  assert cells[0]["note"] == "source gap 2.00 pp > 1"
  # Shown, with its numbers, never tested.
  assert cells[0]["diff_mean"] is not None
  assert result.primary("1")[1]["verdict"] == "not shown"


@pytest.mark.parametrize("ticket_source, applicable", [
    (74.004, True), (73.994, False)])
def test_source_gap_is_compared_after_rounding_to_a_hundredth(
    tmp_path, ticket_source, applicable):
  # 76 - 74.004 = 1.996 -> 2.00 <= 2; 76 - 73.994 = 2.006 -> 2.01 > 2.
  three_datasets(tmp_path, ticket_a=0.5, sources=(76.0, ticket_source))
  (tmp_path / "study.json").write_text(json.dumps({
      "study": {"similar_source_pp": 2.0}, "cells": [], "runs": []}))
  result = report.analyse(tmp_path, warn=False)
  verdict = cell_of(result, "1", "a")[0]["verdict"]
  assert (verdict == "held") == applicable
  assert (verdict == "not applicable") == (not applicable)


def test_unknown_source_accuracy_is_not_applicable(tmp_path):
  three_datasets(tmp_path, ticket_a=0.5, sources=(76.1, None))
  result = analysed(tmp_path)
  assert {c["note"] for c in cell_of(result, "1")} == {
      "source accuracy of a network unknown"}


def test_two_seeds_are_not_testable(tmp_path):
  three_datasets(tmp_path, ticket_a=0.5, n=2)
  write(tmp_path, {("linear_probe", "dense", "dense", "a"):
                   (acc(0.8, 2), ece(0.04, 2), 76.1),
                   ("linear_probe", "lt", "ticket", "a"):
                   (acc(0.8, 2), ece(0.09, 2), 75.8)})
  result = analysed(tmp_path)
  for claim in ("1", "2"):
    cells = cell_of(result, claim)
    assert cells and {c["verdict"] for c in cells} == {"not testable"}
    assert all(c["p_value"] is None and c["n_seeds"] == 2 for c in cells)
    assert cells[0]["note"] == "2 paired seed(s), 3 needed"
  assert result.primary("1")[1]["verdict"] == "not shown"
  assert result.primary("2")[1]["verdict"] == "inconclusive"
  # The spread of 2 seeds still says how small an effect they could show.
  assert all(c["mde_80"] > 0 for c in cell_of(result, "1"))


def test_zero_variance_over_three_seeds_is_sign_flip_not_held(tmp_path):
  # Exactly 10 pp in every seed (binary fractions: no rounding): the t
  # statistic is undefined; the sign-flip p is 1/8.
  write(tmp_path, {("ilm_vp", "dense", "dense", "a"):
                   ([0.75, 0.625, 0.5], [0.1] * 3, 76.0),
                   ("ilm_vp", "lt", "ticket", "a"):
                   ([0.65, 0.525, 0.4], [0.1] * 3, 76.0)})
  result = analysed(tmp_path)
  (cell,) = cell_of(result, "1")
  assert cell["diff_mean"] == pytest.approx(10.0) and cell["diff_sd"] == 0
  assert cell["p_value"] == cell["p_signflip"] == 0.125
  assert cell["ci_low"] == cell["ci_high"] == cell["diff_mean"]
  assert cell["verdict"] == "inconclusive"
  assert "zero variance" in cell["note"]
  assert cell["mde_80"] is None


def test_a_nan_metric_is_not_testable(tmp_path):
  eces = ece(0.09)
  eces[3] = math.nan
  write(tmp_path, {
      ("linear_probe", "dense", "dense", "a"): (acc(0.8), ece(0.04), 76.0),
      ("linear_probe", "lt", "ticket", "a"): (acc(0.8, jitter=1.0), eces,
                                              76.0)})
  result = analysed(tmp_path)
  (cell,) = cell_of(result, "2")
  assert cell["verdict"] == "not testable"
  assert cell["note"] == "a NaN or infinite value"
  assert cell["p_value"] is None and cell["mde_80"] is None


# --------------------------------------------------------------------------
# Claim 2, known truth
# --------------------------------------------------------------------------


def calibration_sweep(tmp_path, ticket_ece, drop=None):
  """LP and VP on datasets a and b, one ticket; the dense ECE 0.04, the
  ticket's `ticket_ece[dataset]`; `drop`: a run never written."""
  cells, runs = {}, []
  for dataset in ("a", "b"):
    for method in ("linear_probe", "ilm_vp"):
      for network, kind, mean in (("dense", "dense", 0.04),
                                  ("lt", "ticket", ticket_ece[dataset])):
        runs.append((method, network, kind, dataset))
        if (method, network, kind, dataset) != drop:
          cells[runs[-1]] = (acc(0.6), ece(mean, jitter=float(
              kind == "ticket")), 76.0)
  write(tmp_path, cells)
  return runs


def test_dense_better_calibrated_in_every_planned_cell_holds_claim_two(
    tmp_path):
  runs = calibration_sweep(tmp_path, {"a": 0.09, "b": 0.08})
  write_study(tmp_path, runs)
  result = analysed(tmp_path)
  assert {c["verdict"] for c in cell_of(result, "2")} == {"held"}
  _, overall, cells = result.primary("2")
  assert len(cells) == 4 and overall["verdict"] == "held"
  assert overall["missing"] == 0
  # Claim 2's held test is each cell's own: no Holm for it.
  assert all(c["p_adjusted"] is None for c in cells)


def test_claim_two_with_a_planned_cell_missing_is_inconclusive(tmp_path):
  runs = calibration_sweep(tmp_path, {"a": 0.09, "b": 0.08},
                           drop=("ilm_vp", "lt", "ticket", "b"))
  write_study(tmp_path, runs)
  result = analysed(tmp_path)
  _, overall, cells = result.primary("2")
  assert [c["verdict"] for c in cells] == ["held"] * 3
  assert overall["verdict"] == "inconclusive" and overall["missing"] == 1
  text = (tmp_path / "report.md").read_text()
  assert ("**Claim 2: dense networks are always better calibrated: "
          "inconclusive** (3 held, 1 planned but missing)") in text
  # Without a plan the cells found are the plan, and the report says so.
  os.remove(tmp_path / "study.json")
  result = analysed(tmp_path)
  assert result.primary("2")[1]["verdict"] == "held"
  assert "No study.json here: the planned cells are the ones found." in (
      tmp_path / "report.md").read_text()


def test_ticket_better_calibrated_in_one_cell_contradicts_claim_two(
    tmp_path):
  calibration_sweep(tmp_path, {"a": 0.09, "b": 0.0})
  result = analysed(tmp_path)
  verdicts = {(c["dataset"], c["method"]): c["verdict"]
              for c in cell_of(result, "2")}
  assert verdicts[("a", "linear_probe")] == "held"
  assert verdicts[("b", "linear_probe")] == "contradicted"
  assert result.primary("2")[1]["verdict"] == "contradicted"


def test_consistent_direction_without_a_significant_cell(tmp_path):
  # Every cell leans the way claim 2 predicts, none significant with 3
  # noisy seeds; pooled over 6 cells the direction shows.
  rng = np.random.default_rng(3)
  cells = {}
  for dataset in "abcdef":
    dense = 0.05 + rng.normal(0, 0.01, 3)
    cells[("linear_probe", "dense", "dense", dataset)] = (
        [0.6] * 3, list(dense), 76.0)
    cells[("linear_probe", "lt", "ticket", dataset)] = (
        [0.6] * 3, list(dense + 0.006 + rng.normal(0, 0.006, 3)), 76.0)
  write(tmp_path, cells)
  result = analysed(tmp_path)
  _, overall, _ = result.primary("2")
  assert overall["verdict"] == "inconclusive" and overall["held"] < 6
  assert overall["along"] >= 5
  assert overall["direction"] == ("consistent in direction, not shown cell "
                                  "by cell")
  assert overall["pooled_ci_high"] < 0


# --------------------------------------------------------------------------
# Analyses: primary and sensitivity, hybrids, what cannot be had
# --------------------------------------------------------------------------


def test_primary_first_and_disagreeing_sensitivity_named(tmp_path):
  # Validation: the ticket level with the dense network; the last epoch
  # (a sensitivity analysis): clearly worse.
  three_datasets(tmp_path, ticket_a=0.5)
  for path in tmp_path.rglob("summary.json"):
    s = json.loads(path.read_text())
    if s["network"]["dense"] or "/a/" not in str(path):
      continue
    for p in s["per_seed"]:
      p["validation"]["test_acc"] += 0.1
    path.write_text(json.dumps(s))
  result = analysed(tmp_path)
  assert result.primary("1")[1]["verdict"] == "not shown"
  text = (tmp_path / "report.md").read_text()
  assert text.index("## Primary analysis") < text.index(
      "## Sensitivity analyses")
  assert ("Where a sensitivity analysis disagrees with the primary one (2 "
          "of ") in text
  assert "claim 1, VP, `last`, accuracy: **held**" in text
  assert "claim 1, VP, `best_test`, accuracy: **held**" in text


def test_validation_falls_back_to_the_last_epoch(tmp_path):
  three_datasets(tmp_path, ticket_a=0.5)
  write(tmp_path, {("ilm_vp", "lt", "ticket", "a"):
                   (acc(0.5, jitter=1.0), ece(0.05), 75.8)},
        validation=False)
  result = analysed(tmp_path)
  a = cell_of(result, "1", "a")[0]
  assert a["selection"] == "validation"
  assert a["note"] == "last epoch: no validation split"
  assert cell_of(result, "1", "b")[0]["note"] == ""


def test_hybrids_have_tables_of_their_own(tmp_path):
  # VP+LP: a prompt with a new head on pooled features; its family comes
  # from its parts.
  assert methods.get("vp_lp").family == "hybrid"
  three_datasets(tmp_path, ticket_a=0.5)
  write(tmp_path, {("vp_lp", "dense", "dense", "a"):
                   (acc(0.7), ece(0.05), 76.1),
                   ("vp_lp", "lt", "ticket", "a"):
                   (acc(0.6, jitter=1.0), ece(0.09, jitter=1.0), 75.8)})
  result = analysed(tmp_path)
  for claim in ("1", "2"):
    assert "vp_lp" not in {c["method"] for c in cell_of(result, claim)}
  mine = {(c["claim"], c["metric"], c["selection"]): c["verdict"]
          for c in result.cells if c["method"] == "vp_lp"}
  assert mine[("hybrid", "test_acc", "validation")] == "held"
  assert mine[("hybrid", "test_ece", "validation")] == "held"
  assert all(c["analysis"] == "sensitivity" for c in result.cells
             if c["method"] == "vp_lp")
  text = (tmp_path / "report.md").read_text()
  assert "### Hybrid methods (not a claim of the paper)" in text
  assert "**VP+LP, accuracy: held**" in text


def test_a_method_not_registered_here_warns_in_one_line(tmp_path, capsys):
  three_datasets(tmp_path, ticket_a=0.5)
  write(tmp_path, {("mystery", "dense", "dense", "a"):
                   (acc(0.7), ece(0.05), 76.1),
                   ("mystery", "lt", "ticket", "a"):
                   (acc(0.6), ece(0.09), 75.8)}, module="no_such_plugin")
  assert report.main([str(tmp_path)]) == 0
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert ("reprog_jax.report: warning: method 'mystery' (module "
          "'no_such_plugin', as its runs recorded) is not registered here: "
          "its 2 run(s) stay in the main table") in err
  assert "REPROG_JAX_METHODS=no_such_plugin" in err
  text = (tmp_path / "report.md").read_text()
  assert "| mystery | dense |" in text and "`mystery`" in text
  rows, _ = recompute(tmp_path)
  assert "mystery" not in {r["method"] for r in rows}


def test_a_source_accuracy_given_as_a_fraction_is_set_aside(tmp_path,
                                                            capsys):
  three_datasets(tmp_path, ticket_a=0.5, sources=(0.761, 75.8))
  assert report.main([str(tmp_path)]) == 0
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "network dense: source_top1 0.761 in its summary.json looks like " \
         "a fraction" in err
  result = report.analyse(tmp_path, warn=False)
  assert {c["verdict"] for c in cell_of(result, "1")} == {"not applicable"}


def test_best_test_among_tested_epochs_is_named_so(tmp_path):
  three_datasets(tmp_path, ticket_a=0.5)
  write(tmp_path, {("ilm_vp", "lt", "ticket", "a"):
                   (acc(0.5, jitter=1.0), ece(0.05), 75.8)},
        config={"test_every": 0})
  report.write(tmp_path)
  text = (tmp_path / "report.md").read_text()
  assert "best test accuracy among the epochs tested" in text
  rows, _ = recompute(tmp_path)
  assert "best_test" in {r["selection"] for r in rows}


def test_declared_analysis_is_read_from_study_json(tmp_path):
  runs = calibration_sweep(tmp_path, {"a": 0.09, "b": 0.08})
  write_study(tmp_path, runs, alpha=0.01, power_effect={"test_ece": 0.02},
              primary={"selection": "last", "quantity": "test_nll"})
  result = report.analyse(tmp_path, warn=False)
  assert result.options.alpha == 0.01
  assert result.options.power_effect["test_ece"] == 0.02
  assert result.options.power_effect["test_acc"] == 1.0  # The default.
  analysis, _, _ = result.primary("2")
  assert (analysis.selection, analysis.metric) == ("last", "test_nll")
  # A flag overrides it, and the report says so.
  result = report.analyse(tmp_path, claims.Options(alpha=0.2), warn=False)
  assert result.options.alpha == 0.2


def test_claims_csv_has_every_column_in_percentage_points(tmp_path):
  three_datasets(tmp_path, ticket_a=0.5)
  report.write(tmp_path)
  rows, summaries = recompute(tmp_path)
  assert tuple(rows[0]) == claims.COLUMNS
  for name in ("analysis", "family_size", "p_opposite",
               "p_opposite_adjusted", "p_signflip", "n_dense", "n_ticket",
               "units", "mde_80", "seeds_needed"):
    assert name in rows[0]
  one = [r for r in rows if r["claim"] == "1" and r["dataset"] == "a"
         and r["analysis"] == "primary"][0]
  assert one["units"] == "pp"
  assert 9 < float(one["diff_mean"]) < 11 and 55 < float(
      one["dense_mean"]) < 65
  assert {s["analysis"] for s in summaries} == {"primary", "sensitivity"}


# --------------------------------------------------------------------------
# Why runs are paired by seed, and which pairs are cells
# --------------------------------------------------------------------------


def test_a_seed_gives_dense_and_ticket_the_same_subset_and_order(tmp_path):
  """The few-shot subset and the training order depend only on the seed,
  the dataset and n_shot, never on the network."""
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import smoke_config  # pylint: disable=g-import-not-at-top
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
  runs = {}
  for method, network, kind in (
      ("linear_probe", "dense", "dense"), ("linear_probe", "lt_a", "ticket"),
      ("linear_probe", "lt_b", "ticket"), ("ilm_vp", "dense", "dense"),
      ("ilm_vp", "lt_a", "ticket")):
    runs[(method, network, kind, "cifar10")] = (acc(0.6, 3), ece(0.05, 3),
                                                76.0)
  write(tmp_path, runs)
  result = report.analyse(tmp_path, warn=False)
  found = {(c["ticket"], c["method"]) for c in cell_of(result, "2")}
  assert found == {("lt_a", "linear_probe"), ("lt_b", "linear_probe"),
                   ("lt_a", "ilm_vp")}
