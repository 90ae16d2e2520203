"""`python -m reprog_jax.report DIR --plan EFFECT[,EFFECT2]`: the seeds per
cell each claim needs, from a pilot study's spread, before the GPU time is
spent.

For each cell of the primary analysis with at least 2 paired seeds, the
sample standard deviation of its paired differences (the pilot's spread)
gives the seeds with which the one-sided paired t-test detects the effect
with 80 % power (`study.power`): claim 1 at alpha / m (Bonferroni over its
m applicable cells: Holm's first step), claim 2 at alpha per cell (each
cell is tested on its own) and, since the claim needs EVERY cell held, also
at the per-cell power 0.8^(1/K) that makes all K planned cells hold
together with 80 % (cells treated as independent, which they are not
quite: an indication). The pooled spread (the root mean square of the
cells' spreads, weighted by their degrees of freedom) gives one number for
the whole family; a pilot's spread from 2 or 3 seeds is itself uncertain.
"""

import argparse
import math

from reprog_jax.data.fewshot import shot_name
from reprog_jax.study import claims
from reprog_jax.study import power
from reprog_jax.study.runs import ReportError


def effects(text) -> tuple[float, float | None]:
  """argparse type: 'EFFECT' or 'EFFECT,EFFECT2', positive numbers: the
  accuracy effect in percentage points, and claim 2's in its units."""
  parts = text.split(",")
  if len(parts) > 2:
    raise argparse.ArgumentTypeError(
        f"{text!r}: give EFFECT or EFFECT,EFFECT2 (e.g. 1.0 or 1.0,0.01)")
  values = []
  for part in parts:
    try:
      value = float(part)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{part!r} is not a number; give the effect in percentage points "
          f"of accuracy, e.g. 1.0 (and claim 2's after a comma: 1.0,0.01)"
      ) from None
    if not 0 < value < math.inf:
      raise argparse.ArgumentTypeError(f"{part!r} is not a positive number")
    values.append(value)
  return values[0], values[1] if len(values) > 1 else None


_UNKNOWN_SOURCE = "source accuracy of a network unknown"


def _plannable(cell) -> bool:
  """Whether a cell will be tested once the study runs: applicable, or
  lacking a source accuracy the study can still record."""
  return (cell["verdict"] != "not applicable"
          or _UNKNOWN_SOURCE in cell["note"])


def _spread_cells(cells) -> list[dict]:
  """The cells whose spread the pilot measured: 2 or more paired seeds,
  finite values, plannable."""
  return [c for c in cells if _plannable(c) and c["test"].finite
          and c["n_seeds"] >= 2]


def pooled_sd(cells) -> float | None:
  """sqrt(sum (n_i - 1) sd_i^2 / sum (n_i - 1)) over `cells`."""
  df = sum(c["n_seeds"] - 1 for c in cells)
  if not df:
    return None
  return math.sqrt(sum((c["n_seeds"] - 1) * c["diff_sd"] ** 2
                       for c in cells) / df)


def _needed(effect, sd, alpha, target) -> str:
  if sd == 0:
    return "no spread to say (zero variance)"
  needed = power.seeds_needed(effect, sd, alpha, target)
  return (f"{needed} seeds" if needed else
          f"more than {power.MAX_SEEDS} seeds")


def plan(result, accuracy_effect, calibration_effect=None) -> list[str]:
  """The --plan lines for a `verdicts.Result` (the pilot's analyses).

  Raises:
    ReportError (`runs.ReportError`): no cell of the primary analysis has
      the 2 paired seeds a spread needs.
  """
  options = result.options
  analysis_one, summary_one, cells_one = result.primary("1")
  analysis_two, summary_two, cells_two = result.primary("2")
  quantity = analysis_two.metric
  if calibration_effect is None:
    calibration_effect = options.power_effect.get(quantity)
  ones, twos = _spread_cells(cells_one), _spread_cells(cells_two)
  if not ones and not twos:
    raise ReportError(
        "no cell of the primary analysis has 2 paired seeds of a dense "
        "network and a ticket, so there is no spread to plan from; run a "
        "pilot with at least 2 seeds per cell")
  lines = [f"Seeds per cell for 80 % power (one-sided paired t-test), from "
           f"the spread of the paired differences in this pilot (primary "
           f"analysis, selection `{analysis_one.selection}`). A spread "
           f"from few seeds is itself uncertain: treat these as estimates."]
  # Claim 1: the family is every cell the study will test (the pilot's
  # testable ones, those it ran with too few seeds, those lacking a source
  # accuracy); a cell of dissimilar source accuracies never is.
  size = sum(map(_plannable, cells_one))
  alpha = options.alpha / max(size, 1)
  lines += ["", f"Claim 1 ({claims.label(analysis_one.methods[0])}, "
            f"accuracy), effect {accuracy_effect:g} pp, "
            + (f"family of {size} cell(s): level alpha / {size} = "
               f"{alpha:.3g} each:" if size else "no cell to test:")]
  lines += _cell_lines(ones, accuracy_effect, alpha, power.POWER, "pp")
  if ones:
    sd = pooled_sd(ones)
    lines.append(f"  pooled sd {sd:.3g} pp -> "
                 f"{_needed(accuracy_effect, sd, alpha, power.POWER)} per "
                 f"cell")
  unknown = sum(c["verdict"] == "not applicable" and _plannable(c)
                for c in cells_one)
  if unknown:
    lines.append(f"  ({unknown} cell(s) lack a network's source accuracy: "
                 f"record it, or they are never tested)")
  dissimilar = len(cells_one) - size
  if dissimilar:
    lines.append(f"  ({dissimilar} cell(s) of dissimilar source accuracies: "
                 f"never tested)")
  planned = summary_two["cells"] + summary_two["missing"]
  joint = power.POWER ** (1 / max(planned, 1))
  name = claims.quantity_name(quantity)
  methods = " + ".join(map(claims.label, analysis_two.methods))
  lines += ["", f"Claim 2 ({methods}, {name}), effect "
            + (f"{calibration_effect:g}" if calibration_effect else "-")
            + f", {planned} planned cell(s), each at alpha = "
            f"{options.alpha:g}; for every cell to hold together with 80 % "
            f"(cells treated as independent) each needs power "
            f"{joint:.3f}:"]
  if calibration_effect is None:
    lines.append(f"  no effect of interest for {quantity}: give one, "
                 f"--plan {accuracy_effect:g},EFFECT2")
    return lines
  for c in twos:
    sd = c["diff_sd"]
    lines.append(
        f"  {_where(c)}: sd {sd:.3g} over {c['n_seeds']} seeds -> "
        f"{_needed(calibration_effect, sd, options.alpha, power.POWER)} per "
        f"cell, {_needed(calibration_effect, sd, options.alpha, joint)} for "
        f"all cells")
  if twos:
    sd = pooled_sd(twos)
    lines.append(
        f"  pooled sd {sd:.3g} -> "
        f"{_needed(calibration_effect, sd, options.alpha, power.POWER)} per "
        f"cell, {_needed(calibration_effect, sd, options.alpha, joint)} for "
        f"all cells")
  return lines


def _where(cell) -> str:
  return (f"{cell['dataset']} {shot_name(cell['n_shot'])} {cell['ticket']} "
          f"{claims.label(cell['method'])}")


def _cell_lines(cells, effect, alpha, target, units) -> list[str]:
  return [f"  {_where(c)}: sd {c['diff_sd']:.3g} {units} over "
          f"{c['n_seeds']} seeds -> "
          f"{_needed(effect, c['diff_sd'], alpha, target)}" for c in cells]

