"""Precision that means what it says: under a bfloat16 compute dtype the
global pooling and the head still run in float32 (so linear probing on
cached float32 features trains the head recomputing them trains), and the
run's `eval_precision` reaches its evaluation and counting steps."""

import chex
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import smoke_config
from reprog_jax import errors
from reprog_jax.model import resnet
from reprog_jax.train import checkpoints
from reprog_jax.train import loop
from reprog_jax.train import run_config
from reprog_jax.train import steps


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def test_pooling_and_head_are_float32_under_bfloat16():
  model = resnet.ResNet18(num_classes=7, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x).jaxpr
  eqns = list(_eqns(jaxpr))
  # The last reduction is the global pooling, the last matmul the head.
  pooling = [e for e in eqns if e.primitive.name == "reduce_sum"][-1]
  head = [e for e in eqns if e.primitive.name == "dot_general"][-1]
  assert pooling.invars[0].aval.dtype == jnp.float32
  assert pooling.invars[0].aval.shape == (2, 1, 1, 512)
  assert [v.aval.dtype for v in head.invars] == [jnp.float32] * 2
  assert head.outvars[0].aval.shape == (2, 7)
  # The body itself is bfloat16: the convolutions.
  convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
  assert convs and all(v.aval.dtype == jnp.bfloat16
                       for e in convs for v in e.invars)
  features = model.apply(variables, x, features_only=True)
  assert features.dtype == jnp.float32 and np.isfinite(features).all()


def _lp_head(workdir, **overrides):
  """The head a one-epoch linear-probing smoke run trains."""
  config = smoke_config("linear_probe", epochs=1, image_size=32,
                        eval_batch_size=8, **overrides)
  loop.train_and_evaluate(config, str(workdir))
  return checkpoints.read(workdir)["state"]["params"]


# Cached and recomputed features come from the same jitted encode program
# (`passes.Run.encode_step`), so the heads they train are the same in
# float32 and in bfloat16 alike. (Fused into the training step instead, the
# bfloat16 body was rounded differently and Adam turned that into ~3e-4 on
# head entries whose gradient is near zero.)
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6),
                                              ("bfloat16", 1e-6)])
def test_cached_features_train_the_head_recomputing_trains(
    dtype, tolerance, tmp_path, monkeypatch):
  asked = []
  for name in ("make_eval_step", "make_count_step"):
    make = getattr(steps, name)
    monkeypatch.setattr(steps, name, lambda *a, _make=make, **k: (
        asked.append(k.get("precision")), _make(*a, **k))[1])
  cached = _lp_head(tmp_path / "cached", dtype=dtype, cache_features=True)
  recomputed = _lp_head(tmp_path / "recomputed", dtype=dtype,
                        cache_features=False)
  chex.assert_trees_all_close(cached, recomputed, atol=tolerance, rtol=0)
  # The run's eval_precision reaches its evaluation and counting steps.
  assert asked == ["highest"] * 4


def test_eval_precision_is_checked():
  config = smoke_config("linear_probe")
  config.eval_precision = "fast"
  with pytest.raises(errors.ConfigError, match="eval_precision 'fast' is not "
                     "one of highest, default"):
    run_config.check(config)
