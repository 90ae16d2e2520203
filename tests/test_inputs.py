"""Inputs of a run: images decoded once, linear-probing features cached."""


import numpy as np
import pytest

from conftest import assert_records_close, per_seed_records, smoke_config
from reprog_jax import fileio
from reprog_jax.train import checkpoints
from reprog_jax.train import inputs
from reprog_jax.model import network as network_lib
from reprog_jax.train import run_config
from reprog_jax.train import sharding
from reprog_jax import methods
from reprog_jax.train import loop as train
from reprog_jax.data import pipeline


@pytest.fixture(scope="module")
def lp_runs(tmp_path_factory):
  """Linear probing with cached features and recomputing them per step
  (the smoke preset's 2 epochs: the second reads the cache the first
  wrote)."""
  root = tmp_path_factory.mktemp("lp")
  for name, cache in (("cached", True), ("recomputed", False)):
    train.train_and_evaluate(
        smoke_config("linear_probe", seeds=(0, 1), cache_features=cache),
        str(root / name))
  return root


def test_cached_features_give_the_recomputed_result(lp_runs):
  assert (lp_runs / "cached" / "features" / "train.npz").exists()
  assert not (lp_runs / "recomputed" / "features").exists()
  assert_records_close(per_seed_records(lp_runs / "cached"),
                       per_seed_records(lp_runs / "recomputed"), atol=1e-5)
  ours, theirs = (checkpoints.read(lp_runs / name)["state"]["params"]
                  for name in ("cached", "recomputed"))
  for name in theirs:
    np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-5)


def test_cached_features_are_the_networks_features(lp_runs):
  config = smoke_config("linear_probe")
  network = network_lib.random_network(config.random_network)  # The run's.
  run_data = inputs.open_run_data(config, (0, 1))
  with np.load(lp_runs / "cached" / "features" / "test.npz") as stored:
    features = stored["features"]
  loader_images = np.stack([
      pipeline.load_uint8_image(run_data.test.source[int(i)]["image"],
                                config.image_size)
      for i in run_data.test.indices[:4]]).astype(np.float32) / 255
  expected = network.features(
      (loader_images - np.array([0.485, 0.456, 0.406], np.float32))
      / np.array([0.229, 0.224, 0.225], np.float32))
  np.testing.assert_allclose(features[:4], expected, rtol=0, atol=1e-5)


def _load(config, network, workdir):
  layout = sharding.Layout.create(1)
  seeds = run_config.seeds(config)
  run_data = inputs.open_run_data(config, seeds)
  method = methods.build(config, network, run_data.num_classes,
                         config.image_size)
  return inputs.load(run_data, config, seeds=seeds,
                     image_size=config.image_size, method=method,
                     network=network, eval_network=network, layout=layout,
                     workdir=str(workdir))


def test_features_of_another_network_are_recomputed(tmp_path, capsys,
                                                    monkeypatch):
  config = smoke_config("linear_probe")
  first = network_lib.random_network(config.random_network)
  loaded = _load(config, first, tmp_path)
  assert loaded.encoded
  capsys.readouterr()
  # Reused as they are: no image is decoded again.
  decoded = []
  real = pipeline.load_uint8_image
  monkeypatch.setattr(pipeline, "load_uint8_image",
                      lambda *a: decoded.append(1) or real(*a))
  again = _load(config, first, tmp_path)
  assert not decoded and "recomputing" not in capsys.readouterr().out
  np.testing.assert_array_equal(again.test.rows, loaded.test.rows)
  # Another network (same architecture and shapes): detected, recomputed.
  other = network_lib.random_network(config.random_network, seed=1)
  changed = _load(config, other, tmp_path)
  assert "features of another network or config; recomputing" in (
      capsys.readouterr().out)
  assert decoded
  assert not np.allclose(changed.test.rows, loaded.test.rows)
  with np.load(tmp_path / "features" / "test.npz") as stored:
    np.testing.assert_array_equal(stored["features"], changed.test.rows)
  # Another image size, and an unreadable file: recomputed too.
  assert config.image_size != 32
  config.image_size = 32
  _load(config, other, tmp_path)
  assert "recomputing" in capsys.readouterr().out
  # A torn file, and the temporary file of a write killed midway.
  (tmp_path / "features" / "train.npz").write_bytes(b"garbage")
  (tmp_path / "features" / f"{fileio.TMP_PREFIX}train.npz-x1y2").write_bytes(
      b"PK\x03")
  _load(config, other, tmp_path)
  assert "no readable features" in capsys.readouterr().out
  assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [
      "holdout.npz", "test.npz", "train.npz"]


def test_bfloat16_run_maps_and_evaluates_in_float32(tmp_path, monkeypatch):
  from reprog_jax.train import steps
  seen = {}
  for name in ("make_train_step", "make_count_step", "make_eval_step"):
    real = getattr(steps, name)

    def spying(*args, real=real, name=name, **kwargs):
      step = real(*args, **kwargs)

      def call(*a):
        network = next(x for x in a if isinstance(x, network_lib.Network))
        seen.setdefault(name, set()).add(
            np.dtype(network.model.dtype).name)
        return step(*a)
      return call
    monkeypatch.setattr(steps, name, spying)
  summary = train.train_and_evaluate(
      smoke_config("ilm_vp", epochs=1, dtype="bfloat16"), str(tmp_path))
  assert seen == {"make_train_step": {"bfloat16"},
                  "make_count_step": {"float32"},
                  "make_eval_step": {"float32"}}
  assert summary["platform"]["compute_dtype"] == "bfloat16"
  assert summary["platform"]["eval_dtype"] == "float32"
