"""Power of the one-sided paired t-test: the smallest effect a cell could
detect, and the seeds it would need to detect a given one.

A cell's test is the one-sided paired t-test on n per-seed differences of
standard deviation sd at level alpha (`study.statistics`). Under a true
mean difference `effect`, its t statistic follows the noncentral t
distribution with n - 1 degrees of freedom and noncentrality
effect * sqrt(n) / sd, so its power is P(T' > t_(1 - alpha, n - 1))
(`scipy.stats.nct`). The minimum detectable effect (MDE) is the effect
with 80 % power; `seeds_needed` the smallest n with 80 % power at a given
effect. The spread is the cell's observed one: with a handful of seeds it
is itself uncertain, so both are estimates, not guarantees.
"""

import functools
import math

from scipy import optimize
from scipy import special

POWER = 0.8
# The fewest seeds a cell is tested with (`study.claims`), hence the
# fewest `seeds_needed` can answer.
MIN_SEEDS = 3
MAX_SEEDS = 100_000


def _critical(df: int, alpha: float) -> float:
  """t_(1 - alpha, df), from scipy's t quantile ufunc (what
  `scipy.stats.t.isf` computes, without its per-call overhead: a study's
  report asks thousands of times)."""
  return -float(special.stdtrit(df, alpha))


def _beyond(critical: float, df: int, noncentrality: float) -> float:
  """P(T' > critical), T' noncentral t (`scipy.stats.nct.sf`'s ufunc)."""
  return 1.0 - float(special.nctdtr(df, noncentrality, critical))


def power(effect: float, sd: float, n: int, alpha: float) -> float:
  """The probability that the one-sided paired t-test over `n` seeds at
  level `alpha` detects a true mean difference `effect` (> 0, in the
  direction tested) when the differences' standard deviation is `sd`."""
  df = n - 1
  return _beyond(_critical(df, alpha), df, effect * math.sqrt(n) / sd)


@functools.lru_cache(maxsize=4096)
def _noncentrality(n: int, alpha: float, target: float) -> float:
  """The noncentrality at which the test over `n` seeds has power
  `target`; it depends on n and alpha only, so it is cached."""
  df = n - 1
  critical = _critical(df, alpha)

  def short(nc):
    return _beyond(critical, df, nc) - target

  high = max(1.0, 2 * critical)
  while short(high) < 0:
    high *= 2
  return optimize.brentq(short, 0.0, high, xtol=1e-12, rtol=1e-12)


def mde(sd: float | None, n: int, alpha: float,
        target: float = POWER) -> float | None:
  """The minimum detectable effect: the smallest true mean difference
  that the one-sided paired t-test over `n` seeds at level `alpha`
  detects with probability `target`, in the units of `sd`.

  None where it is undefined: fewer than 2 seeds, or no spread (`sd`
  None or 0: a cell of zero variance is decided by its sign-flip p, whose
  floor 2^-n does not depend on the effect).
  """
  if sd is None or sd <= 0 or n < 2:
    return None
  return _noncentrality(n, alpha, target) * sd / math.sqrt(n)


def seeds_needed(effect: float | None, sd: float | None, alpha: float,
                 target: float = POWER) -> int | None:
  """The fewest paired seeds (at least `MIN_SEEDS`) with which the
  one-sided paired t-test at level `alpha` detects a true mean difference
  `effect` with probability `target`, if the differences' standard
  deviation is `sd`.

  None where it cannot be said: no effect of interest, no spread, or more
  than `MAX_SEEDS` seeds.
  """
  if effect is None or effect <= 0 or sd is None or sd <= 0:
    return None
  if power(effect, sd, MIN_SEEDS, alpha) >= target:
    return MIN_SEEDS
  low, high = MIN_SEEDS, 2 * MIN_SEEDS  # power(low) < target throughout.
  while power(effect, sd, high, alpha) < target:
    if high >= MAX_SEEDS:
      return None
    low, high = high, min(2 * high, MAX_SEEDS)
  while high - low > 1:  # Power grows with n: bisect.
    middle = (low + high) // 2
    if power(effect, sd, middle, alpha) >= target:
      high = middle
    else:
      low = middle
  return high
