"""The paper's two claims, tested on a sweep's runs (`reprog_jax.report`).

In the paper's words (abstract):
  1. "for certain target datasets, reprogramming an LT yields significantly
     lower performance than the reprogrammed dense model although their
     corresponding upstream performance is similar". Tested per dataset x
     n_shot x ticket on the test accuracy of every reprogramming method
     (registry family 'prompt', ILM-VP, each label mapping and prompt
     variant on its own: `method_key`): held in a cell when the one-sided
     paired t-test of dense > ticket is significant after Holm's
     correction (`p_adjusted < alpha`) and the two networks' source
     (ImageNet) top-1 differ by at most `similar_source_pp` points. Without
     both source accuracies the cell can still be held, and says "source
     similarity not checked". Overall: held when some cell is held.
  2. "the calibration of dense models is always superior to that of their
     lottery ticket counterparts under both LP and VP regimes". Tested for
     every method on three quantities: `test_ece` (top-label ECE),
     `test_ece_adaptive` and `test_pytorch_logged_quantity` (what the
     PyTorch version logged as "ECE", the paper's evidence). A cell is held
     when dense < ticket is significant after Holm, contradicted when
     dense > ticket is, inconclusive otherwise. Overall, per quantity:
     contradicted if any cell is, held if every testable cell is, else
     inconclusive.

Statistics (`study.statistics`): runs are paired by seed (a seed gives dense
and ticket the same few-shot subset and training order); d_s = dense -
ticket; a two-sided 95 % Student-t interval of its mean; Holm over the cells
of one (claim, metric, selection, method). Fewer than 2 paired seeds: not
testable.

Secondary analysis, not claim 1: "the VP gap exceeds the LP gap", the
ticket's shortfall under reprogramming minus its shortfall under linear
probing, per seed, with the same statistics (`gap_cells`).

Every test is repeated for each model selection the runs recorded
(`SELECTIONS`): the epoch picked on a validation split, the last epoch, and
the PyTorch version's best-test-accuracy epoch (optimistic: picked on the
test set).
"""

from typing import NamedTuple

from reprog_jax import methods
from reprog_jax.study import statistics

# Model selection -> (the summary's per-seed key, its description); in the
# order the report shows them.
SELECTIONS = {
    "validation": ("validation", "the epoch with the best accuracy on a "
                   "validation split (held out of the training split)"),
    "last": ("last", "the last epoch"),
    "best_test": ("best", "the epoch with the best test accuracy, as the "
                  "PyTorch version reports (optimistic: picked on the test "
                  "set)"),
}
CLAIM_ONE_METRIC = "test_acc"
CLAIM_TWO_METRICS = ("test_ece", "test_ece_adaptive",
                     "test_pytorch_logged_quantity")
# claims.csv, one row per cell.
COLUMNS = ("claim", "metric", "selection", "dataset", "n_shot", "dense",
           "ticket", "method", "n_seeds", "dense_mean", "ticket_mean",
           "diff_mean", "ci_low", "ci_high", "p_value", "p_adjusted",
           "source_gap_pp", "verdict")
VERDICTS = ("held", "not held", "contradicted", "inconclusive",
            "not testable")


class Options(NamedTuple):
  """The report's thresholds (`python -m reprog_jax.report --alpha ...`).

  Attributes:
    alpha: the family-wise significance level of Holm's correction.
    similar_source_pp: the largest |dense - ticket| source top-1 gap, in
      percentage points, under which claim 1 calls the upstream performance
      "similar".
  """
  alpha: float = 0.05
  similar_source_pp: float = 1.0


def method_key(method, variant="") -> str | None:
  """How the report names a method's variant: 'ilm_vp' (its defaults),
  'ilm_vp[blmpp]' (`MethodSpec.variant`); every claim is tested per key."""
  if method is None or not variant:
    return method
  return f"{method}[{variant}]"


def variant_key(method, config) -> str:
  """`method_key` of a run of `method` with `config` (its summary's)."""
  spec = methods.METHODS.get(method)
  return method_key(method, spec.variant(config) if spec else "")


def _split(method) -> tuple[str, str]:
  """(method, variant) of a `method_key`."""
  name, _, variant = str(method).partition("[")
  return name, variant.rstrip("]")


def family(method) -> str | None:
  """The registry's family of `method` ('prompt', 'probe'), None if the
  method is not registered."""
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
  names = list(methods.names())
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

  def values(self, kind, method, selection, metric) -> dict:
    """{seed: value} of a finished run (empty when missing or failed)."""
    row = self.runs.get((kind, method))
    if row is None or row.status != "done":
      return {}
    records = row.selections.get(selection, {})
    return {seed: r[metric] for seed, r in records.items()
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


def selections(rows) -> list[str]:
  """The selections some finished run recorded, in `SELECTIONS` order."""
  return [s for s in SELECTIONS
          if any(r.selections.get(s) for r in rows if r.status == "done")]


def _has_metric(rows, selection, metric) -> bool:
  return any(metric in record for r in rows if r.status == "done"
             for record in r.selections.get(selection, {}).values())


# --------------------------------------------------------------------------
# Claims 1 and 2, one claims.csv row per cell
# --------------------------------------------------------------------------


def cells(rows, options=Options()) -> list[dict]:
  """Every claims.csv row (`COLUMNS`, plus 'p_opposite' and
  'p_opposite_adjusted' for claim 2), tested and corrected."""
  pairs = comparisons(rows)
  result = []
  for selection in selections(rows):
    tests = []
    if _has_metric(rows, selection, CLAIM_ONE_METRIC):
      tests.append(("1", CLAIM_ONE_METRIC, statistics.GREATER, {"prompt"}))
    tests += [("2", metric, statistics.LESS, None)
              for metric in CLAIM_TWO_METRICS
              if _has_metric(rows, selection, metric)]
    for claim, metric, direction, families in tests:
      for c in pairs:
        for method in c.methods:
          if families is not None and family(method) not in families:
            continue
          if None in (c.runs.get(("dense", method)),
                      c.runs.get(("ticket", method))):
            # Never asked of this pair (a sweep may run a variant on some
            # networks only); a run that failed is a row, and not testable.
            continue
          result.append(_cell(c, claim, metric, selection, method, direction))
  _correct(result, "p_value", "p_adjusted")
  _correct(result, "p_opposite", "p_opposite_adjusted")
  for cell in result:
    cell["verdict"] = _verdict(cell, options)
  return result


def _cell(c, claim, metric, selection, method, direction) -> dict:
  test = statistics.paired(c.values("dense", method, selection, metric),
                           c.values("ticket", method, selection, metric),
                           direction)
  cell = {"claim": claim, "metric": metric, "selection": selection,
          "dataset": c.dataset, "n_shot": c.n_shot, "dense": c.dense,
          "ticket": c.ticket, "method": method,
          "n_seeds": test.n if test else 0,
          "source_gap_pp": c.source_gap_pp, "remaining": c.remaining}
  for key in ("dense_mean", "ticket_mean", "diff_mean", "ci_low", "ci_high",
              "p_value", "p_opposite"):
    cell[key] = getattr(test, key) if test else None
  return cell


def _correct(result, key, adjusted_key) -> None:
  """Holm over the cells of each (claim, metric, selection, method)."""
  families = {}
  for cell in result:
    families.setdefault((cell["claim"], cell["metric"], cell["selection"],
                         cell["method"]), []).append(cell)
  for members in families.values():
    for cell, p in zip(members, statistics.holm([m[key] for m in members])):
      cell[adjusted_key] = p


def _verdict(cell, options) -> str:
  if cell["p_value"] is None:
    return "not testable"
  significant = cell["p_adjusted"] < options.alpha
  if cell["claim"] == "1":
    gap = cell["source_gap_pp"]
    similar = gap is None or abs(gap) <= options.similar_source_pp
    return "held" if significant and similar else "not held"
  if significant:
    return "held"
  if cell["p_opposite_adjusted"] < options.alpha:
    return "contradicted"
  return "inconclusive"


def overall(claim, cell_rows) -> tuple[str, str]:
  """(verdict, sentence) of claim '1' or '2' over the cells of one metric
  and selection."""
  counts = {v: sum(c["verdict"] == v for c in cell_rows) for v in VERDICTS}
  testable = len(cell_rows) - counts["not testable"]
  said = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
  if not testable:
    return "not testable", (f"none of {len(cell_rows)} cells has 2 seeds "
                            "of dense and ticket" if cell_rows else
                            "no ticket shares a dataset and n_shot with a "
                            "dense network")
  if claim == "1":
    held = [c for c in cell_rows if c["verdict"] == "held"]
    if not held:
      return "not held", said
    unchecked = sum(c["source_gap_pp"] is None for c in held)
    if unchecked == len(held):
      return "held (source similarity not checked)", said
    return "held", said
  if counts["contradicted"]:
    return "contradicted", said
  if counts["held"] == testable:
    return "held", said
  return "inconclusive", said


# --------------------------------------------------------------------------
# Secondary analysis: the VP gap exceeds the LP gap
# --------------------------------------------------------------------------


def gap_cells(rows, options=Options()) -> list[dict]:
  """Per (dataset, n_shot, ticket, prompt method, probe method, selection):
  d_s = (dense - ticket accuracy under the prompt method) - (the same under
  the probe method), tested one-sided for > 0 with Holm per (selection,
  method pair). Verdict 'held' / 'not held' / 'not testable'."""
  result = []
  for selection in selections(rows):
    for c in comparisons(rows):
      prompts = [m for m in c.methods if family(m) == "prompt"]
      probes = [m for m in c.methods if family(m) == "probe"]
      for vp in prompts:
        for lp in probes:
          gaps = [_gaps(c, m, selection) for m in (vp, lp)]
          test = statistics.paired(*gaps, statistics.GREATER)
          result.append({
              "selection": selection, "dataset": c.dataset,
              "n_shot": c.n_shot, "dense": c.dense, "ticket": c.ticket,
              "remaining": c.remaining, "method": f"{vp} - {lp}",
              "n_seeds": test.n if test else 0,
              "vp_gap": test.dense_mean if test else None,
              "lp_gap": test.ticket_mean if test else None,
              "diff_mean": test.diff_mean if test else None,
              "ci_low": test.ci_low if test else None,
              "ci_high": test.ci_high if test else None,
              "p_value": test.p_value if test else None})
  families = {}
  for cell in result:
    families.setdefault((cell["selection"], cell["method"]), []).append(cell)
  for members in families.values():
    for cell, p in zip(members,
                       statistics.holm([m["p_value"] for m in members])):
      cell["p_adjusted"] = p
      cell["verdict"] = ("not testable" if p is None else
                         "held" if p < options.alpha else "not held")
  return result


def _gaps(c, method, selection) -> dict:
  dense = c.values("dense", method, selection, CLAIM_ONE_METRIC)
  ticket = c.values("ticket", method, selection, CLAIM_ONE_METRIC)
  return {s: dense[s] - ticket[s] for s in set(dense) & set(ticket)}
