"""Paired statistics over seeds, and Holm's correction (`study.claims`).

A seed gives a dense network and its ticket the same few-shot subset and
training order, so their runs are paired by seed: the test is on the
per-seed differences d_s = dense_s - ticket_s (a paired Student t-test),
not on two independent samples.
"""

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats as scipy_stats

# The direction a claim predicts for d = dense - ticket.
GREATER = "greater"  # dense above the ticket (claim 1: accuracy).
LESS = "less"  # dense below the ticket (claim 2: ECE).
_OPPOSITE = {GREATER: LESS, LESS: GREATER}
# A spread of the differences below this fraction of the values is float
# rounding (0.5 - 0.4 != 0.6 - 0.5), not seed-to-seed variation: zero.
ROUNDING = 1e-12


class Paired(NamedTuple):
  """A paired comparison of two networks over the seeds both have.

  Attributes:
    n: the number of paired seeds.
    dense_mean, ticket_mean: each side's mean over those seeds.
    diff_mean: the mean of d_s = dense_s - ticket_s.
    ci_low, ci_high: a two-sided 95 % Student-t interval of the mean of
      d_s (n - 1 degrees of freedom, the sample std with ddof=1).
    p_value: one-sided paired t-test p-value in the predicted direction.
    p_opposite: the same in the opposite direction (is the prediction
      contradicted?).
  """
  n: int
  dense_mean: float
  ticket_mean: float
  diff_mean: float
  ci_low: float
  ci_high: float
  p_value: float
  p_opposite: float


def paired(dense: dict, ticket: dict, direction: str,
           confidence: float = 0.95) -> Paired | None:
  """Paired t-test of `dense` against `ticket` ({seed: value} each).

  Args:
    dense, ticket: per-seed values; only the seeds present in both count.
    direction: `GREATER` or `LESS`, what the claim predicts for
      dense - ticket.
    confidence: of the two-sided interval.

  Returns:
    A `Paired`, or None with fewer than 2 paired seeds (not testable).
    With zero variance of the differences (up to `ROUNDING`) the t
    statistic is undefined:
    p is then 0 when the mean lies in the predicted direction, else 1
    (and likewise for the opposite direction), and the interval is the
    mean itself.
  """
  seeds = sorted(set(dense) & set(ticket))
  if len(seeds) < 2:
    return None
  a = np.array([dense[s] for s in seeds], np.float64)
  b = np.array([ticket[s] for s in seeds], np.float64)
  d = a - b
  n, mean = len(d), float(np.mean(d))
  std = float(np.std(d, ddof=1))
  if std <= ROUNDING * max(np.abs(a).max(), np.abs(b).max()):
    return Paired(n, float(a.mean()), float(b.mean()), mean, mean, mean,
                  _degenerate(mean, direction),
                  _degenerate(mean, _OPPOSITE[direction]))
  error = std / math.sqrt(n)
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * error
  t = mean / error
  upper = float(scipy_stats.t.sf(t, n - 1))  # P(T >= t): d > 0 predicted.
  lower = float(scipy_stats.t.cdf(t, n - 1))  # P(T <= t): d < 0 predicted.
  p, opposite = (upper, lower) if direction == GREATER else (lower, upper)
  return Paired(n, float(a.mean()), float(b.mean()), mean, mean - half,
                mean + half, p, opposite)


def _degenerate(mean, direction) -> float:
  in_direction = mean > 0 if direction == GREATER else mean < 0
  return 0.0 if in_direction else 1.0


def holm(p_values: Sequence[float | None]) -> list[float | None]:
  """Holm's step-down adjusted p-values (None entries are left out of the
  family and stay None).

  With m tests sorted by p (p_(1) <= ... <= p_(m)), the i-th adjusted value
  is max over j <= i of min(1, (m - j + 1) * p_(j)); rejecting where it is
  below alpha controls the family-wise error rate at alpha.
  """
  tested = [(p, i) for i, p in enumerate(p_values) if p is not None]
  m = len(tested)
  adjusted = [None] * len(p_values)
  running = 0.0
  for rank, (p, i) in enumerate(sorted(tested)):
    running = max(running, min(1.0, (m - rank) * p))
    adjusted[i] = running
  return adjusted
