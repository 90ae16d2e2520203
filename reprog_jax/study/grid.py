"""A study's grid: its cells, each with its checked training config.

A study (`configs/study.py`) names networks, methods, datasets, n_shots and
seeds, and optionally the label mappings and prompts to vary (ILM-VP's
`label_mappings`, `prompts`); a cell is one network x method (variant) x
dataset x n_shot, and all seeds of a cell train in one run
(`config.seeds`). A smoke study (`smoke: True`) shrinks every cell with
its method's own smoke sizes (`MethodSpec.smoke`) before the overrides, so
that a new method needs nothing in the study. `cells` checks the study (its
axes, its overrides) and builds every cell's config; `sweep` runs them and
records the grid in the sweep directory.
"""

import json
import re
from typing import NamedTuple

import ml_collections

from reprog_jax import data
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.study import design
from reprog_jax.train import run_config
from reprog_jax.train import workdir as workdir_lib

FIELDS = ("networks", "methods", "datasets", "n_shots", "seeds", "overrides",
          "method_overrides", "label_mappings", "prompts",
          "smoke") + design.FIELDS
# Optional study axes -> the config field each varies, in methods that
# declare it (`MethodSpec.variant_fields`); absent or empty: the method's
# default only, and study.json keeps them absent (older sweeps match).
VARIANT_AXES = {"label_mappings": "label_mapping", "prompts": "prompt"}
# Training-config fields a study's grid sets per cell; overrides may not.
GRID_FIELDS = ("method", "n_shot", "data.name", "seed", "seeds", "network",
               "network_dir", "random_network")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SweepError(errors.UserError, ValueError):
  """A study, a sweep directory or a task index that cannot run; one line."""


class Cell(NamedTuple):
  """One run of a study.

  Attributes:
    name: e.g. 'lp/dense/cifar10/10-shot' (method/network/dataset/shots).
    workdir_rel: its directory, relative to the sweep's workdir.
    config: its locked training config (all seeds in `config.seeds`).
    network: the study's name of its network.
  """
  name: str
  workdir_rel: str
  config: ml_collections.ConfigDict
  network: str = ""


def plain_study(study) -> dict:
  """A study (ConfigDict or dict) as study.json holds it: plain JSON values,
  every field present."""
  if isinstance(study, ml_collections.ConfigDict):
    study = study.to_dict()
  study = json.loads(json.dumps(study))
  missing = [f for f in FIELDS[:5] if f not in study]
  unknown = sorted(set(study) - set(FIELDS))
  if missing or unknown:
    raise SweepError(
        f"study: {'missing ' + ', '.join(missing) if missing else ''}"
        f"{'; ' if missing and unknown else ''}"
        f"{'unknown ' + ', '.join(unknown) if unknown else ''}; a study has "
        f"exactly {', '.join(FIELDS)} (see configs/study.py)")
  study.setdefault("overrides", {})
  study.setdefault("method_overrides", {})
  # The declared analysis (`study.design`); an older study.json without it
  # reads as the defaults.
  study = design.with_defaults(study)
  for axis in (*VARIANT_AXES, "smoke"):  # Unused: out of study.json.
    if not study.get(axis):
      study.pop(axis, None)
  return study


def cells(study) -> list[Cell]:
  """Every cell of `study`, in a fixed order (networks, then datasets,
  n_shots, methods), each with its checked training config.

  Raises:
    SweepError: a malformed study, or a cell whose config cannot run.
  """
  study = plain_study(study)
  _check_axes(study)
  grid = []
  for network, entry in study["networks"].items():
    for dataset in study["datasets"]:
      for n_shot in study["n_shots"]:
        for method in study["methods"]:
          spec = methods.get(method)
          for variant in _variants(study, spec):
            where = "/".join((spec.short, *variant.values(), network,
                              dataset, data.shot_name(n_shot)))
            config = _cell_config(study, where, network, entry, method,
                                  dataset, n_shot, variant)
            # The study's variant axes name the directory, not overrides:
            # a sweep that set a label mapping by overrides keeps its paths.
            short = "-".join(filter(None, (spec.short,
                                           spec.variant(variant))))
            name = "/".join((short, network, dataset,
                             data.shot_name(n_shot)))
            grid.append(Cell(name, name, config, network))
  return grid


def planned_runs(grid) -> list[dict]:
  """What each cell of `grid` runs, as study.json records it for the
  report (`design.planned_runs`): 'cell', 'method', 'variant', 'network',
  'kind', 'dataset', 'n_shot'."""
  return [{"cell": c.name, "method": c.config.method,
           "variant": methods.get(c.config.method).variant(c.config),
           "network": c.network, "kind": c.config.network,
           "dataset": c.config.data.name, "n_shot": c.config.n_shot}
          for c in grid]


def _variants(study, spec) -> list[dict]:
  """Each cell's variant fields of one method: every combination of the
  study's variant axes the method declares ([{}]: its defaults only)."""
  combos = [{}]
  for axis, field in VARIANT_AXES.items():
    values = study.get(axis) or []
    if values and field in spec.variant_fields:
      combos = [{**c, field: v} for c in combos for v in values]
  return combos


def _check_axes(study) -> None:
  def bad(message):
    raise SweepError(f"study: {message} (see configs/study.py)")

  networks = study["networks"]
  if not isinstance(networks, dict) or not networks:
    bad("networks is empty; name at least one, e.g. "
        "{'dense': {'dir': 'nets/dense', 'kind': 'dense'}}")
  for name, entry in networks.items():
    if not _NAME.match(name):
      bad(f"network name {name!r} may only hold letters, digits, '_', '.' "
          f"and '-' (it names directories)")
    extra = sorted(set(entry) - {"dir", "random", "kind"})
    if extra:
      bad(f"networks.{name} has unknown field(s) {', '.join(extra)}; use "
          f"dir, random and kind")
    if entry.get("kind") not in ("dense", "ticket"):
      bad(f"networks.{name}.kind is {entry.get('kind')!r}, not 'dense' or "
          f"'ticket'")
    if bool(entry.get("dir")) == bool(entry.get("random")):
      bad(f"networks.{name} needs exactly one of dir (a `python -m convert` "
          f"output) and random (smoke runs), e.g. "
          f"--config.networks.{name}.dir=nets/{name}")
    if entry.get("random") and entry["kind"] != "dense":
      bad(f"networks.{name}: a random network is dense, not a "
          f"{entry['kind']}; give its dir instead")
  if not isinstance(study.get("smoke", False), bool):
    bad(f"smoke {study['smoke']!r} must be True or False")
  for axis in VARIANT_AXES:
    values = study.get(axis)
    if values is not None and (not isinstance(values, list) or len(set(
        map(str, values))) != len(values)):
      bad(f"{axis} {values!r} must be a list without repeats")
  for axis in ("methods", "datasets", "n_shots", "seeds"):
    values = study[axis]
    if not isinstance(values, list) or not values:
      bad(f"{axis} is empty; give at least one")
    if len(set(map(str, values))) != len(values):
      bad(f"{axis} {values} has repeats")
  known = methods.names()
  for method in study["methods"]:
    if method not in known:
      bad(f"method {method!r} is not one of {', '.join(known)} (a method "
          f"of your own: name its module in {methods.PLUGINS_ENV})")
  for n_shot in study["n_shots"]:
    if not isinstance(n_shot, int) or not (n_shot == -1 or n_shot >= 1):
      bad(f"n_shots holds {n_shot!r}; use positive integers, or -1 for "
          f"the full training split")
  for dataset in study["datasets"]:
    data.get_dataset_info(dataset)  # A DataError listing every name.
  trouble = design.problem(study)
  if trouble:
    bad(trouble)
  # Overrides of a method the study does not run are kept, unused: a
  # preset's methods can then be narrowed from the command line.
  unknown = sorted(set(study["method_overrides"]) - set(known))
  if unknown:
    bad(f"method_overrides names {', '.join(unknown)}, not one of "
        f"{', '.join(known)}")
  for where, overrides in [("overrides", study["overrides"])] + [
      (f"method_overrides.{m}", o)
      for m, o in study["method_overrides"].items()]:
    owned = sorted(set(dict(workdir_lib.flatten(overrides))) & set(GRID_FIELDS))
    if owned:
      bad(f"{where} sets {', '.join(owned)}, which the grid sets per cell; "
          f"use networks, methods, datasets, n_shots and seeds")


def _cell_config(study, name, network, entry, method, dataset, n_shot,
                 variant=None):
  config = run_config.method_config(method, dataset)
  config.progress = False  # The sweep prints a line per cell instead.
  if study.get("smoke"):  # Each method's own smoke sizes, then overrides.
    methods.get(method).smoke(config)
  _override(config, study["overrides"], name, "overrides")
  _override(config, study["method_overrides"].get(method, {}), name,
            f"method_overrides.{method}")
  for field, value in (variant or {}).items():
    setattr(config, field, value)
  config.n_shot = n_shot
  config.seeds = tuple(study["seeds"])
  config.network = entry["kind"]
  config.network_dir = entry.get("dir") or None
  config.random_network = entry.get("random") or None
  try:
    run_config.check(config)
  except ValueError as e:  # check's one-line message.
    raise SweepError(f"cell {name}: {e}") from None
  return config


def _override(config, overrides, name, where, prefix=""):
  for key, value in overrides.items():
    field = f"{prefix}{key}"
    if isinstance(value, dict):
      if not isinstance(config.get(key), ml_collections.ConfigDict):
        raise SweepError(f"study {where}: {field} is not a group of the "
                         f"training config (cell {name})")
      _override(config[key], value, name, where, f"{field}.")
      continue
    try:
      config[key] = tuple(value) if isinstance(value, list) else value
    except (AttributeError, KeyError):
      raise SweepError(f"study {where}: {field} is not a field of the "
                       f"training config (cell {name})") from None
    except TypeError as e:
      raise SweepError(f"study {where}: {field}={value!r} has the wrong type "
                       f"({errors.first_line(e)})") from None
