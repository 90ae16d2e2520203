"""Our jitted train steps against the PyTorch reference, teacher-forced:
each step starts both sides from the same state (ours), so float rounding
never accumulates through Adam, whatever the CPU."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from conftest import random_mask, torch_reference
from convert.torch_to_flax import convert_masks, convert_state_dict
from reprog_jax import methods
from reprog_jax.model import network as network_lib
from reprog_jax.model import resnet
from reprog_jax.train import sharding
from reprog_jax.train import steps
from reprog_jax.tools import torch_reference as ref_lib

LR, EPOCHS, STEPS_PER_EPOCH, BATCH = 0.01, 3, 2, 6
# Milestones int(0.5 * 3) = 1 and int(0.72 * 3) = 2: the three epochs train
# at lr 0.01, 0.001 and 0.0001, so the schedule is compared across both.

# Tolerances, from float32 rounding (unit roundoff u = 6e-8). Each side
# sums in its own order (XLA's CPU kernels; torch's oneDNN), and the order
# changes with the CPU's vector width; a reordered sum of n terms is off by
# ~sqrt(n) u of the terms' size, ResNet-18's sums have n ~ 10^3-10^4 and
# ~20 layers compound them: 20 * 100 * u ~ 1e-4.
# - The loss: LOSS_RTOL 1e-4 relative (measured: 2e-7 with AVX2 and with
#   SSE4.2).
# - A gradient: each entry sums per-example, per-position terms that may
#   cancel, so its error is relative to the terms' size, not to the entry
#   (which may be ~0): GRADIENT_TOLERANCE 1e-4 times the largest entry of
#   its value (measured: 1.5e-6 with AVX2 and with SSE4.2).
# - One Adam update from the SAME state and the SAME gradients: optax
#   computes the bias corrections 1 - b**t in float32 (1 - 0.999f is
#   1.3e-5 off 0.001, and b**t rounds), torch in float64, so the updates
#   differ by up to ~2e-5 of their size in the first steps, whatever the
#   CPU: ADAM_RTOL 1e-4 of the step's largest update. The new value then
#   rounds once more: VALUE_RTOL 1e-6 (~8 u).
# - Adam's moments: the same float32 operations in another order (lerp,
#   addcmul): a few u, VALUE_RTOL, of the terms summed (mu's
#   b1 * mu + (1 - b1) * g cancels: relative to the terms, not to the
#   result); TINY absolute because XLA's CPU backend flushes subnormals (nu
#   of a 1e-20 gradient) to zero and torch does not.
LOSS_RTOL, GRADIENT_TOLERANCE, ADAM_RTOL, VALUE_RTOL, TINY = (
    1e-4, 1e-4, 1e-4, 1e-6, 1e-30)


@pytest.fixture(scope="module")
def ticket(resnet18_state):
  """A converted ResNet-18 ticket (50 % mask) and its PyTorch twin's
  inputs."""
  mask = random_mask(resnet18_state, keep=0.5, seed=11)
  tree = convert_state_dict(resnet18_state, "resnet18")
  masks, _ = convert_masks(mask, tree["params"])
  network = network_lib.make_network(resnet.ResNet18(), tree["params"],
                                     tree["batch_stats"], masks,
                                     {"arch": "resnet18"})
  return network, (resnet18_state, mask)


def one_seed(tree):
  """A single seed's batch or mapping, with the leading seed axis."""
  return jax.tree.map(lambda x: np.asarray(x)[None], tree)


def batches(image_size, num_classes, seed):
  """EPOCHS x STEPS_PER_EPOCH batches; each epoch's second batch is partial
  (4 valid examples, the rest padding with junk images and labels)."""
  rng = np.random.default_rng(seed)
  for _ in range(EPOCHS):
    for step in range(STEPS_PER_EPOCH):
      valid = BATCH if step == 0 else 4
      images = rng.random((BATCH, image_size, image_size, 3), np.float32)
      labels = rng.integers(0, num_classes, BATCH).astype(np.int32)
      yield {"image": images, "label": labels,
             "mask": np.arange(BATCH) < valid}, valid


def _keeping_gradients(optimizer):
  """`optimizer` behind a transform that passes the gradients on unchanged
  and keeps them as its state (`opt_state[0]`): the train step itself
  reports what it differentiated."""
  keep = optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda gradients, state, params=None: (gradients, gradients))
  return optax.chain(keep, optimizer)


def _adam(opt_state) -> optax.ScaleByAdamState:
  is_adam = lambda node: isinstance(node, optax.ScaleByAdamState)
  found = [node for node in jax.tree.leaves(opt_state, is_leaf=is_adam)
           if is_adam(node)]
  assert len(found) == 1
  return found[0]


@contextlib.contextmanager
def one_torch_thread():
  """On batches this small torch's OpenMP threads mostly wait on each
  other: on a busy 2-core box one thread runs the reference ~8x faster."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(threads)


def _assert_within(ours: dict, theirs: dict, bounds: dict, what: str):
  """Every entry of every value within its bound (a scalar or per entry)."""
  assert set(ours) == set(theirs), what
  for name, value in ours.items():
    difference = np.abs(np.asarray(value, np.float64) - theirs[name])
    off = difference > bounds[name]
    assert not off.any(), (
        f"{what} of {name}: {off.sum()} of {off.size} entries off, by up "
        f"to {difference.max():.3g} (bound "
        f"{np.max(np.broadcast_to(bounds[name], off.shape)[off]):.3g})")


def teacher_forced(method, reference, network, params, mapping, image_size,
                   num_classes, encoded=False) -> list[dict]:
  """EPOCHS x STEPS_PER_EPOCH steps, each compared from one state.

  Per step, both sides start from our state (trained values, Adam's count
  and moments; the lr is each side's own schedule): the loss and the
  gradients of every trained value are compared; then the reference's
  Adam applies OUR gradients, so that its update is compared in isolation
  (an Adam step divides by the gradients' root mean square, which turns
  rounding in near-zero gradients into differences of up to lr); finally
  the reference takes our state again, so nothing accumulates.

  Returns:
    Per step, our gradients (`gradients`) and values after it (`values`).
  """
  optimizer, schedule = steps.make_optimizer(LR, EPOCHS, STEPS_PER_EPOCH)
  optimizer = _keeping_gradients(optimizer)
  params = jax.tree.map(np.asarray, params)
  state = steps.init_state(method, optimizer, [0])
  state = state.replace(params=one_seed(params),
                        opt_state=jax.vmap(optimizer.init)(one_seed(params)))
  reference.load_state(params)
  train_step = steps.make_train_step(method, optimizer,
                                     sharding.Layout.create(1), encoded)
  trajectory, previous = [], params
  previous_adam = {moment: jax.tree.map(np.zeros_like, params)
                   for moment in ("mu", "nu")}
  for i, (batch, valid) in enumerate(batches(image_size, num_classes, 5)):
    assert float(schedule(int(state.step[0]))) == pytest.approx(
        reference.lr, rel=1e-6)
    with one_torch_thread():
      their_loss, their_gradients = reference.gradients(
          batch["image"][:valid], batch["label"][:valid])
    if encoded:  # What the cached-feature path feeds the step.
      batch = {**batch, "image": method.encode(network, batch["image"])}
    state, metrics = train_step(state, network, one_seed(mapping),
                                one_seed(batch))
    # Copies: the next step donates (reuses) the state's buffers.
    ours = jax.tree.map(lambda x: np.array(x[0]), jax.device_get(state))
    gradients, adam = ours.opt_state[0], _adam(ours.opt_state)
    assert int(metrics["count"][0]) == valid
    assert float(metrics["loss"][0]) == pytest.approx(their_loss,
                                                      rel=LOSS_RTOL)
    _assert_within(gradients, their_gradients, {
        name: GRADIENT_TOLERANCE * np.abs(g).max()
        for name, g in their_gradients.items()}, f"step {i}: gradient")

    reference.apply_gradients(gradients)
    theirs = reference.adam_state()
    assert int(ours.step) == int(adam.count) == theirs["step"] == i + 1
    values = reference.values()
    _assert_within(ours.params, values, {
        name: VALUE_RTOL * np.abs(v) + ADAM_RTOL * np.abs(
            v - previous[name]).max() for name, v in values.items()},
                   f"step {i}: updated value")
    for moment, decay, power in (("mu", 0.9, 1), ("nu", 0.999, 2)):
      terms = jax.tree.map(
          lambda m, g: decay * np.abs(m) + (1 - decay) * np.abs(g)**power,
          previous_adam[moment], gradients)
      _assert_within(getattr(adam, moment), theirs[moment],
                     {name: VALUE_RTOL * t + TINY for name, t in terms.items()},
                     f"step {i}: Adam's {moment}")
    reference.load_state(ours.params, adam.mu, adam.nu, int(adam.count))
    if (i + 1) % STEPS_PER_EPOCH == 0:
      reference.end_epoch()
    trajectory.append({"gradients": gradients, "values": ours.params})
    previous = ours.params
    previous_adam = {"mu": adam.mu, "nu": adam.nu}
  assert reference.lr == pytest.approx(LR * 0.1 * 0.1)
  return trajectory


def _shapes_only(arch):
  """A random network's shapes and dtypes (a `Network` of
  `jax.ShapeDtypeStruct`s): enough to lower a step, with no initialiser
  compiled."""
  return jax.eval_shape(lambda: network_lib.random_network(arch))


def test_ilm_vp_steps_match_pytorch_teacher_forced(ticket):
  network, (state_dict, mask) = ticket
  image_size, output_size, num_classes = 16, 32, 10
  mapping = np.random.default_rng(3).permutation(1000)[:num_classes]
  reference = ref_lib.VisualPromptReference(
      torch_reference("resnet18", state_dict, mask), image_size, mapping,
      output_size=output_size, lr=LR, milestones=[1, 2], gamma=0.1)
  method = methods.ilm_vp.visual_prompt(image_size, num_classes, output_size)
  trajectory = teacher_forced(method, reference, network,
                              method.init(jax.random.key(0)), mapping,
                              image_size, num_classes)
  # The frame moves by ~lr at the first step; the image area's entries
  # never get a gradient.
  first, last = trajectory[0]["values"]["program"], trajectory[-1]["values"]
  assert np.abs(first[:8]).max() == pytest.approx(LR, rel=0.01)
  for step in trajectory:
    assert np.abs(step["gradients"]["program"][:8]).max() > 0
    assert not step["gradients"]["program"][8:24, 8:24].any()
  assert not last["program"][8:24, 8:24].any()


def test_sequence_mappings_share_one_train_step():
  """FLM's and RLM's step is ILM's (they differ in how the sequence is
  chosen, not in how it is used), and BLM++'s is BLM's: the lowered
  programs are identical, so one teacher-forced test covers each pair.
  Only lowered: a small network's shapes suffice (nothing is compiled)."""
  network = _shapes_only("resnet_mini")
  optimizer, _ = steps.make_optimizer(LR, EPOCHS, STEPS_PER_EPOCH)
  batch = one_seed(next(batches(16, 10, 0))[0])

  def lowered(mapping):
    method = methods.ilm_vp.visual_prompt(16, 10, 32, mapping)
    state = steps.init_state(method, optimizer, [0])
    return steps.make_train_step(method, optimizer, sharding.Layout.create(
        1)).lower(state, network, one_seed(method.initial_mapping),
                  batch).as_text()

  ilm, blm = lowered("ilm"), lowered("blm")
  assert ilm != blm  # A gather and a matrix product.
  assert lowered("flm") == ilm and lowered("rlm") == ilm
  assert lowered("blmpp") == blm


@pytest.mark.parametrize("encoded", [False, True])
def test_linear_probe_steps_match_pytorch_teacher_forced(ticket, encoded):
  network, (state_dict, mask) = ticket
  image_size, num_classes = 32, 7
  method = methods.linear_probe.linear_probe(512, num_classes)
  head = method.init(jax.random.key(4))
  reference = ref_lib.LinearProbeReference(
      torch_reference("resnet18", state_dict, mask), head["kernel"],
      head["bias"], lr=LR, milestones=[1, 2], gamma=0.1)
  trajectory = teacher_forced(method, reference, network, head,
                              np.arange(num_classes), image_size,
                              num_classes, encoded=encoded)
  kernel = trajectory[-1]["values"]["kernel"]
  assert np.abs(kernel - head["kernel"]).max() > 0.01  # It trained.


def test_linear_probe_init_is_pytorch_default_distribution():
  method = methods.linear_probe.linear_probe(resnet.ResNet50().num_features, 10)
  head = method.init(jax.random.key(0))
  bound = 1 / np.sqrt(2048)
  assert head["kernel"].shape == (2048, 10) and head["bias"].shape == (10,)
  for leaf in (head["kernel"], head["bias"]):
    assert np.abs(leaf).max() <= bound
  # Uniform on [-b, b]: std b / sqrt(3).
  assert np.std(head["kernel"]) == pytest.approx(bound / np.sqrt(3), rel=0.02)


def test_optimizer_schedule_is_multistep_per_epoch():
  _, schedule = steps.make_optimizer(0.01, epochs=100, steps_per_epoch=3)
  # Milestones int(0.5 * 100) = 50 and int(0.72 * 100) = 72.
  lrs = [float(schedule(epoch * 3 + 2)) for epoch in (49, 50, 71, 72)]
  assert lrs == pytest.approx([0.01, 0.001, 0.001, 0.0001])
  assert float(schedule(50 * 3 - 1)) == pytest.approx(0.01)
  # The per-epoch figure the metrics report, exact as PyTorch's get_last_lr.
  assert [steps.epoch_lr(0.01, 100, e) for e in (0, 49, 50, 71, 72, 99)] == [
      0.01, 0.01, 0.01 * 0.1, 0.01 * 0.1, 0.01 * 0.1 * 0.1, 0.01 * 0.1 * 0.1]


def test_bfloat16_compute_keeps_float32_master_values(ticket):
  network, _ = ticket
  # The float32 step is the ILM-VP parity test's program (same network,
  # shapes and optimiser): the compilation cache has it.
  method = methods.ilm_vp.visual_prompt(16, 10, 32)
  optimizer, _ = steps.make_optimizer(LR, EPOCHS, STEPS_PER_EPOCH)
  optimizer = _keeping_gradients(optimizer)
  train_step = steps.make_train_step(method, optimizer,
                                     sharding.Layout.create(1))
  batch, _ = next(batches(16, 10, 8))
  mapping = one_seed(np.arange(10))
  losses = []
  for dtype in (jax.numpy.bfloat16, jax.numpy.float32):
    state = steps.init_state(method, optimizer, [0])
    state, metrics = train_step(state, network.with_dtype(dtype), mapping,
                                one_seed(batch))
    losses.append(float(metrics["loss"][0]))
    leaves = jax.tree.leaves((state.params, state.opt_state))
    assert all(l.dtype in (np.float32, np.int32) for l in leaves)
  # bfloat16 keeps ~3 significant digits of the float32 loss.
  assert losses[0] == pytest.approx(losses[1], rel=2e-2)
  assert losses[0] != losses[1]  # It did compute in bfloat16.


@pytest.mark.parametrize("precision", ["highest", None])
def test_eval_and_count_steps_compile_at_the_precision_asked(precision):
  # On an H100, XLA's default runs float32 matmuls and convolutions as
  # TF32; `eval_precision='highest'` must reach every one of them.
  network = _shapes_only("resnet18")  # Lowered only.
  method = methods.ilm_vp.visual_prompt(8, 10, 32)
  params = jax.vmap(method.init)(jnp.stack([jax.random.key(0)]))
  layout = sharding.Layout.create(1)
  counts = np.zeros((1, 1000, 10), np.int32)
  batch = {"image": np.zeros((2, 8, 8, 3), np.uint8),
           "label": np.zeros(2, np.int32), "mask": np.ones(2, bool)}
  mappings = np.arange(10, dtype=np.int32)[None]
  eval_text = steps.make_eval_step(method, layout, precision=precision).lower(
      counts, params, network, mappings, batch).as_text()
  count_text = steps.make_count_step(method, layout,
                                     precision=precision).lower(
      counts, params, network, jax.tree.map(lambda x: x[None], batch)
  ).as_text()
  for text in (eval_text, count_text):
    ops = [line for line in text.splitlines()
           if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]
    assert len(ops) > 20  # ResNet-18's convolutions and the 1x1 matmuls.
    highest = [op for op in ops if "HIGHEST" in op]
    assert len(highest) == (len(ops) if precision else 0)
