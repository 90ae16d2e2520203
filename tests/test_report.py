"""`reprog_jax.report`: the table equals the summaries at the primary
selection, the claims' cells follow hand-computed differences (claims.csv
rendered), failed cells are marked, figures are written, `--plan` prints
the seeds each claim needs. Verdicts on known truth: tests/test_claims.py;
the statistics: tests/test_statistics.py."""

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from reprog_jax.study import report
from reprog_jax.study import runs

# (network, kind, remaining %, source top-1 %) -> method -> per-seed
# (accuracy, ECE). Hand-chosen so that on cifar10 2-shot: VP differences 10,
# 11 and 9 pp (mean 10, sd 1: claim 1 held); dense LP ECE 0.03 to 0.035
# below the ticket's (held), dense VP ECE as far above (contradicted).
CIFAR = {
    ("dense", "dense", 100.0, 76.1): {
        "linear_probe": [(0.79, 0.04), (0.81, 0.06), (0.80, 0.05)],
        "ilm_vp": [(0.48, 0.09), (0.52, 0.11), (0.50, 0.10)]},
    ("lt8", "ticket", 16.8, 75.9): {
        "linear_probe": [(0.77, 0.07), (0.79, 0.09), (0.78, 0.085)],
        "ilm_vp": [(0.38, 0.06), (0.41, 0.08), (0.41, 0.065)]},
}


def fake_summary(method, network, kind, remaining, dataset, n_shot, values,
                 seeds=None, extra=None, reliability=False, validation=True,
                 source_top1=None):
  """A summary.json as `summary.write` lays it out, with `values` as each
  seed's (accuracy, ECE) at every selection ('validation' unless
  `validation` is False, 'best', 'last'); `extra` adds {metric: per-seed
  values}."""
  seeds = tuple(range(len(values))) if seeds is None else seeds
  per_seed = []
  for k, (seed, (acc, ece)) in enumerate(zip(seeds, values)):
    best = {"epoch": 0, "seed": seed, "test_acc": acc, "test_ece": ece}
    for key, seed_values in (extra or {}).items():
      best[key] = seed_values[k]
    entry = {"seed": seed, "best": best, "last": {**best, "epoch": 1}}
    if validation:
      entry["validation"] = {**best, "epoch": 1}
    if reliability:
      bins = {"lower": [0.0, 0.5], "upper": [0.5, 1.0],
              "count": [k + 1, 3], "accuracy": [0.2, acc],
              "confidence": [0.3, 0.9]}
      entry["reliability"] = entry["validation_reliability"] = bins
    per_seed.append(entry)
  keys = [k for k in per_seed[0]["best"] if k not in ("epoch", "seed")]
  return {
      "method": method, "dataset": dataset, "n_shot": n_shot,
      "seeds": list(seeds),
      "network": {"dir": f"/nets/{network}", "arch": "resnet50",
                  "dense": kind == "dense", "source_top1": source_top1},
      "sparsity": {"global_remaining_percent": remaining,
                   "remaining_percent": remaining - 0.5},
      "per_seed": per_seed,
      "seeds_mean_std": {"best": {
          key: {"mean": float(np.mean([p["best"][key] for p in per_seed])),
                "std": (float(np.std([p["best"][key] for p in per_seed],
                                     ddof=1)) if len(per_seed) > 1
                        else None)}
          for key in keys}},
  }


def write_summary(directory, cell, summary):
  os.makedirs(directory / cell, exist_ok=True)
  (directory / cell / "summary.json").write_text(json.dumps(summary))
  return summary


@pytest.fixture
def sweep_dir(tmp_path):
  summaries = {}
  for (network, kind, remaining, source), by_method in CIFAR.items():
    for method, values in by_method.items():
      cell = f"{method}/{network}/cifar10/2-shot"
      summaries[cell] = write_summary(tmp_path, cell, fake_summary(
          method, network, kind, remaining, "cifar10", 2, values,
          reliability=True, source_top1=source,
          extra={"test_ece_ts": [0.01, 0.03, 0.02],
                 "temperature": [1.5, 2.5, 2.0]}))
  # SVHN, no validation split: the ticket's VP run failed, so claim 1 has
  # no cell there; 2 seeds only.
  for method, network, kind, remaining in (
      ("linear_probe", "dense", "dense", 100.0),
      ("ilm_vp", "dense", "dense", 100.0),
      ("linear_probe", "lt8", "ticket", 16.8)):
    cell = f"{method}/{network}/svhn/full"
    summaries[cell] = write_summary(tmp_path, cell, fake_summary(
        method, network, kind, remaining, "svhn", -1,
        [(0.6, 0.02), (0.7, 0.04)], validation=False))
  failed = tmp_path / "ilm_vp/lt8/svhn/full"
  os.makedirs(failed)
  (failed / "error.txt").write_text(
      "Traceback (most recent call last):\n  File x\nMemoryError: out of "
      "memory on the device\n")
  (failed / "cell.json").write_text(json.dumps(
      {"name": "vp/lt8/svhn/full", "network": "lt8", "kind": "ticket",
       "method": "ilm_vp", "dataset": "svhn", "n_shot": -1, "seeds": [0, 1]}))
  return tmp_path, summaries


def read_csv(path):
  with open(path) as f:
    return {row["cell"]: row for row in csv.DictReader(f)}


def test_csv_numbers_equal_the_summaries(sweep_dir):
  directory, summaries = sweep_dir
  written = report.write(directory)
  rows = read_csv(written["report.csv"])
  assert set(rows) == set(summaries) | {"ilm_vp/lt8/svhn/full"}
  for cell, summary in summaries.items():
    row = rows[cell]
    assert row["status"] == "done"
    assert row["method"] == summary["method"]
    assert row["dataset"] == summary["dataset"]
    assert int(row["n_shot"]) == summary["n_shot"]
    assert row["kind"] == ("dense" if summary["network"]["dense"] else "ticket")
    assert float(row["remaining_percent"]) == (
        summary["sparsity"]["global_remaining_percent"])
    # The primary selection: validation, the last epoch without one.
    selection = "validation" if "validation" in summary["per_seed"][0] else (
        "last")
    assert row["selection"] == selection
    for key in ("test_acc", "test_ece"):
      values = [p[selection][key] for p in summary["per_seed"]]
      assert float(row[f"{key}_mean"]) == pytest.approx(np.mean(values))
      assert float(row[f"{key}_std"]) == pytest.approx(
          np.std(values, ddof=1))
    # Metrics a summary lacks stay empty.
    assert row["test_ece_adaptive_mean"] == ""
  # Hand-computed: mean and sample std (ddof=1) of (0.79, 0.81, 0.80).
  lp = rows["linear_probe/dense/cifar10/2-shot"]
  assert float(lp["test_acc_mean"]) == pytest.approx(0.80)
  assert float(lp["test_acc_std"]) == pytest.approx(0.01)
  failed = rows["ilm_vp/lt8/svhn/full"]
  assert failed["status"] == "failed" and failed["test_acc_mean"] == ""
  assert failed["error"] == "MemoryError: out of memory on the device"


def test_claims_section_renders_claims_csv(sweep_dir):
  directory, _ = sweep_dir
  written = report.write(directory)
  with open(written["claims.csv"]) as f:
    rows = [r for r in csv.DictReader(f) if r["analysis"] == "primary"]
  # cifar10, 3 paired seeds; svhn has no source accuracies.
  one = {r["dataset"]: r for r in rows if r["claim"] == "1"}
  assert one["svhn"]["verdict"] == "not applicable"  # No source accuracy.
  cifar = one["cifar10"]
  # Hand-computed: VP differences 10, 11, 9 pp: mean 10, sd 1, t = 10
  # sqrt(3), interval 10 -+ t_(0.975, 2) / sqrt(3) = 10 -+ 2.4841.
  assert float(cifar["diff_mean"]) == pytest.approx(10.0)
  assert float(cifar["diff_sd"]) == pytest.approx(1.0)
  assert float(cifar["ci_low"]) == pytest.approx(10 - 2.4841, abs=1e-4)
  assert float(cifar["p_value"]) == pytest.approx(
      stats.t.sf(10 * math.sqrt(3), 2))
  assert cifar["verdict"] == "held" and cifar["family_size"] == "1"
  assert cifar["source_gap_pp"] != "" and cifar["units"] == "pp"
  text = open(written["report.md"]).read()
  assert ("| cifar10 | 2-shot | lt8 | 16.80 | dense | VP | 3 (3, 3) | 50.00 "
          "| 40.00 | 10.00 [7.52, 12.48] | 0.20 | 0.00166 | 0.00166 | 0.998 | "
          "0.125 |") in text
  assert ("**Claim 1: tickets are not universal reprogrammers: held** (1 "
          "held, 1 not applicable)") in text
  assert "### The VP gap exceeds the LP gap (not claim 1)" in text
  two = {(r["dataset"], r["method"]): r["verdict"] for r in rows
         if r["claim"] == "2"}
  assert two[("cifar10", "linear_probe")] == "held"
  assert two[("cifar10", "ilm_vp")] == "contradicted"
  # svhn: 2 seeds of LP; the ticket's VP run failed.
  assert two[("svhn", "linear_probe")] == two[("svhn", "ilm_vp")] == (
      "not testable")
  assert "**Claim 2: dense networks are always better calibrated: " \
         "contradicted** (1 held, 1 contradicted, 2 not testable)" in text
  assert "**FAILED** `ilm_vp/lt8/svhn/full`: MemoryError" in text
  assert "mean ± sample standard deviation (ddof=1)" in text
  with open(written["analyses.csv"]) as f:
    analyses = list(csv.DictReader(f))
  assert sum(a["analysis"] == "primary" for a in analyses) == 2


def test_figures_are_pngs_and_reliability_needs_bins(sweep_dir):
  directory, _ = sweep_dir
  written = report.write(directory)
  names = {n for n in written if n.endswith(".png")}
  assert names == {"figures/accuracy_vs_remaining.png",
                   "figures/ece_vs_remaining.png",
                   "figures/accuracy_vs_n_shot.png",
                   # Only cifar10's summaries have bins.
                   "figures/reliability_cifar10_2-shot.png"}
  for name in names:
    with Image.open(written[name]) as image:
      assert image.format == "PNG" and min(image.size) >= 300
  assert not [n for n in os.listdir(directory / "figures") if ".tmp" in n]
  text = open(written["report.md"]).read()
  assert "![figures/ece_vs_remaining.png](figures/ece_vs_remaining.png)" in text
  assert "![claims.csv]" not in text
  # Temperature scaling's numbers are in the table where present.
  assert "| ECE after TS |" in text and "| adaptive ECE |" not in text


def test_pooled_reliability_bins():
  bins = runs.pooled_bins([
      {"lower": [0, .5], "upper": [.5, 1], "count": [1, 3],
       "accuracy": [0.0, 1.0], "confidence": [0.2, 0.8]},
      {"lower": [0, .5], "upper": [.5, 1], "count": [3, 0],
       "accuracy": [1.0, 0.0], "confidence": [0.4, 0.0]}])
  assert bins["count"] == [4, 3]
  assert bins["accuracy"] == pytest.approx([0.75, 1.0])
  assert bins["confidence"] == pytest.approx([0.35, 0.8])


def test_no_summaries_is_one_line_error(tmp_path, capsys):
  (tmp_path / "cell").mkdir()
  (tmp_path / "cell" / "error.txt").write_text("ValueError: bad\n")
  with pytest.raises(report.ReportError, match="no summary.json under it"):
    report.write(tmp_path)
  assert report.main([str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.startswith("reprog_jax.report: error: ") and err.count("\n") == 1
  assert "1 failed cell" in err
  assert not (tmp_path / "report.md").exists()
  assert report.main([str(tmp_path / "nowhere")]) == 1


def test_cli_writes_the_report(sweep_dir, capsys):
  directory, _ = sweep_dir
  assert report.main([str(directory), "--alpha", "0.01",
                      "--similar-source-pp", "2"]) == 0
  assert "report.md" in capsys.readouterr().out
  for name in ("report.md", "report.csv", "seeds.csv", "claims.csv",
               "analyses.csv"):
    assert (directory / name).exists()
  text = (directory / "report.md").read_text()
  assert "alpha = 0.01" in text
  assert ("declared in `the defaults, with --alpha 0.01 and "
          "--similar-source-pp 2`") in text


def test_an_unreadable_study_json_is_one_line(sweep_dir, capsys):
  directory, _ = sweep_dir
  (directory / "study.json").write_text("{not json")
  assert report.main([str(directory)]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "study.json: unreadable" in err
  assert not (directory / "report.md").exists()


@pytest.mark.parametrize("flags", [["--alpha", "2"], ["--alpha", "x"],
                                   ["--similar-source-pp", "-1"],
                                   ["--plan", "x"], ["--plan", "0"],
                                   ["--plan", "1,2,3"], ["--plan", "1,-2"]])
def test_bad_report_flags_are_one_line(sweep_dir, capsys, flags):
  directory, _ = sweep_dir
  with pytest.raises(SystemExit) as exit_info:
    report.main([str(directory), *flags])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "error: argument" in err


# --------------------------------------------------------------------------
# --plan
# --------------------------------------------------------------------------


def seeds_by_scan(effect, sd, alpha, target=0.8):
  """The fewest seeds (from 3) with `target` power, counted up one by
  one."""
  n = 3
  while stats.nct.sf(stats.t.isf(alpha, n - 1), n - 1,
                     effect * math.sqrt(n) / sd) < target:
    n += 1
  return n


def test_plan_prints_the_seeds_each_claim_needs(sweep_dir, capsys):
  directory, _ = sweep_dir
  assert report.main([str(directory), "--plan", "2,0.005"]) == 0
  out = capsys.readouterr().out
  assert not (directory / "report.md").exists()  # --plan writes nothing.
  # Claim 1: cifar10's cell, sd 1 pp, and svhn's (its ticket's run
  # failed; no source accuracy yet, which a study can still record).
  assert "family of 2 cell(s): level alpha / 2 = 0.025 each" in out
  assert (f"cifar10 2-shot lt8 VP: sd 1 pp over 3 seeds -> "
          f"{seeds_by_scan(2.0, 1.0, 0.025)} seeds") in out
  assert "(1 cell(s) lack a network's source accuracy" in out
  # Claim 2: 4 cells found (svhn's two not testable), no study.json: 4
  # planned; each cell at 0.05, and at 0.8^(1/4) for all four together.
  lp = np.array([0.04, 0.06, 0.05]) - np.array([0.07, 0.09, 0.085])
  sd = float(np.std(lp, ddof=1))
  joint = 0.8 ** (1 / 4)
  assert f"each needs power {joint:.3f}" in out
  assert (f"cifar10 2-shot lt8 LP: sd {sd:.3g} over 3 seeds -> "
          f"{seeds_by_scan(0.005, sd, 0.05)} seeds per cell, "
          f"{seeds_by_scan(0.005, sd, 0.05, joint)} seeds for all cells") in out


def test_plan_without_a_spread_is_one_line(tmp_path, capsys):
  for network, kind in (("dense", "dense"), ("lt", "ticket")):
    write_summary(tmp_path, f"ilm_vp/{network}/x", fake_summary(
        "ilm_vp", network, kind, 100.0, "x", 2, [(0.5, 0.1)]))
  assert report.main([str(tmp_path), "--plan", "1"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no spread to plan from" in err
