"""The claims' statistics against independent expectations: the paired
t-test and the sign-flip test against scipy and hand counts, Holm as
published, power against the noncentral t written out as an integral, and
DerSimonian-Laird against a hand computation."""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate
from scipy import special
from scipy import stats

from reprog_jax.study import meta_analysis
from reprog_jax.study import power
from reprog_jax.study import statistics

# --------------------------------------------------------------------------
# The paired tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["greater", "less"])
def test_paired_test_equals_scipy(direction):
  rng = np.random.default_rng(0)
  dense, ticket = rng.normal(0.6, 0.05, 7), rng.normal(0.58, 0.05, 7)
  got = statistics.paired(dict(enumerate(dense)), dict(enumerate(ticket)),
                          direction)
  opposite = "less" if direction == "greater" else "greater"
  assert got.p_value == pytest.approx(
      stats.ttest_rel(dense, ticket, alternative=direction).pvalue, rel=1e-10)
  assert got.p_opposite == pytest.approx(
      stats.ttest_rel(dense, ticket, alternative=opposite).pvalue, rel=1e-10)
  d = dense - ticket
  half = stats.t.ppf(0.975, 6) * np.std(d, ddof=1) / math.sqrt(7)
  assert (got.ci_low, got.ci_high) == pytest.approx(
      (d.mean() - half, d.mean() + half), rel=1e-10)
  assert got.diff_sd == pytest.approx(np.std(d, ddof=1))
  assert (got.dense_mean, got.ticket_mean, got.diff_mean) == pytest.approx(
      (dense.mean(), ticket.mean(), d.mean()))
  # The sign-flip p beside it: scipy's exact permutation test.
  exact = stats.permutation_test(
      (dense, ticket), lambda x, y, axis: np.mean(x - y, axis=axis),
      permutation_type="samples", alternative=direction, vectorized=True,
      n_resamples=np.inf)
  assert got.p_signflip == pytest.approx(exact.pvalue, rel=1e-12)
  assert not got.zero_variance


def test_paired_uses_only_the_seeds_both_have():
  got = statistics.paired({0: 0.5, 1: 0.7, 2: 0.9, 7: 0.1},
                          {1: 0.6, 2: 0.6, 0: 0.4, 5: 0.3}, "greater")
  expected = stats.ttest_rel([0.5, 0.7, 0.9], [0.4, 0.6, 0.6],
                             alternative="greater")
  assert got.n == 3 and got.p_value == pytest.approx(expected.pvalue)
  one = statistics.paired({0: 1.0}, {0: 0.5}, "greater")
  assert one.n == 1 and one.diff_mean == 0.5 and one.p_value is None
  assert statistics.paired({}, {0: 0.5}, "greater").n == 0


def test_non_finite_values_are_flagged_not_computed():
  got = statistics.paired({0: 0.5, 1: math.nan, 2: 0.7},
                          {0: 0.4, 1: 0.5, 2: 0.6}, "greater")
  assert not got.finite and got.n == 3
  assert got.diff_mean is None and got.p_value is None


def test_sign_flip_hand_counted():
  # d = 1, 2, 3: only the all-plus pattern reaches the observed sum 6.
  assert statistics.sign_flip_p([1, 2, 3], "greater") == 1 / 8
  assert statistics.sign_flip_p([1, 2, 3], "less") == 1.0
  # d = 1, -2, 3 (sum 2): the sums of +-1 +-2 +-3 are 6, 0, 2, -4, 4, -2,
  # 0, -6; three of them >= 2.
  assert statistics.sign_flip_p([1, -2, 3], "greater") == 3 / 8
  assert statistics.sign_flip_p([1, -2, 3], "less") == 6 / 8
  # All zero: every pattern ties.
  assert statistics.sign_flip_p([0.0, 0.0, 0.0], "greater") == 1.0


def test_sign_flip_equals_brute_force_with_float_ties():
  # Differences equal in exact arithmetic but not in floats still tie.
  a = np.array([0.6, 0.63, 0.58, 0.61, 0.57])
  d = a * 100 - (a - np.array([0.004, -0.003, 0.003, -0.004, 0.0])) * 100
  exact = np.round(d, 9)
  sums = [np.dot(signs, np.abs(exact))
          for signs in itertools.product((1, -1), repeat=len(d))]
  expected = np.mean(np.array(sums) >= exact.sum() - 1e-9)
  assert statistics.sign_flip_p(d, "greater") == expected


def test_sign_flip_beyond_exact_enumeration_is_estimated():
  d = np.full(statistics.EXACT_SIGN_FLIP_MAX + 2, 0.5)
  p = statistics.sign_flip_p(d, "greater")
  # The true p is 2^-22; (hits + 1) / (samples + 1) with hits ~ 0.
  assert 0 < p <= 2 / (statistics.SIGN_FLIP_SAMPLES + 1)
  rng = np.random.default_rng(5)
  d = rng.normal(0.2, 1.0, 25)
  sampled = stats.permutation_test(
      (d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
      permutation_type="samples", alternative="greater", vectorized=True,
      n_resamples=50_000, random_state=1).pvalue
  assert statistics.sign_flip_p(d, "greater") == pytest.approx(
      sampled, abs=0.01)


def test_zero_variance_uses_the_sign_flip_p_never_zero():
  # 0.5 - 0.4 and 0.6 - 0.5 differ by float rounding only.
  rounded = statistics.paired({0: 0.5, 1: 0.6, 2: 0.7},
                              {0: 0.4, 1: 0.5, 2: 0.6}, "greater")
  assert rounded.zero_variance
  assert (rounded.p_value, rounded.p_opposite) == (0.125, 1.0)
  # Exact binary fractions: the differences are exactly 0.25 three times.
  up = statistics.paired({0: 0.75, 1: 0.625, 2: 0.5},
                         {0: 0.5, 1: 0.375, 2: 0.25}, "greater")
  assert up.ci_low == up.ci_high == 0.25 and up.diff_sd == 0
  assert (up.p_value, up.p_signflip) == (0.125, 0.125)
  down = statistics.paired({0: 0.75, 1: 0.625, 2: 0.5},
                           {0: 0.5, 1: 0.375, 2: 0.25}, "less")
  assert (down.p_value, down.p_opposite) == (1.0, 0.125)


def holm_transcribed(p_values, alpha):
  """Holm (1979) as published: sort ascending; reject H_(i) while p_(i) <=
  alpha / (m - i + 1) (i from 1); stop at the first that is not."""
  order = sorted(range(len(p_values)), key=lambda i: p_values[i])
  rejected = set()
  for rank, i in enumerate(order):
    if p_values[i] > alpha / (len(p_values) - rank):
      break
    rejected.add(i)
  return rejected


def test_holm_hand_computed_and_as_published():
  # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, then
  # 0.04 * 1 = 0.04 raised to the running maximum 0.06.
  assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
      [0.03, 0.06, 0.06, 0.02])
  # None is outside the family (m = 2): 0.2 * 2, then max(0.4, 0.3 * 1).
  assert statistics.holm([0.3, None, 0.2]) == pytest.approx([0.4, None, 0.4])
  assert statistics.holm([0.5, 0.9]) == [1.0, 1.0]  # Capped at 1.
  rng = np.random.default_rng(1)
  for _ in range(50):
    p = list(rng.uniform(0, 0.1, rng.integers(1, 8)))
    adjusted = statistics.holm(p)
    for alpha in (0.01, 0.05, 0.1):
      assert {i for i, a in enumerate(adjusted) if a <= alpha} == (
          holm_transcribed(p, alpha))


# --------------------------------------------------------------------------
# Power
# --------------------------------------------------------------------------


def power_integral(effect, sd, n, alpha):
  """The one-sided paired t-test's power with the noncentral t written out:
  P((Z + delta) / sqrt(V / df) > t_crit), V ~ chi2(df), integrated over V
  (no scipy.stats.nct)."""
  df = n - 1
  critical = stats.t.isf(alpha, df)
  delta = effect * math.sqrt(n) / sd
  log_norm = special.gammaln(df / 2) + df / 2 * math.log(2)

  def integrand(v):
    if v <= 0:
      return 0.0
    return special.ndtr(delta - critical * math.sqrt(v / df)) * math.exp(
        (df / 2 - 1) * math.log(v) - v / 2 - log_norm)

  # V's density sits around df (sd sqrt(2 df)): integrate where it is.
  spread = 15 * math.sqrt(2 * df)
  return integrate.quad(integrand, max(0.0, df - spread), df + spread,
                        points=[max(df - 2, 0.5)], limit=200)[0]


@pytest.mark.parametrize("n, alpha", [(3, 0.05), (3, 0.05 / 6), (8, 0.05),
                                      (20, 0.01)])
def test_mde_has_80_percent_power_by_integration(n, alpha):
  sd = 2.5
  mde = power.mde(sd, n, alpha)
  assert power_integral(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-7)
  assert power.power(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-9)
  assert power_integral(0.99 * mde, sd, n, alpha) < 0.8
  assert power.mde(2 * sd, n, alpha) == pytest.approx(2 * mde)


def test_mde_approaches_the_normal_formula_with_many_seeds():
  # (z_(1 - alpha) + z_0.8) sd / sqrt(n) as n grows.
  n, sd, alpha = 5000, 1.0, 0.05
  normal = (stats.norm.isf(alpha) + stats.norm.isf(0.2)) * sd / math.sqrt(n)
  assert power.mde(sd, n, alpha) == pytest.approx(normal, rel=1e-3)


def test_mde_is_undefined_without_a_spread():
  assert power.mde(0.0, 5, 0.05) is None
  assert power.mde(None, 5, 0.05) is None
  assert power.mde(1.0, 1, 0.05) is None


def test_seeds_needed_is_the_fewest_with_80_percent_power():
  for effect, sd, alpha in ((1.0, 2.0, 0.05), (1.0, 2.0, 0.05 / 18),
                            (0.01, 0.004, 0.05), (0.5, 3.0, 0.01)):
    n = power.seeds_needed(effect, sd, alpha)
    assert power_integral(effect, sd, n, alpha) >= 0.8 - 1e-9
    if n > power.MIN_SEEDS:
      assert power_integral(effect, sd, n - 1, alpha) < 0.8
  assert power.seeds_needed(10.0, 1.0, 0.05) == power.MIN_SEEDS
  assert power.seeds_needed(None, 1.0, 0.05) is None
  assert power.seeds_needed(1.0, 0.0, 0.05) is None
  assert power.seeds_needed(1e-4, 10.0, 0.05) is None  # Past MAX_SEEDS.


# --------------------------------------------------------------------------
# DerSimonian-Laird
# --------------------------------------------------------------------------


def test_dersimonian_laird_hand_computed():
  # y = 1, 2, 4; v = 0.5, 0.25, 1: w = 2, 4, 1, sum 7.
  # Fixed mean (2 + 8 + 4) / 7 = 2. Q = 2 * 1 + 4 * 0 + 1 * 4 = 6.
  # tau^2 = (6 - 2) / (7 - (4 + 16 + 1) / 7) = 4 / 4 = 1.
  # w* = 1 / 1.5, 1 / 1.25, 1 / 2 = 2/3, 4/5, 1/2; sum 59/30.
  # Estimate (2/3 + 8/5 + 2) / (59/30) = (128/30) / (59/30) = 128/59.
  # I^2 = (6 - 2) / 6 = 2/3.
  pooled = meta_analysis.dersimonian_laird([1.0, 2.0, 4.0], [0.5, 0.25, 1.0])
  assert pooled.k == 3 and pooled.q == pytest.approx(6.0)
  assert pooled.tau2 == pytest.approx(1.0)
  assert pooled.estimate == pytest.approx(128 / 59)
  half = 1.959963984540054 * math.sqrt(30 / 59)
  assert (pooled.ci_low, pooled.ci_high) == pytest.approx(
      (128 / 59 - half, 128 / 59 + half))
  assert pooled.i2 == pytest.approx(2 / 3)


def test_dersimonian_laird_without_heterogeneity_is_the_fixed_mean():
  # Q = 2 * 0.25 + 2 * 0.25 = 1 <= k - 1: tau^2 = 0, I^2 = 0.
  pooled = meta_analysis.dersimonian_laird([1.0, 2.0], [0.5, 0.5])
  assert pooled.tau2 == 0 and pooled.i2 == 0
  assert pooled.estimate == pytest.approx(1.5)
  assert meta_analysis.dersimonian_laird([], []) is None
  with pytest.raises(ValueError, match="variance"):
    meta_analysis.dersimonian_laird([1.0], [0.0])


def test_sign_count():
  assert meta_analysis.signs([1.0, -2.0, 0.0, 3.0], True) == (2, 1, 1)
  assert meta_analysis.signs([1.0, -2.0, 0.0, 3.0], False) == (1, 2, 1)
