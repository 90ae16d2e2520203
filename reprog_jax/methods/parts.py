"""The parts a method is composed of, and what each one promises.

A method (`compose.compose`) is three parts in a row:

  images --input--> network input --readout--> values --output--> scores

- an **input** transform (`inputs.py`): `none` (ImageNet normalisation of
  the image as it comes), `expansive` (ILM-VP's learned frame around the
  downsized image), `padding` (a learned border on the resized image);
- a **readout** (`readouts.py`): `logits` (the network's own head: its
  1000 source logits) or `features` (its pooled features);
- an **output** (`outputs.py`): `mapping` (ILM, FLM, RLM, BLM, BLM++: a
  label mapping from source logits to target classes) or `linear` (a
  trained linear head: linear probing's on features, FullyMap's on logits).

Each part owns its config fields (`configure`, with their defaults), their
checks (`check`), its smoke sizes (`smoke`), what it trains (`init`), its
pictures and its export keys. Parts are frozen dataclasses of functions:
a new part is one more instance (`Input(name=..., build=...)`), stating
only what it has; everything else has a default that does nothing.

`choice(field, default, options)` is a part too: the option a config field
names (ILM-VP's `prompt` picks `expansive` or `padding`; its
`label_mapping` picks `mapping`, or for 'fullymap' `linear`), owning that
field and every option's fields.

What a part's `build` returns, for one run (`BuiltInput`, `BuiltReadout`,
`BuiltOutput`), is what `compose.assemble` joins into the loop's `Method`.
"""

import dataclasses
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from reprog_jax import errors
from reprog_jax.methods import base

# A config: the run's ConfigDict, or (export, older runs) its flat JSON
# dict; parts read their own fields with `config[field]` or
# `config.get(field, default)`, which both have.
Config = Any


def _no_fields(config) -> None:
  del config  # No fields of its own.


def _no_problem(config, image_size) -> None:
  del config, image_size  # Nothing of its own to check.


def _as_recorded(flat: dict) -> dict:
  return flat


def _nothing_to_export(*args) -> dict:
  del args  # Nothing trained, nothing in the checkpoint.
  return {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Part:
  """What every part has.

  Attributes:
    name: e.g. 'expansive', 'features', 'mapping'.
    configure: `config -> None`: adds the part's fields with their
      defaults (they are the method's config fields, top-level).
    check: `(config, image_size) -> problem or None`: one line saying what
      is wrong with its fields (or raise `errors.ConfigError`).
    smoke: `config -> None`: shrinks its fields for a smoke run.
    comparable: `flat config -> flat config`: drops the fields a run with
      this config does not use, and makes explicit what an older version
      left implicit (`MethodSpec.comparable`).
    choice: (field, default) for a `choice`, else None.
    options: a `choice`'s options by field value; {} for a plain part.
  """

  name: str
  configure: Callable[[Config], None] = _no_fields
  check: Callable[[Config, int], str | None] = _no_problem
  smoke: Callable[[Config], None] = _no_fields
  comparable: Callable[[dict], dict] = _as_recorded
  choice: tuple[str, str] | None = None
  options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BuiltInput:
  """An input transform for one run.

  Attributes:
    apply: `(trained, images) -> network input`: [0, 1] images (N, s, s, 3)
      to what the network takes (ImageNet-normalised, float32); `trained`
      is the whole method's dict of trained values (the part reads its
      own keys).
    init: `rng -> {key: array}`, the part's trained values; None: nothing
      trained (then the input and the readout are frozen, and the method
      computes them once: `Method.encode`).
    pictures: `(plot_dir, trained, examples, title) -> {tag: png path}`.
  """

  apply: Callable[[dict, jax.Array], jax.Array]
  init: Callable[[jax.Array], dict] | None = None
  pictures: Callable[..., dict] = base.no_pictures


@dataclasses.dataclass(frozen=True, kw_only=True)
class Input(Part):
  """An input transform (see the module docstring).

  Attributes:
    transforms: whether it changes the image with trained values (a
      prompt); decides the method's family and whether it encodes.
    build: `(config, image_size) -> BuiltInput`; `image_size` is the side
      of the loader's images.
    export: `(params, image_size, config) -> {key: arrays}`: its trained
      values as the PyTorch version's checkpoint holds them (NumPy, in
      PyTorch's layouts); `config` a flat dict, maybe an older run's.
  """

  transforms: bool
  build: Callable[[Config, int], BuiltInput]
  export: Callable[[dict, int, Config], dict] = _nothing_to_export


@dataclasses.dataclass(frozen=True)
class BuiltReadout:
  """What a readout reads from the frozen network, for one run.

  Attributes:
    apply: `(network, network input) -> (N, width)`, in the network's
      compute dtype.
    width: the number of values read (1000 source logits, 2048 features).
    own_head: whether they are the network's own logits.
    class_names: the network's output classes (logits only), else None.
  """

  apply: Callable[[Any, jax.Array], jax.Array]
  width: int
  own_head: bool
  class_names: Sequence[str] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Readout(Part):
  """What is read from the frozen network.

  Attributes:
    own_head: whether it reads the network's own head (its source logits):
      with a transformed input that is reprogramming (family 'prompt').
    build: `network -> BuiltReadout`.
  """

  own_head: bool
  build: Callable[[Any], BuiltReadout]


@dataclasses.dataclass(frozen=True)
class BuiltOutput:
  """An output for one run: from the readout's values to the scores, and
  the mapping from scores to target logits (`base.Method`'s fields of the
  same names).

  Attributes:
    apply: `(trained, values) -> scores` (N, num_scores).
    num_scores: K.
    init: `rng -> {key: array}`, its trained values; None: none.
    initial_mapping, epoch_mapping, mapping_statistic: as `base.Method`'s
      (default: the identity, unchanged, no mapping pass).
    pictures: `(plot_dir, trained, test_counts, mapping, class_names,
      title) -> {tag: png path}`.
  """

  apply: Callable[[dict, jax.Array], jax.Array]
  num_scores: int
  init: Callable[[jax.Array], dict] | None = None
  initial_mapping: np.ndarray | None = None
  epoch_mapping: base.EpochMapping = base.keep_mapping
  mapping_statistic: Callable[..., jax.Array] | None = None
  pictures: Callable[..., dict] = base.no_pictures


@dataclasses.dataclass(frozen=True, kw_only=True)
class Output(Part):
  """What turns the readout's values into target scores.

  Attributes:
    needs_logits: whether it only works on the network's own logits (a
      label mapping between source and target classes).
    build: `(config, readout: BuiltReadout, num_classes) -> BuiltOutput`.
    export: `(params, mapping, readout: Readout, config) -> {key: arrays}`,
      as `Input.export`, with the seed's mapping.
  """

  needs_logits: bool = False
  build: Callable[[Config, BuiltReadout, int], BuiltOutput]
  export: Callable[[dict, np.ndarray, Readout, Config], dict] = (
      _nothing_to_export)


def fields(part: Part) -> set[str]:
  """The config fields `part` adds (its `configure` on an empty config)."""
  config = ml_collections.ConfigDict()
  part.configure(config)
  return set(config.keys())


def choice(field: str, default: str, options: dict, *,
           unknown: Callable[[str], None] | None = None) -> Part:
  """A part that is one of `options`, the one `config[field]` names.

  It owns `field` (default `default`) and the fields of every option (a
  config can name any of them; a study varies `field` per cell), checks
  and shrinks every option's fields, and builds and exports the named one;
  a run's comparable config drops the fields only other options use.

  Args:
    field: the config field that names the option (e.g. 'prompt').
    default: its default, a key of `options`.
    options: field value -> part, all `Input`s or all `Output`s; one part
      may stand for several values (it then reads `field` itself).
    unknown: called with a value that is no option (it raises its own
      one-line `errors.ConfigError`); None: "config: FIELD 'x' is not one
      of ...".
  """
  first = next(iter(options.values()))
  kind = type(first)
  if not all(type(p) is kind for p in options.values()):
    raise ValueError(f"choice {field}: options of different kinds")
  if kind is Input and len({p.transforms for p in options.values()}) > 1:
    raise ValueError(f"choice {field}: some options transform the input, "
                     f"others do not; the family would depend on the config")
  own = {value: fields(part) for value, part in options.items()}
  distinct = list({id(p): p for p in options.values()}.values())

  def pick(config) -> Part:
    value = config.get(field, default) if config is not None else default
    if value not in options:
      if unknown is not None:
        unknown(value)
      raise errors.ConfigError(
          f"config: {field} {value!r} is not one of {', '.join(options)}")
    return options[value]

  def configure(config):
    for part in distinct:
      part.configure(config)
    setattr(config, field, default)

  def check(config, image_size):
    return pick(config).check(config, image_size)

  def smoke(config):
    for part in distinct:
      part.smoke(config)

  def comparable(flat):
    value = flat.get(field, default)
    part = options.get(value)
    if part is None:
      return flat
    unused = set().union(*own.values()) - own[value] - {field}
    return part.comparable({k: v for k, v in flat.items()
                            if k not in unused})

  common = dict(name=field, configure=configure, check=check, smoke=smoke,
                comparable=comparable, choice=(field, default),
                options=dict(options))
  if kind is Input:
    return Input(**common, transforms=first.transforms,
                 build=lambda config, image_size: pick(config).build(
                     config, image_size),
                 export=lambda params, image_size, config: pick(
                     config).export(params, image_size, config))
  return Output(**common,
                needs_logits=any(p.needs_logits for p in options.values()),
                build=lambda config, readout, num_classes: pick(
                    config).build(config, readout, num_classes),
                export=lambda params, mapping, readout, config: pick(
                    config).export(params, mapping, readout, config))
