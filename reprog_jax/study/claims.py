"""The paper's two claims, tested on a sweep's cells (`reprog_jax.report`).

Per dataset x n_shot x ticket, against the dense network of the same
architecture:
  1. "Tickets are not universal reprogrammers": the ticket's VP accuracy
     falls short of the dense network's by more than its LP accuracy does.
     The paper says so of some targets, so it holds overall when it holds
     in at least one testable cell.
  2. "Dense networks are better calibrated": the dense network's ECE is
     below the ticket's, for LP and for VP. The paper says "always", so it
     holds overall only when it holds in every testable cell.
Each comparison uses the means over seeds and states the seeds' spread: a
difference's spread is sqrt(std_a**2 + std_b**2) of the seeds' stds.
"""

import math
from typing import NamedTuple

METHOD_NAMES = {"linear_probe": "LP", "ilm_vp": "VP"}


class Comparison(NamedTuple):
  """One ticket against one dense network on one dataset x n_shot."""
  dataset: str
  n_shot: int
  dense: str
  ticket: str
  remaining: float | None
  cells: dict  # (network kind, method) -> Row or None.

  def value(self, kind, method, metric):
    row = self.cells[(kind, method)]
    return row.stats[metric] if row and metric in row.stats else None

  def missing(self, methods) -> list[str]:
    return [f"{METHOD_NAMES[m]} {self.dense if k == 'dense' else self.ticket}"
            + (" (failed)" if self.cells[(k, m)] is not None else "")
            for k in ("dense", "ticket") for m in methods
            if self.cells[(k, m)] is None
            or self.cells[(k, m)].status != "done"]


def comparisons(rows) -> list[Comparison]:
  """Every (dense, ticket) pair of one architecture, per dataset x n_shot
  where either appears."""
  by_key = {}
  for row in rows:
    if row.dataset is None:
      continue
    by_key.setdefault((row.dataset, row.n_shot), []).append(row)
  result = []
  for (dataset, n_shot), group in by_key.items():
    def networks(kind, group=group):
      # A failed cell knows its network's name but not its architecture.
      arch = {}
      for r in group:
        if r.kind == kind and r.network is not None:
          arch[r.network] = arch.get(r.network) or r.arch
      return sorted(arch.items())
    for dense, dense_arch in networks("dense"):
      for ticket, ticket_arch in networks("ticket"):
        if None not in (dense_arch, ticket_arch) and dense_arch != ticket_arch:
          continue
        found = {}
        for kind, name in (("dense", dense), ("ticket", ticket)):
          for method in METHOD_NAMES:
            found[(kind, method)] = next(
                (r for r in group if r.network == name and r.method == method
                 and r.kind == kind), None)
        remaining = next((r.remaining for r in group
                          if r.network == ticket and r.remaining), None)
        result.append(Comparison(dataset, n_shot, dense, ticket, remaining,
                                 found))
  return result


def _spread(*stds) -> float:
  return math.sqrt(sum(s * s for s in stds))


def claim_one(c: Comparison) -> dict:
  """Tickets are not universal reprogrammers: VP gap > LP gap (pp)."""
  missing = c.missing(("linear_probe", "ilm_vp"))
  if missing:
    return {"verdict": "not testable", "note": "missing " + ", ".join(missing)}
  (dv, dvs), (tv, tvs) = (c.value(k, "ilm_vp", "test_acc")
                          for k in ("dense", "ticket"))
  (dl, dls), (tl, tls) = (c.value(k, "linear_probe", "test_acc")
                          for k in ("dense", "ticket"))
  vp_gap, lp_gap = 100 * (dv - tv), 100 * (dl - tl)
  margin, spread = vp_gap - lp_gap, 100 * _spread(dvs, tvs, dls, tls)
  return {"verdict": "held" if margin > 0 else "not held",
          "vp_gap": vp_gap, "vp_spread": 100 * _spread(dvs, tvs),
          "lp_gap": lp_gap, "lp_spread": 100 * _spread(dls, tls),
          "margin": margin, "spread": spread,
          "note": "within the seeds' spread" if abs(margin) <= spread else ""}


def claim_two(c: Comparison) -> dict:
  """Dense networks are better calibrated: dense ECE < ticket ECE, LP and
  VP."""
  result, verdicts, missing = {}, [], []
  for method in ("linear_probe", "ilm_vp"):
    gone = c.missing((method,))
    if gone:
      missing += gone
      continue
    (d, ds), (t, ts) = (c.value(k, method, "test_ece")
                        for k in ("dense", "ticket"))
    result[method] = {"dense": d, "dense_std": ds, "ticket": t,
                      "ticket_std": ts, "held": d < t,
                      "within_spread": abs(t - d) <= _spread(ds, ts)}
    verdicts.append(d < t)
  if not all(verdicts):
    verdict = "not held"
  elif missing:
    verdict = "not testable"
  else:
    verdict = "held"
  notes = [f"{METHOD_NAMES[m]}: dense ECE not below the ticket's"
           for m, r in result.items() if not r["held"]]
  notes += [f"missing {', '.join(missing)}"] if missing else []
  notes += [f"{METHOD_NAMES[m]} difference within the seeds' spread"
            for m, r in result.items() if r["within_spread"]]
  return {"verdict": verdict, "methods": result, "note": "; ".join(notes)}


def overall(verdicts, universal) -> tuple[str, str]:
  """(verdict, sentence) over cells: an existential claim holds when some
  testable cell holds it, a universal one when every testable cell does."""
  testable = [v for v in verdicts if v != "not testable"]
  held = sum(v == "held" for v in testable)
  untested = len(verdicts) - len(testable)
  tail = f"; {untested} not testable" if untested else ""
  if not verdicts:
    return "not testable", ("no ticket shares a dataset and n_shot with a "
                            "dense network")
  if not testable:
    return "not testable", (f"none of the {len(verdicts)} dataset x n_shot x "
                            f"ticket cells has all the runs it needs")
  if universal:
    verdict = "held" if held == len(testable) else "not held"
  else:
    verdict = "held" if held else "not held"
  return verdict, f"held in {held} of {len(testable)} testable cells{tail}"
