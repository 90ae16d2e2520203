"""Precision that means what it says: under a bfloat16 compute dtype the
global pooling and the head still run in float32 (so linear probing on
cached float32 features trains the head recomputing them trains), and the
run's `eval_precision` reaches every evaluation-like computation: its
evaluation and counting steps, linear probing's feature encode (cached or
per step; the cache's key holds it) and `evaluate_source`."""

import json

import chex
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_variables, smoke_config
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.model import resnet
from reprog_jax.tools import evaluate_source
from reprog_jax.train import checkpoints
from reprog_jax.train import inputs as inputs_lib
from reprog_jax.train import loop
from reprog_jax.train import run_config
from reprog_jax.train import sharding
from reprog_jax.train import steps
# The network directory and image folder `evaluate_source` is tested on.
from test_evaluate_source import image_folder, mini_network  # pylint: disable=unused-import


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def test_pooling_and_head_are_float32_under_bfloat16():
  # resnet_mini: the pooling and the head are `resnet.ResNet`'s whatever its
  # blocks and widths (ResNet-18's would only compile longer).
  model = resnet.ResNetMini(num_classes=7, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = random_variables(model)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x).jaxpr
  eqns = list(_eqns(jaxpr))
  # The last reduction is the global pooling, the last matmul the head.
  pooling = [e for e in eqns if e.primitive.name == "reduce_sum"][-1]
  head = [e for e in eqns if e.primitive.name == "dot_general"][-1]
  assert pooling.invars[0].aval.dtype == jnp.float32
  assert pooling.invars[0].aval.shape == (2, 1, 1, model.num_features)
  assert [v.aval.dtype for v in head.invars] == [jnp.float32] * 2
  assert head.outvars[0].aval.shape == (2, 7)
  # The body itself is bfloat16: the convolutions.
  convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
  assert convs and all(v.aval.dtype == jnp.bfloat16
                       for e in convs for v in e.invars)
  features = jax.jit(lambda v, x: model.apply(v, x, features_only=True))(
      variables, x)
  assert features.shape == (2, model.num_features)
  assert features.dtype == jnp.float32 and np.isfinite(features).all()


def _lp_head(workdir, **overrides):
  """The head a one-epoch linear-probing smoke run trains."""
  config = smoke_config("linear_probe", epochs=1, image_size=32,
                        eval_batch_size=8, **overrides)
  loop.train_and_evaluate(config, str(workdir))
  return checkpoints.read(workdir)["state"]["params"]


# Cached and recomputed features come from the same jitted encode program
# (`passes.Run.encode_step`), so the heads they train are the same in
# float32 and in bfloat16 alike, at either precision. (Fused into the
# training step instead, the bfloat16 body was rounded differently and Adam
# turned that into ~3e-4 on head entries whose gradient is near zero.)
@pytest.mark.parametrize("dtype, precision, tolerance", [
    ("float32", "highest", 1e-6), ("bfloat16", "default", 1e-6)])
def test_cached_features_train_the_head_recomputing_trains(
    dtype, precision, tolerance, tmp_path, monkeypatch):
  asked = []
  for name in ("make_eval_step", "make_count_step", "make_encode_step"):
    make = getattr(steps, name)
    monkeypatch.setattr(steps, name, lambda *a, _make=make, _name=name, **k: (
        asked.append((_name, k.get("precision"))), _make(*a, **k))[1])
  cached = _lp_head(tmp_path / "cached", dtype=dtype, cache_features=True,
                    eval_precision=precision)
  recomputed = _lp_head(tmp_path / "recomputed", dtype=dtype,
                        cache_features=False, eval_precision=precision)
  chex.assert_trees_all_close(cached, recomputed, atol=tolerance, rtol=0)
  # The run's eval_precision reaches its evaluation steps (the test split's
  # and the seeds' own held-out rows') and counting step, and the encode:
  # the cache's (first run) and the per-step one (second run).
  assert sorted(asked) == sorted(
      [("make_eval_step", precision)] * 4
      + [("make_count_step", precision), ("make_encode_step", precision)] * 2)


@pytest.fixture(scope="module")
def mini():
  """A small random network: what is lowered here, not its size, matters."""
  return network_lib.random_network("resnet_mini")


def _convolutions_and_matmuls(lowered_text) -> list[str]:
  return [line for line in lowered_text.splitlines()
          if "stablehlo.convolution" in line
          or "stablehlo.dot_general" in line]


@pytest.mark.parametrize("precision", ["highest", "default", None])
def test_encode_step_compiles_at_the_precision_asked(precision, mini):
  # Linear probing's features: on an H100 XLA's default would run these
  # float32 convolutions as TF32.
  method = methods.linear_probe.linear_probe(mini.model.num_features, 10)
  text = steps.make_encode_step(
      method, sharding.Layout.create(1), precision=precision).lower(
          mini, np.zeros((2, 8, 8, 3), np.uint8)).as_text()
  ops = _convolutions_and_matmuls(text)
  assert len(ops) >= 9  # The network's convolutions.
  highest = [op for op in ops if "HIGHEST" in op]
  assert len(highest) == (len(ops) if precision == "highest" else 0)


def _load_features(config, network, workdir):
  """`inputs.load` of a linear-probing smoke config: its feature files."""
  seeds = run_config.seeds(config)
  run_data = inputs_lib.open_run_data(config, seeds)
  method = methods.build(config, network, run_data.num_classes,
                         config.image_size)
  return inputs_lib.load(run_data, config, seeds=seeds,
                         image_size=config.image_size, method=method,
                         network=network, eval_network=network,
                         layout=sharding.Layout.create(1),
                         workdir=str(workdir))


def _stored_key(workdir, split="test") -> dict:
  with np.load(workdir / "features" / f"{split}.npz") as stored:
    return json.loads(str(stored["key"]))


def test_features_of_another_precision_or_dtype_are_recomputed(
    mini, tmp_path, capsys, monkeypatch):
  config = smoke_config("linear_probe", image_size=32)
  network = mini
  asked = []
  make = steps.make_encode_step
  monkeypatch.setattr(steps, "make_encode_step", lambda *a, **k: (
      asked.append(k.get("precision")), make(*a, **k))[1])
  _load_features(config, network, tmp_path)
  assert asked == ["highest"]
  assert _stored_key(tmp_path)["precision"] == "highest"
  assert _stored_key(tmp_path)["compute_dtype"] == "float32"
  capsys.readouterr()

  # Another precision: every split recomputed, its file replaced.
  config.eval_precision = "default"
  _load_features(config, network, tmp_path)
  out = capsys.readouterr().out
  assert out.count("recomputing them (they differ in precision)") == 3, out
  assert asked[-1] == "default"
  assert _stored_key(tmp_path)["precision"] == "default"

  # Another dtype of the encode.
  bfloat16 = network.with_dtype(jnp.bfloat16)
  fresh = _load_features(config, bfloat16, tmp_path)
  assert "recomputing them (they differ in compute_dtype)" in (
      capsys.readouterr().out)
  assert _stored_key(tmp_path)["compute_dtype"] == "bfloat16"

  # A file an older version wrote (its key without the new field) is
  # stale, never an error: recomputed and replaced.
  path = tmp_path / "features" / "test.npz"
  with np.load(path) as stored:
    old_key = json.loads(str(stored["key"]))
    features, labels = stored["features"], stored["labels"]
  del old_key["precision"]
  np.savez(path, key=json.dumps(old_key, sort_keys=True),
           features=features + 1, labels=labels)
  again = _load_features(config, bfloat16, tmp_path)
  out = capsys.readouterr().out
  assert ("test.npz holds features of another network or config; "
          "recomputing them (they differ in precision)") in out
  assert "train.npz" not in out  # The files that are good stay.
  assert _stored_key(tmp_path)["precision"] == "default"
  np.testing.assert_array_equal(again.test.rows, fresh.test.rows)
  with np.load(path) as stored:
    np.testing.assert_array_equal(stored["features"], fresh.test.rows)


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_evaluate_source_compiles_at_the_precision_asked(precision, mini):
  text = evaluate_source.make_logits(precision).lower(
      mini, np.zeros((2, 8, 8, 3), np.float32)).as_text()
  ops = _convolutions_and_matmuls(text)
  assert len(ops) >= 10  # The convolutions and the head's matmul.
  assert any("stablehlo.dot_general" in op for op in ops)
  highest = [op for op in ops if "HIGHEST" in op]
  assert len(highest) == (len(ops) if precision == "highest" else 0)


def test_evaluate_source_measures_at_the_precision_asked(
    mini_network, image_folder, monkeypatch, capsys):
  asked = []
  make = evaluate_source.make_logits
  monkeypatch.setattr(evaluate_source, "make_logits", lambda p: (
      asked.append(p), make(p))[1])
  argv = [str(mini_network), "--data_dir", str(image_folder),
          "--no-progress"]
  assert evaluate_source.main(argv) == 0
  assert network_dir.load(str(mini_network)).meta[
      "source_top1_from"].endswith("precision highest)")
  assert evaluate_source.main(argv + ["--eval-precision", "default"]) == 0
  assert network_dir.load(str(mini_network)).meta[
      "source_top1_from"].endswith("precision default)")
  assert asked == ["highest", "default"]
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    evaluate_source.main(argv + ["--eval-precision", "tf32"])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "invalid choice: 'tf32'" in err


def test_eval_precision_is_checked():
  config = smoke_config("linear_probe")
  config.eval_precision = "fast"
  with pytest.raises(errors.ConfigError, match="eval_precision 'fast' is not "
                     "one of highest, default"):
    run_config.check(config)
