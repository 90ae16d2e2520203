"""`reprog_jax.report`: the table equals the summaries, the claims' verdicts
follow hand-computed differences (claims.csv rendered), failed cells are
marked, figures are written. Verdicts on known truth: tests/test_claims.py."""

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from reprog_jax.study import claims
from reprog_jax.study import report

# (network, kind, remaining %) -> method -> per-seed (accuracy, ECE).
# Hand-chosen so that on cifar10 2-shot: LP gap 2 pp, VP gap 10 pp (claim 1
# held, margin 8 pp); dense LP ECE 0.05 < ticket's 0.08 but dense VP ECE
# 0.10 > ticket's 0.07 (claim 2 not held).
CIFAR = {
    ("dense", "dense", 100.0): {"linear_probe": [(0.79, 0.04), (0.81, 0.06)],
                                "ilm_vp": [(0.48, 0.09), (0.52, 0.11)]},
    ("lt8", "ticket", 16.8): {"linear_probe": [(0.77, 0.07), (0.79, 0.09)],
                              "ilm_vp": [(0.38, 0.06), (0.42, 0.08)]},
}


def fake_summary(method, network, kind, remaining, dataset, n_shot, values,
                 seeds=(0, 1), extra=None, reliability=False):
  """A summary.json as `summary.write` lays it out, with `values` as each
  seed's best (accuracy, ECE); `extra` adds {metric: per-seed values}."""
  per_seed = []
  for k, (seed, (acc, ece)) in enumerate(zip(seeds, values)):
    best = {"epoch": 0, "seed": seed, "test_acc": acc, "test_ece": ece}
    for key, seed_values in (extra or {}).items():
      best[key] = seed_values[k]
    entry = {"seed": seed, "best": best}
    if reliability:
      entry["reliability"] = {"lower": [0.0, 0.5], "upper": [0.5, 1.0],
                              "count": [k + 1, 3], "accuracy": [0.2, acc],
                              "confidence": [0.3, 0.9]}
    per_seed.append(entry)
  keys = [k for k in per_seed[0]["best"] if k not in ("epoch", "seed")]
  return {
      "method": method, "dataset": dataset, "n_shot": n_shot,
      "seeds": list(seeds),
      "network": {"dir": f"/nets/{network}", "arch": "resnet50",
                  "dense": kind == "dense"},
      "sparsity": {"global_remaining_percent": remaining,
                   "remaining_percent": remaining - 0.5},
      "per_seed": per_seed,
      "seeds_mean_std": {"best": {
          key: {"mean": float(np.mean([p["best"][key] for p in per_seed])),
                "std": float(np.std([p["best"][key] for p in per_seed],
                                    ddof=1))}
          for key in keys}},
  }


def write_summary(directory, cell, summary):
  os.makedirs(directory / cell, exist_ok=True)
  (directory / cell / "summary.json").write_text(json.dumps(summary))
  return summary


@pytest.fixture
def sweep_dir(tmp_path):
  summaries = {}
  for (network, kind, remaining), by_method in CIFAR.items():
    for method, values in by_method.items():
      cell = f"{method}/{network}/cifar10/2-shot"
      summaries[cell] = write_summary(tmp_path, cell, fake_summary(
          method, network, kind, remaining, "cifar10", 2, values,
          reliability=True,
          extra={"test_ece_ts": [0.01, 0.03], "temperature": [1.5, 2.5]}))
  # SVHN: the ticket's VP run failed, so claim 1 is not testable there.
  for method, network, kind, remaining in (
      ("linear_probe", "dense", "dense", 100.0),
      ("ilm_vp", "dense", "dense", 100.0),
      ("linear_probe", "lt8", "ticket", 16.8)):
    cell = f"{method}/{network}/svhn/full"
    summaries[cell] = write_summary(tmp_path, cell, fake_summary(
        method, network, kind, remaining, "svhn", -1,
        [(0.6, 0.02), (0.7, 0.04)]))
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
    for key, stat in summary["seeds_mean_std"]["best"].items():
      assert float(row[f"{key}_mean"]) == stat["mean"], (cell, key)
      assert float(row[f"{key}_std"]) == stat["std"], (cell, key)
    # Metrics a summary lacks stay empty.
    assert row["test_ece_adaptive_mean"] == ""
  # Hand-computed: mean and sample std (ddof=1) of (0.79, 0.81).
  assert float(rows["linear_probe/dense/cifar10/2-shot"]["test_acc_mean"]) == (
      pytest.approx(0.80))
  assert float(rows["linear_probe/dense/cifar10/2-shot"]["test_acc_std"]) == (
      pytest.approx(0.01 * math.sqrt(2)))
  failed = rows["ilm_vp/lt8/svhn/full"]
  assert failed["status"] == "failed" and failed["test_acc_mean"] == ""
  assert failed["error"] == "MemoryError: out of memory on the device"


def test_claims_section_renders_claims_csv(sweep_dir):
  directory, _ = sweep_dir
  written = report.write(directory)
  with open(written["claims.csv"]) as f:
    rows = list(csv.DictReader(f))
  # cifar10: 2 paired seeds; svhn's ticket VP failed: not testable there.
  one = {r["dataset"]: r for r in rows if r["claim"] == "1"}
  assert one["svhn"]["verdict"] == "not testable"
  assert one["svhn"]["n_seeds"] == "0" and one["svhn"]["p_value"] == ""
  cifar = one["cifar10"]
  # Hand-computed: per-seed VP differences 0.10 and 0.10: zero variance,
  # mean in the claim's direction, so p = 0 and the interval is the mean.
  assert float(cifar["diff_mean"]) == pytest.approx(0.10)
  assert float(cifar["p_value"]) == 0.0 and cifar["verdict"] == "held"
  assert cifar["selection"] == "best_test" and cifar["method"] == "ilm_vp"
  text = open(written["report.md"]).read()
  assert ("| cifar10 | 2-shot | lt8 | 16.80 | dense | VP | 2 | 50.00 | "
          "40.00 | 10.00 [10.00, 10.00] | - | 0 | 0 | **held** (source "
          "similarity not checked) |") in text
  assert ("**Overall: held (source similarity not checked)** (1 held, 1 "
          "not testable)") in text
  assert "Secondary analysis (not claim 1): the VP gap exceeds the LP gap" in (
      text)
  # Dense LP ECE 0.05 below the ticket's 0.08 with zero variance: held; VP
  # 0.10 against 0.07: contradicted.
  two = {(r["dataset"], r["method"]): r["verdict"] for r in rows
         if r["claim"] == "2" and r["metric"] == "test_ece"}
  assert two[("cifar10", "linear_probe")] == "held"
  assert two[("cifar10", "ilm_vp")] == "contradicted"
  assert "**FAILED** `ilm_vp/lt8/svhn/full`: MemoryError" in text
  assert "mean ± sample standard deviation (ddof=1)" in text


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
  # Temperature scaling's numbers are in the table where present.
  assert "| ECE after TS |" in text and "| adaptive ECE |" not in text


def test_pooled_reliability_bins():
  bins = report._pooled_bins([
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
  for name in ("report.md", "report.csv", "seeds.csv", "claims.csv"):
    assert (directory / name).exists()
  assert "alpha = 0.01" in (directory / "report.md").read_text()


@pytest.mark.parametrize("flags", [["--alpha", "2"], ["--alpha", "x"],
                                   ["--similar-source-pp", "-1"]])
def test_bad_report_flags_are_one_line(sweep_dir, capsys, flags):
  directory, _ = sweep_dir
  with pytest.raises(SystemExit) as exit_info:
    report.main([str(directory), *flags])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "error: argument" in err
