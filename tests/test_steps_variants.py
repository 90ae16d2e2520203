"""ILM-VP's variants (BLM, BLM++, FullyMap, the padding prompt) against the
PyTorch reference (`torch_reference.PromptVariantReference`): their steps
teacher-forced as tests/test_steps.py checks the paper's ILM-VP, their
mapping passes once."""

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
from test_steps import one_seed, one_torch_thread, teacher_forced

IMAGE, CANVAS, CLASSES = 16, 32, 10
MILESTONES = [1, 2]  # test_steps' EPOCHS = 3: int(0.5 * 3), int(0.72 * 3).


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


def _our_mapping_pass(method, network, params, images, labels, dtype):
  """Our count step over one batch (the loop's mapping pass)."""
  count = steps.make_count_step(method, sharding.Layout.create(1))
  counts = np.zeros((1, method.num_scores, CLASSES), dtype)
  batch = {"image": images, "label": labels,
           "mask": np.ones(len(labels), bool)}
  return np.asarray(count(counts, one_seed(params), network,
                          one_seed(batch)))[0]


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
  with one_torch_thread():
    theirs = reference.bayesian_matrix(images, labels, CLASSES, lap, top_k)
  sums = _our_mapping_pass(method, network, params, images, labels,
                           np.int32 if top_k is None else np.float32)
  ours = np.asarray(label_mapping.bayesian_matrix(sums, lap))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
  np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-5)


def test_matrix_mapping_steps_match_pytorch_teacher_forced(ticket):
  """BLM's and BLM++'s step (the same program: test_steps checks it; they
  differ in the mapping pass) with a matrix fixed, as within an epoch.

  A sparse matrix (counts on 3 sources per target): a random network
  spreads its predictions, so the matrix of its mapping pass averages many
  similar logits and the prompt's gradients are tiny; a sparse one keeps
  them the size of ILM's, which the reference must then match.
  """
  network, torch_network = ticket
  rng = np.random.default_rng(9)
  counts = np.zeros((1000, CLASSES), np.float32)
  for t in range(CLASSES):
    counts[rng.choice(1000, 3, replace=False), t] = rng.integers(1, 9, 3)
  matrix = np.asarray(label_mapping.bayesian_matrix(counts, 1.0))
  reference = ref_lib.PromptVariantReference(
      torch_network, IMAGE, matrix, output_size=CANVAS, milestones=MILESTONES)
  method = methods.ilm_vp.visual_prompt(IMAGE, CLASSES, CANVAS, "blm")
  trajectory = teacher_forced(method, reference, network,
                              method.init(jax.random.key(0)), matrix, IMAGE,
                              CLASSES)
  assert np.abs(trajectory[0]["gradients"]["program"]).max() > 1e-4
  assert np.abs(trajectory[-1]["values"]["program"]).max() > 0.01


def test_fullymap_with_padding_prompt_steps_match_pytorch_teacher_forced(
    ticket):
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
      fullymap=(kernel, params[methods.ilm_vp.BIAS]), milestones=MILESTONES)
  # The reference took the same start (what `teacher_forced` loads again).
  for name, value in reference.values().items():
    np.testing.assert_array_equal(value, np.asarray(params[name]))
  trajectory = teacher_forced(method, reference, network, params,
                              method.initial_mapping, IMAGE, CLASSES)
  ours = trajectory[-1]["values"]
  assert np.abs(ours[methods.ilm_vp.KERNEL] - kernel).max() > 1e-3
  # Only the border trains: the inside keeps its initial draw.
  inside = slice(6, CANVAS - 6)
  assert not trajectory[0]["gradients"]["program"][inside, inside].any()
  np.testing.assert_array_equal(ours["program"][inside, inside],
                                np.asarray(params["program"])[inside, inside])
