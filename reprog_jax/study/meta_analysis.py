"""Direction across cells: a random-effects pooled estimate of a family's
per-cell mean differences (DerSimonian and Laird, 1986) and its sign count.

A universal claim's cells can agree in direction while none is
significant on its own. The pooled estimate weighs each cell's mean
difference y_i by the inverse of its variance v_i = sd_i^2 / n_i plus the
between-cell variance tau^2 (estimated by the method of moments), and says
whether the cells, taken together, lean the way the claim predicts. The
cells of a family share runs (one dense run is paired with every ticket),
so they are not independent: the pooled interval is indicative, a
sensitivity analysis, never a verdict.
"""

import math
from typing import NamedTuple, Sequence

from scipy import stats as scipy_stats


class Pooled(NamedTuple):
  """A DerSimonian-Laird random-effects estimate.

  Attributes:
    k: the number of cells pooled.
    estimate: the pooled mean difference.
    ci_low, ci_high: its two-sided 95 % interval (normal, as the method
      defines it).
    tau2: the between-cell variance (>= 0).
    i2: the share of the spread between cells beyond chance, in [0, 1]
      (Higgins and Thompson's I^2); 0 with k = 1 or Q <= k - 1.
    q: Cochran's Q.
  """
  k: int
  estimate: float
  ci_low: float
  ci_high: float
  tau2: float
  i2: float
  q: float


def dersimonian_laird(means: Sequence[float],
                      variances: Sequence[float]) -> Pooled | None:
  """Pools per-cell mean differences `means` with the variances of those
  means `variances` (sd^2 / n each, all > 0). None without a cell.

  With fixed-effect weights w_i = 1 / v_i and their mean
  y_w = sum w_i y_i / sum w_i: Q = sum w_i (y_i - y_w)^2, tau^2 =
  max(0, (Q - (k - 1)) / (sum w_i - sum w_i^2 / sum w_i)); then with
  w*_i = 1 / (v_i + tau^2) the estimate is sum w*_i y_i / sum w*_i, of
  standard error 1 / sqrt(sum w*_i).
  """
  k = len(means)
  if not k:
    return None
  if min(variances) <= 0:
    raise ValueError("dersimonian_laird: every variance must be > 0")
  w = [1.0 / v for v in variances]
  total = sum(w)
  fixed = sum(wi * y for wi, y in zip(w, means)) / total
  q = sum(wi * (y - fixed) ** 2 for wi, y in zip(w, means))
  scale = total - sum(wi * wi for wi in w) / total
  tau2 = max(0.0, (q - (k - 1)) / scale) if k > 1 else 0.0
  w_random = [1.0 / (v + tau2) for v in variances]
  estimate = sum(wi * y for wi, y in zip(w_random, means)) / sum(w_random)
  half = scipy_stats.norm.isf(0.025) / math.sqrt(sum(w_random))
  i2 = max(0.0, (q - (k - 1)) / q) if k > 1 and q > 0 else 0.0
  return Pooled(k, estimate, estimate - half, estimate + half, tau2, i2, q)


def signs(means: Sequence[float], predicted_positive: bool) -> tuple:
  """(cells in the predicted direction, cells against it, cells at 0)."""
  along = sum((m > 0) if predicted_positive else (m < 0) for m in means)
  zero = sum(m == 0 for m in means)
  return along, len(means) - along - zero, zero
