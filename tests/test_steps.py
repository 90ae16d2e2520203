"""Our jitted train steps against the PyTorch reference, step for step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_mask, torch_reference
from convert.torch_to_flax import convert_masks, convert_state_dict
from reprog_jax import methods
from reprog_jax.model import network as network_lib
from reprog_jax.model import resnet
from reprog_jax.train import sharding
from reprog_jax.train import steps
from reprog_jax.tools import torch_reference as ref_lib

TOLERANCE = 1e-4
EPOCHS, STEPS_PER_EPOCH, BATCH = 5, 2, 6
# int(0.5 * 5) = 2 and int(0.72 * 5) = 3: the lr drops twice within the run.


@pytest.fixture(scope="module")
def ticket(resnet18_state):
  """A converted ResNet-18 ticket (50 % mask) and its PyTorch twin."""
  mask = random_mask(resnet18_state, keep=0.5, seed=11)
  tree = convert_state_dict(resnet18_state, "resnet18")
  masks, _ = convert_masks(mask, tree["params"])
  network = network_lib.make_network(resnet.ResNet18(), tree["params"],
                                     tree["batch_stats"], masks,
                                     {"arch": "resnet18"})
  return network, (resnet18_state, mask)


def _one_seed(tree):
  """A single seed's batch or mapping, with the leading seed axis."""
  return jax.tree.map(lambda x: np.asarray(x)[None], tree)


def _batches(image_size, num_classes, seed):
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


def _run(method, reference, network, image_size, num_classes, params_of,
         encoded=False):
  optimizer, schedule = steps.make_optimizer(0.01, EPOCHS, STEPS_PER_EPOCH)
  state = steps.init_state(method, optimizer, [0])
  if method.name == "linear_probe":  # Same start on both sides.
    state = state.replace(params=_one_seed(
        {"kernel": reference.head()[0], "bias": reference.head()[1]}))
    state = state.replace(opt_state=jax.vmap(optimizer.init)(state.params))
  train_step = steps.make_train_step(method, optimizer,
                                     sharding.Layout.create(1), encoded)
  mapping = getattr(reference, "mapping_sequence", None)
  mapping = _one_seed(np.arange(num_classes) if mapping is None
                      else np.asarray(mapping))
  for i, (batch, valid) in enumerate(_batches(image_size, num_classes, 5)):
    assert float(schedule(int(state.step[0]))) == pytest.approx(reference.lr)
    ref_loss = reference.step(batch["image"][:valid], batch["label"][:valid])
    if encoded:  # What the cached-feature path feeds the step.
      batch = {**batch, "image": method.encode(network, batch["image"])}
    state, metrics = train_step(state, network, mapping, _one_seed(batch))
    assert float(metrics["loss"][0]) == pytest.approx(ref_loss, abs=TOLERANCE)
    assert int(metrics["count"][0]) == valid
    if (i + 1) % STEPS_PER_EPOCH == 0:
      reference.end_epoch()
  assert int(state.step[0]) == EPOCHS * STEPS_PER_EPOCH
  assert reference.lr == pytest.approx(0.01 * 0.1 * 0.1)
  ours = params_of(jax.tree.map(lambda x: x[0], state.params))
  theirs = params_of(reference)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=TOLERANCE)
  return ours


def test_ilm_vp_step_matches_pytorch_after_10_adam_steps(ticket):
  network, (state_dict, mask) = ticket
  image_size, output_size, num_classes = 24, 48, 10
  mapping = np.random.default_rng(3).permutation(1000)[:num_classes]
  reference = ref_lib.VisualPromptReference(
      torch_reference("resnet18", state_dict, mask), image_size, mapping,
      output_size=output_size, lr=0.01, milestones=[2, 3], gamma=0.1)
  method = methods.ilm_vp.visual_prompt(image_size, num_classes, output_size)
  program, = _run(
      method, reference, network, image_size, num_classes,
      lambda p: (p["program"],) if isinstance(p, dict) else (p.program_nhwc(),))
  # The frame moved; the image area's entries never get a gradient.
  frame = np.abs(program[:5]).max()
  assert frame > 0.01
  assert np.abs(program[12:36, 12:36]).max() == 0.0


@pytest.mark.parametrize("encoded", [False, True])
def test_linear_probe_step_matches_pytorch_after_10_adam_steps(ticket,
                                                               encoded):
  network, (state_dict, mask) = ticket
  image_size, num_classes = 32, 7
  rng = np.random.default_rng(4)
  bound = 1 / np.sqrt(512)
  reference = ref_lib.LinearProbeReference(
      torch_reference("resnet18", state_dict, mask),
      rng.uniform(-bound, bound, (512, num_classes)).astype(np.float32),
      rng.uniform(-bound, bound, num_classes).astype(np.float32),
      lr=0.01, milestones=[2, 3], gamma=0.1)
  start = reference.head()
  method = methods.linear_probe.linear_probe(512, num_classes)
  kernel, _ = _run(
      method, reference, network, image_size, num_classes,
      lambda p: (p["kernel"], p["bias"]) if isinstance(p, dict) else p.head(),
      encoded=encoded)
  assert np.abs(kernel - start[0]).max() > 0.01  # It trained.


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
  method = methods.ilm_vp.visual_prompt(24, 10, 48)
  optimizer, _ = steps.make_optimizer(0.01, EPOCHS, STEPS_PER_EPOCH)
  train_step = steps.make_train_step(method, optimizer,
                                     sharding.Layout.create(1))
  batch, _ = next(_batches(24, 10, 8))
  mapping = _one_seed(np.arange(10))
  losses = []
  for dtype in (jax.numpy.bfloat16, jax.numpy.float32):
    state = steps.init_state(method, optimizer, [0])
    state, metrics = train_step(state, network.with_dtype(dtype), mapping,
                                _one_seed(batch))
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
  network = network_lib.random_network("resnet18")
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
