"""A method from parts: `compose` makes its `MethodSpec`, `assemble` the
`Method` the loop runs (see `parts.py` for what each part promises).

  SPEC = compose.compose(
      name="vp_lp", short="vplp", label="VP+LP",
      parts=compose.Composition(inputs.PROMPT, readouts.FEATURES,
                                outputs.LINEAR))

is a whole method: its config fields, checks and smoke sizes are its
parts', its family and whether it encodes follow from them, and it exports
what its parts export.
"""

import dataclasses
import inspect
from typing import Callable

import jax

from reprog_jax import errors
from reprog_jax.methods import base
from reprog_jax.methods import parts as parts_lib


@dataclasses.dataclass(frozen=True)
class Composition:
  """An input transform, a readout and an output, in that order."""

  input: parts_lib.Input
  readout: parts_lib.Readout
  output: parts_lib.Output

  def __post_init__(self):
    if self.output.needs_logits and not self.readout.own_head:
      raise errors.ConfigError(
          f"parts: output {self.output.name!r} maps the network's own "
          f"logits; readout {self.readout.name!r} gives something else "
          f"(use outputs.LINEAR, a trained head, on features)")

  @property
  def family(self) -> str:
    """'prompt' (a transformed input read through the network's own head:
    reprogramming, claim 1), 'probe' (the input as it comes: only a new
    head or mapping is trained) or 'hybrid' (a transformed input and a new
    head on features, e.g. VP+LP: never claim 1)."""
    if not self.input.transforms:
      return "probe"
    return "prompt" if self.readout.own_head else "hybrid"

  @property
  def encodes(self) -> bool:
    """Whether everything before the output is frozen (computed once)."""
    return not self.input.transforms

  def each(self):
    return (self.input, self.readout, self.output)


def assemble(name: str, parts: Composition, config, readout, num_classes: int,
             image_size: int | None) -> base.Method:
  """The `Method` of `parts` for one run.

  Args:
    name: the method's registry name.
    parts: its composition.
    config: the run's config (or a dict of the parts' fields).
    readout: `parts.readout` built for the network (`BuiltReadout`).
    num_classes: T, the target classes.
    image_size: the loader's image side.

  The trained values are the parts' dicts merged (input's, then the
  output's); the first part that trains starts from `rng`, the k-th after
  it from `fold_in(rng, k)`.
  """
  source = parts.input.build(config, image_size)
  output = parts.output.build(config, readout, num_classes)
  inits = [part.init for part in (source, output) if part.init is not None]

  def init(rng):
    trained = {}
    for k, part_init in enumerate(inits):
      trained.update(part_init(rng if k == 0 else jax.random.fold_in(rng, k)))
    return trained

  encode = None
  if parts.encodes:  # The readout of the plain image: frozen, cacheable.
    def encode(network, images):
      return readout.apply(network, source.apply({}, images))

    def scores(trained, network, values):
      del network  # Everything frozen happened in `encode`.
      return output.apply(trained, values)
  else:
    def scores(trained, network, images):
      return output.apply(trained, readout.apply(
          network, source.apply(trained, images)))

  def pictures(plot_dir, trained, test_counts, mapping, examples,
               class_names, title):
    return {**output.pictures(plot_dir, trained, test_counts, mapping,
                              class_names, title),
            **source.pictures(plot_dir, trained, examples, title)}

  return base.Method(name, init, scores, output.num_scores,
                     output.initial_mapping, output.epoch_mapping, pictures,
                     encode, output.mapping_statistic)


def _caller_module() -> str | None:
  frame = inspect.currentframe().f_back.f_back
  return frame.f_globals.get("__name__") if frame else None


def compose(*, name: str, short: str, label: str, parts: Composition,
            configure: Callable | None = None, smoke: Callable | None = None,
            build: Callable | None = None, torch_reference: str | None = None,
            module: str | None = None) -> base.MethodSpec:
  """The `MethodSpec` of a method composed of `parts`.

  Args:
    name, short, label, torch_reference: as `MethodSpec`'s.
    parts: the method's input, readout and output.
    configure: `config -> None` after the parts' own: the method's own
      defaults where they differ from its parts' (None: the parts').
    smoke: `config -> None` after the parts' smoke sizes (None: theirs).
    build: `(config, network, num_classes, image_size) -> Method` in place
      of the parts' (None: `assemble` them).
    module: the defining module (None: the caller's).

  The variants (`MethodSpec.variant`) are the parts' choices that differ
  from their defaults, the output's first ('blmpp-padding').
  """
  chosen = [p.choice for p in (parts.output, parts.input, parts.readout)
            if p.choice is not None]

  def configure_all(config):
    for part in parts.each():
      part.configure(config)
    if configure is not None:
      configure(config)

  def check(config, image_size):
    for part in parts.each():
      problem = part.check(config, image_size)
      if problem:
        return problem
    return None

  def smoke_all(config):
    for part in parts.each():
      part.smoke(config)
    if smoke is not None:
      smoke(config)

  def comparable(flat):
    for part in parts.each():
      flat = part.comparable(flat)
    return flat

  def variant(config):
    return "-".join(str(config.get(field)) for field, default in chosen
                    if config.get(field, default) != default)

  def to_pytorch(params, mapping, image_size, config=None):
    config = config or {}
    return {**parts.input.export(params, image_size, config),
            **parts.output.export(params, mapping, parts.readout, config)}

  def build_parts(config, network, num_classes, image_size):
    return assemble(name, parts, config, parts.readout.build(network),
                    num_classes, image_size)

  return base.MethodSpec(
      name=name, short=short, label=label, build=build or build_parts,
      configure=configure_all, check=check, smoke=smoke_all,
      encodes=parts.encodes, to_pytorch=to_pytorch,
      torch_reference=torch_reference, variant=variant,
      variant_fields=tuple(field for field, _ in chosen),
      comparable=comparable, module=module or _caller_module(), parts=parts)
