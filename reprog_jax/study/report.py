"""The report of a sweep: every cell in one table, figures, and the paper's
two claims tested on the data at hand.

  python -m reprog_jax.report runs/study

Collects every `summary.json` under the directory (a `reprog_jax.sweep`
workdir, or any tree of runs) into `report.md` and `report.csv` (best test
accuracy and ECE per cell, mean and sample standard deviation (ddof=1) over
its seeds' best-test epochs, computed from `per_seed`, plus adaptive and
temperature-scaled ECE where the summaries have them) and PNG figures in
`figures/` (`reprog_jax.study.figures`): accuracy and ECE against
the remaining weights, accuracy against n_shot, and reliability diagrams of
dense networks against tickets. A cell whose run failed (an `error.txt`, no
summary) is listed as failed.

The claims section tests the paper's two findings with paired statistics
over seeds (see `reprog_jax.study.claims`), and writes them to `claims.csv`
beside `report.md`, every seed's numbers to `seeds.csv`
(`reprog_jax.study.claims_tables`).

  python -m reprog_jax.report runs/study --alpha 0.05 --similar-source-pp 1.0
"""

import csv
import io
import json
import os
import sys
from typing import NamedTuple

import numpy as np

from reprog_jax import cli
from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.data.fewshot import shot_name
from reprog_jax.layout import (CELL_FILE, ERROR_FILE, FIGURES_DIR, REPORT_CSV,
                               REPORT_MD, RUN_SUBDIRS, STUDY_FILE,
                               SUMMARY_FILE)
from reprog_jax.study import claims
from reprog_jax.study import claims_tables
from reprog_jax.study import figures

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
    stats: {metric: (mean, std)} over seeds of each seed's best epoch
      (std: the sample standard deviation, ddof=1; None with one seed).
    per_seed: {metric: {seed: value}} of each seed's best epoch.
    selections: {selection: {seed: that epoch's record}} for every model
      selection the run recorded (`claims.SELECTIONS`).
    source_top1: the network's source (ImageNet) top-1 in %, where its
      summary or its directory's meta.json records one (`source_top1`).
    reliability: each seed's best epoch's bins, pooled, or None.
    error: the failure's last line.
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
  per_seed: dict = {}
  reliability: dict | None = None
  error: str = ""
  selections: dict = {}
  source_top1: float | None = None

  @property
  def label(self) -> str:
    return (f"{_short(self.method)} {self.network} "
            f"{self.dataset} {shot_name(self.n_shot)}")


def _short(method) -> str:
  """'LP' or 'VP' (another method: its own name)."""
  return claims.label(method)


# --------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------


def collect(directory) -> list[Row]:
  """Every cell under `directory`, sorted by dataset, n_shot, method and
  network (dense first, then by decreasing remaining weights)."""
  rows = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d not in RUN_SUBDIRS)
    cell = os.path.relpath(root, directory)
    if SUMMARY_FILE in files:
      rows.append(_row(cell, _read_json(os.path.join(root, SUMMARY_FILE)),
                       _cell_meta(root)))
    elif ERROR_FILE in files:
      rows.append(_failed_row(cell, root, _cell_meta(root)))
  return sorted(rows, key=_order)


def _order(row):
  return (row.dataset or "", row.n_shot == -1, row.n_shot or 0,
          _method_rank(row.method), row.method or "", row.kind != "dense",
          -(row.remaining or 0), row.network or "", row.cell)


def _method_rank(method):
  return claims.method_rank(method)


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ReportError(f"{path}: unreadable ({type(e).__name__}: "
                      f"{errors.first_line(e, 120)}); delete it (re-run "
                      f"its cell) or move it out of the directory") from None


def _cell_meta(root) -> dict:
  path = os.path.join(root, CELL_FILE)
  return _read_json(path) if os.path.exists(path) else {}


def _row(cell, summary, meta) -> Row:
  network = summary["network"]
  name = meta.get("network") or (
      os.path.basename(os.path.normpath(network["dir"])) if network["dir"]
      else f"random-{network['arch']}")
  per_seed = {key: {p["seed"]: p["best"][key] for p in summary["per_seed"]
                    if key in p["best"]}
              for key, _ in METRICS}
  # From the seeds themselves, so that every summary (older ones kept
  # ddof=0) gives the same ddof=1 spread.
  stats = {key: _mean_sample_std(list(values.values()))
           for key, values in per_seed.items() if values}
  selections = {
      selection: {p["seed"]: p[key] for p in summary["per_seed"]
                  if isinstance(p.get(key), dict)}
      for selection, (key, _) in claims.SELECTIONS.items()}
  method = claims.variant_key(summary["method"], summary.get("config", {}))
  return Row(cell=cell, status="done", method=method,
             network=name, kind="dense" if network["dense"] else "ticket",
             arch=network["arch"], dataset=summary["dataset"],
             n_shot=summary["n_shot"], seeds=tuple(summary["seeds"]),
             remaining=summary["sparsity"]["global_remaining_percent"],
             remaining_pytorch=summary["sparsity"]["remaining_percent"],
             stats=stats, per_seed={k: v for k, v in per_seed.items() if v},
             selections={s: v for s, v in selections.items() if v},
             source_top1=_source_top1(network),
             reliability=_pooled_bins(
                 [p["reliability"] for p in summary["per_seed"]
                  if p.get("reliability")]))


def _mean_sample_std(values) -> tuple:
  """(mean, sample std with ddof=1, None for a single value)."""
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std


def _source_top1(network) -> float | None:
  """The summary's `network.source_top1`, else its directory's meta.json's
  (None where neither records one, or the directory is not here)."""
  if network.get("source_top1") is not None:
    return float(network["source_top1"])
  path = os.path.join(network.get("dir") or "", "meta.json")
  if not network.get("dir") or not os.path.exists(path):
    return None
  value = _read_json(path).get("source_top1")
  return None if value is None else float(value)


def _failed_row(cell, root, meta) -> Row:
  with open(os.path.join(root, ERROR_FILE)) as f:
    lines = [l.strip() for l in f if l.strip()]
  return Row(cell=cell, status="failed",
             method=claims.method_key(meta.get("method"),
                                      meta.get("variant", "")),
             network=meta.get("network"), kind=meta.get("kind"),
             dataset=meta.get("dataset"), n_shot=meta.get("n_shot"),
             seeds=tuple(meta.get("seeds", ())),
             error=lines[-1] if lines else "(empty error.txt)")


def _pooled_bins(seed_bins) -> dict | None:
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


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def write(directory, options=claims.Options()) -> dict:
  """Writes report.md, report.csv, seeds.csv, claims.csv and figures/*.png
  into `directory`.

  Args:
    directory: a sweep's workdir, or any tree of runs.
    options: the claims' thresholds (`claims.Options`).

  Returns:
    {name relative to `directory`: written path}.

  Raises:
    ReportError: no summary.json under `directory`, or an unreadable one.
  """
  if not os.path.isdir(directory):
    raise ReportError(f"{directory}: no such directory; give a sweep's "
                      f"--workdir")
  rows = collect(directory)
  done = [r for r in rows if r.status == "done"]
  if not done:
    failed = len(rows) - len(done)
    raise ReportError(
        f"{directory}: no {SUMMARY_FILE} under it"
        + (f" ({failed} failed cell(s): see their {ERROR_FILE})" if failed
           else "") + "; run a sweep there first (python -m reprog_jax.sweep)")
  written = {}
  os.makedirs(os.path.join(directory, FIGURES_DIR), exist_ok=True)
  for name, draw in figures.figures(done, FIGURES_DIR).items():
    path = os.path.join(directory, name)
    fileio.write_bytes(path, draw())
    written[name] = path
  for name, text in (
      (layout.SEEDS_CSV, claims_tables.seeds_csv(rows)),
      (layout.CLAIMS_CSV,
       claims_tables.claims_csv(claims.cells(rows, options)))):
    path = os.path.join(directory, name)
    fileio.write_text(path, text)
    written[name] = path
  for name, text in ((REPORT_CSV, _csv(rows)),
                     (REPORT_MD, _markdown(directory, rows, options,
                                             sorted(written)))):
    path = os.path.join(directory, name)
    fileio.write_text(path, text)
    written[name] = path
  return written


def _csv(rows) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["cell", "status", "method", "network", "kind", "arch",
                   "dataset", "n_shot", "seeds", "remaining_percent",
                   "remaining_percent_pytorch"]
                  + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")]
                  + ["error"])
  for r in rows:
    writer.writerow(
        [r.cell, r.status, r.method, r.network, r.kind, r.arch, r.dataset,
         r.n_shot, " ".join(map(str, r.seeds)), r.remaining,
         r.remaining_pytorch]
        + [x for k, _ in METRICS for x in r.stats.get(k, (None, None))]
        + [r.error])
  # csv writes None as an empty field and floats as repr(): they parse
  # back exactly.
  return out.getvalue()


def _mean_std(stat, scale=1.0, digits=4) -> str:
  if stat is None:
    return "-"
  if stat[1] is None:
    return f"{scale * stat[0]:.{digits}f}"
  return f"{scale * stat[0]:.{digits}f} ± {scale * stat[1]:.{digits}f}"


def _markdown(directory, rows, options, figures) -> str:
  done = [r for r in rows if r.status == "done"]
  failed = [r for r in rows if r.status == "failed"]
  lines = [f"# Report: {os.path.abspath(directory)}", ""]
  lines.append(f"{len(done)} finished cell(s), {len(failed)} failed"
               + _not_run(directory, rows) + ". Numbers: each seed's best "
               "epoch by test accuracy (the PyTorch version's selection, "
               "optimistic), mean ± sample standard deviation (ddof=1) over "
               "the seeds, also the figures' error bars; remaining weights "
               "over every conv and fc kernel.")
  lines.append("")
  shown = [(k, h) for k, h in METRICS
           if k in ("test_acc", "test_ece") or any(k in r.stats for r in done)]
  lines.append("| method | network | kind | remaining (%) | dataset | shots "
               "| seeds | " + " | ".join(h for _, h in shown) + " | cell |")
  lines.append("|" + " --- |" * (8 + len(shown)))
  for r in done:
    values = [_mean_std(r.stats.get(k), 100 if k == "test_acc" else 1,
                        2 if k == "test_acc" else 4) for k, _ in shown]
    lines.append(
        f"| {_short(r.method)} | {r.network} | {r.kind} "
        f"| {r.remaining:.2f} | {r.dataset} | {shot_name(r.n_shot)} | "
        f"{len(r.seeds)} | " + " | ".join(values) + f" | {r.cell} |")
  if failed:
    lines += ["", "## Failed cells", "",
              f"No summary; the traceback is in the cell's {ERROR_FILE}. "
              "Fix the cause and re-run the sweep: finished cells are "
              "skipped.", ""]
    lines += [f"- **FAILED** `{r.cell}`: {r.error}" for r in failed]
  lines += ["", *claims_tables.markdown(rows, options)]
  if figures:
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in figures]
  return "\n".join(lines) + "\n"


def _not_run(directory, rows) -> str:
  path = os.path.join(directory, STUDY_FILE)
  if not os.path.exists(path):
    return ""
  planned = _read_json(path).get("cells", [])
  found = {r.cell for r in rows}
  missing = [c for c in planned if c not in found]
  return (f", {len(missing)} of the study's {len(planned)} not run yet"
          if missing else "")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv=None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m reprog_jax.report",
      description="Writes report.md, report.csv and figures/ from every "
      "summary.json under DIR.")
  parser.add_argument("directory", metavar="DIR",
                      help="a sweep's --workdir, or any tree of runs")
  parser.add_argument("--alpha", type=cli.probability, default=0.05,
                      help="family-wise significance level of the claims' "
                      "Holm-corrected tests (default 0.05)")
  parser.add_argument("--similar-source-pp", type=cli.non_negative, default=1.0,
                      help="claim 1 needs the dense and ticket source top-1 "
                      "within this many percentage points (default 1.0)")
  args = parser.parse_args(argv)

  def report():
    written = write(args.directory, claims.Options(
        alpha=args.alpha, similar_source_pp=args.similar_source_pp))
    print(f"wrote {', '.join(sorted(written))} in {args.directory}")

  return cli.run("reprog_jax.report", report)


if __name__ == "__main__":
  sys.exit(main())
