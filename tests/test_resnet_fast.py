"""conv_impl="fast" (the CPU reformulations) computes what "xla" computes.

The reference is the same Flax network with plain `conv_general_dilated` /
`reduce_window` (itself checked against torchvision in test_networks.py).
Networks are randomly initialised with random BatchNorm statistics; both the
logits and the gradient with respect to the input (the hot path: frozen
network, trained input) are compared.

The whole networks compared have one block per stage at ResNet-18's and
ResNet-50's widths (`NETWORKS`): the formulation a convolution gets depends
only on its kernel, stride, padding and input channels (`resnet.Conv`), and
the blocks a stage repeats (stride 1, no projection) take no path that
these networks' blocks do not. Each reformulation is also checked alone, at
odd and even sizes, jitted as runs use it (one compilation a case; op by
op, every primitive would compile on its own).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_variables
from reprog_jax.model import resnet

TOLERANCE = 1e-4  # max |difference| in float32, as test_networks.py

# Every path of ResNet-18 / ResNet-50 (`resnet.Conv`'s choice, the stem, the
# max-pool, identity shortcuts, projections at stride 1 and 2), with one
# block per stage: "basic" has the stride-1 512-channel im2col 3x3s and the
# plain strided 3x3s, "bottleneck" the 1x1 matmuls (from 64 to 1024
# channels, strided and not) and the strided 512-channel im2col 3x3.
NETWORKS = {
    "basic": functools.partial(resnet.ResNet, block=resnet.BasicBlock,
                               stage_sizes=(1, 1, 1, 1)),
    "bottleneck": functools.partial(resnet.ResNet, block=resnet.Bottleneck,
                                    stage_sizes=(1, 1, 1, 1)),
}


def _normal(seed, shape, scale=1.0):
  """float32 N(0, scale^2) drawn in numpy: no RNG program to compile."""
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(
      np.float32)


@functools.lru_cache(maxsize=None)
def _variables(name):
  """Random BatchNorm statistics and affine parameters, and a head of 4x
  the usual scale: logits of a few units, which differ between images by
  more than the checks below ask."""
  return random_variables(NETWORKS[name](conv_impl="xla"), random_affine=True,
                          head_scale=4.0)


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_input_grad(model, variables, x, cotangent):
  logits, vjp = jax.vjp(lambda x: model.apply(variables, x), x)
  return logits, vjp(cotangent)[0]


def _both(name, x):
  """(logits, input gradient) of the "xla" and the "fast" network."""
  cotangent = _normal(7, (x.shape[0], 1000))
  return [_logits_and_input_grad(
      NETWORKS[name](conv_impl=impl), _variables(name), x, cotangent)
          for impl in ("xla", "fast")]


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("name,size", [
    # Even at every strided stage, as 224 px is (the formulations depend on
    # no size; 224's 7x7 layer4 is checked alone below).
    ("basic", 64),
    ("basic", 33),  # odd at every stage: stem blocks, pooling, strides
    ("bottleneck", 33),  # bottleneck 1x1s, strided 512-channel 3x3
])
def test_fast_logits_and_input_gradient_match_xla(name, size):
  # Fixed inputs, for a reason: two float32 computations of one network can
  # disagree where a ReLU or max-pool decision sits within rounding of its
  # kink, and the gradient then jumps (1e-3, even between the jitted and the
  # eager "xla" network). These inputs are clear of kinks; a failure here
  # that is not a float-rounding flip is real.
  x = _normal(1000 + size, (2, size, size, 3))
  (logits, grad), (fast_logits, fast_grad) = _both(name, x)
  assert fast_logits.dtype == fast_grad.dtype == jnp.float32
  # The comparison means something: logits that depend on the image, of
  # moderate size (float32 rounding scales with them), a nonzero gradient.
  assert float(jnp.max(jnp.abs(logits[0] - logits[1]))) > 0.1
  assert float(jnp.max(jnp.abs(logits))) < 50
  assert float(jnp.max(jnp.abs(grad))) > 1e-3
  assert _max_diff(fast_logits, logits) < TOLERANCE
  assert _max_diff(fast_grad, grad) < TOLERANCE


def test_fast_train_mode_features_and_bfloat16_match_xla():
  x = _normal(1, (2, 33, 33, 3))

  @functools.partial(jax.jit, static_argnums=0)
  def outputs(impl, variables, x):
    model = NETWORKS["basic"](conv_impl=impl)
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=["batch_stats"])
    features = model.apply(variables, x, features_only=True)
    bf16 = model.clone(dtype=jnp.bfloat16).apply(variables, x)
    return logits, updates["batch_stats"], features, bf16

  (*xla, xla_bf16), (*fast, fast_bf16) = [
      outputs(impl, _variables("basic"), x) for impl in ("xla", "fast")]
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


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_fast_initialises_the_same_values(arch):
  # One program for both: the forward pass, where alone they differ, does
  # not reach the variables. The same program draws the same values, for
  # every key (not run: compiling flax's random initialisation would take
  # ~10-20 s on a CPU).
  programs = [jax.jit(resnet.get_architecture(arch)(conv_impl=impl).init).lower(
      jax.random.key(3), jnp.zeros((1, 16, 16, 3))).as_text()
              for impl in ("xla", "fast")]
  assert programs[0] == programs[1]
  assert "result['params']['conv1']['kernel']" in programs[0]


def test_auto_is_fast_on_cpu_and_xla_elsewhere(monkeypatch):
  assert resnet.ResNet18().conv_impl == "auto"
  model = NETWORKS["basic"]()
  assert model.conv_impl == "auto"
  x = jnp.zeros((1, 32, 32, 3))
  variables = _variables("basic")
  jaxpr = {impl: str(jax.make_jaxpr(
      NETWORKS["basic"](conv_impl=impl).apply)(variables, x))
           for impl in ("auto", "fast", "xla")}
  expected = "fast" if jax.default_backend() == "cpu" else "xla"
  assert jaxpr["auto"] == jaxpr[expected]
  assert jaxpr["fast"] != jaxpr["xla"]
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert str(jax.make_jaxpr(model.apply)(variables, x)) == jaxpr["xla"]
  with pytest.raises(ValueError, match="conv_impl"):
    resnet.ResNet18(conv_impl="cudnn").init(jax.random.key(0), x)


@jax.jit
def _stem_derivatives(x, kernel, cotangent, dx):
  """(got, expected) pairs: space-to-depth's forward, the stem's
  derivatives (reverse, forward, the frozen kernel's alone) and the plain
  convolution's."""
  plain = functools.partial(resnet._plain_conv, stride=2, padding=3)
  stem = functools.partial(resnet._stem_conv, stride=2, padding=3)
  s2d = functools.partial(resnet._space_to_depth_conv, stride=2, padding=3)
  expected = jax.vjp(plain, x, kernel)[1](cotangent)
  got = jax.vjp(stem, x, kernel)[1](cotangent)
  return [
      (s2d(x, kernel), plain(x, kernel)),
      (got[0], expected[0]),
      (got[1], expected[1]),
      # Forward mode through the custom JVP; the frozen kernel alone, too.
      (jax.jvp(lambda x: stem(x, kernel), (x,), (dx,))[1],
       jax.jvp(lambda x: plain(x, kernel), (x,), (dx,))[1]),
      (jax.grad(lambda k: jnp.vdot(stem(x, k), cotangent))(kernel),
       expected[1]),
  ]


@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (1, 10, 13, 3), (1, 32, 33, 3)])
def test_stem_space_to_depth_is_exact_with_both_derivatives(shape):
  x = _normal(0, shape)
  kernel = _normal(1, (7, 7, 3, 8), 1 / 12)
  out = (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, 8)
  cotangent = _normal(2, out)
  pairs = _stem_derivatives(x, kernel, cotangent, _normal(3, shape))
  assert pairs[0][1].shape == out
  # The forward to 1e-5, the derivatives to 1e-4.
  for (got, expected), atol in zip(pairs, [1e-5] + [1e-4] * 4):
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


@functools.partial(jax.jit, static_argnums=3)
def _matmul_and_im2col(x, k1, k3, stride):
  return [(resnet._matmul_conv(x, k1, stride),
           resnet._plain_conv(x, k1, stride, 0)),
          (resnet._im2col_conv(x, k3, stride, 1),
           resnet._plain_conv(x, k3, stride, 1))]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_matmul_and_im2col_convs_are_exact(stride, size):
  x = _normal(size, (2, size, size, 16))
  k1 = _normal(1, (1, 1, 16, 8), 1 / 4)
  k3 = _normal(3, (3, 3, 16, 8), 1 / 12)
  for got, expected in _matmul_and_im2col(x, k1, k3, stride):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@jax.jit
def _max_pools_and_gradients(x, cotangent):
  reference = functools.partial(nn.max_pool, window_shape=(3, 3),
                                strides=(2, 2), padding=((1, 1), (1, 1)))
  y, vjp = jax.vjp(reference, x)
  fast_y, fast_vjp = jax.vjp(resnet._max_pool_3x3_s2, x)
  return fast_y, y, fast_vjp(cotangent)[0], vjp(cotangent)[0]


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 9, 12, 4), (1, 1, 1, 2)])
def test_max_pool_matches_reduce_window_exactly_with_ties(shape):
  # Coarse values make many ties: the gradient must go to the first maximum
  # in each window, as PyTorch's and reduce_window's does.
  x = np.round(2 * _normal(0, shape)) / 2
  out = (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3])
  fast_y, y, fast_grad, grad = _max_pools_and_gradients(x, _normal(1, out))
  assert y.shape == out
  np.testing.assert_array_equal(fast_y, y)
  # Same routing; only the order of summing overlapping windows may differ.
  np.testing.assert_allclose(fast_grad, grad, rtol=0, atol=1e-6)
