"""Flax ResNet-18/34/50 that compute what torchvision's do.

The parameter tree mirrors torchvision's module layout, so a checkpoint
converts key by key (`convert/`): torchvision's `layer1.0.downsample.1.weight`
is `params['layer1']['0']['downsample']['1']['scale']` here. Activations are
NHWC (XLA's preferred layout); kernels are HWIO.

BatchNorm is frozen by default (`train=False` uses the running statistics, as
PyTorch's `eval()`), epsilon 1e-5 as PyTorch. Parameters are always float32;
`dtype` sets the compute precision (float32, or bfloat16 on GPU/TPU).
"""

import functools
from typing import Any, Sequence, Type

import flax.linen as nn
import jax.numpy as jnp

# torchvision initialises convolutions with kaiming_normal(fan_out, relu).
# Only the parameter count and layout matter for converted networks, but an
# untrained network should look like torchvision's too.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, stride, padding, dtype, name):
  # Explicit symmetric padding: 'SAME' pads asymmetrically for stride 2 on
  # even sizes and would not match PyTorch.
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      use_bias=False,
      kernel_init=_conv_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


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

  @nn.compact
  def __call__(self, x, *, train=False):
    x = _conv(self.features, 1, self.stride, 0, self.dtype, "0")(x)
    return _norm(train, self.dtype, "1")(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""

  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train=False):
    identity = x
    y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, 1, 1, self.dtype, "conv2")(y)
    y = _norm(train, self.dtype, "bn2")(y)
    if self.downsample:
      identity = Downsample(self.planes, self.stride, self.dtype,
                            name="downsample")(x, train=train)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, torchvision's "v1.5") -> 1x1 (ResNet-50)."""

  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train=False):
    identity = x
    y = _conv(self.planes, 1, 1, 0, self.dtype, "conv1")(x)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv2")(y)
    y = nn.relu(_norm(train, self.dtype, "bn2")(y))
    y = _conv(self.planes * 4, 1, 1, 0, self.dtype, "conv3")(y)
    y = _norm(train, self.dtype, "bn3")(y)
    if self.downsample:
      identity = Downsample(self.planes * 4, self.stride, self.dtype,
                            name="downsample")(x, train=train)
    return nn.relu(y + identity)


class Stage(nn.Module):
  """torchvision's `layerN`: blocks named '0', '1', ..."""

  block: Type[nn.Module]
  planes: int
  num_blocks: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    for i in range(self.num_blocks):
      stride = self.stride if i == 0 else 1
      needs_projection = (
          stride != 1 or x.shape[-1] != self.planes * self.block.expansion)
      x = self.block(self.planes, stride, needs_projection, self.dtype,
                     name=str(i))(x, train=train)
    return x


class ResNet(nn.Module):
  """ImageNet ResNet with torchvision's parameter layout.

  Attributes:
    block: `BasicBlock` or `Bottleneck`.
    stage_sizes: number of blocks in `layer1`..`layer4`.
    num_classes: outputs of `fc`.
    dtype: compute dtype; parameters stay float32.
  """

  block: Type[nn.Module]
  stage_sizes: Sequence[int]
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    """Width of the pooled features that feed `fc` (2048 for ResNet-50)."""
    return 512 * self.block.expansion

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
    x = _conv(64, 7, 2, 3, self.dtype, "conv1")(x)
    x = nn.relu(_norm(train, self.dtype, "bn1")(x))
    # Flax pads max-pooling with -inf, like PyTorch.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (planes, size) in enumerate(zip((64, 128, 256, 512),
                                           self.stage_sizes)):
      x = Stage(self.block, planes, size, 1 if i == 0 else 2, self.dtype,
                name=f"layer{i + 1}")(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    if features_only:
      return x.astype(jnp.float32)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 name="fc")(x)
    # Losses and calibration want float32 logits whatever the compute dtype.
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3))
ResNet50 = functools.partial(ResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3))

ARCHITECTURES = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
}


def get_architecture(name: str):
  """Returns the ResNet constructor registered under `name`."""
  try:
    return ARCHITECTURES[name]
  except KeyError:
    raise ValueError(
        f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}"
    ) from None
