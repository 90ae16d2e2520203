"""Frozen source networks: the directory format `convert` writes, and loading.

A network directory holds

  checkpoint/  an Orbax checkpoint of {'params', 'batch_stats', 'masks'}
               (masks only on the prunable kernels, see `masks.py`);
  meta.json    what it is: architecture, source files with sha256, whether
               it is a lottery ticket, and its sparsity report.

    from reprog_jax import networks
    net = networks.load("runs/resnet50")
    logits = net.logits(x)        # x: float32 NHWC, ImageNet-normalised
    feats = net.features(x)       # (N, 2048) pooled features for LP
    print(net.sparsity()["remaining_percent"])

A `Network` is one pytree (the module static, the frozen `params`,
`batch_stats` and `masks` as leaves), kept apart from anything trained:
training code passes it whole to its jitted steps.
Run `python -m reprog_jax.networks DIR [--image PATH]` for a summary and a
prediction.
"""

import datetime
import functools
import json
import os
import shutil
import tempfile
from importlib import resources
from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from reprog_jax import masks as masks_lib
from reprog_jax import prompts
from reprog_jax import resnet

FORMAT = "reprog-jax-network"
FORMAT_VERSION = 1
META_FILE = "meta.json"
CHECKPOINT_DIR = "checkpoint"


class NetworkDirError(ValueError):
  """A directory that is not a valid `convert` output."""


def imagenet_classes() -> list[str]:
  """The 1000 ImageNet class names, in torchvision's index order."""
  text = resources.files("reprog_jax").joinpath("imagenet_classes.txt")
  return text.read_text().splitlines()


def abstract_variables(arch: str, num_classes: int = 1000):
  """Shapes and dtypes of `{'params', 'batch_stats'}` for `arch`, no compute."""
  model = resnet.get_architecture(arch)(num_classes=num_classes)
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


@flax.struct.dataclass
class Network:
  """A frozen network (dense or lottery ticket) as one pytree.

  The module is static (part of the jit cache key); the three trees are
  device-resident leaves, passed whole to every jitted step, so one
  compiled step serves any ticket of the same architecture and nothing is
  baked into a program as a constant.

  Attributes:
    model: the flax `ResNet` (static); its `dtype` is the compute dtype.
    params, batch_stats: the network's trees.
    masks: the mask tree (see `masks.py`): 0/1 on the prunable kernels,
      `None` elsewhere; all ones for a dense network.
    meta_json: the directory's `meta.json`, as text (static and hashable);
      read it through `meta`.
  """

  model: Any = flax.struct.field(pytree_node=False)
  params: Any
  batch_stats: Any
  masks: Any
  meta_json: str = flax.struct.field(pytree_node=False, default="{}")

  @property
  def meta(self) -> dict:
    """The network's description (`meta.json`)."""
    return json.loads(self.meta_json)

  @property
  def arch(self) -> str:
    return self.meta["arch"]

  def with_dtype(self, dtype) -> "Network":
    """The same network computing in `dtype` (parameters stay float32)."""
    if jnp.dtype(self.model.dtype) == jnp.dtype(dtype):
      return self
    return self.replace(model=self.model.clone(dtype=dtype))

  def logits(self, x) -> jax.Array:
    """(N, num_classes) float32 logits of ImageNet-normalised NHWC `x`."""
    return forward(self, jnp.asarray(x, jnp.float32))

  def features(self, x) -> jax.Array:
    """(N, num_features) pooled features, the input of a linear probe."""
    return forward(self, jnp.asarray(x, jnp.float32), features_only=True)

  def sparsity(self) -> dict:
    """The sparsity report (see `masks.sparsity`)."""
    return masks_lib.sparsity(self.params, self.masks)


@functools.partial(jax.jit, static_argnames=("features_only",))
def forward(network: Network, x, features_only=False):
  """The frozen forward pass, masks applied, as one jitted function.

  Args:
    network: the `Network` (module static, trees as arguments).
    x: float (N, H, W, 3), ImageNet-normalised.
    features_only: return pooled features instead of logits.
  """
  variables = {"params": masks_lib.apply(network.params, network.masks),
               "batch_stats": network.batch_stats}
  return network.model.apply(variables, x, features_only=features_only)


def make_network(model, params, batch_stats, masks, meta: dict) -> Network:
  """Puts the trees on the default device and wraps them as a `Network`."""
  return Network(model=model, params=jax.device_put(params),
                 batch_stats=jax.device_put(batch_stats),
                 masks=jax.device_put(masks),
                 meta_json=json.dumps(meta, sort_keys=True))


def random_network(arch: str, seed: int = 0, dtype=jnp.float32) -> Network:
  """A randomly initialised dense network, for smoke runs without a file.

  Flax's initialisation, identity BatchNorm statistics; its predictions mean
  nothing. Its `meta` says so (`sources.weights.random_init`).
  """
  model = resnet.get_architecture(arch)(dtype=dtype)
  variables = jax.jit(model.init)(jax.random.key(seed),
                                  jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
          "num_classes": 1000, "dense": True, "ticket": None,
          "sources": {"weights": {"random_init": True, "seed": seed,
                                  "initialiser": "flax"}}}
  return make_network(model, params, variables["batch_stats"],
                      masks_lib.dense(params), meta)


def save(directory, *, arch, params, batch_stats, masks, meta,
         overwrite=False) -> None:
  """Writes a network directory atomically.

  Everything is written to a temporary sibling directory that is renamed
  into place at the end, so a failure leaves no partial output; with
  `overwrite`, an existing directory is replaced only once the new one is
  complete.
  """
  import orbax.checkpoint as ocp  # Heavy; only writers and loaders need it.

  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f"{directory} exists; pass --force to replace it")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-",
                         dir=parent)
  try:
    tree = {"params": params, "batch_stats": batch_stats,
            "masks": masks_lib.to_storable(masks)}
    tree = jax.tree.map(np.asarray, tree)
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, CHECKPOINT_DIR), tree)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
            "created": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), **meta}
    with open(os.path.join(tmp, META_FILE), "w") as f:
      json.dump(meta, f, indent=2)
      f.write("\n")
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-",
                             dir=parent)
      os.rename(directory, os.path.join(old, "x"))
      os.rename(tmp, directory)
      shutil.rmtree(old)
    else:
      os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_meta(directory) -> dict:
  """Reads and checks `meta.json`; raises `NetworkDirError` if not ours."""
  path = os.path.join(directory, META_FILE)
  if not os.path.isdir(directory):
    raise NetworkDirError(f"{directory}: no such network directory "
                          f"(make one with `python -m convert torch ...`)")
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise NetworkDirError(
        f"{directory}: not a `convert` output ({META_FILE}: "
        f"{type(e).__name__}); make one with `python -m convert torch ...`"
    ) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise NetworkDirError(f"{path}: not a reprog-jax network description")
  if meta.get("format_version") != FORMAT_VERSION:
    raise NetworkDirError(
        f"{path}: format version {meta.get('format_version')} is not "
        f"{FORMAT_VERSION}; re-run `convert` with this version")
  return meta


def load(directory, dtype=jnp.float32) -> Network:
  """Loads a `convert` output directory onto the default device.

  Args:
    directory: the directory `convert` wrote.
    dtype: compute dtype (parameters stay float32).

  Raises:
    NetworkDirError: the directory is missing, not ours, or inconsistent.
  """
  import orbax.checkpoint as ocp

  meta = read_meta(directory)
  arch, num_classes = meta["arch"], meta.get("num_classes", 1000)
  expected = abstract_variables(arch, num_classes)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.restore(
          os.path.abspath(os.path.join(directory, CHECKPOINT_DIR)))
  except Exception as e:  # Orbax raises many types; all mean "unreadable".
    raise NetworkDirError(
        f"{directory}/{CHECKPOINT_DIR}: unreadable checkpoint "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
  for collection in ("params", "batch_stats"):
    _check_tree(directory, collection, tree.get(collection),
                expected[collection])
  params, batch_stats = tree["params"], tree["batch_stats"]
  masks = masks_lib.from_storable(tree.get("masks", {}), params)
  model = resnet.get_architecture(arch)(num_classes=num_classes, dtype=dtype)
  return make_network(model, params, batch_stats, masks, meta)


def _check_tree(directory, collection, got, expected):
  if got is None:
    raise NetworkDirError(f"{directory}: checkpoint has no '{collection}'")
  got = flax.traverse_util.flatten_dict(got)
  expected = flax.traverse_util.flatten_dict(expected)
  for path in sorted(set(got) ^ set(expected)):
    where = "missing" if path in expected else "unexpected"
    raise NetworkDirError(
        f"{directory}: {where} {collection} leaf {'/'.join(path)}")
  for path, leaf in expected.items():
    if tuple(got[path].shape) != tuple(leaf.shape):
      raise NetworkDirError(
          f"{directory}: {collection} leaf {'/'.join(path)} has shape "
          f"{tuple(got[path].shape)}, expected {tuple(leaf.shape)}")


def _demo_image(path, size=224) -> tuple[np.ndarray, str]:
  """An image as a (1, size, size, 3) [0, 1] array, and what it is."""
  if path is None:
    # A fixed synthetic picture, so the command needs no file or network.
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    image = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * np.pi * xx * yy)], -1)
    return image[None].astype(np.float32), "a synthetic test pattern"
  from PIL import Image  # Only this command reads image files.
  # torchvision's ImageNet evaluation transform: resize the short side to
  # 256 (bilinear), centre-crop 224.
  with Image.open(path) as img:
    img = img.convert("RGB")
    scale = 256 / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)),
                     Image.BILINEAR)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return (np.asarray(img, np.float32) / 255.0)[None], path


def main(argv=None) -> int:
  """`python -m reprog_jax.networks DIR [--image PATH]`."""
  import argparse
  import sys

  parser = argparse.ArgumentParser(
      prog="python -m reprog_jax.networks",
      description="Summarise a converted network and show a prediction.")
  parser.add_argument("directory", help="a directory written by `convert`")
  parser.add_argument("--image", help="an image file (default: a synthetic "
                      "test pattern)")
  parser.add_argument("--per-layer", action="store_true",
                      help="print the per-layer sparsity table")
  args = parser.parse_args(argv)
  try:
    net = load(args.directory)
    image, what = _demo_image(args.image)
  except (NetworkDirError, OSError) as e:
    print(f"networks: error: {e}", file=sys.stderr)
    return 1
  meta = net.meta
  weights = meta["sources"]["weights"]
  print(f"{args.directory}: {net.arch}, {meta['num_classes']} classes, "
        f"{'dense' if meta['dense'] else 'lottery ticket'}")
  if weights.get("random_init"):
    print("  weights: RANDOMLY INITIALISED (smoke-run network; predictions "
          "mean nothing)")
  else:
    print(f"  weights: {weights['path']} (sha256 {weights['sha256'][:12]}...)")
  if "mask" in meta["sources"]:
    print(f"  mask:    {meta['sources']['mask']['path']}")
  print(masks_lib.format_report(net.sparsity(), per_layer=args.per_layer))
  probs = np.asarray(jax.nn.softmax(net.logits(prompts.imagenet_normalize(image))))[0]
  names = (imagenet_classes() if meta["num_classes"] == 1000
           else [str(i) for i in range(meta["num_classes"])])
  print(f"top-5 prediction for {what}:")
  for i in np.argsort(-probs)[:5]:
    print(f"  {probs[i]:7.2%}  {i:4d} {names[i]}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
