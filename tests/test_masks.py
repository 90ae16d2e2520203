"""Masks as pytree multipliers, and the sparsity report, on hand-made trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reprog_jax.model import masks


def _tree():
  # A stem conv, a block conv, a BatchNorm and an fc, shaped like a ResNet's.
  return {
      "conv1": {"kernel": np.arange(1, 9, dtype=np.float32).reshape(2, 2, 1, 2)},
      "layer1": {"0": {"conv1": {"kernel": np.ones((1, 1, 2, 4), np.float32)},
                       "bn1": {"scale": np.full(4, 2.0, np.float32),
                               "bias": np.zeros(4, np.float32)}}},
      "fc": {"kernel": np.ones((4, 3), np.float32),
             "bias": np.ones(3, np.float32)},
  }


def test_dense_masks_cover_kernels_only():
  m = masks.dense(_tree())
  assert m["conv1"]["kernel"].dtype == bool and m["conv1"]["kernel"].all()
  assert m["fc"]["kernel"].shape == (4, 3)
  assert m["fc"]["bias"] is None
  assert m["layer1"]["0"]["bn1"] == {"scale": None, "bias": None}


def test_apply_multiplies_kernels_and_leaves_the_rest():
  params = _tree()
  m = masks.dense(params)
  m["layer1"]["0"]["conv1"]["kernel"] = np.array(
      [1, 0, 0, 1, 0, 0, 0, 1], bool).reshape(1, 1, 2, 4)
  out = jax.jit(masks.apply)(params, m)
  np.testing.assert_array_equal(
      out["layer1"]["0"]["conv1"]["kernel"].ravel(), [1, 0, 0, 1, 0, 0, 0, 1])
  np.testing.assert_array_equal(out["layer1"]["0"]["bn1"]["scale"], 2.0)
  np.testing.assert_array_equal(out["fc"]["bias"], 1.0)
  np.testing.assert_array_equal(out["conv1"]["kernel"], params["conv1"]["kernel"])


def test_sparsity_report_by_hand():
  params = _tree()
  m = masks.dense(params)
  # Block conv: keep 3 of 8. A zero weight under a 1 also counts as removed
  # (PyTorch counts zeros of the effective weight).
  m["layer1"]["0"]["conv1"]["kernel"] = np.array(
      [1, 1, 1, 0, 0, 0, 0, 0], bool).reshape(1, 1, 2, 4)
  params["layer1"]["0"]["conv1"]["kernel"].reshape(-1)[0] = 0.0
  # Stem: drop 4 of 8 (excluded from the PyTorch figure). fc: drop 6 of 12.
  m["conv1"]["kernel"] = np.array([1, 0] * 4, bool).reshape(2, 2, 1, 2)
  m["fc"]["kernel"] = np.array([1, 0] * 6, bool).reshape(4, 3)
  r = masks.sparsity(params, m)
  # PyTorch figure: the block conv only: 2 nonzero of 8.
  assert r["remaining_percent"] == pytest.approx(25.0)
  # All kernels: (4 + 2 + 6) nonzero of (8 + 8 + 12) = 12 / 28.
  assert r["global_remaining_percent"] == pytest.approx(100 * 12 / 28)
  # Mask ones: (4 + 3 + 6) of 28.
  assert r["mask_remaining_percent"] == pytest.approx(100 * 13 / 28)
  assert r["layers"]["layer1.0.conv1"] == {
      "shape": [1, 1, 2, 4], "total": 8, "nonzero": 2, "mask_ones": 3,
      "remaining_percent": 25.0}
  assert set(r["layers"]) == {"conv1", "layer1.0.conv1", "fc"}
  assert "25.00 %" in masks.format_report(r, per_layer=True)


def test_storable_round_trip_restores_none_leaves():
  params = _tree()
  m = masks.dense(params)
  stored = masks.to_storable(m)
  assert "bias" not in stored["fc"] and "bn1" not in stored["layer1"]["0"]
  back = masks.from_storable(stored, params)
  assert jax.tree.structure(back, is_leaf=lambda x: x is None) == \
      jax.tree.structure(m, is_leaf=lambda x: x is None)


def test_apply_under_jit_with_bfloat16_params():
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), _tree())
  out = jax.jit(masks.apply)(params, masks.dense(_tree()))
  assert out["fc"]["kernel"].dtype == jnp.bfloat16


def test_nonzero_outside_counts_weights_the_mask_removes():
  params = _tree()
  m = masks.dense(params)
  # conv1 kernel is 1..8: mask away 3 of them (all nonzero) ...
  m["conv1"]["kernel"] = np.array([1, 1, 0, 1, 0, 1, 0, 1], bool).reshape(2, 2, 1, 2)
  # ... and 2 fc weights, one of which is already 0.
  params["fc"]["kernel"][0, 0] = 0.0
  m["fc"]["kernel"] = np.ones((4, 3), bool)
  m["fc"]["kernel"][0, :2] = False
  assert masks.nonzero_outside(params, m) == 3 + 1
  assert masks.nonzero_outside(params, masks.dense(params)) == 0
