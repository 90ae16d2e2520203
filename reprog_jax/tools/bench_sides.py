"""The two sides of `reprog_jax.bench` and how they are timed: our jitted
step (built through the registry, `methods.build`) and the method's PyTorch
reference step (`MethodSpec.torch_reference`), on device-resident batches;
interleaved timing; the input side's images/s. (Where the step's time goes,
`--profile`, is `device_profile`.)"""

import statistics
import time

import jax
import numpy as np

from reprog_jax import data
from reprog_jax import methods
from reprog_jax.train import sharding
from reprog_jax.train import steps


class Ours:
  """Our jitted step of `num_seeds` seeds on device-resident batches."""

  def __init__(self, args, network, num_seeds, encoded=False):
    # The devices the bench compares (`--devices`, default one: one device
    # against PyTorch's one), never silently every device of the host.
    self.layout = sharding.Layout.create(num_seeds, args.used_devices)
    self.network = self.layout.put(network, self.layout.replicated)
    self.method = methods.build(args.config, network, args.num_classes,
                                args.image_size)
    optimizer, _ = steps.make_optimizer(0.01, 100, 10)
    self.step = steps.make_train_step(self.method, optimizer, self.layout,
                                      encoded)
    self.state = self.layout.put(
        steps.init_state(self.method, optimizer, range(num_seeds)),
        self.layout.per_seed)
    self.mappings = self.layout.put(
        np.stack([mapping_for(args, self.method)] * num_seeds),
        self.layout.per_seed)
    self.flops = None

  def put(self, host_batch):
    return self.layout.put(host_batch, self.layout.seed_batch)

  def run(self, batch, count):
    """`count` steps; returns the seconds, waiting for the device."""
    started = time.perf_counter()
    for _ in range(count):
      self.state, metrics = self.step(self.state, self.network,
                                      self.mappings, batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - started

  def count_flops(self, batch):
    compiled = self.step.lower(self.state, self.network, self.mappings,
                               batch).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else None
    self.flops = (analysis or {}).get("flops")
    return self.flops


def mapping_for(args, method):
  """The mapping both sides use: the identity for a method whose scores
  are the target logits, else a seeded draw of distinct source classes
  (as a one-hot matrix for a matrix mapping)."""
  if method.num_scores == args.num_classes:
    return method.initial_mapping
  sequence = np.random.default_rng(0).permutation(
      method.num_scores)[:args.num_classes]
  if np.ndim(method.initial_mapping) == 2:  # A matrix mapping: its path.
    matrix = np.zeros(method.initial_mapping.shape, np.float32)
    matrix[sequence, np.arange(args.num_classes)] = 1.0
    return matrix
  return sequence


class Theirs:
  """The method's PyTorch reference step (`MethodSpec.torch_reference`, in
  `torch_reference`), as the PyTorch version runs it."""

  def __init__(self, args, device, mapping, tuned=False):
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    self.torch = torch
    network = getattr(torchvision.models, args.arch)(weights=None)
    build = methods.get(args.method).torch_reference_builder()
    self.reference = build(args.config, network, mapping, args.image_size,
                           device=device, amp=device == "cuda")
    if tuned:  # channels_last, cudnn.benchmark, constants on the device.
      self.reference.tune()
    self.tuned = tuned
    self.device = device

  def put(self, host_batch):
    images = host_batch["image"].astype(np.float32) / np.float32(255)
    return self.reference.to_device(images, host_batch["label"])

  def run(self, batch, count):
    # A process-wide switch: the untuned side runs without autotuning.
    self.torch.backends.cudnn.benchmark = self.tuned
    started = time.perf_counter()
    for _ in range(count):
      loss = self.reference.step_tensors(*batch)
    float(loss)  # Waits for the device.
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    return time.perf_counter() - started


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def host_batch(args, num_seeds=None, seed=0, batch=None):
  rng = np.random.default_rng(seed)
  batch = batch or args.batch
  lead = (batch,) if num_seeds is None else (num_seeds, batch)
  return {"image": rng.integers(0, 256, lead + (args.image_size,) * 2 + (3,),
                                np.uint8),
          "label": rng.integers(0, args.num_classes, lead).astype(np.int32),
          "mask": np.ones(lead, bool)}


def interleaved(timers, args):
  """Runs each `(name, run)` for warm-up, then alternates `--rounds` timed
  rounds of `--steps` steps; returns name -> median seconds per step."""
  for _, run in timers:
    run(max(args.warmup, 1))  # Compiles; the first step is never timed.
  seconds = {name: [] for name, _ in timers}
  for _ in range(args.rounds):
    for name, run in timers:
      seconds[name].append(run(args.steps) / args.steps)
  return {name: statistics.median(values) for name, values in seconds.items()}


def input_images_per_second(args, num_seeds, layout, seconds=1.0):
  """Images/s the input side feeds: gathering batches from a decoded uint8
  store and putting them on the device, as `train.train_epoch` does."""
  count = max(4 * args.batch, 256)
  positions = np.arange(count)
  host = host_batch(args, seed=1)
  rows = np.resize(host["image"], (count,) + host["image"].shape[1:])
  store = data.RowStore(rows, positions % args.num_classes, positions)
  sampler = data.Sampler(np.tile(positions, (num_seeds, 1)),
                         range(num_seeds), batch_size=args.batch,
                         shuffle=True, pad_to=layout.batch_pad)
  served, epoch, started = 0, 0, time.perf_counter()
  while time.perf_counter() - started < seconds:
    for index in sampler.epoch(epoch):
      jax.block_until_ready(layout.put_rows(store, index, layout.seed_batch))
      served += index.size
    epoch += 1
  return served / (time.perf_counter() - started)


def features(ours, images, precision=None):
  """Pooled features of uint8 `images` (..., H, W, 3), as cached (at the
  run's `eval_precision`, `precision`)."""
  encode = steps.make_encode_step(ours.method, ours.layout,
                                  precision=precision)
  flat = images.reshape((-1,) + images.shape[-3:])
  features = encode(ours.network, ours.layout.put(flat, ours.layout.batch))
  return np.asarray(features).reshape(images.shape[:-3] + (-1,))
