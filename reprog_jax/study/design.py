"""A study's declared analysis: what the report tests, at which level, and
which cells the study planned.

The study (`configs/study.py`) declares, before any run, its primary
analysis (`primary`), the level `alpha`, claim 1's `similar_source_pp` and
the effects of interest `power_effect`; the sweep records them in
`study.json` with the grid (`cells`, and each cell's method, network,
dataset and n_shot as `runs`). The report reads them back from there
(`options`, `planned_runs`), so that its verdicts are the ones declared
and anyone can recompute them from `seeds.csv` and `study.json`.
"""

import copy
import json
import math
import os
from typing import NamedTuple

from reprog_jax import errors
from reprog_jax import layout
from reprog_jax import methods
from reprog_jax.configs import study as study_config

# Model selection -> (the summary's per-seed key, its description); in the
# order the report shows them. 'validation' falls back to the last epoch in
# a cell whose runs have no validation split.
SELECTIONS = {
    "validation": ("validation", "the epoch with the best accuracy on a "
                   "validation split (held out of the training split); the "
                   "last epoch in cells without one"),
    "last": ("last", "the last epoch"),
    "best_test": ("best", "the epoch with the best test accuracy, as the "
                  "PyTorch version reports (optimistic: picked on the test "
                  "set)"),
}
BEST_AMONG_TESTED = ("the epoch with the best test accuracy among the "
                     "epochs tested (config.test_every; optimistic: picked "
                     "on the test set)")
CLAIM_ONE_QUANTITY = "test_acc"
# Claim 2's quantities: the declared primary one (`test_ece` by default)
# and the others, each a sensitivity analysis.
CLAIM_TWO_QUANTITIES = ("test_ece", "test_ece_adaptive", "test_ece_ts",
                        "test_nll", "test_brier",
                        "test_pytorch_logged_quantity")
# Quantity -> (its name, the units of its differences, the factor from
# the runs' values to those units).
QUANTITIES = {
    "test_acc": ("accuracy", "pp", 100.0),
    "test_ece": ("ECE", "ECE", 1.0),
    "test_ece_adaptive": ("adaptive ECE", "ECE", 1.0),
    "test_ece_ts": ("ECE after temperature scaling", "ECE", 1.0),
    "test_nll": ("NLL", "nats", 1.0),
    "test_brier": ("Brier score", "Brier", 1.0),
    "test_pytorch_logged_quantity": (
        "the paper's logged quantity (not an ECE)", "logged quantity", 1.0),
}
# What that quantity is, where the report names it first.
LOGGED_QUANTITY = (
    "the quantity the paper's calibration figures were computed with: the "
    "PyTorch version's logged 'ECE', `get_ece` on raw logits summed over "
    "test batches and divided by the number of examples, which is not an "
    "ECE")
FIELDS = tuple(study_config.ANALYSIS)


class DesignError(errors.UserError, ValueError):
  """An unreadable or inconsistent study.json, or bad analysis fields."""


class Options(NamedTuple):
  """The report's declared analysis (`configs/study.py`'s fields).

  Attributes:
    alpha: the significance level of every verdict.
    similar_source_pp: claim 1's largest |dense - ticket| source top-1
      gap, in percentage points, compared after rounding to 0.01 pp.
    power_effect: {quantity: the effect of interest in its units (pp for
      accuracy), or None}.
    primary: {'method', 'variant', 'probe', 'selection', 'quantity'}.
    declared_in: the study.json these came from (None: the defaults),
      and the flags that overrode it.
  """
  alpha: float = study_config.ANALYSIS["alpha"]
  similar_source_pp: float = study_config.ANALYSIS["similar_source_pp"]
  power_effect: dict = study_config.ANALYSIS["power_effect"]
  primary: dict = study_config.ANALYSIS["primary"]
  declared_in: str | None = None


def method_key(method, variant="") -> str | None:
  """How the report names a method's variant: 'ilm_vp' (its defaults),
  'ilm_vp[blmpp]' (`MethodSpec.variant`); every claim is tested per key."""
  if method is None or not variant:
    return method
  return f"{method}[{variant}]"


def with_defaults(study: dict) -> dict:
  """`study` (plain) with every analysis field, missing ones (or missing
  keys of `primary` and `power_effect`) from `configs/study.py`."""
  study = dict(study)
  for field, default in study_config.ANALYSIS.items():
    value = study.get(field)
    if isinstance(default, dict):
      study[field] = {**copy.deepcopy(default), **(value or {})}
    elif value is None:
      study[field] = default
  return study


def problem(study: dict) -> str | None:
  """What is wrong with the analysis fields of a plain study (one line),
  or None."""
  primary = study["primary"]
  unknown = sorted(set(primary) - set(study_config.ANALYSIS["primary"]))
  if unknown:
    return (f"primary has unknown field(s) {', '.join(unknown)}; use "
            f"{', '.join(study_config.ANALYSIS['primary'])}")
  known = methods.names()
  for field, family in (("method", "prompt"), ("probe", "probe")):
    name = primary[field]
    if name not in known:
      return (f"primary.{field} {name!r} is not one of {', '.join(known)}")
    if methods.get(name).family != family:
      return (f"primary.{field} {name!r} is of family "
              f"{methods.get(name).family!r}, not {family!r}")
  if primary["selection"] not in SELECTIONS:
    return (f"primary.selection {primary['selection']!r} is not one of "
            f"{', '.join(SELECTIONS)}")
  if primary["quantity"] not in CLAIM_TWO_QUANTITIES:
    return (f"primary.quantity {primary['quantity']!r} is not one of "
            f"{', '.join(CLAIM_TWO_QUANTITIES)}")
  if not isinstance(primary["variant"], str):
    return f"primary.variant {primary['variant']!r} is not a string"
  alpha = study["alpha"]
  if not (_number(alpha) and 0 < alpha < 1):
    return f"alpha {alpha!r} is not in (0, 1); give e.g. 0.05"
  similar = study["similar_source_pp"]
  if not (_number(similar) and 0 <= similar < math.inf):
    return (f"similar_source_pp {similar!r} is not a number >= 0 (in "
            f"percentage points, e.g. 1.0)")
  for quantity, effect in study["power_effect"].items():
    if quantity not in QUANTITIES:
      return (f"power_effect names {quantity!r}, not one of "
              f"{', '.join(QUANTITIES)}")
    if effect is not None and not (_number(effect) and 0 < effect < math.inf):
      return (f"power_effect.{quantity} {effect!r} is not a positive "
              f"number (or None)")
  return None


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# Reading study.json
# --------------------------------------------------------------------------


def study_files(directory) -> list[str]:
  """Every study.json under `directory` (its own first), outside runs'
  own subdirectories."""
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if d not in layout.RUN_SUBDIRS)
    if layout.STUDY_FILE in files:
      found.append(os.path.join(root, layout.STUDY_FILE))
  return found


def _read(path) -> dict:
  try:
    with open(path) as f:
      record = json.load(f)
    record["study"]  # pylint: disable=pointless-statement
    return record
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DesignError(f"{path}: unreadable ({type(e).__name__}: "
                      f"{errors.first_line(e, 120)}); it is the sweep's "
                      f"record of its grid: restore it, or move it out of "
                      f"the directory to report without a plan") from None


def options(directory, alpha=None, similar_source_pp=None) -> Options:
  """The analysis declared for the runs under `directory`: its study.json's
  (else the study.json files under it, which must agree), else the
  defaults; `alpha` and `similar_source_pp`, when given, override it.

  Raises:
    DesignError: an unreadable study.json, nested ones that declare
      different analyses, or bad analysis fields.
  """
  paths = study_files(directory)
  declared, where = {}, None
  if paths:
    top = os.path.join(directory, layout.STUDY_FILE)
    chosen = [top] if top in paths else paths
    studies = {p: with_defaults(_read(p)["study"]) for p in chosen}
    settings = {p: {f: s[f] for f in FIELDS} for p, s in studies.items()}
    first = next(iter(settings))
    other = next((p for p in settings if settings[p] != settings[first]),
                 None)
    if other:
      raise DesignError(
          f"{first} and {other} declare different analyses (alpha, "
          f"similar_source_pp, power_effect or primary); report each sweep "
          f"directory on its own")
    declared, where = settings[first], first
    trouble = problem(studies[first])
    if trouble:
      raise DesignError(f"{first}: {trouble}")
  settings = {f: v for f, v in with_defaults(declared).items()
              if f in FIELDS}
  overrides = []
  if alpha is not None:
    settings["alpha"] = alpha
    overrides.append(f"--alpha {alpha:g}")
  if similar_source_pp is not None:
    settings["similar_source_pp"] = similar_source_pp
    overrides.append(f"--similar-source-pp {similar_source_pp:g}")
  if overrides:
    where = f"{where or 'the defaults'}, with {' and '.join(overrides)}"
  return Options(**settings, declared_in=where)


def planned_runs(directory) -> list[dict] | None:
  """Every run the study.json files under `directory` plan, as dicts of
  'cell' (relative to `directory`), 'method' (`method_key`), 'network',
  'kind', 'dataset', 'n_shot'; None without a study.json."""
  paths = study_files(directory)
  if not paths:
    return None
  runs = []
  for path in paths:
    record = _read(path)
    prefix = os.path.relpath(os.path.dirname(path), directory)
    networks = record["study"].get("networks", {})
    listed = record.get("runs") or [
        _parsed(name, networks) for name in record.get("cells", [])]
    for run in listed:
      if run is None:
        continue
      runs.append({
          "cell": os.path.normpath(os.path.join(prefix, run["cell"])),
          "method": method_key(run["method"], run.get("variant", "")),
          "network": run["network"], "kind": run["kind"],
          "dataset": run["dataset"], "n_shot": int(run["n_shot"])})
  return runs


def _parsed(name, networks) -> dict | None:
  """A run of an older study.json (cell names only): 'vp-blmpp/lt8/
  cifar10/10-shot' -> its method, variant, network, dataset and n_shot;
  None for a name of a method not registered here."""
  parts = name.split("/")
  if len(parts) != 4:
    return None
  head, network, dataset, shots = parts
  shorts = {spec.short: spec.name for spec in
            (methods.get(n) for n in methods.names())}
  short = max((s for s in shorts if head == s or head.startswith(s + "-")),
              key=len, default=None)
  if short is None:
    return None
  return {"cell": name, "method": shorts[short],
          "variant": head[len(short) + 1:], "network": network,
          "kind": networks.get(network, {}).get("kind"), "dataset": dataset,
          "n_shot": -1 if shots == "full" else int(shots.split("-")[0])}
