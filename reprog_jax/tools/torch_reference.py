"""A PyTorch reference of one training step of ILM-VP (and of its variants:
the padding prompt, BLM, BLM++, FullyMap) and of linear probing.

Written from the PyTorch version's description
(`shared/reference/pytorch-version.md`, sections 3-5), not from our JAX code:
the parity tests feed it and our jitted steps the same batches, and the
benchmark times it against ours. torch is imported lazily, so the package
never needs it (`pip install 'reprog-jax[torch]'`).

Inputs are NHWC NumPy arrays, as our loaders produce; they are transposed to
NCHW here; trained values, gradients and Adam's moments go in and out in
our layout and names (`values`, `gradients`, `adam_state`, `load_state`),
so that a test can compare each step teacher-forced: both sides start it
from the same state. By default both references run float32 on the CPU (no
autocast) so that parity can be checked to float32 precision; `device='cuda',
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


def _ours(tensor) -> np.ndarray:
  """A trained tensor in our layout: a program (C, H, W) as (H, W, C), a
  Linear weight (out, in) as a kernel (in, out), a bias as it is."""
  array = tensor.detach().cpu().numpy()
  order = {3: (1, 2, 0), 2: (1, 0)}.get(array.ndim)
  return np.array(array.transpose(order) if order else array, np.float32)


def _theirs(array, like):
  """`_ours`' inverse: an array of our layout as a tensor like `like`."""
  array = np.asarray(array, np.float32)
  order = {3: (2, 0, 1), 2: (1, 0)}.get(array.ndim)
  array = np.array(array.transpose(order) if order else array, order="C")
  return _torch().from_numpy(array).to(like.device)


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

  def _loss(self, x, labels):
    torch = self._torch
    with torch.autocast(self.device.type, dtype=torch.float16,
                        enabled=self.amp):
      return torch.nn.functional.cross_entropy(self.logits(x), labels)

  def step_tensors(self, x, labels):
    """One optimiser step on device tensors; returns the loss tensor (no
    host sync)."""
    self.optimizer.zero_grad()
    loss = self._loss(x, labels)
    self.scaler.scale(loss).backward()
    self.scaler.step(self.optimizer)
    self.scaler.update()
    return loss.detach()

  def end_epoch(self):
    self.scheduler.step()

  @property
  def lr(self) -> float:
    return self.optimizer.param_groups[0]["lr"]

  # Teacher forcing: each step's state set from outside, its parts read.

  def trained(self) -> dict:
    """The trained parameters by our names (a dict: their order is the
    optimiser's)."""
    raise NotImplementedError

  def values(self) -> dict[str, np.ndarray]:
    """The trained values, in our layout."""
    return {name: _ours(p) for name, p in self.trained().items()}

  def gradients(self, images_nhwc, labels) -> tuple[float, dict]:
    """The loss of a NumPy batch and the gradients of the trained values
    (our layout) from the current state; nothing is updated."""
    self.optimizer.zero_grad()
    loss = self._loss(*self.to_device(images_nhwc, labels))
    loss.backward()
    gradients = {name: _ours(p.grad) for name, p in self.trained().items()}
    return float(loss.detach()), gradients

  def apply_gradients(self, gradients: dict) -> None:
    """One optimiser step taking `gradients` (our layout) as the trained
    values' gradients: the update alone, from given gradients."""
    for name, p in self.trained().items():
      p.grad = _theirs(gradients[name], p)
    self.optimizer.step()

  def adam_state(self) -> dict:
    """Adam's `step` count and its moments `mu` (exp_avg) and `nu`
    (exp_avg_sq) in our layout, once it has stepped."""
    states = {name: self.optimizer.state[p]
              for name, p in self.trained().items()}
    return {"step": int(next(iter(states.values()))["step"]),
            "mu": {name: _ours(s["exp_avg"]) for name, s in states.items()},
            "nu": {name: _ours(s["exp_avg_sq"])
                   for name, s in states.items()}}

  def load_state(self, values: dict, mu=None, nu=None, step=0) -> None:
    """Sets the trained values (our layout) and Adam's state: `step`
    updates done, moments `mu` and `nu` (None with step 0: a fresh
    Adam). The lr stays the scheduler's."""
    torch = self._torch
    with torch.no_grad():
      for name, p in self.trained().items():
        p.copy_(_theirs(values[name], p))
        self.optimizer.state.pop(p, None)
        if step:
          # As torch.optim.Adam keeps it: a float32 scalar step on the CPU.
          self.optimizer.state[p] = {
              "step": torch.tensor(float(step), dtype=torch.float32),
              "exp_avg": _theirs(mu[name], p).clone(),
              "exp_avg_sq": _theirs(nu[name], p).clone()}


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

  def trained(self) -> dict:
    return {"program": self.program}


class LinearProbeReference(_Reference):
  """Linear probing: `fc` replaced by a new Linear head, the only thing
  trained; the backbone stays in eval mode.

  `head_kernel` (in, out) and `head_bias` (out,) give the head's initial
  values (our layout), so both sides start from the same draw.
  """

  def __init__(self, network, head_kernel, head_bias, lr=0.01, milestones=(),
               gamma=0.1, device="cpu", amp=False):
    super().__init__(network, device, amp)
    self.network.fc = self._torch.nn.Linear(*np.shape(head_kernel)).to(
        self.device)
    self.optimizer, self.scheduler = _adam_and_schedule(
        self.network.fc.parameters(), lr, milestones, gamma)
    self.load_state({"kernel": head_kernel, "bias": head_bias})

  def logits(self, x):
    return self.network(self.normalize(x))

  def trained(self) -> dict:
    return {"kernel": self.network.fc.weight, "bias": self.network.fc.bias}


class PromptVariantReference(_Reference):
  """ILM-VP's variants: the padding prompt, matrix mappings (BLM, BLM++)
  and FullyMap, written from their papers' descriptions.

  The prompt: 'expansive' as `VisualPromptReference`, or 'padding' (Bahng
  et al. 2022): `normalize(interpolate(x, canvas, bilinear,
  align_corners=False)) + program * mask`, the mask 1 on a border `pad`
  wide. Target logits: `source_logits[:, mapping]` for a (T,) sequence,
  `source_logits @ mapping` for a (S, T) matrix (BLM's
  `label_mapping_calculation`), or with `fullymap` (kernel (S, T), bias
  (T,) in our layout) a trained `torch.nn.Linear(S, T)` on the source
  logits (AutoVP's `fully_connected_layer_mapping`), whose weights Adam
  trains with the program.

  Args:
    network: the frozen torchvision network.
    image_size: the target images' side.
    mapping: a (T,) sequence or a (S, T) matrix (ignored with `fullymap`).
    prompt: 'expansive' or 'padding'.
    output_size: the canvas' side.
    pad: the padding prompt's border.
    program_nhwc: the program's initial values (our HWC layout); None:
      zeros.
    fullymap: None, or the Linear layer's initial (kernel, bias).
    lr, milestones, gamma, device, amp: as `VisualPromptReference`.
  """

  def __init__(self, network, image_size, mapping, prompt="expansive",
               output_size=224, pad=30, program_nhwc=None, fullymap=None,
               lr=0.01, milestones=(), gamma=0.1, device="cpu", amp=False):
    super().__init__(network, device, amp)
    torch = self._torch
    self.image_size, self.output_size, self.prompt_kind = (
        image_size, output_size, prompt)
    self.program = torch.nn.Parameter(
        torch.zeros(3, output_size, output_size, device=self.device))
    start = {} if program_nhwc is None else {"program": program_nhwc}
    if prompt == "padding":
      inside = torch.zeros(3, output_size - 2 * pad, output_size - 2 * pad)
      self.mask = torch.nn.functional.pad(inside, (pad,) * 4, value=1)
    else:
      before = int((output_size - image_size + 1) / 2)
      after = int((output_size - image_size) / 2)
      self.frame = (before, after, before, after)
      self.mask = torch.nn.functional.pad(
          torch.zeros(3, image_size, image_size), self.frame, value=1)
    self.mask = self.mask.to(self.device)
    self.output_mapping = None
    if fullymap is not None:
      self.output_mapping = torch.nn.Linear(*np.shape(fullymap[0])).to(
          self.device)
      start.update(mapping_kernel=fullymap[0], mapping_bias=fullymap[1])
    mapping = np.asarray(mapping)
    self.mapping = (torch.from_numpy(mapping.astype(np.float32))
                    if mapping.ndim == 2 else
                    torch.as_tensor(mapping).long()).to(self.device)
    self.optimizer, self.scheduler = _adam_and_schedule(
        self.trained().values(), lr, milestones, gamma)
    if start:
      self.load_state({**self.values(), **start})

  def prompt(self, x):
    functional = self._torch.nn.functional
    if self.prompt_kind == "padding":
      x = functional.interpolate(x, size=(self.output_size,) * 2,
                                 mode="bilinear", align_corners=False)
      return _normalize(x) + self.program * self.mask
    x = functional.pad(x, self.frame, value=0)
    return _normalize(x + self._torch.sigmoid(self.program) * self.mask)

  def source_logits(self, x):
    return self.network(self.prompt(x))

  def logits(self, x):
    source = self.source_logits(x)
    if self.output_mapping is not None:
      return self.output_mapping(source)
    if self.mapping.ndim == 2:
      return source @ self.mapping
    return source[:, self.mapping]

  def trained(self) -> dict:
    """The program, and FullyMap's layer as `mapping_kernel` (S, T) and
    `mapping_bias`."""
    trained = {"program": self.program}
    if self.output_mapping is not None:
      trained.update(mapping_kernel=self.output_mapping.weight,
                     mapping_bias=self.output_mapping.bias)
    return trained

  def bayesian_matrix(self, images_nhwc, labels, num_classes, lap,
                      top_k=None) -> np.ndarray:
    """BLM's (`top_k` None) or BLM++'s mapping matrix from the current
    prompt over a NumPy training set, as the published description
    says: per (source, target), the count of argmax predictions (BLM) or
    the sum of the top-k softmax probabilities (BLM++); each source row
    divided by its total plus `lap`; each target column normalised to sum
    1 (0 / 0 gives 0 here, NaN in the published code)."""
    torch = self._torch
    x, y = self.to_device(images_nhwc, labels)
    with torch.no_grad():
      source = self.source_logits(x).float()
    num_source = source.shape[1]
    if top_k is None:
      values = torch.nn.functional.one_hot(source.argmax(1), num_source)
      values = values.float()
    else:
      probabilities = torch.softmax(source, dim=1)
      top, where = torch.topk(probabilities, top_k, dim=1)
      values = torch.zeros_like(probabilities).scatter_(1, where, top)
    sums = torch.zeros(num_classes, num_source, device=source.device)
    sums.index_add_(0, y, values)
    sums = sums.t()  # (S, T)
    rows = sums / (sums.sum(1, keepdim=True) + lap)
    rows = torch.nan_to_num(rows, nan=0.0)
    matrix = torch.nan_to_num(rows / rows.sum(0, keepdim=True), nan=0.0)
    return matrix.cpu().numpy()


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


def build_variant_reference(config, network, mapping, image_size,
                            device="cpu", amp=False):
  """ILM-VP's reference for any of its variants (`config.prompt`,
  `config.label_mapping`): the paper's expansive prompt with a sequence
  mapping is `build_prompt_reference`'s; the others start from seeded
  draws of their papers' initialisations (a normal program for the padding
  prompt, torch.nn.Linear's uniform for FullyMap)."""
  prompt, kind = config.prompt, config.label_mapping
  if prompt == "expansive" and np.ndim(mapping) == 1 and kind != "fullymap":
    return build_prompt_reference(config, network, mapping, image_size,
                                  device, amp)
  rng = np.random.default_rng(0)
  size = config.prompt_output_size
  program = (rng.standard_normal((size, size, 3)).astype(np.float32)
             if prompt == "padding" else None)
  fullymap = None
  if kind == "fullymap":
    num_source, num_classes = network.fc.out_features, len(mapping)
    bound = 1 / np.sqrt(num_source)
    fullymap = (rng.uniform(-bound, bound, (num_source, num_classes)),
                rng.uniform(-bound, bound, num_classes))
  return PromptVariantReference(
      network, image_size, mapping, prompt, size, config.pad, program,
      fullymap, device=device, amp=amp)
