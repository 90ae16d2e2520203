"""A plug-in method composed from parts (`REPROG_JAX_METHODS=parts_method`):
a new linear head on the frozen network's own logits, no prompt
(AutoVP's FullyMap without the visual prompt). Family 'probe' (only a new
head is trained); the logits are frozen, so they are computed once."""

from reprog_jax import methods
from reprog_jax.methods import compose, inputs, outputs, readouts

SPEC = methods.register(compose.compose(
    name="logit_head", short="lh", label="LH",
    parts=compose.Composition(inputs.NONE, readouts.LOGITS, outputs.LINEAR)))


def get_config(arg=None):
  """Its presets (`--config=tests/parts_method.py:smoke`)."""
  from reprog_jax.train import run_config  # pylint: disable=g-import-not-at-top
  return run_config.method_config(SPEC.name, arg)
