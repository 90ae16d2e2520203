"""Readouts: what a method reads from the frozen network.

- `LOGITS`: the network's own head, its source logits (1000 ImageNet
  classes; `network.class_names`). With a transformed input this is
  reprogramming (family 'prompt'), the paper's claim 1.
- `FEATURES`: the pooled features before the head (2048 for a ResNet-50),
  what linear probing trains a new head on.

Neither has config fields; the network decides their width.
"""

from typing import Sequence

from reprog_jax.methods import parts
from reprog_jax.model import network as network_lib


def logits_of(class_names: Sequence[str]) -> parts.BuiltReadout:
  """The logits readout of a network with these output classes."""
  return parts.BuiltReadout(
      apply=lambda network, x: network_lib.forward(network, x),
      width=len(class_names), own_head=True,
      class_names=list(class_names))


def features_of(num_features: int) -> parts.BuiltReadout:
  """The features readout of a network with `num_features` features."""
  return parts.BuiltReadout(
      apply=lambda network, x: network_lib.forward(network, x,
                                                   features_only=True),
      width=num_features, own_head=False)


LOGITS = parts.Readout(
    name="logits", own_head=True,
    build=lambda network: logits_of(network_lib.class_names(network)))
FEATURES = parts.Readout(
    name="features", own_head=False,
    build=lambda network: features_of(network.model.num_features))
