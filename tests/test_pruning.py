"""`pruning`: exact fractions, magnitudes, seeds, nesting, and IMP rewinding."""

import flax.traverse_util
import jax
import numpy as np
import pytest

from reprog_jax.model import masks as masks_lib
from reprog_jax.model import pruning


def tiny_resnet_params(seed=0):
  """A params tree with ResNet names: stem conv1, two block convs, a
  downsample, fc (kernel + bias) and a BatchNorm."""
  rng = np.random.default_rng(seed)
  w = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  return {
      "conv1": {"kernel": w(3, 3, 3, 4)},
      "bn1": {"scale": w(4), "bias": w(4)},
      "layer1": {"0": {"conv1": {"kernel": w(3, 3, 4, 4)},
                       "conv2": {"kernel": w(3, 3, 4, 8)},
                       "downsample": {"0": {"kernel": w(1, 1, 4, 8)}}}},
      "fc": {"kernel": w(8, 10), "bias": w(10)},
  }


def random_masks(params, keep, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda m: rng.random(m.shape) < keep,
                      masks_lib.dense(params))


def kernels(tree):
  """{torch name: array} of the masked (kernel) leaves."""
  return {masks_lib.torch_name(path): np.asarray(leaf)
          for path, leaf in flax.traverse_util.flatten_dict(tree).items()
          if path[-1] == "kernel"}


def largest_of_kept(weights, masks, k):
  """numpy transcription: sort |w| of the weights the masks keep, descending,
  and keep the k largest; the others are pruned. Returns {name: mask}."""
  entries = sorted((-abs(float(weights[n].flat[i])), n, i)
                    for n in weights for i in np.flatnonzero(masks[n]))
  new = {n: np.zeros(weights[n].size, bool) for n in weights}
  for _, n, i in entries[:k]:
    new[n][i] = True
  return {n: m.reshape(weights[n].shape) for n, m in new.items()}


def count(masks_by_name, names=None):
  return sum(int(m.sum()) for n, m in masks_by_name.items()
             if names is None or n in names)


def test_remaining_fraction_is_the_papers_states():
  assert pruning.remaining_fraction(0) == 1.0
  assert pruning.remaining_fraction(8) == pytest.approx(0.16777216)
  assert pruning.remaining_fraction(9) == pytest.approx(0.134217728)


def test_global_magnitude_keeps_exactly_the_largest_surviving_weights():
  params = tiny_resnet_params()
  old = random_masks(params, keep=0.7, seed=1)
  new = pruning.prune(params, old, remaining=0.3)
  w, old_k, new_k = kernels(params), kernels(old), kernels(new)
  total = sum(a.size for a in w.values())  # 108 + 144 + 288 + 32 + 80
  assert total == 652
  assert count(new_k) == round(0.3 * 652) == 196
  expected = largest_of_kept(w, old_k, 196)
  for name in w:
    np.testing.assert_array_equal(new_k[name], expected[name], err_msg=name)
    assert not (new_k[name] & ~old_k[name]).any()  # Nested.
  # Non-kernel leaves stay unmasked.
  assert new["bn1"]["scale"] is None and new["fc"]["bias"] is None
  assert pruning.kept_fraction(new) == pytest.approx(196 / 652)


def test_layerwise_magnitude_prunes_every_layer_to_the_fraction():
  params = tiny_resnet_params(seed=2)
  old = random_masks(params, keep=0.9, seed=3)
  new = pruning.prune(params, old, remaining=0.4, scope="layerwise")
  w, old_k, new_k = kernels(params), kernels(old), kernels(new)
  for name in w:
    k = round(0.4 * w[name].size)
    assert new_k[name].sum() == k, name
    expected = largest_of_kept({name: w[name]}, {name: old_k[name]}, k)
    np.testing.assert_array_equal(new_k[name], expected[name], err_msg=name)


def test_ties_go_to_the_earlier_weight_in_name_then_index_order():
  params = jax.tree.map(lambda w: np.round(w * 2) / 2, tiny_resnet_params())
  masks = random_masks(params, keep=0.8, seed=9)
  w, old = kernels(params), kernels(masks)
  new = kernels(pruning.prune(params, masks, remaining=0.4))
  # The transcription sorts ties by (layer name, flat index).
  expected = largest_of_kept(w, old, round(0.4 * 652))
  assert all(np.array_equal(new[n], expected[n]) for n in w)
  ones = jax.tree.map(np.ones_like, params)
  for m in kernels(pruning.prune(ones, masks_lib.dense(ones), remaining=0.25,
                                 scope="layerwise")).values():
    np.testing.assert_array_equal(m.ravel(),
                                  np.arange(m.size) < round(0.25 * m.size))


def test_random_pruning_is_seeded_exact_and_nested():
  params = tiny_resnet_params()
  old = random_masks(params, keep=0.8, seed=4)
  a = kernels(pruning.prune(params, old, remaining=0.5, method="random",
                            seed=7))
  b = kernels(pruning.prune(params, old, remaining=0.5, method="random",
                            seed=7))
  c = kernels(pruning.prune(params, old, remaining=0.5, method="random",
                            seed=8))
  assert count(a) == count(c) == round(0.5 * 652)
  assert all(np.array_equal(a[n], b[n]) for n in a)
  assert any(not np.array_equal(a[n], c[n]) for n in a)
  old_k = kernels(old)
  assert all(not (a[n] & ~old_k[n]).any() for n in a)
  # Not magnitude in disguise.
  magnitude = kernels(pruning.prune(params, old, remaining=0.5))
  assert any(not np.array_equal(a[n], magnitude[n]) for n in a)
  layerwise = kernels(pruning.prune(params, old, remaining=0.5,
                                    method="random", scope="layerwise"))
  assert all(layerwise[n].sum() == round(0.5 * layerwise[n].size)
             for n in layerwise)


def test_excluded_stem_and_fc_keep_their_masks_and_are_not_counted():
  params = tiny_resnet_params()
  old = random_masks(params, keep=0.9, seed=5)
  new = pruning.prune(params, old, remaining=0.2, prune_first_conv=False,
                      prune_fc=False)
  old_k, new_k = kernels(old), kernels(new)
  for name in ("conv1", "fc"):
    np.testing.assert_array_equal(new_k[name], old_k[name])
  pruned = ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.downsample.0"]
  assert count(new_k, pruned) == round(0.2 * (144 + 288 + 32))
  assert pruning.kept_fraction(new, prune_first_conv=False, prune_fc=False) \
      == pytest.approx(round(0.2 * 464) / 464)


@pytest.mark.parametrize("kwargs, message", [
    ({"remaining": 0.9}, ("cannot keep 90 % (587 weights) of the pruned "
                          "layers: the current mask keeps only")),
    ({"remaining": 0.0}, "remaining fraction 0.0 is not in (0, 1]"),
    ({"remaining": 0.0005}, "keeps none"),
    ({"remaining": 0.001, "scope": "layerwise"}, "in layer conv1 keeps none"),
    ({"remaining": 0.5, "method": "snip"}, "pruning method 'snip' is not"),
    ({"remaining": 0.5, "scope": "blockwise"}, "pruning scope 'blockwise'"),
])
def test_impossible_requests_are_one_line_errors(kwargs, message):
  params = tiny_resnet_params()
  with pytest.raises(pruning.PruningError) as e:
    pruning.prune(params, random_masks(params, keep=0.5, seed=6), **kwargs)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_non_finite_weights_cannot_be_ranked():
  params = tiny_resnet_params()
  params["fc"]["kernel"][0, 0] = np.nan
  with pytest.raises(pruning.PruningError,
                     match="layer fc has non-finite weights"):
    pruning.prune(params, masks_lib.dense(params), remaining=0.5)


def test_a_global_prune_that_would_empty_a_layer_is_refused():
  params = tiny_resnet_params()
  params["layer1"]["0"]["downsample"]["0"]["kernel"] *= 1e-6  # All tiny.
  with pytest.raises(pruning.PruningError,
                     match=r"would empty layer layer1\.0\.downsample\.0"):
    pruning.prune(params, masks_lib.dense(params), remaining=0.5)
  # Layerwise keeps some of every layer.
  new = pruning.prune(params, masks_lib.dense(params), remaining=0.5,
                      scope="layerwise")
  assert kernels(new)["layer1.0.downsample.0"].sum() == 16


def test_masks_from_zeros_marks_the_nonzero_kernel_weights():
  params = tiny_resnet_params()
  params["fc"]["kernel"][2:5] = 0.0
  params["bn1"]["scale"][0] = 0.0  # Not a kernel: stays unmasked.
  masks = pruning.masks_from_zeros(params)
  assert masks["bn1"]["scale"] is None
  np.testing.assert_array_equal(masks["fc"]["kernel"],
                                params["fc"]["kernel"] != 0)
  assert masks["fc"]["kernel"].sum() == 80 - 30
  assert masks["conv1"]["kernel"].all()


# --------------------------------------------------------------------------
# Iterative magnitude pruning with rewinding, on a linear model.
# --------------------------------------------------------------------------

STEPS = 6


def learning_rate(step):
  """A step schedule: resuming at step k must use the rate of step k."""
  return 0.1 if step < 4 else 0.01


def make_train_fn(calls):
  """Masked gradient descent on least squares for a 2-layer linear model,
  from the step its state is at to STEPS; records what each call started
  from."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((32, 6)).astype(np.float32)
  y = rng.standard_normal((32, 3)).astype(np.float32)

  def loss(params):
    h = x @ params["hidden"]["kernel"]
    out = h @ params["fc"]["kernel"] + params["fc"]["bias"]
    return ((out - y) ** 2).mean()

  grad = jax.jit(jax.grad(loss))

  def train_fn(state, masks, rewind_step):
    calls.append({"state": jax.device_get(state), "masks": masks,
                  "rewind_step": rewind_step})
    params, snapshot = state["params"], None
    start = int(state["step"])
    for step in range(start, STEPS + 1):
      if step == rewind_step:
        snapshot = {"params": params, "step": np.int32(step)}
      if step == STEPS:
        break
      g = grad(params)
      params = masks_lib.apply(jax.tree.map(
          lambda p, d, step=step: p - learning_rate(step) * d, params, g),
                               masks)
    return {"params": params, "step": np.int32(STEPS),
            "steps_run": STEPS - start}, snapshot

  return train_fn


def resume_by_hand(params, masks, start):
  """The steps start..STEPS-1 of `make_train_fn`'s recipe, in NumPy."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((32, 6))
  y = rng.standard_normal((32, 3))
  w1, w2, b = (np.asarray(params["hidden"]["kernel"], np.float64),
               np.asarray(params["fc"]["kernel"], np.float64),
               np.asarray(params["fc"]["bias"], np.float64))
  m1, m2 = masks["hidden"]["kernel"], masks["fc"]["kernel"]
  for step in range(start, STEPS):
    h = x @ w1
    residual = 2 * (h @ w2 + b - y) / y.size  # d mean-squared / d output.
    g2, gb = h.T @ residual, residual.sum(0)
    g1 = x.T @ (residual @ w2.T)
    lr = learning_rate(step)
    w1, w2, b = (w1 - lr * g1) * m1, (w2 - lr * g2) * m2, b - lr * gb
  return w1, w2, b


def linear_state(seed=1):
  rng = np.random.default_rng(seed)
  return {"params": {
      "hidden": {"kernel": rng.standard_normal((6, 8)).astype(np.float32)},
      "fc": {"kernel": rng.standard_normal((8, 3)).astype(np.float32),
             "bias": np.zeros(3, np.float32)}},
          "step": np.int32(0)}


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_imp_rewinds_survivors_to_the_stated_step_with_nested_masks(scope):
  calls = []
  rounds = pruning.iterative_magnitude_pruning(
      make_train_fn(calls), linear_state(), states=(2, 4, 7), rewind_step=2,
      params_of=lambda s: s["params"], scope=scope)
  assert [r.state for r in rounds] == [0, 2, 4, 7]
  # Round 0 keeps the step-2 point; later rounds resume there.
  assert len(calls) == 4 and calls[0]["rewind_step"] == 2
  assert all(c["rewind_step"] is None for c in calls[1:])
  assert rounds[0].trained["steps_run"] == STEPS
  assert all(r.trained["steps_run"] == STEPS - 2 for r in rounds[1:])
  assert rounds[0].remaining == 1.0
  assert all(m.all() for m in kernels(rounds[0].masks).values())
  # Round 0's state after 2 steps, by running the train_fn's recipe again.
  _, snapshot = make_train_fn([])(linear_state(), rounds[0].masks, 2)
  assert int(snapshot["step"]) == 2
  for previous, this, call in zip(rounds, rounds[1:], calls[1:]):
    before, now = kernels(previous.masks), kernels(this.masks)
    trained = kernels(previous.trained["params"])
    total = sum(m.size for m in now.values())
    keep = pruning.remaining_fraction(this.state)
    if scope == "global":
      assert count(now) == round(keep * total) == round(this.remaining * total)
      expected = largest_of_kept(trained, before, round(keep * total))
    else:
      expected = {}
      for n in now:
        k = round(keep * now[n].size)
        expected.update(largest_of_kept({n: trained[n]}, {n: before[n]}, k))
    for n in now:
      np.testing.assert_array_equal(now[n], expected[n], err_msg=n)
      assert not (now[n] & ~before[n]).any()  # Nested.
    # The retrained round starts from the step-2 snapshot times its mask,
    # the snapshot's other leaves included.
    assert call["masks"] is this.masks
    assert int(call["state"]["step"]) == 2
    started = call["state"]["params"]
    for path, leaf in flax.traverse_util.flatten_dict(
        snapshot["params"]).items():
      got = flax.traverse_util.flatten_dict(started)[path]
      mask = flax.traverse_util.flatten_dict(this.masks)[path]
      np.testing.assert_allclose(
          got, leaf if mask is None else leaf * mask, rtol=1e-6, atol=1e-7)
    assert all(not t[~m].any()
               for t, m in zip(kernels(this.trained["params"]).values(),
                               now.values()))
    # Training resumed at step 2 with the schedule of step 2 (not a fresh
    # one): the same weights as steps 2..5 by hand from the rewind point.
    w1, w2, b = resume_by_hand(started, this.masks, 2)
    trained_params = this.trained["params"]
    np.testing.assert_allclose(trained_params["hidden"]["kernel"], w1,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(trained_params["fc"]["kernel"], w2,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(trained_params["fc"]["bias"], b, rtol=1e-4,
                               atol=1e-5)


def test_imp_without_a_rewind_step_resets_to_the_initial_state():
  calls = []
  initial = linear_state()
  rounds = pruning.iterative_magnitude_pruning(
      make_train_fn(calls), initial, states=[3], rewind_step=None,
      params_of=lambda s: s["params"])
  masks = rounds[1].masks
  assert calls[1]["rewind_step"] is None and int(calls[1]["state"]["step"]) == 0
  assert rounds[1].trained["steps_run"] == STEPS  # All T steps again.
  for name, w in kernels(initial["params"]).items():
    np.testing.assert_array_equal(kernels(calls[1]["state"]["params"])[name],
                                  w * kernels(masks)[name])
  assert rounds[1].remaining == pytest.approx(round(0.512 * 72) / 72)


@pytest.mark.parametrize("states", [(4, 2), (0, 2), (2, 2)])
def test_imp_refuses_states_that_do_not_increase(states):
  with pytest.raises(pruning.PruningError, match="not increasing"):
    pruning.iterative_magnitude_pruning(
        make_train_fn([]), linear_state(), states=states, rewind_step=1,
        params_of=lambda s: s["params"])


def test_source_trainer_resumed_at_the_rewind_point_equals_one_run():
  """The demo's `train_fn`: resuming at step k (schedule, Adam moments,
  data order of step k) continues the same run, step for step."""
  from conftest import random_variables  # pylint: disable=g-import-not-at-top
  from reprog_jax.model import resnet  # pylint: disable=g-import-not-at-top
  from reprog_jax.tools import source_task
  images, labels = source_task.make_images(4, 4, size=16, seed=0)
  model = resnet.get_architecture("resnet_mini")(num_classes=4)
  trainer = source_task.Trainer(model, images, labels, epochs=2,
                                batch_size=4, progress=False)
  # Any start will do: drawn in numpy (`source_task.init_state`'s compiled
  # initialisers, the demo's, cost more than the training here).
  state = random_variables(model)
  masks = masks_lib.dense(state["params"])
  whole, rewind = trainer.train(state, masks, rewind_step=5)
  assert int(rewind["step"]) == 5 and "opt_state" in rewind
  resumed, _ = trainer.train(rewind, masks, None)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)
