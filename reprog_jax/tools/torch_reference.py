"""A PyTorch reference of one training step of ILM-VP and of linear probing.

Written from the PyTorch version's description
(`shared/reference/pytorch-version.md`, sections 3-5), not from our JAX code:
the parity tests feed it and our jitted steps the same batches, and the
benchmark times it against ours. torch is imported lazily, so the package
never needs it (`pip install 'reprog-jax[torch]'`).

Inputs are NHWC NumPy arrays, as our loaders produce; they are transposed to
NCHW here. By default both references run float32 on the CPU (no autocast)
so that parity can be checked to float32 precision; `device='cuda',
amp=True` runs the training step as the PyTorch version does on a GPU: fp16
autocast around the forward and loss, and a gradient scaler. `tune()` then
makes it what a careful PyTorch user would run (the benchmark times both):
`channels_last` network and inputs, `cudnn.benchmark`, and the
normalisation constants put on the device once instead of every step.
"""

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torch():
  import torch  # Lazy: only parity tests and the benchmark need it.
  return torch


def _nchw(images_nhwc):
  torch = _torch()
  return torch.from_numpy(
      np.ascontiguousarray(np.transpose(images_nhwc, (0, 3, 1, 2)), np.float32))


def _constants(device):
  torch = _torch()
  return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
          torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


def _normalize(x, constants=None):
  # As the PyTorch version: the constants are built (and, on a GPU, copied
  # to it) on every call unless a tuned reference passes its own.
  mean, std = constants or _constants(x.device)
  return (x - mean) / std


def _adam_and_schedule(params, lr, milestones, gamma):
  torch = _torch()
  # Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no decay) and
  # MultiStepLR stepped once per epoch, as the PyTorch version.
  optimizer = torch.optim.Adam(params, lr=lr)
  scheduler = torch.optim.lr_scheduler.MultiStepLR(
      optimizer, milestones=list(milestones), gamma=gamma)
  return optimizer, scheduler


class _Reference:
  """Shared step logic: loss = mean cross-entropy on the (mapped) logits.

  Args:
    network: the frozen torchvision network.
    device: where it runs ('cpu' or 'cuda').
    amp: fp16 autocast and a gradient scaler around the training step, as
      the PyTorch version on a GPU.
  """

  def __init__(self, network, device="cpu", amp=False):
    torch = _torch()
    self.device = torch.device(device)
    self.network = network.eval().to(self.device)
    for p in self.network.parameters():
      p.requires_grad_(False)
    self._torch = torch
    self.amp = amp
    self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp)
    self.constants = None  # Normalisation constants, once `tune`d.
    self.memory_format = torch.contiguous_format

  def tune(self) -> "_Reference":
    """Channels-last network and inputs, cuDNN autotuning, and the
    normalisation constants on the device once; returns self."""
    torch = self._torch
    self.memory_format = torch.channels_last
    self.network.to(memory_format=self.memory_format)
    torch.backends.cudnn.benchmark = True
    self.constants = _constants(self.device)
    return self

  def normalize(self, x):
    return _normalize(x, self.constants)

  def logits(self, x):
    raise NotImplementedError

  def to_device(self, images_nhwc, labels):
    """A NumPy batch as the (NCHW float32, int64) tensors `step_tensors`
    takes, on the reference's device."""
    return (_nchw(images_nhwc).to(self.device).contiguous(
        memory_format=self.memory_format),
            self._torch.as_tensor(np.asarray(labels)).long().to(self.device))

  def step(self, images_nhwc, labels) -> float:
    """One optimiser step on a NumPy batch; returns the loss."""
    return float(self.step_tensors(*self.to_device(images_nhwc, labels)))

  def step_tensors(self, x, labels):
    """One optimiser step on device tensors; returns the loss tensor (no
    host sync)."""
    torch = self._torch
    self.optimizer.zero_grad()
    with torch.autocast(self.device.type, dtype=torch.float16,
                        enabled=self.amp):
      loss = torch.nn.functional.cross_entropy(self.logits(x), labels)
    self.scaler.scale(loss).backward()
    self.scaler.step(self.optimizer)
    self.scaler.update()
    return loss.detach()

  def end_epoch(self):
    self.scheduler.step()

  @property
  def lr(self) -> float:
    return self.optimizer.param_groups[0]["lr"]


class VisualPromptReference(_Reference):
  """ILM-VP: a zero-initialised program on a frame around the image.

  `pad(x, 0) + sigmoid(program) * mask`, then ImageNet normalisation, into
  the frozen network; target logits are `source_logits[:, mapping]`.
  """

  def __init__(self, network, image_size, mapping_sequence, output_size=224,
               lr=0.01, milestones=(), gamma=0.1, device="cpu", amp=False):
    super().__init__(network, device, amp)
    torch = self._torch
    self.pad_before = int((output_size - image_size + 1) / 2)
    self.pad_after = int((output_size - image_size) / 2)
    self.program = torch.nn.Parameter(
        torch.zeros(3, output_size, output_size, device=self.device))
    mask = torch.zeros(3, image_size, image_size, device=self.device)
    self.mask = torch.nn.functional.pad(mask, self._padding(), value=1)
    self.mapping_sequence = torch.as_tensor(
        np.asarray(mapping_sequence)).long().to(self.device)
    self.optimizer, self.scheduler = _adam_and_schedule(
        [self.program], lr, milestones, gamma)

  def _padding(self):
    return (self.pad_before, self.pad_after, self.pad_before, self.pad_after)

  def prompt(self, x):
    x = self._torch.nn.functional.pad(x, self._padding(), value=0)
    return self.normalize(x + self._torch.sigmoid(self.program) * self.mask)

  def source_logits(self, x):
    return self.network(self.prompt(x))

  def logits(self, x):
    return self.source_logits(x)[:, self.mapping_sequence]

  def program_nhwc(self) -> np.ndarray:
    return self.program.detach().cpu().numpy().transpose(1, 2, 0).copy()


class LinearProbeReference(_Reference):
  """Linear probing: `fc` replaced by a new Linear head, the only thing
  trained; the backbone stays in eval mode.

  `head_kernel` (in, out) and `head_bias` (out,) give the head's initial
  values (our layout), so both sides start from the same draw.
  """

  def __init__(self, network, head_kernel, head_bias, lr=0.01, milestones=(),
               gamma=0.1, device="cpu", amp=False):
    super().__init__(network, device, amp)
    torch = self._torch
    head_kernel = np.asarray(head_kernel, np.float32)
    self.network.fc = torch.nn.Linear(*head_kernel.shape).to(self.device)
    with torch.no_grad():
      self.network.fc.weight.copy_(torch.from_numpy(head_kernel.T.copy()))
      self.network.fc.bias.copy_(torch.from_numpy(
          np.asarray(head_bias, np.float32)))
    self.optimizer, self.scheduler = _adam_and_schedule(
        self.network.fc.parameters(), lr, milestones, gamma)

  def logits(self, x):
    return self.network(self.normalize(x))

  def head(self) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (in, out), bias) in our layout."""
    fc = self.network.fc
    return (fc.weight.detach().cpu().numpy().T.copy(),
            fc.bias.detach().cpu().numpy().copy())


# --------------------------------------------------------------------------
# Builders the methods name (`MethodSpec.torch_reference`)
# --------------------------------------------------------------------------


def build_prompt_reference(config, network, mapping_sequence, image_size,
                        device="cpu", amp=False) -> VisualPromptReference:
  """ILM-VP's reference for a run config (its `prompt_output_size`)."""
  return VisualPromptReference(network, image_size, mapping_sequence,
                               config.prompt_output_size, device=device,
                               amp=amp)


def build_head_reference(config, network, mapping_sequence, image_size,
                       device="cpu", amp=False) -> LinearProbeReference:
  """Linear probing's reference: a head of `len(mapping_sequence)` classes
  on the network's pooled features, from a seeded draw."""
  del config, image_size  # The head's width is all that matters.
  width = network.fc.in_features
  rng = np.random.default_rng(0)
  num_classes = len(mapping_sequence)
  return LinearProbeReference(
      network, rng.uniform(-0.02, 0.02, (width, num_classes)),
      rng.uniform(-0.02, 0.02, num_classes), device=device, amp=amp)
