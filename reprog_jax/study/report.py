"""The report of a sweep: every cell in one table, figures, and the paper's
two claims tested on the data at hand.

  python -m reprog_jax.report runs/study

Collects every `summary.json` under the directory (a `reprog_jax.sweep`
workdir, or any tree of runs) into `report.md` and `report.csv` (best test
accuracy and ECE per cell, mean and std over its seeds, from
`seeds_mean_std.best`, plus adaptive and temperature-scaled ECE where the
summaries have them) and PNG figures in `figures/`: accuracy and ECE against
the remaining weights, accuracy against n_shot, and reliability diagrams of
dense networks against tickets. A cell whose run failed (an `error.txt`, no
summary) is listed as failed.

The claims section tests the paper's two findings cell by cell (see
`reprog_jax.study.claims`).
"""

import argparse
import csv
import io
import json
import os
import sys
from typing import NamedTuple

from reprog_jax import cli
from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax.layout import (CELL_FILE, ERROR_FILE, FIGURES_DIR, REPORT_CSV,
                               REPORT_MD, RUN_SUBDIRS, STUDY_FILE,
                               SUMMARY_FILE)
from reprog_jax.study import claims

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
      (`network` is the sweep's name for it, else its directory's name).
    remaining: `sparsity.global_remaining_percent` (every conv and fc
      kernel), `remaining_pytorch` the PyTorch version's figure.
    stats: {metric: (mean, std)} over seeds of each seed's best epoch.
    per_seed: {metric: {seed: value}}.
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

  @property
  def label(self) -> str:
    return (f"{_short(self.method)} {self.network} "
            f"{self.dataset} {shot_name(self.n_shot)}")


def _short(method) -> str:
  """'LP' or 'VP' (another method: its own name)."""
  return claims.METHOD_NAMES.get(method, method)


def shot_name(n_shot) -> str:
  return "full" if n_shot == -1 else f"{n_shot}-shot"


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
  names = list(claims.METHOD_NAMES)
  return names.index(method) if method in names else len(names)


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
  best = summary["seeds_mean_std"]["best"]
  stats = {key: (best[key]["mean"], best[key]["std"])
           for key, _ in METRICS if key in best}
  per_seed = {key: {p["seed"]: p["best"][key] for p in summary["per_seed"]
                    if key in p["best"]}
              for key, _ in METRICS}
  return Row(cell=cell, status="done", method=summary["method"],
             network=name, kind="dense" if network["dense"] else "ticket",
             arch=network["arch"], dataset=summary["dataset"],
             n_shot=summary["n_shot"], seeds=tuple(summary["seeds"]),
             remaining=summary["sparsity"]["global_remaining_percent"],
             remaining_pytorch=summary["sparsity"]["remaining_percent"],
             stats=stats, per_seed={k: v for k, v in per_seed.items() if v},
             reliability=_pooled_bins(
                 [p["reliability"] for p in summary["per_seed"]
                  if p.get("reliability")]))


def _failed_row(cell, root, meta) -> Row:
  with open(os.path.join(root, ERROR_FILE)) as f:
    lines = [l.strip() for l in f if l.strip()]
  return Row(cell=cell, status="failed", method=meta.get("method"),
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


def write(directory) -> dict:
  """Writes report.md, report.csv and figures/*.png into `directory`.

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
  for name, draw in _figures(done).items():
    path = os.path.join(directory, name)
    fileio.write_bytes(path, draw())
    written[name] = path
  pairs = claims.comparisons(rows)
  for name, text in ((REPORT_CSV, _csv(rows)),
                     (REPORT_MD, _markdown(directory, rows, pairs,
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
  return f"{scale * stat[0]:.{digits}f} ± {scale * stat[1]:.{digits}f}"


def _markdown(directory, rows, pairs, figures) -> str:
  done = [r for r in rows if r.status == "done"]
  failed = [r for r in rows if r.status == "failed"]
  lines = [f"# Report: {os.path.abspath(directory)}", ""]
  lines.append(f"{len(done)} finished cell(s), {len(failed)} failed"
               + _not_run(directory, rows) + ". Numbers: each seed's best "
               "epoch (by test accuracy), mean ± std over the seeds; "
               "remaining weights over every conv and fc kernel.")
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
  lines += ["", *_claims_markdown(pairs)]
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


def _claims_markdown(pairs) -> list[str]:
  lines = ["## Claims", "",
           "Each row: one ticket against the dense network of its "
           "architecture on one dataset and few-shot budget; means over "
           "seeds, ± the seeds' spread (sqrt of the summed variances).", ""]
  ones = [(c, claims.claim_one(c)) for c in pairs]
  verdict, sentence = claims.overall([r["verdict"] for _, r in ones], False)
  lines += ["### 1. Tickets are not universal reprogrammers", "",
            "Held where the ticket's VP accuracy falls short of the dense "
            "network's by more than its LP accuracy does (VP gap > LP gap, "
            "in percentage points); the paper claims it for some targets.",
            "", f"**Overall: {verdict}** ({sentence}).", ""]
  if ones:
    lines += ["| dataset | shots | ticket | remaining (%) | dense | VP gap (pp)"
              " | LP gap (pp) | VP gap - LP gap | verdict |",
              "|" + " --- |" * 9]
    for c, r in ones:
      gaps = (["-"] * 3 if r["verdict"] == "not testable" else
              [f"{r['vp_gap']:.2f} ± {r['vp_spread']:.2f}",
               f"{r['lp_gap']:.2f} ± {r['lp_spread']:.2f}",
               f"{r['margin']:.2f} ± {r['spread']:.2f}"])
      lines.append(f"| {c.dataset} | {shot_name(c.n_shot)} | {c.ticket} | "
                   f"{_percent(c.remaining)} | {c.dense} | "
                   + " | ".join(gaps) + f" | {_verdict(r)} |")
  twos = [(c, claims.claim_two(c)) for c in pairs]
  verdict, sentence = claims.overall([r["verdict"] for _, r in twos], True)
  lines += ["", "### 2. Dense networks are better calibrated", "",
            "Held where the dense network's ECE is below the ticket's for "
            "LP and for VP; the paper claims it always.", "",
            f"**Overall: {verdict}** ({sentence}).", ""]
  if twos:
    lines += ["| dataset | shots | ticket | remaining (%) | dense | LP ECE "
              "dense / ticket | VP ECE dense / ticket | verdict |",
              "|" + " --- |" * 8]
    for c, r in twos:
      eces = []
      for method in ("linear_probe", "ilm_vp"):
        m = r["methods"].get(method)
        eces.append("-" if m is None else
                    f"{m['dense']:.4f} ± {m['dense_std']:.4f} / "
                    f"{m['ticket']:.4f} ± {m['ticket_std']:.4f}")
      lines.append(f"| {c.dataset} | {shot_name(c.n_shot)} | {c.ticket} | "
                   f"{_percent(c.remaining)} | {c.dense} | "
                   + " | ".join(eces) + f" | {_verdict(r)} |")
  if not pairs:
    lines += ["", "No dense network and ticket share a dataset and n_shot "
              "here, so neither claim can be tested."]
  return lines


def _percent(value) -> str:
  return "-" if value is None else f"{value:.2f}"


def _verdict(result) -> str:
  note = f" ({result['note']})" if result["note"] else ""
  return f"**{result['verdict']}**{note}"


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def _figures(rows) -> dict:
  """{relative path: function returning PNG bytes}."""
  figures = {
      f"{FIGURES_DIR}/accuracy_vs_remaining.png":
          lambda: _versus_remaining(rows, "test_acc", "best test accuracy (%)",
                                    100.0),
      f"{FIGURES_DIR}/ece_vs_remaining.png":
          lambda: _versus_remaining(rows, "test_ece", "ECE", 1.0),
      f"{FIGURES_DIR}/accuracy_vs_n_shot.png": lambda: _versus_n_shot(rows),
  }
  for dataset, n_shot in sorted({(r.dataset, r.n_shot) for r in rows
                                 if r.reliability}):
    chosen = [r for r in rows if (r.dataset, r.n_shot) == (dataset, n_shot)
              and r.reliability]
    figures[f"{FIGURES_DIR}/reliability_{dataset}_{shot_name(n_shot)}.png"] = (
        lambda chosen=chosen: _reliability(chosen))
  return figures


def _panels(count, width=5.0, height=4.0):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=(width * count, height), dpi=100)
  axes = figure.subplots(1, count, squeeze=False)[0]
  return figure, axes


def _png(figure) -> bytes:
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  return buffer.getvalue()


def _versus_remaining(rows, metric, ylabel, scale) -> bytes:
  datasets = sorted({r.dataset for r in rows})
  figure, panels = _panels(len(datasets))
  for axes, dataset in zip(panels, datasets):
    mine = [r for r in rows if r.dataset == dataset and metric in r.stats]
    series = sorted({(r.method, r.n_shot) for r in mine},
                    key=lambda s: (_method_rank(s[0]), s[1] == -1, s[1]))
    for method, n_shot in series:
      points = sorted(((r.remaining, r.stats[metric]) for r in mine
                       if (r.method, r.n_shot) == (method, n_shot)),
                      reverse=True)
      axes.errorbar([p[0] for p in points], [scale * p[1][0] for p in points],
                    yerr=[scale * p[1][1] for p in points], marker="o",
                    capsize=3, label=f"{_short(method)}, "
                    f"{shot_name(n_shot)}")
    remaining = sorted({r.remaining for r in mine})
    axes.set_xscale("log")
    axes.set_xticks(remaining, [f"{x:.3g}" for x in remaining])
    axes.minorticks_off()
    axes.invert_xaxis()  # Sparser to the right, as pruning proceeds.
    axes.set(title=dataset, xlabel="remaining weights (%)", ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
  return _png(figure)


def _versus_n_shot(rows) -> bytes:
  datasets = sorted({r.dataset for r in rows})
  figure, panels = _panels(len(datasets))
  for axes, dataset in zip(panels, datasets):
    mine = [r for r in rows if r.dataset == dataset]
    shots = sorted({r.n_shot for r in mine}, key=lambda n: (n == -1, n))
    series = sorted({(r.method, r.network, r.remaining) for r in mine},
                    key=lambda s: (_method_rank(s[0]), -s[2], s[1]))
    for method, network, _ in series:
      points = sorted((shots.index(r.n_shot), r.stats["test_acc"])
                      for r in mine if (r.method, r.network) == (method,
                                                                  network))
      axes.errorbar([p[0] for p in points], [100 * p[1][0] for p in points],
                    yerr=[100 * p[1][1] for p in points], marker="o",
                    capsize=3,
                    label=f"{_short(method)}, {network}")
    axes.set_xticks(range(len(shots)), [
        "full" if n == -1 else str(n) for n in shots])
    axes.set(title=dataset, xlabel="training examples per class (n_shot)",
             ylabel="best test accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
  return _png(figure)


def _reliability(rows) -> bytes:
  """One panel per method: each network's bin accuracy against its bin
  confidence (non-empty bins), pooled over seeds."""
  chosen_methods = sorted({r.method for r in rows}, key=_method_rank)
  figure, panels = _panels(len(chosen_methods), 4.5, 4.5)
  for axes, method in zip(panels, chosen_methods):
    for r in sorted((r for r in rows if r.method == method),
                    key=lambda r: (r.kind != "dense", -(r.remaining or 0))):
      bins = r.reliability
      kept = [i for i, c in enumerate(bins["count"]) if c > 0]
      axes.plot([bins["confidence"][i] for i in kept],
                [bins["accuracy"][i] for i in kept], marker="o",
                linestyle="-" if r.kind == "dense" else "--",
                label=f"{r.network} ({r.kind}), mean ECE "
                f"{r.stats['test_ece'][0]:.3f}")
    axes.plot([0, 1], [0, 1], "k:", linewidth=1.0, label="perfect")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence",
             ylabel="accuracy", title=f"{_short(method)}: "
             f"{rows[0].dataset}, {shot_name(rows[0].n_shot)}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
  return _png(figure)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m reprog_jax.report",
      description="Writes report.md, report.csv and figures/ from every "
      "summary.json under DIR.")
  parser.add_argument("directory", metavar="DIR",
                      help="a sweep's --workdir, or any tree of runs")
  args = parser.parse_args(argv)

  def report():
    written = write(args.directory)
    print(f"wrote {', '.join(sorted(written))} in {args.directory}")

  return cli.run("reprog_jax.report", report)


if __name__ == "__main__":
  sys.exit(main())
