"""Every verdict of a report, recomputed from `seeds.csv` and `study.json`
with scipy by the rules the README states ("How the claims are decided"),
written without the package's claims, verdicts, statistics, power or
meta-analysis code: the test of that code (`recompute`).

The rules, as stated:
- a cell is a dense network and a ticket of one architecture with runs of
  the method on the same dataset and n_shot; d_s = dense_s - ticket_s over
  the seeds both have, accuracy x 100 (percentage points);
- selection `validation` is the last epoch where a run has no validation
  split;
- claim 1 (and hybrid accuracy): not applicable when a source accuracy is
  unknown or round(|gap|, 2) > similar_source_pp;
- not testable: fewer than 3 paired seeds or a non-finite value;
- p: one-sided paired t (scipy.stats.ttest_rel), or, where d has zero
  variance (sd <= 1e-12 x the largest value), the exact sign-flip p
  (scipy.stats.permutation_test over all 2^n sign patterns);
- accuracy families: Holm over the tested cells, held / reversed /
  inconclusive; overall held when a cell is, else not shown;
- calibration families: held at p < alpha unadjusted, contradicted at
  Holm-adjusted opposite p < alpha; overall contradicted if a cell is,
  held if every planned cell is held, else inconclusive;
- MDE at 80 % power, one-sided at alpha / family size (accuracy) or alpha
  (calibration); seeds needed for the study's power_effect;
- pooled: DerSimonian-Laird over the tested cells with a spread.
"""

import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import integrate
from scipy import special
from scipy import stats

DEFAULTS = {"alpha": 0.05, "similar_source_pp": 1.0,
            "power_effect": {"test_acc": 1.0, "test_ece": 0.01,
                             "test_ece_adaptive": 0.01, "test_ece_ts": 0.01,
                             "test_nll": 0.05, "test_brier": 0.01,
                             "test_pytorch_logged_quantity": None}}


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _float(text):
  return None if text == "" else float(text)


def _settings_and_plan(directory):
  """(alpha, similar_source_pp, power_effect) of the top study.json (else
  the defaults), and every planned run (None without a study.json)."""
  settings, planned = dict(DEFAULTS), None
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d not in (
        "checkpoints", "tensorboard", "plots", "features", "figures"))
    if "study.json" not in files:
      continue
    with open(os.path.join(root, "study.json")) as f:
      record = json.load(f)
    if root == str(directory):
      for key in ("alpha", "similar_source_pp"):
        settings[key] = record["study"].get(key, settings[key])
      settings["power_effect"] = {**settings["power_effect"],
                                  **record["study"].get("power_effect", {})}
    planned = planned or []
    for run in record["runs"]:
      method = run["method"] + (f"[{run['variant']}]" if run["variant"]
                                else "")
      planned.append((run["dataset"], str(run["n_shot"]), run["network"],
                      run["kind"], method))
  return settings, planned


def _sign_flip(d, alternative):
  """scipy's exact paired permutation p; d rounded to 1e-9 so that sign
  patterns whose sums are equal in exact arithmetic tie (scipy's own
  tolerance is relative to the statistic, far below float rounding of
  differences of values like 0.6 + 0.03)."""
  d = np.round(d, 9)
  result = stats.permutation_test(
      (d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
      permutation_type="samples", alternative=alternative, vectorized=True,
      n_resamples=np.inf)
  return result.pvalue


def _holm(p):
  """Adjusted p-values: max_{j <= i} min(1, (m - j + 1) p_(j))."""
  order = np.argsort(p, kind="stable")
  out, running = [0.0] * len(p), 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(p) - rank) * p[i]))
    out[i] = running
  return out


def _power_by_integration(effect, sd, n, alpha):
  """P(T' > t_crit) with T' = (Z + delta) / sqrt(V / df), integrated over
  V ~ chi2(df): the noncentral t written out, without scipy's nct."""
  df = n - 1
  critical = stats.t.isf(alpha, df)
  delta = effect * math.sqrt(n) / sd
  log_norm = special.gammaln(df / 2) + df / 2 * math.log(2)

  def integrand(v):  # P(Z > c sqrt(v / df) - delta) * chi2(df) density.
    if v <= 0:
      return 0.0
    density = math.exp((df / 2 - 1) * math.log(v) - v / 2 - log_norm)
    return special.ndtr(delta - critical * math.sqrt(v / df)) * density

  # V's density sits around df (sd sqrt(2 df)): integrate where it is.
  spread = 15 * math.sqrt(2 * df)
  return integrate.quad(integrand, max(0.0, df - spread), df + spread,
                        points=[max(df - 2, 0.5)], limit=200)[0]


def check_mde(mde, sd, n, alpha):
  """`mde` is the smallest effect with 80 % power: the power there is 0.8,
  and power grows with the effect."""
  assert _power_by_integration(mde, sd, n, alpha) == pytest.approx(
      0.8, abs=1e-7)
  assert _power_by_integration(0.999 * mde, sd, n, alpha) < 0.8


def seeds_needed_by_scan(effect, sd, alpha, limit=100_000):
  for n in range(3, limit + 1):
    noncentrality = effect * math.sqrt(n) / sd
    if stats.nct.sf(stats.t.isf(alpha, n - 1), n - 1, noncentrality) >= 0.8:
      return n
  return None


def _expected_cell(values, kinds, sources, settings, row):
  """(d values or None, the cell's untested verdict or None, its paired
  seeds, dense and ticket side values)."""
  claim, methods, selection, metric = row["family"].split("|")
  scale = 100.0 if metric == "test_acc" else 1.0

  def runs_of(method, network):
    return values.get((row["dataset"], row["n_shot"], network, method))

  method_list = methods.split("+") if claim == "gap" else [row["method"]]
  involved = [runs_of(m, n) for m in method_list
              for n in (row["dense"], row["ticket"])]
  chosen = selection
  if selection == "validation" and any("validation" not in r
                                       for r in involved):
    chosen = "last"

  def side(method, network):
    return {seed: float(rec[metric]) * scale
            for seed, rec in runs_of(method, network)[chosen].items()
            if rec.get(metric, "") != ""}

  if claim == "gap":
    vp, lp = method_list
    gaps = []
    for m in (vp, lp):
      a, b = side(m, row["dense"]), side(m, row["ticket"])
      gaps.append({s: a[s] - b[s] for s in set(a) & set(b)})
    dense, ticket = gaps
  else:
    dense, ticket = side(row["method"], row["dense"]), side(
        row["method"], row["ticket"])
  common = sorted(set(dense) & set(ticket), key=int)
  a = np.array([dense[s] for s in common], float)
  b = np.array([ticket[s] for s in common], float)
  accuracy = metric == "test_acc"
  if claim in ("1", "hybrid") and accuracy:
    gap = (sources[row["dense"]] - sources[row["ticket"]]
           if row["dense"] in sources and row["ticket"] in sources else None)
    if gap is None or round(abs(gap), 2) > settings["similar_source_pp"]:
      return a, b, "not applicable"
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    return a, b, "not testable"
  if len(common) < 3:
    return a, b, "not testable"
  return a, b, None


def recompute(directory):
  """Checks claims.csv and analyses.csv of `directory` against seeds.csv
  and study.json; returns (claims rows, analyses rows)."""
  seeds = _read_csv(os.path.join(directory, "seeds.csv"))
  rows = _read_csv(os.path.join(directory, "claims.csv"))
  summaries = _read_csv(os.path.join(directory, "analyses.csv"))
  settings, planned = _settings_and_plan(directory)
  alpha = settings["alpha"]
  values, kinds, sources, arch = {}, {}, {}, {}
  for s in seeds:
    key = (s["dataset"], s["n_shot"], s["network"], s["method"])
    values.setdefault(key, {}).setdefault(s["selection"], {})[s["seed"]] = s
    kinds[s["network"]], arch[s["network"]] = s["kind"], s["arch"]
    if s["source_top1"] and float(s["source_top1"]) > 1:
      sources[s["network"]] = float(s["source_top1"])
  families = {}
  for r in rows:
    families.setdefault(r["family"], []).append(r)
  for name, members in families.items():
    claim, methods, selection, metric = name.split("|")
    universal = metric != "test_acc"
    direction = "less" if universal else "greater"
    opposite = "greater" if universal else "less"
    # The family's cells: every dense x ticket pair of one architecture
    # with runs of each of its methods.
    method_list = methods.split("+")
    expected = set()
    for (dataset, n_shot, dense, method) in values:
      if kinds[dense] != "dense":
        continue
      for ticket in {k[2] for k in values if k[:2] == (dataset, n_shot)
                     and kinds[k[2]] == "ticket" and arch[k[2]] == arch[dense]}:
        if claim == "gap":
          if method == method_list[0] and all(
              (dataset, n_shot, n, m) in values
              for m in method_list for n in (dense, ticket)):
            expected.add((dataset, n_shot, dense, ticket,
                          " - ".join(method_list)))
        elif method in method_list and (dataset, n_shot, ticket,
                                        method) in values:
          expected.add((dataset, n_shot, dense, ticket, method))
    assert {(r["dataset"], r["n_shot"], r["dense"], r["ticket"], r["method"])
            for r in members} == expected, name
    tested, p_values, p_opposites = [], [], []
    for r in members:
      a, b, untested = _expected_cell(values, kinds, sources, settings, r)
      assert int(r["n_seeds"]) == len(a)
      if untested:
        assert r["verdict"] == untested, (name, r)
        assert r["p_value"] == "" and r["p_opposite_adjusted"] == ""
        continue
      d = a - b
      zero = np.std(d, ddof=1) <= 1e-12 * max(abs(a).max(), abs(b).max())
      if zero:
        p = _sign_flip(d, direction)
        p_opposite = _sign_flip(d, opposite)
        low = high = d.mean()
      else:
        p = stats.ttest_rel(a, b, alternative=direction).pvalue
        p_opposite = stats.ttest_rel(a, b, alternative=opposite).pvalue
        half = stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / (
            math.sqrt(len(d)))
        low, high = d.mean() - half, d.mean() + half
      for key, value in (("dense_mean", a.mean()), ("ticket_mean", b.mean()),
                         ("diff_mean", d.mean()), ("ci_low", low),
                         ("ci_high", high), ("p_value", p),
                         ("p_opposite", p_opposite),
                         ("p_signflip", _sign_flip(d, direction)),
                         ("diff_sd", np.std(d, ddof=1))):
        assert float(r[key]) == pytest.approx(value, rel=1e-9, abs=1e-12), (
            name, key, r)
      tested.append((r, d, zero))
      p_values.append(p)
      p_opposites.append(p_opposite)
    size = len(tested)
    adjusted, against = _holm(p_values), _holm(p_opposites)
    cell_alpha = alpha if universal else alpha / max(size, 1)
    effect = settings["power_effect"].get(
        "test_acc" if claim == "gap" else metric)
    for (r, d, zero), p, q, raw in zip(tested, adjusted, against, p_values):
      assert int(r["family_size"]) == size
      assert float(r["p_opposite_adjusted"]) == pytest.approx(q, rel=1e-9)
      if universal:
        verdict = ("held" if raw < alpha else "contradicted" if q < alpha
                   else "inconclusive")
        assert r["p_adjusted"] == ""
      else:
        assert float(r["p_adjusted"]) == pytest.approx(p, rel=1e-9)
        verdict = ("held" if p < alpha else "reversed" if q < alpha
                   else "inconclusive")
      assert r["verdict"] == verdict, (name, r)
      sd = np.std(d, ddof=1)
      if zero:
        assert r["mde_80"] == "" and r["seeds_needed"] == ""
      else:
        check_mde(float(r["mde_80"]), sd, len(d), cell_alpha)
        if effect is not None:
          needed = seeds_needed_by_scan(effect, sd, cell_alpha)
          assert _float(r["seeds_needed"]) == needed, (name, r)
    _check_summary(name, members, tested, planned, kinds,
                   next(s for s in summaries if s["family"] == name))
  assert {s["family"] for s in summaries} >= set(families)
  return rows, summaries


def _check_summary(name, members, tested, planned, kinds, summary):
  claim, methods, _, metric = name.split("|")
  universal = metric != "test_acc"
  verdicts = [r["verdict"] for r in members]
  if universal:
    found = {(r["dataset"], r["n_shot"], r["dense"], r["ticket"], r["method"])
             for r in members}
    plan = set()
    if planned is not None:
      for (dataset, n_shot, dense, kind, method) in planned:
        if kind != "dense" or method not in methods.split("+"):
          continue
        plan |= {(dataset, n_shot, dense, t, method)
                 for (ds, ns, t, k, m) in planned
                 if (ds, ns, k, m) == (dataset, n_shot, "ticket", method)}
    missing = len(plan - found)
    assert int(summary["missing"]) == missing, name
    verdict = ("contradicted" if "contradicted" in verdicts else
               "held" if verdicts and not missing and set(verdicts) == {
                   "held"} else "inconclusive")
  else:
    verdict = "held" if "held" in verdicts else "not shown"
  assert summary["verdict"] == verdict, (name, summary)
  assert int(summary["family_size"]) == len(tested)
  for word in ("held", "reversed", "contradicted", "inconclusive",
               "not applicable", "not testable"):
    assert int(summary[word.replace(" ", "_")]) == verdicts.count(word)
  predicted = (lambda m: m < 0) if universal else (lambda m: m > 0)
  assert int(summary["along"]) == sum(predicted(d.mean())
                                     for _, d, _ in tested)
  spread = [d for _, d, zero in tested if not zero]
  if len(spread) < 2:
    assert summary["pooled_estimate"] == ""
    return
  # DerSimonian-Laird by hand.
  y = np.array([d.mean() for d in spread])
  v = np.array([np.var(d, ddof=1) / len(d) for d in spread])
  w = 1 / v
  q = np.sum(w * (y - np.sum(w * y) / np.sum(w)) ** 2)
  tau2 = max(0.0, (q - (len(y) - 1)) / (np.sum(w) - np.sum(w ** 2) /
                                         np.sum(w)))
  w_star = 1 / (v + tau2)
  estimate = np.sum(w_star * y) / np.sum(w_star)
  half = 1.959963984540054 / math.sqrt(np.sum(w_star))
  for key, value in (("pooled_estimate", estimate), ("tau2", tau2),
                     ("pooled_ci_low", estimate - half),
                     ("pooled_ci_high", estimate + half)):
    assert float(summary[key]) == pytest.approx(value, rel=1e-9,
                                                abs=1e-12), (name, key)
  del claim
