"""conv_impl="fast" (the CPU reformulations) computes what "xla" computes.

The reference is the same Flax network with plain `conv_general_dilated` /
`reduce_window` (itself checked against torchvision in test_networks.py).
Networks are randomly initialised with random BatchNorm statistics; both the
logits and the gradient with respect to the input (the hot path: frozen
network, trained input) are compared.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reprog_jax.model import resnet

TOLERANCE = 1e-4  # max |difference| in float32, as test_networks.py


def _random_variables(arch, seed):
  """Random init, then random BatchNorm statistics and affine parameters."""
  model = resnet.get_architecture(arch)(conv_impl="xla")
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))

  def randomise(path, leaf, key):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return jax.random.uniform(key, leaf.shape, minval=0.5, maxval=2.0)
    if name.endswith("['mean']"):
      return 0.2 * jax.random.normal(key, leaf.shape)
    if name.endswith("['scale']"):  # keeps ResNet-50's logits below ~30
      return jax.random.uniform(key, leaf.shape, minval=0.7, maxval=1.2)
    if name.endswith("['bias']"):
      return 0.1 * jax.random.normal(key, leaf.shape)
    return leaf

  return jax.tree_util.tree_unflatten(
      treedef, [randomise(p, v, k) for (p, v), k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def _variables(arch):
  return _random_variables(arch, seed=0)


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_input_grad(model, variables, x, cotangent):
  logits, vjp = jax.vjp(lambda x: model.apply(variables, x), x)
  return logits, vjp(cotangent)[0]


def _both(arch, x, **kwargs):
  """(logits, input gradient) of the "xla" and the "fast" network."""
  cotangent = jax.random.normal(jax.random.key(7), (x.shape[0], 1000))
  return [_logits_and_input_grad(
      resnet.get_architecture(arch)(conv_impl=impl, **kwargs),
      _variables(arch), x, cotangent) for impl in ("xla", "fast")]


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("arch,size", [
    ("resnet18", 224),
    ("resnet18", 64),
    ("resnet18", 33),  # odd at every stage: stem blocks, pooling, strides
    ("resnet50", 33),  # bottleneck 1x1s, strided 512-channel 3x3
])
def test_fast_logits_and_input_gradient_match_xla(arch, size):
  # Fixed inputs, for a reason: two float32 computations of one network can
  # disagree where a ReLU or max-pool decision sits within rounding of its
  # kink, and the gradient then jumps (key(224) does that at 224 px: 1e-3,
  # even between the jitted and the eager "xla" network). These inputs are
  # clear of kinks; a failure here that is not a float-rounding flip is real.
  x = jax.random.normal(jax.random.key(1000 + size), (2, size, size, 3))
  (logits, grad), (fast_logits, fast_grad) = _both(arch, x)
  assert fast_logits.dtype == fast_grad.dtype == jnp.float32
  # The comparison means something: logits that depend on the image, of
  # moderate size (float32 rounding scales with them), a nonzero gradient.
  assert float(jnp.max(jnp.abs(logits[0] - logits[1]))) > 0.1
  assert float(jnp.max(jnp.abs(logits))) < 50
  assert float(jnp.max(jnp.abs(grad))) > 1e-3
  assert _max_diff(fast_logits, logits) < TOLERANCE
  assert _max_diff(fast_grad, grad) < TOLERANCE


def test_fast_train_mode_features_and_bfloat16_match_xla():
  x = jax.random.normal(jax.random.key(1), (2, 33, 33, 3))

  @functools.partial(jax.jit, static_argnums=0)
  def outputs(impl, variables, x):
    model = resnet.ResNet18(conv_impl=impl)
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=["batch_stats"])
    features = model.apply(variables, x, features_only=True)
    bf16 = model.clone(dtype=jnp.bfloat16).apply(variables, x)
    return logits, updates["batch_stats"], features, bf16

  (*xla, xla_bf16), (*fast, fast_bf16) = [
      outputs(impl, _variables("resnet18"), x) for impl in ("xla", "fast")]
  for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(fast)):
    assert _max_diff(a, b) < TOLERANCE
  # bfloat16 compute: float32 logits, close (rounding differs by design).
  assert fast_bf16.dtype == jnp.float32
  assert _max_diff(fast_bf16, xla_bf16) < 0.05 * float(
      jnp.max(jnp.abs(xla_bf16)))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parameter_tree_does_not_depend_on_conv_impl(arch):
  def tree(impl):
    model = resnet.get_architecture(arch)(conv_impl=impl)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return [(jax.tree_util.keystr(p), v.shape, v.dtype)
            for p, v in jax.tree_util.tree_flatten_with_path(shapes)[0]]

  xla = tree("xla")
  assert tree("fast") == xla and tree("auto") == xla
  assert ("['params']['layer1']['0']['conv1']['kernel']", (1, 1, 64, 64)
          if arch == "resnet50" else (3, 3, 64, 64), jnp.float32) in xla


def test_fast_initialises_the_same_values():
  init = [resnet.ResNet18(conv_impl=impl).init(
      jax.random.key(3), jnp.zeros((1, 16, 16, 3))) for impl in ("xla", "fast")]
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), *init))


def test_auto_is_fast_on_cpu_and_xla_elsewhere(monkeypatch):
  model = resnet.ResNet18()
  assert model.conv_impl == "auto"
  x = jnp.zeros((1, 32, 32, 3))
  variables = _variables("resnet18")
  jaxpr = {impl: str(jax.make_jaxpr(
      resnet.ResNet18(conv_impl=impl).apply)(variables, x))
           for impl in ("auto", "fast", "xla")}
  expected = "fast" if jax.default_backend() == "cpu" else "xla"
  assert jaxpr["auto"] == jaxpr[expected]
  assert jaxpr["fast"] != jaxpr["xla"]
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert str(jax.make_jaxpr(model.apply)(variables, x)) == jaxpr["xla"]
  with pytest.raises(ValueError, match="conv_impl"):
    resnet.ResNet18(conv_impl="cudnn").init(jax.random.key(0), x)


@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (1, 10, 13, 3), (1, 32, 33, 3)])
def test_stem_space_to_depth_is_exact_with_both_derivatives(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (7, 7, 3, 8)) / 12
  plain = functools.partial(resnet._plain_conv, stride=2, padding=3)
  stem = functools.partial(resnet._stem_conv, stride=2, padding=3)
  s2d = functools.partial(resnet._space_to_depth_conv, stride=2, padding=3)
  y = plain(x, kernel)
  np.testing.assert_allclose(s2d(x, kernel), y, rtol=0, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), y.shape)
  expected = jax.vjp(plain, x, kernel)[1](cotangent)
  got = jax.vjp(stem, x, kernel)[1](cotangent)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
  # Forward mode through the custom JVP; the frozen kernel alone, too.
  dx = jax.random.normal(jax.random.key(3), x.shape)
  np.testing.assert_allclose(
      jax.jvp(lambda x: stem(x, kernel), (x,), (dx,))[1],
      jax.jvp(lambda x: plain(x, kernel), (x,), (dx,))[1], rtol=0, atol=1e-4)
  np.testing.assert_allclose(
      jax.grad(lambda k: jnp.vdot(stem(x, k), cotangent))(kernel),
      expected[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_matmul_and_im2col_convs_are_exact(stride, size):
  x = jax.random.normal(jax.random.key(size), (2, size, size, 16))
  k1 = jax.random.normal(jax.random.key(1), (1, 1, 16, 8)) / 4
  k3 = jax.random.normal(jax.random.key(3), (3, 3, 16, 8)) / 12
  np.testing.assert_allclose(resnet._matmul_conv(x, k1, stride),
                             resnet._plain_conv(x, k1, stride, 0),
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(resnet._im2col_conv(x, k3, stride, 1),
                             resnet._plain_conv(x, k3, stride, 1),
                             rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 9, 12, 4), (1, 1, 1, 2)])
def test_max_pool_matches_reduce_window_exactly_with_ties(shape):
  # Coarse values make many ties: the gradient must go to the first maximum
  # in each window, as PyTorch's and reduce_window's does.
  x = jnp.round(2 * jax.random.normal(jax.random.key(0), shape)) / 2
  reference = functools.partial(nn.max_pool, window_shape=(3, 3),
                                strides=(2, 2), padding=((1, 1), (1, 1)))
  y, vjp = jax.vjp(reference, x)
  fast_y, fast_vjp = jax.vjp(resnet._max_pool_3x3_s2, x)
  cotangent = jax.random.normal(jax.random.key(1), y.shape)
  np.testing.assert_array_equal(fast_y, y)
  # Same routing; only the order of summing overlapping windows may differ.
  np.testing.assert_allclose(fast_vjp(cotangent)[0], vjp(cotangent)[0],
                             rtol=0, atol=1e-6)
