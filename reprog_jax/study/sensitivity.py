"""The sensitivity analyses of report.md: every analysis but the primary
one in a table, where they disagree with it, the hybrid methods' own
tables and the VP-gap analysis (`study.verdicts` computes)."""

from reprog_jax.data.fewshot import shot_name
from reprog_jax.study import claims
from reprog_jax.study import claims_tables as tables
from reprog_jax.study import design
from reprog_jax.study import verdicts

# Disagreements named in the one line; the rest are counted.
_NAMED = 8


def _what(summary) -> str:
  """'claim 2, LP + VP blmpp, `last`, NLL'."""
  methods = " + ".join(claims.label(m) for m in summary["methods"].split(
      " + "))
  return (f"claim {summary['claim']}, {methods}, `{summary['selection']}`, "
          f"{claims.quantity_name(summary['metric'])}")


def disagreements(result) -> str:
  """One line: which sensitivity analyses of claims 1 and 2 reach another
  overall verdict than the primary analysis of their claim."""
  primary = {c: result.primary(c)[1]["verdict"] for c in ("1", "2")}
  differ = [s for s in result.summaries if s["analysis"] == "sensitivity"
            and s["claim"] in primary and s["verdict"] != primary[s["claim"]]]
  if not differ:
    return ("No sensitivity analysis of claim 1 or 2 reaches another "
            "verdict than the primary analysis.")
  named = "; ".join(f"{_what(s)}: **{s['verdict']}**"
                    for s in differ[:_NAMED])
  more = (f"; and {len(differ) - _NAMED} more (analyses.csv)"
          if len(differ) > _NAMED else "")
  of = sum(s["analysis"] == "sensitivity" and s["claim"] in primary
           for s in result.summaries)
  return (f"Where a sensitivity analysis disagrees with the primary one "
          f"({len(differ)} of {of}): {named}{more}.")


def markdown(result) -> list[str]:
  """The sensitivity section of report.md."""
  others = [s for s in result.summaries if s["analysis"] == "sensitivity"]
  lines = ["## Sensitivity analyses", "", disagreements(result), "",
           "Every other method variant, model selection and quantity, each "
           "a family of its own decided by the same rules (claim 1's for "
           "accuracy, claim 2's for calibration; planned cells from "
           "study.json); the hybrid methods (a prompt with a new head: "
           "neither claim) and the VP-gap analysis. *MDE*: the median "
           "minimum detectable effect at 80 % power over the tested cells; "
           "*seeds*: what every cell would need for the effect of "
           "interest; *pooled*: the random-effects (DerSimonian-Laird) "
           "estimate over cells with a spread, 95 % interval, unadjusted "
           "and indicative (cells share runs); *along*: cells leaning the "
           "predicted way of those tested; *the paper's logged quantity*: "
           f"{design.LOGGED_QUANTITY}. Each cell: `claims.csv`.", ""]
  selections = sorted({a.selection for a in result.analyses},
                      key=list(design.SELECTIONS).index)
  lines += ["Model selections: " + "; ".join(
      f"`{s}`, {claims.selection_name(s, result.rows)}"
      for s in selections) + ".", ""]
  if others:
    lines += ["| claim | methods | selection | quantity | verdict | counts | "
              "units | MDE 80 % | seeds | pooled [95 % CI] | I^2 | along | "
              "direction |", "|" + " --- |" * 13]
    for s in others:
      places = tables.digits(s["units"])
      pooled = ("-" if s["pooled_estimate"] is None else
                f"{tables.number(s['pooled_estimate'], places)} "
                f"[{tables.number(s['pooled_ci_low'], places)}, "
                f"{tables.number(s['pooled_ci_high'], places)}]")
      tested = s["along"] + s["against"] + s["zero"]
      lines.append(
          f"| {s['claim']} | "
          + " + ".join(claims.label(m) for m in s["methods"].split(" + "))
          + f" | `{s['selection']}` | {claims.quantity_name(s['metric'])} | "
          f"**{s['verdict']}** | {verdicts.counts_sentence(s)} | "
          f"{s['units'] or '-'} | {tables.number(s['median_mde_80'], places)} "
          f"| {s['max_seeds_needed'] or '-'} | {pooled} | "
          + ("-" if s["i2"] is None else f"{100 * s['i2']:.0f} %")
          + f" | {s['along']} of {tested} | {s['direction'] or '-'} |")
    lines.append("")
  lines += _hybrids(result)
  lines += _gaps(result)
  return lines


def _at_primary(result, claim):
  """(analysis, summary, cells) of `claim`'s families at the primary
  selection (and, for calibration, the primary quantity)."""
  primary = result.options.primary
  for analysis, summary in zip(result.analyses, result.summaries):
    if analysis.claim != claim or analysis.selection != primary["selection"]:
      continue
    if analysis.universal and analysis.metric != primary["quantity"]:
      continue
    yield analysis, summary, [c for c in result.cells
                              if c["family"] == analysis.name]


def _hybrids(result) -> list[str]:
  found = list(_at_primary(result, "hybrid"))
  if not found:
    return []
  lines = ["### Hybrid methods (not a claim of the paper)", "",
           "Methods that prompt the input and read a new head: dense "
           "against ticket with claim 1's rules on accuracy and claim 2's "
           "on calibration, at the primary selection and quantity (the "
           "others: analyses.csv).", ""]
  for analysis, summary, cells in found:
    lines += [f"**{claims.label(analysis.methods[0])}, "
              f"{claims.quantity_name(analysis.metric)}: "
              f"{summary['verdict']}** "
              f"({verdicts.counts_sentence(summary)}).", ""]
    lines += tables.cell_table(cells, result.options,
                               source_gap=not analysis.universal)
    lines += [tables.power_sentence(summary, result.options), ""]
  return lines


def _gaps(result) -> list[str]:
  found = list(_at_primary(result, "gap"))
  lines = ["### The VP gap exceeds the LP gap (not claim 1)", "",
           "Per seed: (dense - ticket accuracy under VP) - (the same under "
           "LP), tested one-sided for > 0 by claim 1's rules without the "
           "source condition, at the primary selection (the others: "
           "analyses.csv). A ticket can hold this and still beat the dense "
           "network at VP: it is not the paper's claim 1.", ""]
  if not any(cells for _, _, cells in found):
    return lines + ["No cell has both a reprogramming and a linear-probing "
                    "method.", ""]
  lines += ["| dataset | shots | ticket | dense | methods | seeds | VP gap "
            "(pp) | LP gap (pp) | VP gap - LP gap [95 % CI, unadjusted] "
            "(pp) | p (Holm) | p opposite (Holm) | MDE 80 % (pp) | verdict |",
            "|" + " --- |" * 13]
  for _, _, cells in found:
    for c in cells:
      vp, lp = c["method"].split(" - ")
      lines.append(
          f"| {c['dataset']} | {shot_name(c['n_shot'])} | {c['ticket']} | "
          f"{c['dense']} | {claims.label(vp)} - {claims.label(lp)} | "
          f"{c['n_seeds']} | {tables.number(c['dense_mean'], 2)} | "
          f"{tables.number(c['ticket_mean'], 2)} | {tables.interval(c, 2)} | "
          f"{tables.p_text(c['p_adjusted'])} | "
          f"{tables.p_text(c['p_opposite_adjusted'])} | "
          f"{tables.number(c['mde_80'], 2)} | {tables.verdict_text(c)} |")
  return lines + [""]
