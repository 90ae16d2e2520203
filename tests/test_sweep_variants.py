"""A sweep over ILM-VP's label mappings: a cell per variant, and a report
that tests claim 1 per label mapping (training faked: summaries only)."""

import contextlib
import csv
import io
import json
import os

import pytest

from reprog_jax.study import report
from reprog_jax.study import grid as grid_lib
from reprog_jax.study import sweep
from test_report import fake_summary
from test_sweep import study_preset

# Per (label mapping, kind): each seed's (test accuracy, ECE). Under ILM the
# ticket trails by 10, 11 and 9 points (claim 1 held); under BLM++ by -1, 2
# and 1 (inconclusive).
VALUES = {("ilm", "dense"): [(0.80, 0.1), (0.82, 0.1), (0.81, 0.1)],
          ("ilm", "ticket"): [(0.70, 0.1), (0.71, 0.1), (0.72, 0.1)],
          ("blmpp", "dense"): [(0.80, 0.1), (0.82, 0.1), (0.81, 0.1)],
          ("blmpp", "ticket"): [(0.81, 0.1), (0.80, 0.1), (0.80, 0.1)]}


@pytest.fixture
def variant_sweep(tmp_path, monkeypatch):
  calls = []

  def train_and_evaluate(config, workdir, stop_after_epoch=None):
    del stop_after_epoch
    calls.append(os.path.relpath(workdir, tmp_path))
    mapping = config.get("label_mapping", "ilm")
    summary = fake_summary(config.method, "net", config.network,
                           100.0 if config.network == "dense" else 20.0,
                           config.data.name, config.n_shot,
                           VALUES[(mapping, config.network)],
                           source_top1=76.0)
    summary["config"] = {"label_mapping": mapping,
                         "prompt": config.get("prompt", "expansive")}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
    return summary

  monkeypatch.setattr(sweep.train, "train_and_evaluate", train_and_evaluate)
  study = grid_lib.plain_study(study_preset("smoke"))
  study["networks"]["lt"] = {"dir": "nets/lt", "random": None,
                             "kind": "ticket"}  # Never loaded here.
  study["label_mappings"] = ["ilm", "blmpp"]
  with contextlib.redirect_stdout(io.StringIO()):
    sweep.run(study, str(tmp_path))
  return tmp_path, study, calls


def test_a_cell_per_label_mapping_default_paths_unchanged(variant_sweep):
  workdir, study, calls = variant_sweep
  assert calls == [
      "lp/dense/cifar10/2-shot", "vp/dense/cifar10/2-shot",
      "vp-blmpp/dense/cifar10/2-shot", "lp/lt/cifar10/2-shot",
      "vp/lt/cifar10/2-shot", "vp-blmpp/lt/cifar10/2-shot"]
  cell = json.loads((workdir / "vp-blmpp/lt/cifar10/2-shot/cell.json")
                    .read_text())
  assert cell["variant"] == "blmpp" and cell["method"] == "ilm_vp"
  grid = {c.name: c.config for c in grid_lib.cells(study)}
  assert grid["vp-blmpp/lt/cifar10/2-shot"].label_mapping == "blmpp"
  assert grid["vp/lt/cifar10/2-shot"].label_mapping == "ilm"
  # Without the axis, study.json and the cells are as before.
  plain = {k: v for k, v in study.items() if k != "label_mappings"}
  assert grid_lib.plain_study({**plain, "label_mappings": []}) == plain
  assert [c.name for c in grid_lib.cells(plain)] == [
      n for n in grid if not n.startswith("vp-")]


def test_report_tests_claim_one_per_label_mapping(variant_sweep):
  workdir, _, _ = variant_sweep
  written = report.write(str(workdir))
  text = open(written["report.md"]).read()
  # ILM is the primary analysis; BLM++ a sensitivity analysis of its own.
  assert ("**Claim 1: tickets are not universal reprogrammers: held** (1 "
          "held)") in text
  assert ("| 1 | VP blmpp | `validation` | accuracy | **not shown** | 1 "
          "inconclusive |") in text
  with open(written["claims.csv"]) as f:
    rows = [r for r in csv.DictReader(f) if r["claim"] == "1"
            and r["selection"] == "validation"]
  verdicts = {(r["method"], r["analysis"]): r["verdict"] for r in rows}
  assert verdicts == {("ilm_vp", "primary"): "held",
                      ("ilm_vp[blmpp]", "sensitivity"): "inconclusive"}
