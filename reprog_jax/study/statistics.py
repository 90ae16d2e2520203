"""Paired statistics over seeds, the exact sign-flip test, and Holm's
correction (`study.claims`).

A seed gives a dense network and its ticket the same few-shot subset and
training order, so their runs are paired by seed: the test is on the
per-seed differences d_s = dense_s - ticket_s (a paired Student t-test),
not on two independent samples. Beside it, the exact sign-flip
(permutation) test over the 2^n sign patterns of the d_s: it needs no
normality, and it decides where the t statistic is undefined (differences
of zero variance), where a t-test would report p = 0 however few the seeds.
"""

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import special

# The direction a claim predicts for d = dense - ticket.
GREATER = "greater"  # dense above the ticket (claim 1: accuracy).
LESS = "less"  # dense below the ticket (claim 2: ECE).
OPPOSITE = {GREATER: LESS, LESS: GREATER}
# A spread of the differences below this fraction of the values is float
# rounding (0.5 - 0.4 != 0.6 - 0.5), not seed-to-seed variation: zero.
ROUNDING = 1e-12
# Up to this many pairs the sign-flip p enumerates all 2^n patterns
# (2^20 sums: 8 MB); beyond, it samples `SIGN_FLIP_SAMPLES` patterns (its
# estimate's standard error is then at most 0.001).
EXACT_SIGN_FLIP_MAX = 20
SIGN_FLIP_SAMPLES = 1 << 18


class Paired(NamedTuple):
  """A paired comparison of two networks over the seeds both have.

  Every field but `n` is None where it is undefined: the means without a
  paired seed or with a non-finite value, the spread, interval and
  p-values with fewer than 2 paired seeds.

  Attributes:
    n: the number of paired seeds.
    finite: whether every paired value is finite (no NaN, no inf).
    dense_mean, ticket_mean: each side's mean over those seeds.
    diff_mean: the mean of d_s = dense_s - ticket_s.
    diff_sd: the sample standard deviation of d_s (ddof=1).
    ci_low, ci_high: a two-sided 95 % Student-t interval of the mean of
      d_s (n - 1 degrees of freedom), unadjusted for multiplicity.
    zero_variance: whether d_s has no spread (up to float rounding).
    p_value: one-sided paired t-test p in the predicted direction; where
      `zero_variance`, the sign-flip p (the t statistic is undefined).
    p_opposite: the same in the opposite direction.
    p_signflip: the exact sign-flip p in the predicted direction.
    p_signflip_opposite: the same in the opposite direction.
  """
  n: int
  finite: bool = True
  dense_mean: float | None = None
  ticket_mean: float | None = None
  diff_mean: float | None = None
  diff_sd: float | None = None
  ci_low: float | None = None
  ci_high: float | None = None
  zero_variance: bool = False
  p_value: float | None = None
  p_opposite: float | None = None
  p_signflip: float | None = None
  p_signflip_opposite: float | None = None


def paired(dense: dict, ticket: dict, direction: str,
           confidence: float = 0.95) -> Paired:
  """Paired t-test and sign-flip test of `dense` against `ticket`.

  Args:
    dense, ticket: {seed: value}; only the seeds present in both count.
    direction: `GREATER` or `LESS`, what the claim predicts for
      dense - ticket.
    confidence: of the two-sided interval.

  Returns:
    A `Paired`. With zero variance of the differences (up to `ROUNDING`
    of the values) the interval is the mean itself and both p-values are
    the sign-flip test's (never 0: at least 2^-n).
  """
  seeds = sorted(set(dense) & set(ticket))
  a = np.array([dense[s] for s in seeds], np.float64)
  b = np.array([ticket[s] for s in seeds], np.float64)
  n = len(seeds)
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    return Paired(n, finite=False)
  if n == 0:
    return Paired(0)
  d = a - b
  mean = float(np.mean(d))
  means = Paired(n, True, float(a.mean()), float(b.mean()), mean)
  if n < 2:
    return means
  std = float(np.std(d, ddof=1))
  flip = sign_flip_p(d, direction)
  flip_opposite = sign_flip_p(d, OPPOSITE[direction])
  if std <= ROUNDING * max(np.abs(a).max(), np.abs(b).max(), 1e-300):
    return means._replace(diff_sd=0.0, ci_low=mean, ci_high=mean,
                          zero_variance=True, p_value=flip,
                          p_opposite=flip_opposite, p_signflip=flip,
                          p_signflip_opposite=flip_opposite)
  error = std / math.sqrt(n)
  # scipy's Student t ufuncs (what scipy.stats.t and ttest_rel compute,
  # without their per-call overhead: a report asks thousands of times).
  half = -float(special.stdtrit(n - 1, 0.5 - confidence / 2)) * error
  t = mean / error
  upper = float(special.stdtr(n - 1, -t))  # P(T >= t): d > 0 predicted.
  lower = float(special.stdtr(n - 1, t))  # P(T <= t): d < 0 predicted.
  p, opposite = (upper, lower) if direction == GREATER else (lower, upper)
  return means._replace(diff_sd=std, ci_low=mean - half, ci_high=mean + half,
                        p_value=p, p_opposite=opposite, p_signflip=flip,
                        p_signflip_opposite=flip_opposite)


def sign_flip_p(differences, direction) -> float:
  """The exact one-sided sign-flip (paired permutation) p of the mean of
  `differences`.

  Under the null hypothesis (no difference between the networks), each
  d_s is as likely to have come out as -d_s: every one of the 2^n sign
  patterns is equally likely. The p-value is the fraction of patterns
  whose sum is at least the observed one (`GREATER`; at most, `LESS`),
  the observed pattern included, so it is never below 2^-n: with 3 seeds
  all in the predicted direction it is 1/8 = 0.125. Sums equal up to
  float rounding count as ties. Beyond `EXACT_SIGN_FLIP_MAX` pairs,
  `SIGN_FLIP_SAMPLES` random patterns (seeded) estimate it as (hits + 1)
  / (samples + 1).
  """
  d = np.asarray(differences, np.float64)
  sign = 1.0 if direction == GREATER else -1.0
  observed = sign * d.sum()
  magnitudes = np.abs(d)
  tolerance = 1e-9 * max(magnitudes.sum(), 1e-300)
  if len(d) <= EXACT_SIGN_FLIP_MAX:
    sums = np.zeros(1)
    for m in magnitudes:  # Every +-m_1 +- ... +- m_k, doubling each time.
      sums = np.concatenate([sums + m, sums - m])
    return float(np.mean(sums >= observed - tolerance))
  rng = np.random.default_rng(0)
  hits = 0
  for _ in range(SIGN_FLIP_SAMPLES >> 14):
    signs = 2.0 * rng.integers(0, 2, size=(1 << 14, len(d))) - 1.0
    hits += int(np.sum(signs @ magnitudes >= observed - tolerance))
  return (hits + 1) / (SIGN_FLIP_SAMPLES + 1)


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
