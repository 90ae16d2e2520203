"""ILM-VP's variants (BLM, BLM++, FullyMap, the padding prompt) against the
PyTorch reference (`torch_reference.PromptVariantReference`), step for step,
as tests/test_steps.py checks the paper's ILM-VP."""

import jax
import numpy as np
import pytest

from conftest import random_mask, torch_reference
from convert.torch_to_flax import convert_masks, convert_state_dict
from reprog_jax import methods
from reprog_jax.model import label_mapping
from reprog_jax.model import network as network_lib
from reprog_jax.model import resnet
from reprog_jax.train import sharding
from reprog_jax.train import steps
from reprog_jax.tools import torch_reference as ref_lib

TOLERANCE = 1e-4
EPOCHS, STEPS_PER_EPOCH, BATCH = 5, 2, 6
IMAGE, CANVAS, CLASSES = 24, 48, 10


@pytest.fixture(scope="module")
def ticket(resnet18_state):
  """A converted ResNet-18 ticket (50 % mask) and its PyTorch twin."""
  mask = random_mask(resnet18_state, keep=0.5, seed=12)
  tree = convert_state_dict(resnet18_state, "resnet18")
  masks, _ = convert_masks(mask, tree["params"])
  network = network_lib.make_network(resnet.ResNet18(), tree["params"],
                                     tree["batch_stats"], masks,
                                     {"arch": "resnet18"})
  return network, torch_reference("resnet18", resnet18_state, mask)


def _seed_axis(tree):
  return jax.tree.map(lambda x: np.asarray(x)[None], tree)


def _batches(seed):
  """Each epoch's second batch is partial (4 valid, the rest junk)."""
  rng = np.random.default_rng(seed)
  for _ in range(EPOCHS):
    for step in range(STEPS_PER_EPOCH):
      valid = BATCH if step == 0 else 4
      yield {"image": rng.random((BATCH, IMAGE, IMAGE, 3), np.float32),
             "label": rng.integers(0, CLASSES, BATCH).astype(np.int32),
             "mask": np.arange(BATCH) < valid}, valid


def _train_both(method, reference, network, params, mapping):
  """10 Adam steps on both sides from the same start; returns our params."""
  optimizer, _ = steps.make_optimizer(0.01, EPOCHS, STEPS_PER_EPOCH)
  state = steps.init_state(method, optimizer, [0])
  state = state.replace(params=_seed_axis(params))
  state = state.replace(opt_state=jax.vmap(optimizer.init)(state.params))
  train_step = steps.make_train_step(method, optimizer,
                                     sharding.Layout.create(1))
  for i, (batch, valid) in enumerate(_batches(5)):
    ref_loss = reference.step(batch["image"][:valid], batch["label"][:valid])
    state, metrics = train_step(state, network, _seed_axis(mapping),
                                _seed_axis(batch))
    assert float(metrics["loss"][0]) == pytest.approx(ref_loss, abs=TOLERANCE)
    if (i + 1) % STEPS_PER_EPOCH == 0:
      reference.end_epoch()
  return jax.tree.map(lambda x: np.asarray(x[0]), state.params)


def _our_mapping_pass(method, network, params, images, labels, dtype):
  """Our count step over one batch (the loop's mapping pass)."""
  count = steps.make_count_step(method, sharding.Layout.create(1))
  counts = np.zeros((1, method.num_scores, CLASSES), dtype)
  batch = {"image": images, "label": labels,
           "mask": np.ones(len(labels), bool)}
  return np.asarray(count(counts, _seed_axis(params), network,
                          _seed_axis(batch)))[0]


@pytest.mark.parametrize("mapping,lap,top_k", [("blm", 1.0, None),
                                               ("blmpp", 0.0, 3)])
def test_bayesian_mapping_pass_matches_pytorch(ticket, mapping, lap, top_k):
  network, torch_network = ticket
  reference = ref_lib.PromptVariantReference(
      torch_network, IMAGE, np.zeros((1000, CLASSES), np.float32),
      output_size=CANVAS)
  method = methods.ilm_vp.visual_prompt(IMAGE, CLASSES, CANVAS, mapping,
                                        top_k=top_k)
  params = method.init(jax.random.key(0))
  rng = np.random.default_rng(8)
  images = rng.random((40, IMAGE, IMAGE, 3), np.float32)
  labels = np.arange(40, dtype=np.int32) % CLASSES
  theirs = reference.bayesian_matrix(images, labels, CLASSES, lap, top_k)
  sums = _our_mapping_pass(method, network, params, images, labels,
                           np.int32 if top_k is None else np.float32)
  ours = np.asarray(label_mapping.bayesian_matrix(sums, lap))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
  np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-5)


def test_matrix_mapping_step_matches_pytorch(ticket):
  """BLM's and BLM++'s step (the same: they differ in the mapping pass):
  10 Adam steps with a matrix fixed, as within an epoch.

  A sparse matrix (counts on 3 sources per target): a random network
  spreads its predictions, so the matrix of its mapping pass averages many
  similar logits and the prompt's gradients are so small that Adam's eps
  decides the update; a sparse one keeps them the size of ILM's.
  """
  network, torch_network = ticket
  rng = np.random.default_rng(9)
  counts = np.zeros((1000, CLASSES), np.float32)
  for t in range(CLASSES):
    counts[rng.choice(1000, 3, replace=False), t] = rng.integers(1, 9, 3)
  matrix = np.asarray(label_mapping.bayesian_matrix(counts, 1.0))
  reference = ref_lib.PromptVariantReference(
      torch_network, IMAGE, matrix, output_size=CANVAS, milestones=[2, 3])
  method = methods.ilm_vp.visual_prompt(IMAGE, CLASSES, CANVAS, "blm")
  params = method.init(jax.random.key(0))
  program = _train_both(method, reference, network, params,
                        matrix)["program"]
  np.testing.assert_allclose(program, reference.program_nhwc(), rtol=0,
                             atol=TOLERANCE)
  assert np.abs(program).max() > 0.01  # It trained.


def test_fullymap_with_padding_prompt_step_matches_pytorch(ticket):
  network, torch_network = ticket
  method = methods.ilm_vp.visual_prompt(IMAGE, CLASSES, CANVAS, "fullymap",
                                        prompt="padding", pad=6)
  params = method.init(jax.random.key(3))
  # AutoVP's init: torch.nn.Linear's U(-1/sqrt(1000), 1/sqrt(1000)).
  bound = 1 / np.sqrt(1000)
  kernel = np.asarray(params[methods.ilm_vp.KERNEL])
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  assert np.asarray(params["program"]).std() == pytest.approx(1.0, abs=0.05)
  reference = ref_lib.PromptVariantReference(
      torch_network, IMAGE, np.arange(CLASSES), prompt="padding",
      output_size=CANVAS, pad=6, program_nhwc=params["program"],
      fullymap=(kernel, params[methods.ilm_vp.BIAS]), milestones=[2, 3])
  ours = _train_both(method, reference, network, params,
                     method.initial_mapping)
  np.testing.assert_allclose(ours["program"], reference.program_nhwc(),
                             rtol=0, atol=TOLERANCE)
  theirs_kernel, theirs_bias = reference.fullymap_values()
  np.testing.assert_allclose(ours[methods.ilm_vp.KERNEL], theirs_kernel,
                             rtol=0, atol=TOLERANCE)
  np.testing.assert_allclose(ours[methods.ilm_vp.BIAS], theirs_bias, rtol=0,
                             atol=TOLERANCE)
  assert np.abs(ours[methods.ilm_vp.KERNEL] - kernel).max() > 1e-3
  # Only the border trains: the inside keeps its initial draw.
  inside = slice(6, CANVAS - 6)
  np.testing.assert_array_equal(ours["program"][inside, inside],
                                np.asarray(params["program"])[inside, inside])
