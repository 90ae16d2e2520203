"""How a family's cells become verdicts, and what a family says as a whole.

Claim 1 (and every accuracy family: the hybrids', the VP gap's), per cell:
  - `not applicable` when either network's source accuracy is unknown or
    |source gap| > `similar_source_pp` (after rounding to 0.01 pp): shown,
    never tested, not in the family (the VP gap has no such condition);
  - `not testable` with fewer than `claims.MIN_SEEDS` paired seeds or a
    non-finite value on either side;
  - the other cells form ONE Holm family: `held` when the Holm-adjusted
    one-sided p in the claim's direction < alpha, `reversed` when the
    Holm-adjusted opposite-direction p < alpha, else `inconclusive`.
  Overall: `held` when some cell is held, else `not shown`.
Claim 2 (and every calibration family), per cell: `not testable` as
above; `held` when the cell's own one-sided p < alpha (no correction: a
universal claim needs every cell significant on its own, an
intersection-union test); `contradicted` when the opposite-direction p,
Holm-adjusted over the family, < alpha; else `inconclusive`. Overall:
`held` only when EVERY planned cell (the study's grid) is held,
`contradicted` when any cell is, else `inconclusive`.

The p of a cell is its paired t-test's, or its exact sign-flip test's
where the differences have zero variance (`study.statistics`). Power
(`study.power`): each cell's minimum detectable effect at 80 % power, at
the level its held test uses (alpha / family size for claim 1, the first
Holm step; alpha for claim 2), and the seeds it would need for the
study's `power_effect`. Direction across cells (`study.meta_analysis`):
per family, the random-effects pooled difference and the sign count.
"""

import statistics as py_statistics
from typing import Any, NamedTuple

from reprog_jax.study import claims
from reprog_jax.study import meta_analysis
from reprog_jax.study import power
from reprog_jax.study import statistics

CLAIM_ONE_WORDS = ("held", "reversed", "inconclusive", "not applicable",
                   "not testable")
CLAIM_TWO_WORDS = ("held", "contradicted", "inconclusive", "not testable")
# analyses.csv, one row per analysis (family).
ANALYSIS_COLUMNS = (
    "analysis", "family", "claim", "metric", "selection", "methods", "units",
    "verdict", "cells", "held", "reversed", "contradicted", "inconclusive",
    "not_applicable", "not_testable", "missing", "family_size",
    "alpha_per_cell", "median_seeds", "median_mde_80", "max_seeds_needed",
    "pooled_cells", "pooled_estimate", "pooled_ci_low", "pooled_ci_high",
    "tau2", "i2", "along", "against", "zero", "direction")
CONSISTENT = "consistent in direction, not shown cell by cell"
AGAINST = "the pooled estimate is against the claim"
_TESTED = ("held", "reversed", "contradicted", "inconclusive")


def cell_alpha(analysis, options, family_size) -> float:
  """The level of a cell's held test: alpha / family size for a Holm
  family (its first step), alpha for a universal claim's cells."""
  if analysis.universal:
    return options.alpha
  return options.alpha / max(family_size, 1)


def decide(analysis, cells, options) -> None:
  """Gives every cell of one family (`claims.cells`) its verdict, Holm's
  adjusted p-values, `family_size`, `mde_80` and `seeds_needed`."""
  members = [c for c in cells if c["verdict"] is None]
  size = len(members)
  held = statistics.holm([c["p_value"] for c in members])
  against = statistics.holm([c["p_opposite"] for c in members])
  for c, p, q in zip(members, held, against):
    c["p_opposite_adjusted"] = q
    if analysis.universal:
      c["p_adjusted"] = None  # Each cell on its own: no correction.
      c["verdict"] = ("held" if c["p_value"] < options.alpha else
                      "contradicted" if q < options.alpha else
                      "inconclusive")
    else:
      c["p_adjusted"] = p
      c["verdict"] = ("held" if p < options.alpha else
                      "reversed" if q < options.alpha else "inconclusive")
  alpha = cell_alpha(analysis, options, size)
  effect = options.power_effect.get(analysis.metric)
  for c in cells:
    c["family_size"] = size
    if c["verdict"] not in _TESTED:  # Never tested: no p-values.
      for key in ("p_value", "p_adjusted", "p_opposite",
                  "p_opposite_adjusted", "p_signflip"):
        c[key] = None
    never = c["verdict"] == "not applicable" or not c["test"].finite
    c["mde_80"] = None if never else power.mde(c["diff_sd"], c["n_seeds"],
                                               alpha)
    c["seeds_needed"] = None if never else power.seeds_needed(
        effect, c["diff_sd"], alpha)
    if c["test"].zero_variance and c["verdict"] in _TESTED:
      c["note"] = "; ".join(filter(None, (
          c["note"], "zero variance: p is the sign-flip test's")))


def planned_cells(analysis, runs, rows) -> set | None:
  """The (dataset, n_shot, dense, ticket, method) cells of `analysis` that
  the study planned (`design.planned_runs`), None without a plan."""
  if runs is None:
    return None
  arch = {r.network: r.arch for r in rows if r.arch}
  by_key = {}
  for run in runs:
    by_key.setdefault((run["dataset"], run["n_shot"], run["method"],
                       run["kind"]), set()).add(run["network"])
  planned = set()
  for (dataset, n_shot, method, kind), networks in by_key.items():
    if kind != "dense" or method not in analysis.methods:
      continue
    for dense in networks:
      for ticket in by_key.get((dataset, n_shot, method, "ticket"), ()):
        if None not in (arch.get(dense), arch.get(ticket)) and (
            arch[dense] != arch[ticket]):
          continue  # Networks of different architectures: no cell.
        planned.add((dataset, n_shot, dense, ticket, method))
  return planned


def _key(cell) -> tuple:
  return (cell["dataset"], cell["n_shot"], cell["dense"], cell["ticket"],
          cell["method"])


def summarize(analysis, cells, options, planned=None) -> dict:
  """One analyses.csv row (`ANALYSIS_COLUMNS`): the family's overall
  verdict and counts, its power, and its direction across cells.

  Args:
    analysis: a `claims.Analysis`.
    cells: its cells, decided (`decide`).
    options: the declared analysis.
    planned: the cells the study planned (`planned_cells`); None: the
      cells found are the plan.
  """
  counts = {w: sum(c["verdict"] == w for c in cells)
            for w in CLAIM_ONE_WORDS + CLAIM_TWO_WORDS}
  found = {_key(c) for c in cells}
  missing = len((planned or set()) - found) if analysis.universal else 0
  if analysis.universal:
    verdict = ("contradicted" if counts["contradicted"] else
               "held" if cells and not missing and
               counts["held"] == len(cells) else "inconclusive")
  else:
    verdict = "held" if counts["held"] else "not shown"
  members = [c for c in cells if c["verdict"] in _TESTED]
  spread = [c for c in members if c["diff_sd"]]
  pooled = meta_analysis.dersimonian_laird(
      [c["diff_mean"] for c in spread],
      [c["diff_sd"] ** 2 / c["n_seeds"] for c in spread]) if len(
          spread) > 1 else None
  greater = analysis.direction == statistics.GREATER
  along, against, zero = meta_analysis.signs(
      [c["diff_mean"] for c in members], greater)
  direction = ""
  if pooled and verdict != "held":
    low, high = ((pooled.ci_low, pooled.ci_high) if greater else
                 (-pooled.ci_high, -pooled.ci_low))
    direction = CONSISTENT if low > 0 else AGAINST if high < 0 else ""
  mdes = [c["mde_80"] for c in members if c["mde_80"] is not None]
  needed = [c["seeds_needed"] for c in members]
  return {
      "analysis": "primary" if analysis.primary else "sensitivity",
      "family": analysis.name, "claim": analysis.claim,
      "metric": analysis.metric, "selection": analysis.selection,
      "methods": " + ".join(analysis.methods),
      "units": cells[0]["units"] if cells else None, "verdict": verdict,
      "cells": len(cells), "held": counts["held"],
      "reversed": counts["reversed"], "contradicted": counts["contradicted"],
      "inconclusive": counts["inconclusive"],
      "not_applicable": counts["not applicable"],
      "not_testable": counts["not testable"], "missing": missing,
      "family_size": len(members),
      "alpha_per_cell": cell_alpha(analysis, options, len(members)),
      "median_seeds": (py_statistics.median(c["n_seeds"] for c in members)
                       if members else None),
      "median_mde_80": py_statistics.median(mdes) if mdes else None,
      # Unknown (None) where some cell's spread could not say.
      "max_seeds_needed": (max(needed) if needed and None not in needed
                           else None),
      "pooled_cells": pooled.k if pooled else 0,
      "pooled_estimate": pooled.estimate if pooled else None,
      "pooled_ci_low": pooled.ci_low if pooled else None,
      "pooled_ci_high": pooled.ci_high if pooled else None,
      "tau2": pooled.tau2 if pooled else None,
      "i2": pooled.i2 if pooled else None,
      "along": along, "against": against, "zero": zero,
      "direction": direction}


def counts_sentence(summary) -> str:
  """'2 held, 1 inconclusive, 1 missing': the counts a verdict rests on."""
  words = ("held", "reversed", "contradicted", "inconclusive",
           "not_applicable", "not_testable", "missing")
  said = [f"{summary[w]} {w.replace('_', ' ')}" for w in words if summary[w]]
  return ", ".join(said).replace("missing", "planned but missing") or (
      "no cell")


class Result(NamedTuple):
  """Everything the report says about its claims.

  Attributes:
    rows: the report's rows.
    options: the declared analysis (`design.Options`).
    runs: the planned runs (`design.planned_runs`), None without a
      study.json.
    analyses: every `claims.Analysis`, the primary ones first.
    cells: every cell of every analysis, decided.
    summaries: one `summarize` per analysis, in `analyses`' order.
  """
  rows: list
  options: Any
  runs: list | None
  analyses: list
  cells: list
  summaries: list

  def primary(self, claim) -> tuple:
    """(analysis, its summary, its cells) of the primary analysis of claim
    '1' or '2'."""
    for analysis, summary in zip(self.analyses, self.summaries):
      if analysis.primary and analysis.claim == claim:
        return analysis, summary, [c for c in self.cells
                                   if c["family"] == analysis.name]
    raise KeyError(claim)


def analyse(rows, options, runs) -> Result:
  """Every analysis of `rows` (`claims.analyses`), each family decided on
  its own."""
  chosen = claims.analyses(rows, options)
  all_cells, summaries = [], []
  for analysis in chosen:
    mine = claims.cells(rows, analysis, options)
    decide(analysis, mine, options)
    planned = planned_cells(analysis, runs, rows)
    summaries.append(summarize(analysis, mine, options, planned))
    all_cells += mine
  return Result(rows, options, runs, chosen, all_cells, summaries)
