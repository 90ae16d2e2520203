"""The adaptation methods, one module each, and their one registry.

A method module (`ilm_vp.py`, `linear_probe.py`) defines everything about
its method and exports it as `SPEC` (a `MethodSpec`: its config fields and
checks, its sweep and table names, its `Method`, its PyTorch export layout
and benchmark reference); everything else in the package (the configs, the
config checks, the loop, the sweep, the report, the exporter, the
benchmark) asks this registry by name and never names a method.

- ILM-VP (`ilm_vp`): trains a prompt (the `ExpansivePrompt` frame, or
  the `PaddingPrompt` border: `config.prompt`) in front of the frozen
  network; its mapping is a label mapping (ILM, FLM, RLM sequences, BLM and
  BLM++ matrices, or FullyMap's trained Dense layer:
  `config.label_mapping`), its variants for the sweep and the report.
- Linear probing (`linear_probe`): trains a new Dense head on the frozen
  network's pooled features; its mapping is the identity.

Adding a method: write its module (here, or anywhere importable) ending in
`SPEC = MethodSpec(...)`; here, add it to `METHODS` below; elsewhere, call
`register(SPEC)` at its import and name the module in the environment,
`REPROG_JAX_METHODS=my_package.my_method` (comma-separated for several),
so that every entry point (`reprog_jax.main`, the sweep, the report,
`python -m convert export`, the benchmark) imports it on first use.
"""

import importlib
import os

from reprog_jax import errors
from reprog_jax.methods import ilm_vp
from reprog_jax.methods import linear_probe
from reprog_jax.methods.base import EpochMapping, Method, MethodSpec, Trainable

# Method name -> its spec: the one registry, in the order of tables.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec for spec in (linear_probe.SPEC, ilm_vp.SPEC)}
# Modules (comma-separated) that register further methods when imported.
PLUGINS_ENV = "REPROG_JAX_METHODS"


def _import_plugins() -> None:
  """Imports the modules `$REPROG_JAX_METHODS` names (once each: Python
  caches them); each calls `register` at its import."""
  for module in os.environ.get(PLUGINS_ENV, "").split(","):
    module = module.strip()
    if not module:
      continue
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      # Only the named module itself missing is the user's to fix; a
      # module it fails to import is its bug and keeps the traceback.
      if e.name is None or not (module == e.name
                                or module.startswith(e.name + ".")):
        raise
      raise errors.ConfigError(
          f"{PLUGINS_ENV}: no module {module!r}; put the directory that "
          f"holds it on PYTHONPATH, or correct the name") from None


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
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name is None or not (module == e.name
                                or module.startswith(e.name + ".")):
        raise
  return METHODS.get(name)


def register(spec: MethodSpec) -> None:
  """Adds a method (a plug-in, or a test's toy method) to the registry; a
  spec of the same name replaces the earlier one."""
  METHODS[spec.name] = spec


def build(config, network, num_classes: int, image_size: int) -> Method:
  """The method `config.method` names, for `network` and `num_classes`."""
  return get(config.method).build(config, network, num_classes, image_size)
