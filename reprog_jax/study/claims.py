"""The paper's two claims, tested on a sweep's runs (`reprog_jax.report`):
which cells there are, and each cell's statistics.

In the paper's words (abstract):
  1. "for certain target datasets, reprogramming an LT yields significantly
     lower performance than the reprogrammed dense model although their
     corresponding upstream performance is similar": per dataset x n_shot
     x ticket, the test accuracy of a reprogramming method (registry family
     'prompt': ILM-VP, each label mapping and prompt on its own,
     `method_key`).
  2. "the calibration of dense models is always superior to that of their
     lottery ticket counterparts under both LP and VP regimes": per
     dataset x n_shot x ticket x {LP, VP}, a calibration quantity.

A cell is one ticket against one dense network of its architecture, runs
paired by seed (`study.statistics`): d_s = dense_s - ticket_s, accuracy in
percentage points. An analysis (`Analysis`) is one family of cells: one
claim, method variant (claim 2: the probe and one prompt method), model
selection and quantity, over ALL datasets x budgets x tickets together.
The study declares one primary analysis (`design.Options.primary`); every
other one is a sensitivity analysis, as are the hybrid methods' tables
(family 'hybrid': a prompt with a new head; never claim 1 nor the primary
claim 2) and the VP-gap analysis (the ticket's accuracy shortfall under
reprogramming minus its shortfall under linear probing, per seed). How the
cells become verdicts: `study.verdicts`.
"""

from typing import NamedTuple

from reprog_jax import methods
from reprog_jax.study import design
from reprog_jax.study import statistics
# Options, method_key and SELECTIONS are also this module's names, as
# before `study.design` held them.
from reprog_jax.study.design import (CLAIM_ONE_QUANTITY, CLAIM_TWO_QUANTITIES,
                                     QUANTITIES, SELECTIONS, Options,
                                     method_key)

# claims.csv, one row per cell of each analysis.
COLUMNS = ("analysis", "family", "claim", "metric", "selection", "dataset",
           "n_shot", "dense", "ticket", "method", "family_size", "n_seeds",
           "n_dense", "n_ticket", "units", "dense_mean", "ticket_mean",
           "diff_mean", "diff_sd", "ci_low", "ci_high", "p_value",
           "p_adjusted", "p_opposite", "p_opposite_adjusted", "p_signflip",
           "mde_80", "seeds_needed", "source_gap_pp", "verdict", "note")
# The fewest paired seeds a cell is tested with: with 2 (1 degree of
# freedom) the t-test's spread is one number and the sign-flip p cannot go
# below 0.25.
MIN_SEEDS = 3


def variant_key(method, config) -> str:
  """`method_key` of a run of `method` with `config` (its summary's)."""
  spec = methods.METHODS.get(method)
  return method_key(method, spec.variant(config) if spec else "")


def _split(method) -> tuple[str, str]:
  """(method, variant) of a `method_key`."""
  name, _, variant = str(method).partition("[")
  return name, variant.rstrip("]")


def family(method) -> str | None:
  """The registry's family of `method` ('prompt', 'probe', 'hybrid'),
  None if the method is not registered here."""
  spec = methods.METHODS.get(_split(method)[0])
  return spec.family if spec else None


def label(method) -> str:
  """The registry's label of `method` ('VP', 'LP', 'VP blmpp'), else its
  name."""
  name, variant = _split(method)
  spec = methods.METHODS.get(name)
  if not spec:
    return str(method)
  return f"{spec.label} {variant}" if variant else spec.label


def method_rank(method) -> tuple[int, str]:
  """A method's place in tables and figures: the registry's order, then
  its variants after it by name."""
  names = list(methods.METHODS)
  name, variant = _split(method)
  return (names.index(name) if name in names else len(names)), variant


class Comparison(NamedTuple):
  """One ticket against one dense network on one dataset x n_shot.

  `runs` maps (kind, method) to the report's `Row`, or None when no such
  run exists.
  """
  dataset: str
  n_shot: int
  dense: str
  ticket: str
  remaining: float | None
  source_gap_pp: float | None
  runs: dict

  @property
  def methods(self) -> list[str]:
    return sorted({m for _, m in self.runs})

  def records(self, kind, method, selection) -> dict | None:
    """{seed: record} of a finished run at `selection` (None: no such
    finished run)."""
    row = self.runs.get((kind, method))
    if row is None or row.status != "done":
      return None
    return row.selections.get(selection, {})

  def values(self, kind, method, selection, metric, scale=1.0) -> dict:
    """{seed: scale * value} of a finished run (empty when missing or
    failed); NaN stays NaN."""
    records = self.records(kind, method, selection) or {}
    return {seed: scale * r[metric] for seed, r in records.items()
            if r.get(metric) is not None}


def comparisons(rows) -> list[Comparison]:
  """Every (dense, ticket) pair of one architecture, per dataset x n_shot
  where either appears."""
  by_key = {}
  for row in rows:
    if row.dataset is not None:
      by_key.setdefault((row.dataset, row.n_shot), []).append(row)
  result = []
  for (dataset, n_shot), group in sorted(by_key.items(),
                                         key=lambda kv: _cell_order(kv[0])):
    found_methods = sorted({r.method for r in group if r.method})

    def networks(kind, group=group):
      # A failed run knows its network's name but not its architecture.
      arch = {}
      for r in group:
        if r.kind == kind and r.network is not None:
          arch[r.network] = arch.get(r.network) or r.arch
      return sorted(arch.items())

    def source(name, group=group):
      return next((r.source_top1 for r in group if r.network == name
                   and r.source_top1 is not None), None)

    for dense, dense_arch in networks("dense"):
      for ticket, ticket_arch in networks("ticket"):
        if None not in (dense_arch, ticket_arch) and dense_arch != ticket_arch:
          continue
        runs = {(kind, m): next((r for r in group if r.network == name
                                 and r.method == m and r.kind == kind), None)
                for kind, name in (("dense", dense), ("ticket", ticket))
                for m in found_methods}
        remaining = next((r.remaining for r in group
                          if r.network == ticket and r.remaining), None)
        sources = source(dense), source(ticket)
        gap = (None if None in sources else sources[0] - sources[1])
        result.append(Comparison(dataset, n_shot, dense, ticket, remaining,
                                 gap, runs))
  return result


def _cell_order(key):
  dataset, n_shot = key
  return dataset, n_shot == -1, n_shot


# --------------------------------------------------------------------------
# Analyses: the families
# --------------------------------------------------------------------------


class Analysis(NamedTuple):
  """One family of cells.

  Attributes:
    claim: '1', '2', 'hybrid' (a hybrid method, dense vs ticket, claim 1's
      rules on accuracy and claim 2's on calibration) or 'gap' (the VP
      gap minus the LP gap, claim 1's rules).
    metric: the quantity (`design.QUANTITIES`).
    selection: the model selection (`design.SELECTIONS`).
    methods: the method keys whose cells form the family ('gap': the
      prompt method, then the probe method).
    primary: whether it is the study's declared primary analysis.
  """
  claim: str
  metric: str
  selection: str
  methods: tuple
  primary: bool = False

  @property
  def name(self) -> str:
    """Its id in claims.csv's `family` column."""
    return "|".join((self.claim, "+".join(self.methods), self.selection,
                     self.metric))

  @property
  def universal(self) -> bool:
    """Calibration (claim 2's rules: every cell on its own) rather than
    accuracy (claim 1's: Holm over the family, some cell)."""
    return self.metric != CLAIM_ONE_QUANTITY

  @property
  def direction(self) -> str:
    """What the paper predicts for dense - ticket."""
    return statistics.LESS if self.universal else statistics.GREATER

  @property
  def gated_by_source(self) -> bool:
    """Claim 1's cells need networks of similar source accuracy."""
    return self.claim in ("1", "hybrid") and not self.universal


def analyses(rows, options=Options()) -> list[Analysis]:
  """Every analysis of `rows`, the primary ones first: claim 1 per prompt
  method x selection; claim 2 per probe method x prompt method x
  selection x quantity; the hybrids'; the VP gap's."""
  done = [r for r in rows if r.status == "done"]
  primary = options.primary
  found = {}
  for r in rows:
    if r.method and family(r.method):
      found.setdefault(family(r.method), set()).add(r.method)
  # The declared methods count even without a run: their planned cells
  # are then missing, which claim 2 must say.
  prompt = method_key(primary["method"], primary["variant"])
  found.setdefault("prompt", set()).add(prompt)
  found.setdefault("probe", set()).add(primary["probe"])
  order = lambda keys: sorted(keys, key=lambda m: (method_rank(m), m))
  prompts, probes = order(found["prompt"]), order(found["probe"])
  hybrids = order(found.get("hybrid", ()))
  chosen = [s for s in SELECTIONS if s == primary["selection"]
            or any(r.selections.get(s) for r in done)]

  def has(selection, metric):
    return metric == primary["quantity"] or any(
        metric in record for r in done
        for key in {selection, "last"}
        for record in r.selections.get(key, {}).values())

  result = []
  for selection in chosen:
    for vp in prompts:
      result.append(Analysis("1", CLAIM_ONE_QUANTITY, selection, (vp,),
                             vp == prompt and selection ==
                             primary["selection"]))
    for lp in probes:
      for vp in prompts:
        result += [Analysis("2", q, selection, (lp, vp),
                            (lp, vp, selection, q) == (
                                primary["probe"], prompt,
                                primary["selection"], primary["quantity"]))
                   for q in CLAIM_TWO_QUANTITIES if has(selection, q)]
    for hybrid in hybrids:
      result += [Analysis("hybrid", q, selection, (hybrid,))
                 for q in (CLAIM_ONE_QUANTITY,) + CLAIM_TWO_QUANTITIES
                 if has(selection, q)]
    result += [Analysis("gap", CLAIM_ONE_QUANTITY, selection, (vp, lp))
               for vp in prompts for lp in probes]
  return sorted(result, key=lambda a: not a.primary)


# --------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------


def cells(rows, analysis, options=Options()) -> list[dict]:
  """The cells of `analysis` (claims.csv rows without the family's
  columns: `verdicts.decide` adds them), in dataset, n_shot, ticket,
  method order."""
  result = []
  for c in comparisons(rows):
    if analysis.claim == "gap":
      vp, lp = analysis.methods
      if any(c.runs.get((k, m)) is None for k in ("dense", "ticket")
             for m in (vp, lp)):
        continue
      result.append(_gap_cell(analysis, c, vp, lp))
      continue
    for method in analysis.methods:
      if None in (c.runs.get(("dense", method)),
                  c.runs.get(("ticket", method))):
        # Never asked of this pair (a sweep may run a variant on some
        # networks only); a run that failed is a row, and not testable.
        continue
      result.append(_cell(analysis, c, method, options))
  return result


def _selection(c, analysis, methods_) -> tuple[str, str]:
  """(the selection a cell uses, a note): 'validation' falls back to the last epoch where a run has no validation split."""
  key = analysis.selection
  if key != "validation":
    return key, ""
  for kind in ("dense", "ticket"):
    for m in methods_:
      records = c.records(kind, m, key)
      if records is not None and not records:
        return "last", "last epoch: no validation split"
  return key, ""


def _base(analysis, c, method, test, note) -> dict:
  units = QUANTITIES[analysis.metric][1]
  cell = {"analysis": "primary" if analysis.primary else "sensitivity",
          "family": analysis.name, "claim": analysis.claim,
          "metric": analysis.metric, "selection": analysis.selection,
          "dataset": c.dataset, "n_shot": c.n_shot, "dense": c.dense,
          "ticket": c.ticket, "method": method, "n_seeds": test.n,
          "units": units, "source_gap_pp": c.source_gap_pp,
          "remaining": c.remaining, "note": note, "test": test}
  for key in ("dense_mean", "ticket_mean", "diff_mean", "diff_sd", "ci_low",
              "ci_high", "p_value", "p_opposite", "p_signflip"):
    cell[key] = getattr(test, key)
  return cell


def _cell(analysis, c, method, options) -> dict:
  key, note = _selection(c, analysis, (method,))
  scale = QUANTITIES[analysis.metric][2]
  dense = c.values("dense", method, key, analysis.metric, scale)
  ticket = c.values("ticket", method, key, analysis.metric, scale)
  test = statistics.paired(dense, ticket, analysis.direction)
  cell = _base(analysis, c, method, test, note)
  cell.update(n_dense=len(dense), n_ticket=len(ticket))
  cell["verdict"] = _untested(analysis, cell, options)
  return cell


def _gap_cell(analysis, c, vp, lp) -> dict:
  """d_s = (dense - ticket accuracy under `vp`) - (the same under `lp`),
  in percentage points; 'dense' holds the VP gaps, 'ticket' the LP ones."""
  key, note = _selection(c, analysis, (vp, lp))

  def gaps(method):
    dense = c.values("dense", method, key, CLAIM_ONE_QUANTITY, 100.0)
    ticket = c.values("ticket", method, key, CLAIM_ONE_QUANTITY, 100.0)
    return {s: dense[s] - ticket[s] for s in set(dense) & set(ticket)}

  vp_gaps, lp_gaps = gaps(vp), gaps(lp)
  test = statistics.paired(vp_gaps, lp_gaps, statistics.GREATER)
  cell = _base(analysis, c, f"{vp} - {lp}", test, note)
  cell.update(n_dense=len(vp_gaps), n_ticket=len(lp_gaps))
  cell["verdict"] = _untested(analysis, cell, Options())
  return cell


def _untested(analysis, cell, options) -> str | None:
  """'not applicable' or 'not testable' (with the cell's note), or None
  for a cell of the family."""
  def said(verdict, why):
    cell["note"] = "; ".join(filter(None, (cell["note"], why)))
    return verdict

  if analysis.gated_by_source:
    gap = cell["source_gap_pp"]
    if gap is None:
      return said("not applicable", "source accuracy of a network unknown")
    if round(abs(gap), 2) > options.similar_source_pp:
      return said("not applicable",
                  f"source gap {gap:.2f} pp > {options.similar_source_pp:g}")
  test = cell["test"]
  if not test.finite:
    return said("not testable", "a NaN or infinite value")
  if test.n < MIN_SEEDS:
    return said("not testable", f"{test.n} paired seed(s), {MIN_SEEDS} "
                "needed")
  return None


def quantity_name(metric) -> str:
  """The report's name of a quantity."""
  return QUANTITIES[metric][0]


def selection_name(selection, rows) -> str:
  """How the report describes a model selection: `best_test` is 'among
  tested epochs' where some run did not test every epoch."""
  if selection == "best_test" and any(
      r.test_every != 1 for r in rows if r.status == "done"):
    return design.BEST_AMONG_TESTED
  return SELECTIONS[selection][1]
