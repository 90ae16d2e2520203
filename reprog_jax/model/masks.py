"""Lottery-ticket masks as frozen pytree multipliers (the jaxpruner way).

A mask tree mirrors the `params` tree: a 0/1 boolean array on every prunable
kernel (all convolution kernels and the `fc` kernel, as in the PyTorch
version's `*_mask.pth`), and `None` on everything else (BatchNorm scales and
biases, the `fc` bias), which stays unmasked. `apply` multiplies inside the
jitted forward, so a ticket runs the dense model's code.
"""

from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

Params = Any
Masks = Any


def is_prunable(path: tuple[str, ...]) -> bool:
  """True for the params leaves a lottery ticket masks: conv and fc kernels."""
  return path[-1] == "kernel"


def dense(params: Params) -> Masks:
  """All-ones masks: a dense network goes through the same code as a ticket."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({
      path: np.ones(np.shape(leaf), bool) if is_prunable(path) else None
      for path, leaf in flat.items()
  })


def apply(params: Params, masks: Masks) -> Params:
  """Returns `params * masks` on the masked leaves, the rest unchanged."""
  return jax.tree.map(
      lambda m, p: p if m is None else p * jnp.asarray(m, p.dtype),
      masks, params, is_leaf=lambda m: m is None)


def to_storable(masks: Masks) -> dict:
  """Drops the `None` leaves (checkpoint formats have no use for them)."""
  flat = flax.traverse_util.flatten_dict(masks)
  return flax.traverse_util.unflatten_dict(
      {k: v for k, v in flat.items() if v is not None})


def from_storable(stored: dict, params: Params) -> Masks:
  """Inverse of `to_storable`: the mirror of `params` with `None` re-added."""
  flat = flax.traverse_util.flatten_dict(stored)
  return flax.traverse_util.unflatten_dict({
      path: (np.asarray(flat[path], bool) if path in flat else None)
      for path in flax.traverse_util.flatten_dict(params)
  })


def nonzero_outside(params: Params, masks: Masks) -> int:
  """How many weights are nonzero where their mask is 0.

  Lottery-ticket files usually store pruned weights as zeros already; a
  nonzero count means the raw checkpoint is denser than its ticket.
  """
  flat_params = flax.traverse_util.flatten_dict(params)
  return sum(
      int(np.count_nonzero(np.asarray(flat_params[path])[~np.asarray(m, bool)]))
      for path, m in flax.traverse_util.flatten_dict(masks).items()
      if m is not None)


def torch_name(path: tuple[str, ...]) -> str:
  """`('layer1', '0', 'conv1', 'kernel')` -> `'layer1.0.conv1'`."""
  return ".".join(path[:-1])


def sparsity(params: Params, masks: Masks) -> dict:
  """The sparsity report of a (masked) network.

  `remaining_percent` is the PyTorch version's figure ("remain weight"):
  over every convolution weight except the stem `conv1`,
  `100 * (1 - zeros / total)` where zeros are counted in the effective
  weight `mask * weight`. `global_remaining_percent` counts every prunable
  kernel (all convolutions and `fc`); `mask_remaining_percent` counts ones
  in the masks alone. `layers` gives each kernel's figures by its torchvision
  name.
  """
  # On the host, in numpy: `apply` op by op would compile a multiply per
  # kernel shape (seconds per run on a CPU), for a report read once.
  flat_w = flax.traverse_util.flatten_dict(jax.device_get(params))
  flat_m = flax.traverse_util.flatten_dict(masks)
  layers = {}
  for path, mask in flat_m.items():
    if mask is None:
      continue
    weight = np.asarray(flat_w[path])
    weight = weight * np.asarray(mask).astype(weight.dtype)  # As `apply`.
    layers[torch_name(path)] = {
        "shape": list(weight.shape),
        "total": int(weight.size),
        "nonzero": int(np.count_nonzero(weight)),
        "mask_ones": int(np.count_nonzero(mask)),
    }
  for figures in layers.values():
    figures["remaining_percent"] = 100.0 * figures["nonzero"] / figures["total"]

  def percent(names, key):
    total = sum(layers[n]["total"] for n in names)
    return 100.0 * sum(layers[n][key] for n in names) / total

  convs = [n for n, f in layers.items() if len(f["shape"]) == 4 and n != "conv1"]
  return {
      "remaining_percent": percent(convs, "nonzero"),
      "global_remaining_percent": percent(list(layers), "nonzero"),
      "mask_remaining_percent": percent(list(layers), "mask_ones"),
      "prunable_weights": sum(f["total"] for f in layers.values()),
      "layers": layers,
  }


def format_report(report: dict, per_layer: bool = False) -> str:
  """A human-readable rendering of `sparsity(...)`."""
  lines = [
      f"remaining weight (PyTorch definition: convs except conv1): "
      f"{report['remaining_percent']:.2f} %",
      f"remaining weight (all conv + fc kernels): "
      f"{report['global_remaining_percent']:.2f} %",
      f"mask ones (all conv + fc kernels): "
      f"{report['mask_remaining_percent']:.2f} %",
  ]
  if per_layer:
    width = max(len(n) for n in report["layers"])
    for name, f in report["layers"].items():
      lines.append(f"  {name:<{width}}  {f['remaining_percent']:7.2f} %  "
                   f"of {f['total']:>9,d}")
  return "\n".join(lines)
