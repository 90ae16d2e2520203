"""Flax ResNet-18/34/50 that compute what torchvision's do.

The parameter tree mirrors torchvision's module layout, so a checkpoint
converts key by key (`convert/`): torchvision's `layer1.0.downsample.1.weight`
is `params['layer1']['0']['downsample']['1']['scale']` here. Activations are
NHWC (XLA's preferred layout); kernels are HWIO.

BatchNorm is frozen by default (`train=False` uses the running statistics, as
PyTorch's `eval()`), epsilon 1e-5 as PyTorch. Parameters are always float32;
`dtype` sets the compute precision (float32, or bfloat16 on GPU/TPU).

`conv_impl` changes how convolutions and the max-pool are computed, never
what, nor the parameters: "xla" runs plain `conv_general_dilated` and
`reduce_window`; "fast" runs exact reformulations that XLA's CPU backend
executes faster in the hot path, forward + gradient with respect to the
input (ResNet-50, batch 16-32: 1.5-1.8x faster); "auto" picks "fast" on CPU
and "xla" elsewhere, when traced.
"""

import functools
from typing import Any, Sequence, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

# torchvision initialises convolutions with kaiming_normal(fan_out, relu).
# Only the parameter count and layout matter for converted networks, but an
# untrained network should look like torchvision's too.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_NHWC = ("NHWC", "HWIO", "NHWC")


def _resolve(conv_impl):
  """'auto' -> 'fast' on CPU, 'xla' elsewhere (decided at trace time)."""
  if conv_impl == "auto":
    # The reformulations were measured on XLA's CPU backend only; cuDNN and
    # TPUs are tuned for plain convolutions, which they keep.
    return "fast" if jax.default_backend() == "cpu" else "xla"
  if conv_impl not in ("xla", "fast"):
    raise ValueError(f"conv_impl must be 'auto', 'xla' or 'fast', "
                     f"not {conv_impl!r}")
  return conv_impl


def _plain_conv(x, kernel, stride, padding):
  # Explicit symmetric padding: 'SAME' pads asymmetrically for stride 2 on
  # even sizes and would not match PyTorch.
  return lax.conv_general_dilated(x, kernel, (stride, stride),
                                  [(padding, padding)] * 2,
                                  dimension_numbers=_NHWC)


def _matmul_conv(x, kernel, stride):
  """A 1x1 convolution without padding as a product over channels.

  XLA's CPU backend runs the input gradient of a matmul up to ~3x faster
  than that of the same convolution, the strided one included.
  """
  x = x[:, ::stride, ::stride]  # a strided 1x1 conv reads every stride-th px
  return lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))


def _im2col_conv(x, kernel, stride, padding):
  """A convolution as one matmul over (window offset, channel) patches.

  The patches are k*k times the input, so this pays only for small images
  with many channels: on CPU, ResNet's 512-channel 3x3s at 7x7 run ~15-30 %
  faster both ways, while 256 channels at 14x14 already run slower.
  """
  k, _, cin, cout = kernel.shape
  out_h = (x.shape[1] + 2 * padding - k) // stride + 1
  out_w = (x.shape[2] + 2 * padding - k) // stride + 1
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  patches = jnp.concatenate(
      [x[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
       for i in range(k) for j in range(k)], axis=-1)
  return lax.dot_general(patches, kernel.reshape(k * k * cin, cout),
                         (((3,), (0,)), ((), ())))


def _space_to_depth_conv(x, kernel, stride, padding):
  """A strided convolution as a VALID stride-1 one on stride x stride blocks.

  The padded input is cut into whole blocks that become channels (rows and
  columns no output reads are cropped or zero-padded), and the kernel,
  zero-padded to whole blocks, is rearranged to match: exact at any size.
  """
  k, _, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  blocks = -(-k // stride)
  hp = stride * ((h + 2 * padding - k) // stride + blocks)
  wp = stride * ((w + 2 * padding - k) // stride + blocks)
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (padding, hp - h - padding, 0),
               (padding, wp - w - padding, 0), (0, 0, 0)))
  x = x.reshape(n, hp // stride, stride, wp // stride, stride, cin)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // stride, wp // stride, -1)
  size = blocks * stride
  kernel = jnp.pad(kernel, ((0, size - k), (0, size - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(blocks, stride, blocks, stride, cin, cout)
  kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(blocks, blocks, -1, cout)
  return _plain_conv(x, kernel, 1, 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _stem_conv(x, kernel, stride, padding):
  """The 7x7/2 stem: plain forward, derivatives through space-to-depth.

  On CPU the plain forward is ~2-3x faster than the space-to-depth one,
  whose input gradient (12 output channels, not 3) is up to ~1.7x faster.
  """
  return _plain_conv(x, kernel, stride, padding)


@functools.partial(_stem_conv.defjvp, symbolic_zeros=True)
def _stem_conv_jvp(stride, padding, primals, tangents):
  (x, kernel), (dx, dkernel) = primals, tangents
  y = _plain_conv(x, kernel, stride, padding)
  dy = jnp.zeros_like(y)
  # Symbolic zeros: no work for the frozen kernel's (absent) tangent.
  if not isinstance(dx, SymbolicZero):
    dy += _space_to_depth_conv(dx, kernel, stride, padding)
  if not isinstance(dkernel, SymbolicZero):
    dy += _space_to_depth_conv(x, dkernel, stride, padding)
  return y, dy


def _pool_views(x, axis):
  """The 3 strided views a 3-wide, stride-2, -inf-padded max-pool reads."""
  out = (x.shape[axis] + 1) // 2
  padding = [(0, 0)] * x.ndim
  padding[axis] = (1, 1)
  x = jnp.pad(x, padding, constant_values=-jnp.inf)
  return [lax.slice_in_dim(x, i, i + 2 * out - 1, 2, axis) for i in range(3)]


def _first_max(views, tangents):
  """The maximum of `views` and the tangent of the first view holding it.

  A later view takes over only if strictly larger (or NaN, which PyTorch
  propagates): PyTorch's and reduce_window's pick among ties, whose gradient
  jnp.maximum's derivative would split.
  """
  y, dy = views[0], tangents[0]
  for view, tangent in zip(views[1:], tangents[1:]):
    take = (view > y) | jnp.isnan(view)
    y, dy = jnp.where(take, view, y), jnp.where(take, tangent, dy)
  return y, dy


@jax.custom_jvp
def _max_pool_3x3_s2(x):
  """PyTorch's MaxPool2d(3, 2, padding=1), as max over columns, then rows.

  Its gradient runs ~3x faster on CPU than reduce_window's (XLA's
  select_and_scatter). Separable, yet the same pick among ties: the first
  row holding the maximum, and its first column, is the first maximum in
  row-major window order.
  """
  x = functools.reduce(jnp.maximum, _pool_views(x, 2))
  return functools.reduce(jnp.maximum, _pool_views(x, 1))


@_max_pool_3x3_s2.defjvp
def _max_pool_3x3_s2_jvp(primals, tangents):
  y, dy = _first_max(_pool_views(primals[0], 2), _pool_views(tangents[0], 2))
  return _first_max(_pool_views(y, 1), _pool_views(dy, 1))


class Conv(nn.Module):
  """A bias-free square convolution with symmetric (PyTorch) padding.

  Its parameter is `nn.Conv`'s: `kernel`, HWIO, float32, same initialiser.
  `conv_impl` only picks the formulation (see the module docstring).
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    k, stride, padding = self.kernel_size, self.stride, self.padding
    kernel = self.param("kernel", _conv_init,
                        (k, k, x.shape[-1], self.features), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if _resolve(self.conv_impl) == "xla":
      return _plain_conv(x, kernel, stride, padding)
    if k == 1 and padding == 0:
      return _matmul_conv(x, kernel, stride)
    if k > 2 * stride > 2:  # the 7x7/2 stem
      return _stem_conv(x, kernel, stride, padding)
    if x.shape[-1] >= 512:  # layer4's 3x3s
      return _im2col_conv(x, kernel, stride, padding)
    return _plain_conv(x, kernel, stride, padding)  # fastest for the rest


def _norm(train, dtype, name, zero_init=False):
  # PyTorch's momentum 0.1 is flax's 0.9 (flax weights the old statistic).
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


class Downsample(nn.Module):
  """torchvision's `downsample` Sequential: 1x1 conv ('0') then BN ('1')."""

  features: int
  stride: int
  dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, *, train=False):
    x = Conv(self.features, 1, self.stride, 0, self.dtype, self.conv_impl,
             name="0")(x)
    return _norm(train, self.dtype, "1")(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""

  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train=False):
    conv = functools.partial(Conv, dtype=self.dtype, conv_impl=self.conv_impl)
    identity = x
    y = conv(self.planes, 3, self.stride, 1, name="conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = conv(self.planes, 3, 1, 1, name="conv2")(y)
    y = _norm(train, self.dtype, "bn2")(y)
    if self.downsample:
      identity = Downsample(self.planes, self.stride, self.dtype,
                            self.conv_impl, name="downsample")(x, train=train)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, torchvision's "v1.5") -> 1x1 (ResNet-50)."""

  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train=False):
    conv = functools.partial(Conv, dtype=self.dtype, conv_impl=self.conv_impl)
    identity = x
    y = conv(self.planes, 1, 1, 0, name="conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = conv(self.planes, 3, self.stride, 1, name="conv2")(y)
    y = nn.relu(_norm(train, self.dtype, "bn2")(y))
    y = conv(self.planes * 4, 1, 1, 0, name="conv3")(y)
    y = _norm(train, self.dtype, "bn3")(y)
    if self.downsample:
      identity = Downsample(self.planes * 4, self.stride, self.dtype,
                            self.conv_impl, name="downsample")(x, train=train)
    return nn.relu(y + identity)


class Stage(nn.Module):
  """torchvision's `layerN`: blocks named '0', '1', ..."""

  block: Type[nn.Module]
  planes: int
  num_blocks: int
  stride: int
  dtype: Any = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, *, train=False):
    for i in range(self.num_blocks):
      stride = self.stride if i == 0 else 1
      needs_projection = (
          stride != 1 or x.shape[-1] != self.planes * self.block.expansion)
      x = self.block(self.planes, stride, needs_projection, self.dtype,
                     self.conv_impl, name=str(i))(x, train=train)
    return x


class ResNet(nn.Module):
  """ImageNet ResNet with torchvision's parameter layout.

  Attributes:
    block: `BasicBlock` or `Bottleneck`.
    stage_sizes: number of blocks in `layer1`..`layer4`.
    num_classes: outputs of `fc`.
    dtype: compute dtype; parameters stay float32.
    conv_impl: "auto", "xla" or "fast": how convolutions and the max-pool
      are computed (same numbers, same parameters; see the module docstring).
    widths: planes of `layer1`..`layer4`; the stem has `widths[0]` channels
      (torchvision's 64, 128, 256, 512; smaller for `resnet_mini`).
  """

  block: Type[nn.Module]
  stage_sizes: Sequence[int]
  num_classes: int = 1000
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  widths: Sequence[int] = (64, 128, 256, 512)

  @property
  def num_features(self) -> int:
    """Width of the pooled features that feed `fc` (2048 for ResNet-50)."""
    return self.widths[-1] * self.block.expansion

  @nn.compact
  def __call__(self, x, *, train=False, features_only=False):
    """Runs the network.

    Args:
      x: float images (N, H, W, 3), ImageNet-normalised.
      train: use batch statistics in BatchNorm (never needed here: the
        backbone is frozen) instead of the running ones.
      features_only: return the pooled features (N, num_features) instead
        of the logits; `fc` is then not used.

    Returns:
      float32 logits (N, num_classes), or the pooled features.
    """
    x = jnp.asarray(x, self.dtype)
    x = Conv(self.widths[0], 7, 2, 3, self.dtype, self.conv_impl,
             name="conv1")(x)
    x = nn.relu(_norm(train, self.dtype, "bn1")(x))
    if _resolve(self.conv_impl) == "fast":
      x = _max_pool_3x3_s2(x)
    else:  # Flax pads max-pooling with -inf, like PyTorch.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (planes, size) in enumerate(zip(self.widths, self.stage_sizes)):
      x = Stage(self.block, planes, size, 1 if i == 0 else 2, self.dtype,
                self.conv_impl, name=f"layer{i + 1}")(x, train=train)
    # Pooling and the head in float32 whatever the compute dtype: a bf16
    # mean of 49 activations and bf16 logits (steps of 0.0625 near 10)
    # would round what losses, label mapping and calibration read, and
    # linear probing's features (cached or not) are float32 either way.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if features_only:
      return x
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=jnp.float32, name="fc")(x)


ResNet18 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3))
ResNet50 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3))
# Not a torchvision network: one BasicBlock per stage at a quarter of
# ResNet-18's width (~0.3 M parameters), same layout and names, for the
# offline demo's source network trained from scratch (`reprog_jax.demo`).
ResNetMini = functools.partial(ResNet, block=BasicBlock,
                               stage_sizes=(1, 1, 1, 1),
                               widths=(16, 32, 64, 128))

ARCHITECTURES = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet_mini": ResNetMini,
}
# The architectures torchvision has too (what `convert torch` can read).
TORCHVISION_ARCHITECTURES = ("resnet18", "resnet34", "resnet50")


def get_architecture(name: str):
  """Returns the ResNet constructor registered under `name`."""
  try:
    return ARCHITECTURES[name]
  except KeyError:
    raise ValueError(
        f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}"
    ) from None
