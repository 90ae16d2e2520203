"""The runs under a report's directory: every `summary.json` (or failed
cell) as a `Row` (`reprog_jax.report`).

A run's method is found in the registry by the name and module its
summary recorded (`methods.find`); one that cannot be had here stays in
the main table under its raw name and is left out of the claims, with one
warning line (`warnings`). Its network's source (ImageNet) top-1 comes
from its summary (`network.source_top1`), else from the network
directory's meta.json, in percent; a value <= 1 looks like a fraction and
is treated as unknown, with a warning.
"""

import json
import os
from typing import NamedTuple

import numpy as np

from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.data.fewshot import shot_name
from reprog_jax.layout import CELL_FILE, ERROR_FILE, RUN_SUBDIRS, SUMMARY_FILE
from reprog_jax.study import claims
from reprog_jax.study import design

# (summary key, column heading); the first two are always reported.
METRICS = (("test_acc", "accuracy (%)"), ("test_ece", "ECE"),
           ("test_ece_adaptive", "adaptive ECE"),
           ("temperature", "temperature"),
           ("test_ece_ts", "ECE after TS"),
           ("test_ece_adaptive_ts", "adaptive ECE after TS"),
           ("test_nll_ts", "NLL after TS"),
           ("test_pytorch_logged_quantity", "PyTorch version's 'ECE'"))


class ReportError(errors.UserError, ValueError):
  """A directory with nothing to report, or an unreadable summary."""


class Row(NamedTuple):
  """One cell of the report.

  Attributes:
    cell: its directory, relative to the report's.
    status: 'done' (a summary) or 'failed' (an error.txt, no summary).
    method, network, kind, arch, dataset, n_shot, seeds: what it ran
      (`network` is the sweep's name for it, else its directory's name;
      `method` names a variant too, `claims.method_key`).
    remaining: `sparsity.global_remaining_percent` (every conv and fc
      kernel), `remaining_pytorch` the PyTorch version's figure.
    stats: {metric: (mean, std)} over seeds at the table's selection
      (std: the sample standard deviation, ddof=1; None with one seed).
    selection: that selection ('validation', or 'last' for a run without
      a validation split), None where the run recorded neither.
    selections: {selection: {seed: that epoch's record}} for every model
      selection the run recorded (`design.SELECTIONS`).
    source_top1: the network's source (ImageNet) top-1 in %, where its
      summary or its directory's meta.json records one (`source_top1`).
    reliability: each seed's bins at the table's selection, pooled, or
      None.
    error: the failure's last line.
    test_every: the run's `config.test_every` (1: every epoch tested).
    method_module: the module its summary says registers its method.
    registered: whether its method is registered here.
    source_warning: why a recorded source accuracy was set aside.
  """
  cell: str
  status: str
  method: str | None = None
  network: str | None = None
  kind: str | None = None
  arch: str | None = None
  dataset: str | None = None
  n_shot: int | None = None
  seeds: tuple = ()
  remaining: float | None = None
  remaining_pytorch: float | None = None
  stats: dict = {}
  reliability: dict | None = None
  error: str = ""
  selections: dict = {}
  source_top1: float | None = None
  selection: str | None = None
  test_every: int = 1
  method_module: str | None = None
  registered: bool = True
  source_warning: str = ""

  @property
  def label(self) -> str:
    return (f"{claims.label(self.method)} {self.network} "
            f"{self.dataset} {shot_name(self.n_shot)}")


def collect(directory, selection="validation") -> list[Row]:
  """Every cell under `directory`, sorted by dataset, n_shot, method and
  network (dense first, then by decreasing remaining weights); `stats` at
  `selection` ('validation': the last epoch for a run without a
  validation split)."""
  rows = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d not in RUN_SUBDIRS)
    cell = os.path.relpath(root, directory)
    if SUMMARY_FILE in files:
      rows.append(_row(cell, read_json(os.path.join(root, SUMMARY_FILE)),
                       _cell_meta(root), selection))
    elif ERROR_FILE in files:
      rows.append(_failed_row(cell, root, _cell_meta(root)))
  return sorted(rows, key=_order)


def _order(row):
  return (row.dataset or "", row.n_shot == -1, row.n_shot or 0,
          claims.method_rank(row.method), row.method or "",
          row.kind != "dense", -(row.remaining or 0), row.network or "",
          row.cell)


def read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ReportError(f"{path}: unreadable ({type(e).__name__}: "
                      f"{errors.first_line(e, 120)}); delete it (re-run "
                      f"its cell) or move it out of the directory") from None


def _cell_meta(root) -> dict:
  path = os.path.join(root, CELL_FILE)
  return read_json(path) if os.path.exists(path) else {}


def _find(name, module):
  """The registered spec of a run's method, importing `module` first if
  needed; None if it cannot be had here."""
  return methods.find(name, module) if name else None


def _row(cell, summary, meta, selection) -> Row:
  network = summary["network"]
  name = meta.get("network") or (
      os.path.basename(os.path.normpath(network["dir"])) if network["dir"]
      else f"random-{network['arch']}")
  selections = {
      s: {p["seed"]: p[key] for p in summary["per_seed"]
          if isinstance(p.get(key), dict)}
      for s, (key, _) in design.SELECTIONS.items()}
  selections = {s: v for s, v in selections.items() if v}
  shown = selection
  if shown == "validation" and "validation" not in selections:
    shown = "last"  # No validation split: its last epoch.
  records = selections.get(shown, {})
  per_seed = {key: [r[key] for r in records.values() if key in r]
              for key, _ in METRICS}
  # From the seeds themselves, so that every summary (older ones kept
  # ddof=0) gives the same ddof=1 spread.
  stats = {key: _mean_sample_std(values) for key, values in per_seed.items()
           if values}
  module = summary.get("method_module")
  spec = _find(summary["method"], module)
  config = summary.get("config", {})
  method = design.method_key(summary["method"],
                             spec.variant(config) if spec else "")
  bins_key = {"validation": "validation_reliability",
              "best_test": "reliability"}.get(shown)
  source, why = _source_top1(network)
  return Row(cell=cell, status="done", method=method,
             network=name, kind="dense" if network["dense"] else "ticket",
             arch=network["arch"], dataset=summary["dataset"],
             n_shot=summary["n_shot"], seeds=tuple(summary["seeds"]),
             remaining=summary["sparsity"]["global_remaining_percent"],
             remaining_pytorch=summary["sparsity"]["remaining_percent"],
             stats=stats, selections=selections,
             selection=shown if records else None,
             source_top1=source, source_warning=why,
             test_every=config.get("test_every", 1),
             method_module=module, registered=spec is not None,
             reliability=pooled_bins(
                 [p[bins_key] for p in summary["per_seed"]
                  if bins_key and p.get(bins_key)]))


def _mean_sample_std(values) -> tuple:
  """(mean, sample std with ddof=1, None for a single value)."""
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std


def _source_top1(network) -> tuple[float | None, str]:
  """(the network's source top-1 in %, why a recorded one was set aside):
  the summary's `network.source_top1`, else its directory's meta.json's
  (None where neither records one, or the directory is not here)."""
  value, where = network.get("source_top1"), "its summary.json"
  if value is None:
    path = os.path.join(network.get("dir") or "", "meta.json")
    if not network.get("dir") or not os.path.exists(path):
      return None, ""
    value, where = read_json(path).get("source_top1"), path
  if value is None:
    return None, ""
  if float(value) <= 1.0:
    return None, (f"source_top1 {value} in {where} looks like a fraction "
                  f"(it is in percent: 76.1 means 76.1 %), so it is "
                  f"treated as unknown")
  return float(value), ""


def _failed_row(cell, root, meta) -> Row:
  with open(os.path.join(root, ERROR_FILE)) as f:
    lines = [l.strip() for l in f if l.strip()]
  module = meta.get("method_module")
  return Row(cell=cell, status="failed",
             method=design.method_key(meta.get("method"),
                                      meta.get("variant", "")),
             network=meta.get("network"), kind=meta.get("kind"),
             dataset=meta.get("dataset"), n_shot=meta.get("n_shot"),
             seeds=tuple(meta.get("seeds", ())), method_module=module,
             registered=_find(meta.get("method"), module) is not None,
             error=lines[-1] if lines else "(empty error.txt)")


def pooled_bins(seed_bins) -> dict | None:
  """Equal-width bins of several seeds as one: counts summed, accuracy and
  confidence averaged weighted by count."""
  if not seed_bins:
    return None
  count = [sum(b["count"][i] for b in seed_bins)
           for i in range(len(seed_bins[0]["count"]))]

  def pooled(key):
    return [sum(b["count"][i] * b[key][i] for b in seed_bins) / c if c
            else 0.0 for i, c in enumerate(count)]

  return {"lower": list(seed_bins[0]["lower"]),
          "upper": list(seed_bins[0]["upper"]), "count": count,
          "accuracy": pooled("accuracy"), "confidence": pooled("confidence")}


def warnings(rows) -> list[str]:
  """One line per method that is not registered here and per network
  whose source accuracy was set aside: what is left out, and the fix."""
  lines = []
  unknown = {}
  for r in rows:
    if r.method and not r.registered:
      unknown.setdefault((r.method, r.method_module), []).append(r)
  for (name, module), mine in sorted(unknown.items(),
                                     key=lambda kv: str(kv[0])):
    fix = module or "the module that registers it"
    lines.append(
        f"method {name!r}"
        + (f" (module {module!r}, as its runs recorded)" if module else "")
        + f" is not registered here: its {len(mine)} run(s) stay in the "
        f"main table under that name but are left out of the claims, the "
        f"sensitivity analyses and the family tables; to include them, "
        f"set {methods.PLUGINS_ENV}={fix}")
  said = set()
  for r in rows:
    if r.source_warning and r.network not in said:
      said.add(r.network)
      lines.append(f"network {r.network}: {r.source_warning}; claim 1's "
                   f"cells of it are not applicable (record it in percent: "
                   f"python -m reprog_jax.evaluate_source)")
  return lines
