"""torchvision ResNet state dicts -> reprog-jax trees. Pure NumPy.

One ordered table of rules maps each PyTorch key to a Flax collection, path
and transform. A key no rule matches, a rule's target the architecture does
not have, a weight the architecture needs that the file lacks, or a shape
mismatch is a `ConversionError` naming the key: nothing is skipped silently.
"""

import re

import flax.traverse_util
import numpy as np

from reprog_jax import errors
from reprog_jax.model import masks as masks_lib
from reprog_jax.model import network as network_lib

# Prefixes the PyTorch world wraps state-dict keys in: DataParallel's
# `module.` and the lottery-ticket code's `model.`.
PREFIXES = ("module.", "model.")


class ConversionError(errors.UserError, ValueError):
  """Bad input to the converter; the message names the file and the key."""


def _conv_kernel(w):
  return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _dense_kernel(w):
  return np.transpose(w, (1, 0))  # (out, in) -> (in, out)


def _same(w):
  return w


_BLOCK = r"(?:layer\d+\.\d+\.)?"
_CONV = rf"{_BLOCK}(?:conv\d|downsample\.0)"
_NORM = rf"{_BLOCK}(?:bn\d|downsample\.1)"

# (pattern with the module path as group 'm', collection, leaf, transform).
# collection None: a key we know and deliberately drop.
RULES = (
    (rf"(?P<m>{_CONV})\.weight", "params", "kernel", _conv_kernel),
    (rf"(?P<m>{_NORM})\.weight", "params", "scale", _same),
    (rf"(?P<m>{_NORM})\.bias", "params", "bias", _same),
    (rf"(?P<m>{_NORM})\.running_mean", "batch_stats", "mean", _same),
    (rf"(?P<m>{_NORM})\.running_var", "batch_stats", "var", _same),
    # A training-time counter; frozen BatchNorm never reads it.
    (rf"(?P<m>{_NORM})\.num_batches_tracked", None, None, None),
    (r"(?P<m>fc)\.weight", "params", "kernel", _dense_kernel),
    (r"(?P<m>fc)\.bias", "params", "bias", _same),
)
_COMPILED = tuple((re.compile(p), c, leaf, t) for p, c, leaf, t in RULES)
_TORCH_SUFFIX = {"kernel": "weight", "scale": "weight", "bias": "bias",
                 "mean": "running_mean", "var": "running_var"}


def strip_prefixes(key: str) -> str:
  """`module.model.layer1.0.conv1.weight` -> `layer1.0.conv1.weight`."""
  while key.startswith(PREFIXES):
    key = key.split(".", 1)[1]
  return key


def match(key: str):
  """(collection, flax path, transform) for a prefix-free torch key."""
  for pattern, collection, leaf, transform in _COMPILED:
    m = pattern.fullmatch(key)
    if m:
      if collection is None:
        return None, None, None
      return collection, tuple(m["m"].split(".")) + (leaf,), transform
  return "unknown", None, None


def torch_key(path: tuple[str, ...]) -> str:
  """The torchvision key of a flax path (for messages)."""
  return ".".join(path[:-1] + (_TORCH_SUFFIX[path[-1]],))


def convert_state_dict(state_dict, arch, num_classes=1000, source="weights"):
  """Converts a torchvision state dict (NumPy arrays) for `arch`.

  Args:
    state_dict: `{key: np.ndarray}`, keys optionally prefixed (`PREFIXES`).
    arch: a `reprog_jax.model.resnet` architecture name.
    num_classes: outputs of `fc`.
    source: the file name, for error messages.

  Returns:
    `{'params': ..., 'batch_stats': ...}` of float32 NumPy arrays.

  Raises:
    ConversionError: naming the offending key.
  """
  expected = network_lib.abstract_variables(arch, num_classes)
  expected = {c: flax.traverse_util.flatten_dict(expected[c])
              for c in ("params", "batch_stats")}
  out = {"params": {}, "batch_stats": {}}
  hint = f" (is --arch {arch} right?)"
  for raw_key, value in state_dict.items():
    key = strip_prefixes(raw_key)
    collection, path, transform = match(key)
    if collection is None:
      continue
    if collection == "unknown" or path not in expected[collection]:
      raise ConversionError(f"{source}: unexpected key '{raw_key}'{hint}")
    # Compared on PyTorch's side: a wrong number of axes cannot transpose.
    want = _inverse_shape(transform, expected[collection][path].shape)
    if tuple(np.shape(value)) != want:
      raise ConversionError(
          f"{source}: key '{raw_key}' has shape {tuple(np.shape(value))}, "
          f"{arch} needs {want}{hint}")
    array = transform(np.asarray(value, np.float32))
    if path in out[collection]:
      raise ConversionError(f"{source}: key '{raw_key}' appears twice "
                            f"(with and without a prefix)")
    out[collection][path] = array
  for collection, leaves in expected.items():
    for path in leaves:
      if path not in out[collection]:
        raise ConversionError(
            f"{source}: missing key '{torch_key(path)}'{hint}")
  return {c: flax.traverse_util.unflatten_dict(t) for c, t in out.items()}


def convert_masks(mask_dict, params, source="mask"):
  """Converts a lottery-ticket mask dict to a mask tree mirroring `params`.

  Every key must name a prunable weight (a conv or the fc weight) of the
  same shape, with values exactly 0 or 1. A prunable weight the file does
  not mention stays dense; the names of those are returned.

  Returns:
    (masks, unmasked_names).
  """
  flat_params = flax.traverse_util.flatten_dict(params)
  flat = {}
  for raw_key, value in mask_dict.items():
    key = strip_prefixes(raw_key)
    collection, path, transform = match(key)
    if (collection != "params" or path not in flat_params
        or not masks_lib.is_prunable(path)):
      raise ConversionError(
          f"{source}: mask key '{raw_key}' matches no conv or fc weight")
    value = np.asarray(value)
    want = _inverse_shape(transform, flat_params[path].shape)
    if value.shape != want:
      raise ConversionError(
          f"{source}: mask key '{raw_key}' has shape {tuple(value.shape)}, "
          f"its weight has {want}")
    array = transform(value)
    bad = ~((array == 0) | (array == 1))
    if bad.any():
      raise ConversionError(
          f"{source}: mask key '{raw_key}' is not 0/1 (e.g. value "
          f"{float(array[bad].flat[0]):g})")
    flat[path] = array.astype(bool)
  masks = masks_lib.dense(params)
  flat_masks = flax.traverse_util.flatten_dict(masks)
  unmasked = [torch_key(p) for p, m in flat_masks.items()
              if m is not None and p not in flat]
  flat_masks.update(flat)
  return flax.traverse_util.unflatten_dict(flat_masks), unmasked


def _inverse_shape(transform, shape):
  """The PyTorch-side shape of a Flax-side `shape` (for messages)."""
  shape = tuple(shape)
  if transform is _conv_kernel:
    h, w, i, o = shape
    return (o, i, h, w)
  return shape[::-1] if transform is _dense_kernel else shape
