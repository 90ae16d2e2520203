"""The claims' files and tables: `seeds.csv`, `claims.csv`, `analyses.csv`
and the primary analysis of `report.md` (`study.claims` and
`study.verdicts` compute, this module lays out; the sensitivity analyses:
`study.sensitivity`)."""

import csv
import io

from reprog_jax.data.fewshot import shot_name
from reprog_jax.study import claims
from reprog_jax.study import design
from reprog_jax.study import verdicts

# seeds.csv: these columns first, then every other metric some run has
# (sorted), then the network's architecture and source top-1 (%).
SEED_COLUMNS = ("dataset", "n_shot", "network", "kind", "method", "seed",
                "selection", "epoch", "test_acc", "test_ece",
                "test_ece_adaptive", "test_pytorch_logged_quantity")
_NOT_METRICS = {"seed", "epoch", "lr", "best_epoch"}
CLAIM_TITLES = {"1": "Claim 1: tickets are not universal reprogrammers",
                "2": "Claim 2: dense networks are always better calibrated"}


def _csv_text(header, rows) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(header)
  # csv writes None as an empty field and floats as repr(): they parse
  # back exactly.
  writer.writerows(rows)
  return out.getvalue()


def seeds_csv(rows) -> str:
  """One line per (dataset, n_shot, network, method, seed, selection) of
  every finished run, the values as the runs recorded them (accuracy a
  fraction)."""
  done = [r for r in rows if r.status == "done"]
  others = sorted({key for r in done for records in r.selections.values()
                   for record in records.values() for key in record}
                  - set(SEED_COLUMNS) - _NOT_METRICS)
  header = SEED_COLUMNS + tuple(others) + ("arch", "source_top1")
  lines = []
  for r in done:
    for selection in design.SELECTIONS:
      for seed, record in sorted(r.selections.get(selection, {}).items()):
        lines.append([r.dataset, r.n_shot, r.network, r.kind, r.method, seed,
                      selection, record.get("epoch")]
                     + [record.get(k) for k in SEED_COLUMNS[8:] + tuple(
                         others)] + [r.arch, r.source_top1])
  return _csv_text(header, lines)


def claims_csv(cells) -> str:
  """claims.csv: one line per cell of every analysis, `claims.COLUMNS`."""
  return _csv_text(claims.COLUMNS,
                   [[c[k] for k in claims.COLUMNS] for c in cells])


def analyses_csv(summaries) -> str:
  """analyses.csv: one line per analysis, `verdicts.ANALYSIS_COLUMNS`."""
  return _csv_text(verdicts.ANALYSIS_COLUMNS,
                   [[s[k] for k in verdicts.ANALYSIS_COLUMNS]
                    for s in summaries])


# --------------------------------------------------------------------------
# Numbers as the tables show them
# --------------------------------------------------------------------------


def digits(units) -> int:
  """Decimals of a quantity: 2 for percentages, 4 for the others."""
  return 2 if units == "pp" else 4


def number(value, places=4) -> str:
  """`value` with `places` decimals, '-' for None."""
  return "-" if value is None else f"{value:.{places}f}"


def p_text(value) -> str:
  """A p-value to 3 significant digits, '-' for None."""
  return "-" if value is None else f"{value:.3g}"


def interval(cell, places) -> str:
  """'mean [low, high]' of a cell's difference, '-' without one."""
  if cell["diff_mean"] is None:
    return "-"
  if cell["ci_low"] is None:
    return number(cell["diff_mean"], places)
  return (f"{number(cell['diff_mean'], places)} "
          f"[{number(cell['ci_low'], places)}, "
          f"{number(cell['ci_high'], places)}]")


def verdict_text(cell) -> str:
  """'**verdict** (note)'."""
  note = f" ({cell['note']})" if cell["note"] else ""
  return f"**{cell['verdict']}**{note}"


def effect_text(options, metric) -> str:
  """The effect of interest of a quantity with its units, '-' if none."""
  effect = options.power_effect.get(metric)
  units = design.QUANTITIES[metric][1]
  return "-" if effect is None else f"{effect:g} {units}"


def power_sentence(summary, options) -> str:
  """What a family could have shown with the seeds it had."""
  units, metric = summary["units"], summary["metric"]
  if not summary["family_size"]:
    return "No cell of this family could be tested."
  places = digits(units)
  seeds = summary["median_seeds"]
  text = (f"Power: with {seeds:g} paired seeds per cell (median), a cell "
          f"of this family detects, with 80 % power (one-sided, level "
          f"{summary['alpha_per_cell']:.3g}), a difference of "
          f"{number(summary['median_mde_80'], places)} {units} (median "
          f"over its {summary['family_size']} tested cells)")
  effect = options.power_effect.get(metric)
  if effect is None:
    return text + "."
  needed = summary["max_seeds_needed"]
  text += (f"; {effect:g} {units} would need "
           + (f"{needed} paired seeds in every cell" if needed else
              "an unknown number of seeds (a cell without spread)"))
  mde = summary["median_mde_80"]
  if summary["verdict"] != "held" and mde is not None and mde > effect:
    text += (f". So a true difference of {effect:g} {units} could not have "
             f"been shown with {seeds:g} seeds")
  return text + "."


def direction_sentence(summary) -> str:
  """The family's sign count and pooled estimate, in one line."""
  units, places = summary["units"], digits(summary["units"])
  tested = summary["along"] + summary["against"] + summary["zero"]
  if not tested:
    return ""
  text = (f"Direction across cells: {summary['along']} of {tested} tested "
          f"cells lean the way the claim predicts")
  if summary["pooled_estimate"] is not None:
    text += (f"; random-effects pooled difference (DerSimonian-Laird, "
             f"{summary['pooled_cells']} cells with a spread) "
             f"{number(summary['pooled_estimate'], places)} {units} "
             f"[{number(summary['pooled_ci_low'], places)}, "
             f"{number(summary['pooled_ci_high'], places)}] (95 %, "
             f"unadjusted; cells share runs, so indicative), tau^2 "
             f"{summary['tau2']:.3g}, I^2 {100 * summary['i2']:.0f} %")
  if summary["direction"]:
    text += f": **{summary['direction']}**"
  return text + "."


# --------------------------------------------------------------------------
# report.md: the primary analysis
# --------------------------------------------------------------------------


def cell_table(cells, options, source_gap) -> list[str]:
  """A family's cells as a markdown table."""
  if not cells:
    return []
  units = cells[0]["units"]
  places = digits(units)
  means = "%" if units == "pp" else units
  universal = cells[0]["metric"] != design.CLAIM_ONE_QUANTITY
  head = ["dataset", "shots", "ticket", "remaining (%)", "dense", "method",
          "seeds (paired: dense, ticket)", f"dense ({means})",
          f"ticket ({means})",
          f"dense - ticket [95 % CI, unadjusted] ({units})"]
  head += ["source gap (pp)"] if source_gap else []
  head += ["p"] + ([] if universal else ["p (Holm)"]) + [
      "p opposite (Holm)", "p sign-flip", f"MDE 80 % ({units})",
      f"seeds for {effect_text(options, cells[0]['metric'])}", "verdict"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for c in cells:
    values = [c["dataset"], shot_name(c["n_shot"]), c["ticket"],
              number(c["remaining"], 2), c["dense"], claims.label(c["method"]),
              f"{c['n_seeds']} ({c['n_dense']}, {c['n_ticket']})",
              number(c["dense_mean"], places),
              number(c["ticket_mean"], places), interval(c, places)]
    values += [number(c["source_gap_pp"], 2)] if source_gap else []
    values += [p_text(c["p_value"])] + (
        [] if universal else [p_text(c["p_adjusted"])])
    values += [p_text(c["p_opposite_adjusted"]), p_text(c["p_signflip"]), number(c["mde_80"], places),
               "-" if c["seeds_needed"] is None else str(c["seeds_needed"]),
               verdict_text(c)]
    lines.append("| " + " | ".join(map(str, values)) + " |")
  return lines + [""]


def declared(options, rows) -> str:
  """The primary analysis and the levels, in one paragraph."""
  primary = options.primary
  prompt = design.method_key(primary["method"], primary["variant"])
  variant = (f"variant `{primary['variant']}`" if primary["variant"] else
             "its default label mapping and prompt")
  where = (f"declared in `{options.declared_in}`" if options.declared_in
           else "the defaults of `configs/study.py` (no study.json here)")
  effect = options.power_effect.get(primary["quantity"])
  effects = (f"{effect_text(options, design.CLAIM_ONE_QUANTITY)} of "
             f"accuracy, " + ("none" if effect is None else f"{effect:g}")
             + f" of {claims.quantity_name(primary['quantity'])}")
  return (f"The primary analysis ({where}): {claims.label(prompt)} "
          f"(`{primary['method']}`, {variant}) for claim 1, and "
          f"{claims.label(primary['probe'])} (`{primary['probe']}`) with it "
          f"for claim 2; model selection `{primary['selection']}` ("
          f"{claims.selection_name(primary['selection'], rows)}); claim 2's "
          f"quantity {claims.quantity_name(primary['quantity'])} "
          f"(`{primary['quantity']}`). alpha = {options.alpha:g}; claim 1 "
          f"needs source accuracies within {options.similar_source_pp:g} pp; "
          f"effects of interest: {effects}. Everything else is a "
          f"sensitivity analysis.")


def headline(result) -> list[str]:
  """'**Claim 1 ...: not shown** (counts).' for both primary claims."""
  lines = []
  for claim in ("1", "2"):
    _, summary, _ = result.primary(claim)
    lines.append(f"**{CLAIM_TITLES[claim]}: {summary['verdict']}** "
                 f"({verdicts.counts_sentence(summary)}).")
  return lines


def markdown(result) -> list[str]:
  """The primary analysis of report.md: its two overall verdicts, then
  each claim's cells, power and direction."""
  options = result.options
  lines = ["## Primary analysis", "", declared(options, result.rows), ""]
  lines += [" ".join(headline(result)), ""]
  if result.runs is None:
    lines += ["No study.json here: the planned cells are the ones found.",
              ""]
  lines += [
      "Each cell: one ticket against the dense network of its "
      "architecture on one dataset and few-shot budget, runs paired by "
      "seed (a seed gives both the same few-shot subset and training "
      "order); *dense - ticket*: the mean of the per-seed differences "
      "with its two-sided 95 % Student-t interval (unadjusted for "
      "multiplicity); *p*: the one-sided paired t-test in the claim's "
      "direction (the exact sign-flip test's where the differences have "
      "zero variance); *p sign-flip*: the exact sign-flip test over the "
      "2^n sign patterns; *MDE 80 %*: the smallest true difference the "
      "cell's test detects with 80 % power given its spread; *seeds for*: "
      "the paired seeds it would need to detect the effect of interest. "
      f"Cells need {claims.MIN_SEEDS} paired seeds. How the claims are "
      "decided: the README. Every number is in `claims.csv` (one row per "
      "cell), every analysis in `analyses.csv`, every seed in `seeds.csv`.",
      ""]
  _, one, cells = result.primary("1")
  lines += [f"### {CLAIM_TITLES['1']}", "",
            "The ticket's reprogramming accuracy is significantly lower "
            "than the dense network's (Holm over the family) while their "
            "source accuracies are similar; the paper claims it for some "
            "targets. *held* / *reversed* (the ticket significantly "
            "better) / *inconclusive*; *not applicable* where the source "
            "accuracies are unknown or differ by more than "
            f"{options.similar_source_pp:g} pp (source gap: dense - "
            f"ticket). **Overall: {one['verdict']}** "
            f"({verdicts.counts_sentence(one)}).", ""]
  lines += cell_table(cells, options, source_gap=True)
  lines += [power_sentence(one, options), direction_sentence(one), ""]
  _, two, cells = result.primary("2")
  lines += [f"### {CLAIM_TITLES['2']}", "",
            "The dense network's "
            f"{claims.quantity_name(two['metric'])} is significantly below "
            "the ticket's in the cell on its own (no correction: the paper "
            "claims it always, so every planned cell must hold); "
            "*contradicted* where it is significantly above (Holm over the "
            f"family). **Overall: {two['verdict']}** "
            f"({verdicts.counts_sentence(two)}).", ""]
  lines += cell_table(cells, options, source_gap=False)
  lines += [power_sentence(two, options), direction_sentence(two), ""]
  return lines


def summary_lines(result) -> list[str]:
  """The primary verdicts with their minimum detectable effects, for a
  terminal (`reprog_jax.demo`)."""
  lines = ["primary analysis: " + " ".join(headline(result)).replace(
      "**", "")]
  for claim in ("1", "2"):
    _, summary, cells = result.primary(claim)
    for c in cells:
      places = digits(c["units"])
      mde = ("" if c["mde_80"] is None else
             f", MDE 80 % {number(c['mde_80'], places)}")
      note = f" ({c['note']})" if c["note"] else ""
      lines.append(
          f"  claim {claim}, {c['dataset']} {shot_name(c['n_shot'])} "
          f"{c['ticket']} {claims.label(c['method'])}: dense - ticket "
          f"{interval(c, places)} {c['units']}{mde}: {c['verdict']}{note}")
    lines.append("  " + power_sentence(summary, result.options))
  return lines
