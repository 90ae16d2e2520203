"""The adaptation methods and their one registry.

A method is a composition of parts (`parts.py`: an input transform, a
readout, an output; `compose.compose` makes its `MethodSpec`), or a
`MethodSpec` written by hand (`base.py`); its module exports it as `SPEC`.
Everything else in the package (the configs, the config checks, the loop,
the sweep, the report, the exporter, the benchmark) asks this registry by
name and never names a method.

- Linear probing (`linear_probe`): (none, features, linear): a new Dense
  head on the frozen network's pooled features.
- ILM-VP (`ilm_vp`): (prompt, logits, label mapping): a learned prompt
  (`config.prompt`: the expansive frame or the padding border) in front of
  the frozen network, its own head read, and a label mapping
  (`config.label_mapping`: ILM, FLM, RLM sequences, BLM and BLM++
  matrices, or FullyMap's trained Dense layer on the logits).
- VP+LP (`vp_lp`): (prompt, features, linear): the prompt trained with a
  new head on the pooled features (family 'hybrid').

Adding a method (docs/adding-a-method.md): write its module (here, or
anywhere importable) ending in `SPEC = compose.compose(...)`; here, add it
to the registrations below; elsewhere, call `register(SPEC)` at its import
and name the module in the environment,
`REPROG_JAX_METHODS=my_package.my_method` (comma-separated for several),
so that every entry point imports it on first use. Every run records the
module (`summary.json`'s `method_module`, a sweep cell's `cell.json`), so
that export and sweep find it again (`find`).
"""

import dataclasses
import importlib
import inspect
import os

from reprog_jax import errors
from reprog_jax.methods import ilm_vp
from reprog_jax.methods import linear_probe
from reprog_jax.methods import vp_lp
from reprog_jax.methods.base import EpochMapping, Method, MethodSpec, Trainable

# Method name -> its spec: the one registry, in the order of tables.
METHODS: dict[str, MethodSpec] = {}
# Method name -> the source file that registered it (`register`).
_SOURCES: dict[str, str | None] = {}
# Modules (comma-separated) that register further methods when imported.
PLUGINS_ENV = "REPROG_JAX_METHODS"


def _import_plugins() -> None:
  """Imports the modules `$REPROG_JAX_METHODS` names (once each: Python
  caches them); each calls `register` at its import."""
  for module in os.environ.get(PLUGINS_ENV, "").split(","):
    module = module.strip()
    if not module:
      continue
    if not _imported(module):
      raise errors.ConfigError(
          f"{PLUGINS_ENV}: no module {module!r}; put the directory that "
          f"holds it on PYTHONPATH, or correct the name")


def _imported(module: str) -> bool:
  """Imports `module`; False when that module itself cannot be found (the
  user's to fix). A module it fails to import is its bug and keeps the
  traceback."""
  try:
    importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name is None or not (module == e.name
                              or module.startswith(e.name + ".")):
      raise
    return False
  return True


def names() -> tuple[str, ...]:
  """Every registered method's name, plug-ins included."""
  _import_plugins()
  return tuple(METHODS)


def get(name: str) -> MethodSpec:
  """The spec of method `name`.

  Raises:
    errors.ConfigError: an unknown name; the message lists the valid ones.
  """
  _import_plugins()
  try:
    return METHODS[name]
  except KeyError:
    raise errors.ConfigError(
        f"config: method {name!r} is not one of {', '.join(METHODS)} (a "
        f"method of your own: name its module in {PLUGINS_ENV})") from None


def find(name: str, module: str | None = None) -> MethodSpec | None:
  """The spec of method `name` as a run recorded it, or None if it cannot
  be had here (the caller says what that leaves out, in one line).

  Args:
    name: the method's registered name (`config.method`).
    module: the module that registers it, as the run recorded it (None:
      unknown); imported when `name` is not registered yet. A module that
      cannot be found gives None; one that fails inside keeps its
      traceback (a bug of that module).
  """
  _import_plugins()
  if name not in METHODS and module:
    _imported(module)
  return METHODS.get(name)


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
  """Adds a method (a plug-in, or a test's toy method) to the registry.

  Args:
    spec: the method; its `module` None: the caller's module (the one
      whose import registers it), which every run then records.
    replace: replace a registered method of the same name (and free its
      short name); without it, a name or short name that exists is an
      error, so that a plug-in can never shadow a method silently. The
      same source file registering again (a plug-in that is also loaded
      as its own config file, `--config=my_method.py:smoke`) is the same
      method: the later registration replaces the earlier.

  Returns:
    The spec as registered (with its module).

  Raises:
    errors.ConfigError: the name or the short name exists (one line
      naming the method that has it and its module).
  """
  caller = inspect.currentframe().f_back.f_globals
  if spec.module is None:
    spec = dataclasses.replace(spec, module=caller.get("__name__"))
  source = caller.get("__file__")
  source = os.path.realpath(source) if source else None
  replace = replace or (source is not None
                        and _SOURCES.get(spec.name) == source)
  others = {name: s for name, s in METHODS.items()
            if not (replace and name == spec.name)}
  clash = next((s for s in others.values() if spec.name == s.name
                or spec.short == s.short), None)
  if clash is not None:
    what = ("name" if clash.name == spec.name else
            f"short name {spec.short!r}")
    raise errors.ConfigError(
        f"method {spec.name!r} (module {spec.module}): its {what} is "
        f"{clash.name!r}'s (module {clash.module}); choose another, or "
        f"pass replace=True to replace {clash.name!r}")
  METHODS[spec.name] = spec
  _SOURCES[spec.name] = source
  return spec


for _spec in (linear_probe.SPEC, ilm_vp.SPEC, vp_lp.SPEC):
  register(_spec)


def build(config, network, num_classes: int, image_size: int) -> Method:
  """The method `config.method` names, for `network` and `num_classes`."""
  return get(config.method).build(config, network, num_classes, image_size)
