"""The report of a sweep: every cell in one table, figures, and the paper's
two claims tested on the data at hand.

  python -m reprog_jax.report runs/study

Collects every `summary.json` under the directory (a `reprog_jax.sweep`
workdir, or any tree of runs; `study.runs`) into `report.md` and
`report.csv` (accuracy and calibration per cell at the study's primary
model selection: mean and sample standard deviation (ddof=1) over its
seeds, plus adaptive and temperature-scaled ECE where the summaries have
them) and PNG figures in `figures/` (`reprog_jax.study.figures`): accuracy
and ECE against the remaining weights, accuracy against n_shot, and
reliability diagrams of dense networks against tickets. A cell whose run
failed (an `error.txt`, no summary) is listed as failed.

The claims: the analysis the study declared (`study.design`, read from its
study.json) decides the paper's two findings with paired statistics over
seeds (`study.claims`, `study.verdicts`), primary analysis first, then
the sensitivity analyses (`study.sensitivity`); every cell goes to
`claims.csv`, every analysis to `analyses.csv`, every seed to `seeds.csv`
(`study.claims_tables`).

  python -m reprog_jax.report runs/study --alpha 0.05 --similar-source-pp 1.0
  python -m reprog_jax.report runs/pilot --plan 1.0

`--plan EFFECT` writes nothing: from a pilot study's spread, it prints the
seeds per cell each claim needs to detect EFFECT (`study.plan`).
"""

import csv
import io
import os
import sys

from reprog_jax import cli
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.data.fewshot import shot_name
from reprog_jax.layout import ERROR_FILE, FIGURES_DIR, REPORT_CSV, REPORT_MD
from reprog_jax.study import claims
from reprog_jax.study import claims_tables
from reprog_jax.study import design
from reprog_jax.study import figures
from reprog_jax.study import plan as plan_lib
from reprog_jax.study import runs as runs_lib
from reprog_jax.study import sensitivity
from reprog_jax.study import verdicts
from reprog_jax.study.runs import METRICS, ReportError, Row, collect

__all__ = ["ReportError", "Row", "collect", "analyse", "write", "main"]

PROG = "reprog_jax.report"


# --------------------------------------------------------------------------
# Analysing
# --------------------------------------------------------------------------


def analyse(directory, options=None, warn=True) -> verdicts.Result:
  """Every run under `directory`, and every analysis of them.

  Args:
    directory: a sweep's workdir, or any tree of runs.
    options: the declared analysis (`design.Options`); None: the one
      `directory`'s study.json declares (`design.options`).
    warn: print one line on stderr per method that cannot be had here and
      per source accuracy set aside (`runs.warnings`).

  Raises:
    ReportError: no summary.json under `directory`, or an unreadable one.
    design.DesignError: an unreadable or inconsistent study.json.
  """
  if not os.path.isdir(directory):
    raise ReportError(f"{directory}: no such directory; give a sweep's "
                      f"--workdir")
  if options is None:
    options = design.options(directory)
  rows = collect(directory, options.primary["selection"])
  done = [r for r in rows if r.status == "done"]
  if not done:
    failed = len(rows) - len(done)
    raise ReportError(
        f"{directory}: no {layout.SUMMARY_FILE} under it"
        + (f" ({failed} failed cell(s): see their {ERROR_FILE})" if failed
           else "") + "; run a sweep there first (python -m reprog_jax.sweep)")
  if warn:
    for line in runs_lib.warnings(rows):
      print(f"{PROG}: warning: {line}", file=sys.stderr)
  return verdicts.analyse(rows, options, design.planned_runs(directory))


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def write(directory, options=None, result=None) -> dict:
  """Writes report.md, report.csv, seeds.csv, claims.csv, analyses.csv
  and figures/*.png into `directory`.

  Args:
    directory: a sweep's workdir, or any tree of runs.
    options: the declared analysis (`design.Options`); None: the one
      `directory`'s study.json declares.
    result: `analyse(directory, options)`, if already computed.

  Returns:
    {name relative to `directory`: written path}.

  Raises:
    ReportError: no summary.json under `directory`, or an unreadable one.
    design.DesignError: an unreadable or inconsistent study.json.
  """
  result = result or analyse(directory, options)
  rows = result.rows
  done = [r for r in rows if r.status == "done"]
  written = {}
  os.makedirs(os.path.join(directory, FIGURES_DIR), exist_ok=True)
  selection = _selection_words(result)
  for name, draw in figures.figures(done, FIGURES_DIR, selection).items():
    path = os.path.join(directory, name)
    fileio.write_bytes(path, draw())
    written[name] = path
  for name, text in (
      (layout.SEEDS_CSV, claims_tables.seeds_csv(rows)),
      (layout.CLAIMS_CSV, claims_tables.claims_csv(result.cells)),
      (layout.ANALYSES_CSV, claims_tables.analyses_csv(result.summaries))):
    path = os.path.join(directory, name)
    fileio.write_text(path, text)
    written[name] = path
  for name, text in ((REPORT_CSV, _csv(rows)),
                     (REPORT_MD, _markdown(directory, result, sorted(
                         n for n in written if n.endswith(".png"))))):
    path = os.path.join(directory, name)
    fileio.write_text(path, text)
    written[name] = path
  return written


def _selection_words(result) -> str:
  """The main table's and the figures' selection, in a few words."""
  selection = result.options.primary["selection"]
  if selection == "validation":
    return "validation-selected epoch (last without a validation split)"
  return {"last": "last epoch"}.get(selection, "best-test epoch")


def _csv(rows) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["cell", "status", "method", "network", "kind", "arch",
                   "dataset", "n_shot", "seeds", "selection",
                   "remaining_percent", "remaining_percent_pytorch"]
                  + [f"{k}_{s}" for k, _ in METRICS for s in ("mean", "std")]
                  + ["error"])
  for r in rows:
    writer.writerow(
        [r.cell, r.status, r.method, r.network, r.kind, r.arch, r.dataset,
         r.n_shot, " ".join(map(str, r.seeds)), r.selection, r.remaining,
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


def _markdown(directory, result, figure_names) -> str:
  rows = result.rows
  done = [r for r in rows if r.status == "done"]
  failed = [r for r in rows if r.status == "failed"]
  selection = result.options.primary["selection"]
  lines = [f"# Report: {os.path.abspath(directory)}", ""]
  # The primary analysis's two verdicts first; how they were reached in
  # its section below.
  lines += [" ".join(claims_tables.headline(result))
            + " (The primary analysis: see below.)", ""]
  lines.append(
      f"{len(done)} finished cell(s), {len(failed)} failed"
      + _not_run(result) + f". Numbers: each seed's epoch by the primary "
      f"selection `{selection}` ({claims.selection_name(selection, rows)}"
      "; the table's *selection* column says which each run used), mean ± "
      "sample standard deviation (ddof=1) over the seeds, also the "
      "figures' error bars; remaining weights over every conv and fc "
      "kernel.")
  lines.append("")
  shown = [(k, h) for k, h in METRICS
           if k in ("test_acc", "test_ece") or any(k in r.stats for r in done)]
  lines.append("| method | network | kind | remaining (%) | dataset | shots "
               "| seeds | selection | " + " | ".join(h for _, h in shown)
               + " | cell |")
  lines.append("|" + " --- |" * (9 + len(shown)))
  for r in done:
    values = [_mean_std(r.stats.get(k), 100 if k == "test_acc" else 1,
                        2 if k == "test_acc" else 4) for k, _ in shown]
    lines.append(
        f"| {claims.label(r.method)} | {r.network} | {r.kind} "
        f"| {r.remaining:.2f} | {r.dataset} | {shot_name(r.n_shot)} | "
        f"{len(r.seeds)} | {r.selection or '-'} | " + " | ".join(values)
        + f" | {r.cell} |")
  if failed:
    lines += ["", "## Failed cells", "",
              f"No summary; the traceback is in the cell's {ERROR_FILE}. "
              "Fix the cause and re-run the sweep: finished cells are "
              "skipped.", ""]
    lines += [f"- **FAILED** `{r.cell}`: {r.error}" for r in failed]
  unregistered = sorted({r.method for r in rows if not r.registered
                         and r.method})
  if unregistered:
    lines += ["", f"Not registered here, so left out of the claims and "
              f"the family tables (see the warning the report printed): "
              f"{', '.join(f'`{m}`' for m in unregistered)}."]
  lines += ["", *claims_tables.markdown(result), *sensitivity.markdown(result)]
  if figure_names:
    lines += ["## Figures", "",
              f"At the {_selection_words(result)}; reliability diagrams "
              "only where the runs recorded that epoch's bins."]
    lines += [f"![{name}]({name})" for name in figure_names]
  return "\n".join(lines) + "\n"


def _not_run(result) -> str:
  if result.runs is None:
    return ""
  found = {r.cell for r in result.rows}
  missing = [r for r in result.runs if r["cell"] not in found]
  return (f", {len(missing)} of the study's {len(result.runs)} not run yet"
          if missing else "")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv=None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m reprog_jax.report",
      description="Writes report.md, report.csv, seeds.csv, claims.csv, "
      "analyses.csv and figures/ from every summary.json under DIR; with "
      "--plan, prints the seeds each claim needs instead.")
  parser.add_argument("directory", metavar="DIR",
                      help="a sweep's --workdir, or any tree of runs")
  parser.add_argument("--alpha", type=cli.probability, default=None,
                      help="significance level of every verdict (default: "
                      "the study's, recorded in DIR/study.json; else 0.05)")
  parser.add_argument("--similar-source-pp", type=cli.non_negative,
                      default=None,
                      help="claim 1 needs the dense and ticket source top-1 "
                      "within this many percentage points (default: the "
                      "study's; else 1.0)")
  parser.add_argument("--plan", type=plan_lib.effects, default=None,
                      metavar="EFFECT[,EFFECT2]",
                      help="write nothing; print, from this pilot study's "
                      "spread, the seeds per cell each claim needs for 80 %% "
                      "power to detect EFFECT percentage points of accuracy "
                      "(claim 1) and EFFECT2 of claim 2's quantity (default: "
                      "the study's power_effect)")
  args = parser.parse_args(argv)

  def report():
    options = design.options(args.directory, args.alpha,
                             args.similar_source_pp)
    if args.plan is not None:
      result = analyse(args.directory, options)
      print("\n".join(plan_lib.plan(result, *args.plan)))
      return
    written = write(args.directory, options)
    print(f"wrote {', '.join(sorted(written))} in {args.directory}")

  return cli.run(PROG, report)


if __name__ == "__main__":
  sys.exit(main())
