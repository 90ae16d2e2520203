"""The adaptation methods, one module each, and their one registry.

A method module (`ilm_vp.py`, `linear_probe.py`) defines everything about
its method and exports it as `SPEC` (a `MethodSpec`); everything else in the
package (the config checks, the loop, the sweep, the report, the exporter,
the benchmark) asks this registry by name and never names a method.

- ILM-VP (`ilm_vp`): trains the `ExpansivePrompt` program in front of the
  frozen network; its mapping is a label mapping.
- Linear probing (`linear_probe`): trains a new Dense head on the frozen
  network's pooled features; its mapping is the identity.
"""

from reprog_jax import errors
from reprog_jax.methods import ilm_vp
from reprog_jax.methods import linear_probe
from reprog_jax.methods.base import EpochMapping, Method, MethodSpec, Trainable

# Method name -> its spec: the one registry.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec for spec in (linear_probe.SPEC, ilm_vp.SPEC)}


def names() -> tuple[str, ...]:
  """Every registered method's name."""
  return tuple(METHODS)


def get(name: str) -> MethodSpec:
  """The spec of method `name`.

  Raises:
    errors.ConfigError: an unknown name; the message lists the valid ones.
  """
  try:
    return METHODS[name]
  except KeyError:
    raise errors.ConfigError(f"config: method {name!r} is not one of "
                             f"{', '.join(METHODS)}") from None


def register(spec: MethodSpec) -> None:
  """Adds a method (a plug-in, or a test's toy method) to the registry."""
  METHODS[spec.name] = spec


def build(config, network, num_classes: int, image_size: int) -> Method:
  """The method `config.method` names, for `network` and `num_classes`."""
  return get(config.method).build(config, network, num_classes, image_size)
