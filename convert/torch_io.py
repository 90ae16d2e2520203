"""The PyTorch side of conversion: reading `.pth` files, random torchvision
networks, and running torchvision for verification.

torch is imported lazily, so `reprog_jax` never needs it; only this module
does (`pip install 'reprog-jax[torch]'`).
"""

import os
import re
import warnings

import numpy as np

from convert.torch_to_flax import ConversionError, strip_prefixes
from reprog_jax import fileio as integrity

# Where a wrapped state dict may sit inside a checkpoint dict.
CONTAINER_KEYS = ("state_dict", "model")


def import_torch():
  """Imports torch and torchvision, or explains how to get them."""
  try:
    import torch
    import torchvision
  except ImportError:
    raise ConversionError(
        "reading PyTorch checkpoints needs torch and torchvision: "
        "pip install 'reprog-jax[torch]'") from None
  return torch, torchvision


def sha256(path) -> str:
  """The sha256 of a file (a source checkpoint's, for `meta.json`)."""
  return integrity.file_sha256(path)


def read_state_dict(path, what="weights") -> dict:
  """Reads a `.pth` file into `{key: np.ndarray}`.

  Accepts a bare state dict or a dict holding one under `state_dict` or
  `model`. Loads with `weights_only=True`: no code in the file runs.
  """
  torch, _ = import_torch()
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such {what} file")
  try:
    with warnings.catch_warnings():
      # torch warns about the pickle protocol of files it then refuses.
      warnings.simplefilter("ignore")
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for a bad file.
    raise ConversionError(_unreadable(path, e)) from None
  if isinstance(obj, dict):
    for key in CONTAINER_KEYS:
      if isinstance(obj.get(key), dict) and not torch.is_tensor(obj.get(key)):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj:
    raise ConversionError(
        f"{path}: holds a {type(obj).__name__}, not a state dict (a dict of "
        f"tensors, or one under {' or '.join(map(repr, CONTAINER_KEYS))})")
  out = {}
  for key, value in obj.items():
    if not torch.is_tensor(value):
      raise ConversionError(
          f"{path}: key '{key}' holds a {type(value).__name__}, not a tensor")
    out[str(key)] = value.detach().cpu().numpy()
  return out


def _unreadable(path, error) -> str:
  """Why torch could not read `path`, in our words: torch's own message is
  long and suggests `weights_only=False`, which would run the file's code."""
  refused = re.search(r"GLOBAL ([\w.]+)", str(error))
  if refused:
    return (f"{path}: a PyTorch checkpoint holding Python objects besides "
            f"tensors ({refused[1]}), which are not loaded (no code in a "
            f"checkpoint runs); save just the state dict, e.g. "
            f"torch.save(ckpt['state_dict'], 'weights.pth')")
  with open(path, "rb") as f:
    head = f.read(4)
  if not head:
    what = "the file is empty"
  elif head.startswith(b"PK"):
    what = "a damaged or truncated zip archive (the format torch.save writes)"
  else:
    what = "its contents are not in the format torch.save writes"
  return (f"{path}: not a readable PyTorch checkpoint: {what}; pass a file "
          f"written by torch.save, copied completely")


def random_state_dict(arch, seed=0, num_classes=1000) -> dict:
  """A randomly initialised torchvision `arch` as a NumPy state dict.

  BatchNorm's running statistics and affine parameters are randomised too,
  so a converter bug in BatchNorm cannot hide behind identity statistics.
  The statistics start from those of a random batch (as training would
  leave them) and are then perturbed per channel, which keeps activations
  and logits at a trained network's scale (logits of order 1-10), so
  float32 parity can be checked at a meaningful absolute tolerance.
  """
  torch, torchvision = import_torch()
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(weights=None,
                                            num_classes=num_classes)
  norms = {name: m for name, m in model.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d)}
  # The last BatchNorm of each residual branch gets a small scale, as in
  # trained ResNets; otherwise the residual stream grows block by block.
  last = {f"{name.rsplit('.', 1)[0]}.{'bn3' if arch == 'resnet50' else 'bn2'}"
          for name in norms if name.startswith("layer")}
  with torch.no_grad():
    for name, module in norms.items():
      module.weight.uniform_(*((0.1, 0.3) if name in last else (0.5, 1.5)))
      module.bias.uniform_(-0.2, 0.2)
      module.reset_running_stats()
      module.momentum = None  # Cumulative average over the calibration pass.
    model.train()
    model(torch.randn(8, 3, 64, 64))
    for module in norms.values():
      module.momentum = 0.1
      std = module.running_var.sqrt()
      module.running_mean.add_(0.2 * std * torch.randn_like(std))
      module.running_var.mul_(torch.empty_like(std).uniform_(0.7, 1.4))
  model.eval()
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def torchvision_model(arch, state_dict, mask_dict=None, num_classes=1000):
  """A torchvision `arch` in eval mode holding `weight * mask`.

  This is how the PyTorch version builds a ticket; used to verify a
  conversion against PyTorch's own numbers.
  """
  torch, torchvision = import_torch()
  masks = {strip_prefixes(k): v for k, v in (mask_dict or {}).items()}
  tensors = {}
  for key, value in state_dict.items():
    key = strip_prefixes(key)
    value = torch.as_tensor(np.asarray(value))
    if key in masks:
      value = value * torch.as_tensor(np.asarray(masks[key], np.float32))
    tensors[key] = value
  model = getattr(torchvision.models, arch)(weights=None,
                                            num_classes=num_classes)
  model.load_state_dict(tensors)
  return model.eval()


def torch_logits(model, images_nhwc) -> np.ndarray:
  """Runs a torchvision model on NHWC NumPy images; float32 logits."""
  torch, _ = import_torch()
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(
        np.transpose(images_nhwc, (0, 3, 1, 2)), np.float32))
    return model(x).numpy()
