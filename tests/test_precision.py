"""Precision that means what it says: under a bfloat16 compute dtype the
global pooling and the head still run in float32."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from reprog_jax.model import resnet


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
