"""Linear probing (`linear_probe`): a new linear head on the frozen
network's pooled features, (`inputs.NONE`, `readouts.FEATURES`,
`outputs.LINEAR`). Those features depend on nothing trained (`encode`), so
the loop may compute them once and train on them."""

from reprog_jax.methods import base
from reprog_jax.methods import compose
from reprog_jax.methods import inputs
from reprog_jax.methods import outputs
from reprog_jax.methods import readouts

PARTS = compose.Composition(inputs.NONE, readouts.FEATURES, outputs.LINEAR)


def linear_probe(num_features: int, num_classes: int) -> base.Method:
  """Linear probing's `Method`: a new `num_classes`-way head on
  `num_features` pooled features (PyTorch's `nn.Linear` init)."""
  return compose.assemble("linear_probe", PARTS, {},
                          readouts.features_of(num_features), num_classes,
                          None)


def _build(config, network, num_classes, image_size):
  del config, image_size  # Only the feature width matters.
  return linear_probe(network.model.num_features, num_classes)


SPEC = compose.compose(
    name="linear_probe", short="lp", label="LP", parts=PARTS, build=_build,
    torch_reference="reprog_jax.tools.torch_reference:build_head_reference")
