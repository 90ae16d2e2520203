"""Frozen source networks: the directory format `convert` writes, and loading.

A network directory holds

  checkpoint/  an Orbax checkpoint of {'params', 'batch_stats', 'masks'}
               (masks only on the prunable kernels, see `masks.py`);
  meta.json    what it is: architecture, source files with sha256, whether
               it is a lottery ticket, its sparsity report, and the sha256
               and size of every checkpoint file (`files`).

`load` checks every checkpoint file against `files` before reading it, so a
damaged copy is refused rather than silently loaded; set
`REPROG_JAX_VERIFY_NETWORKS=0` (or pass `verify=False`) to skip the hashes
(sizes are still checked).

    from reprog_jax.model import networks
    net = networks.load("runs/resnet50")
    logits = net.logits(x)        # x: float32 NHWC, ImageNet-normalised
    feats = net.features(x)       # (N, 2048) pooled features for LP
    print(net.sparsity()["remaining_percent"])

A `Network` is one pytree (the module static, the frozen `params`,
`batch_stats` and `masks` as leaves), kept apart from anything trained:
training code passes it whole to its jitted steps.
Run `python -m reprog_jax.model.networks DIR [--image PATH]` for a summary and a
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

from reprog_jax import errors
from reprog_jax import fileio as integrity
from reprog_jax.model import masks as masks_lib
from reprog_jax.model import prompts
from reprog_jax.model import resnet
from reprog_jax.fileio import file_sha256

FORMAT = "reprog-jax-network"
FORMAT_VERSION = 1
META_FILE = "meta.json"
CHECKPOINT_DIR = "checkpoint"
# Set to 0 to skip hashing a network's checkpoint files on `load`.
VERIFY_ENV = "REPROG_JAX_VERIFY_NETWORKS"
RECONVERT = "re-run `python -m convert ... --force` to write it again"


class NetworkDirError(errors.UserError, ValueError):
  """A directory that is not a valid `convert` output."""


def imagenet_classes() -> list[str]:
  """The 1000 ImageNet class names, in torchvision's index order."""
  text = resources.files("reprog_jax.model").joinpath("imagenet_classes.txt")
  return text.read_text().splitlines()


def class_names(network) -> list[str]:
  """A network's output classes, in order: `meta['class_names']` if it
  names them, ImageNet's for 1000 outputs, else '0', '1', ..."""
  names = network.meta.get("class_names")
  if names:
    return list(names)
  num_classes = network.model.num_classes
  if num_classes == 1000:
    return imagenet_classes()
  return [str(i) for i in range(num_classes)]


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


def check_replaceable(directory) -> None:
  """Raises `NetworkDirError` unless `directory` is absent or a network
  directory (its `meta.json` has our `format`): `--force` replaces only
  what `save` wrote, never a workdir, a plain file or anything else."""
  if not os.path.lexists(directory):
    return
  if os.path.islink(directory) or not os.path.isdir(directory):
    kind = ("a symbolic link" if os.path.islink(directory) else
            "a file" if os.path.isfile(directory) else "not a directory")
    raise NetworkDirError(
        f"{directory}: exists and is {kind}, not a network directory; "
        f"--force replaces only a `convert` output: choose another --out")
  try:
    with open(os.path.join(directory, META_FILE)) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    meta = None
  # The marker alone, whatever the version: an older `convert` output may
  # be replaced by a current one.
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise NetworkDirError(
        f"{directory}: exists and is not a network directory (no {META_FILE} "
        f"written by `convert`); --force replaces only a `convert` output: "
        f"choose another --out or remove it yourself")


def save(directory, *, arch, params, batch_stats, masks, meta,
         overwrite=False) -> None:
  """Writes a network directory atomically.

  Everything is written to a temporary sibling directory that is renamed
  into place at the end, so a failure leaves no partial output; with
  `overwrite`, an existing network directory (and nothing else, see
  `check_replaceable`) is replaced only once the new one is complete.
  Permissions follow the umask, like any file the user writes.
  """
  import orbax.checkpoint as ocp  # Heavy; only writers and loaders need it.

  directory = os.path.abspath(directory)
  if os.path.lexists(directory):
    if not overwrite:
      raise FileExistsError(f"{directory} exists; pass --force to replace it")
    check_replaceable(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-",
                         dir=parent)
  try:
    # mkdtemp makes it private (0700); a network is for sharing.
    integrity.share(tmp)
    tree = {"params": params, "batch_stats": batch_stats,
            "masks": masks_lib.to_storable(masks)}
    tree = jax.tree.map(np.asarray, tree)
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, CHECKPOINT_DIR), tree)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
            "created": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), **meta,
            "files": integrity.file_records(tmp, CHECKPOINT_DIR)}
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
  except FileNotFoundError:
    raise NetworkDirError(
        f"{directory}: not a `convert` output (no {META_FILE}); make one "
        f"with `python -m convert torch ...`") from None
  except ValueError as e:  # Not JSON, or not UTF-8.
    where = (f" at line {e.lineno} column {e.colno}"
             if isinstance(e, json.JSONDecodeError) else "")
    raise NetworkDirError(
        f"{path}: not a `convert` output (not valid JSON{where}); "
        f"{RECONVERT}") from None
  except OSError as e:
    raise NetworkDirError(f"{path}: unreadable ({e.strerror})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise NetworkDirError(f"{path}: not a reprog-jax network description")
  if meta.get("format_version") != FORMAT_VERSION:
    raise NetworkDirError(
        f"{path}: format version {meta.get('format_version')} is not "
        f"{FORMAT_VERSION}; re-run `convert` with this version")
  arch = meta.get("arch")
  if arch not in resnet.ARCHITECTURES:
    raise NetworkDirError(
        f"{path}: 'arch' is {arch!r}, not one of "
        f"{', '.join(sorted(resnet.ARCHITECTURES))}; {RECONVERT}")
  num_classes = meta.get("num_classes", 1000)
  if (not isinstance(num_classes, int) or isinstance(num_classes, bool)
      or num_classes < 1):
    raise NetworkDirError(f"{path}: 'num_classes' is {num_classes!r}, not a "
                          f"positive integer; {RECONVERT}")
  if not isinstance(meta.get("dense"), bool):
    raise NetworkDirError(f"{path}: 'dense' is {meta.get('dense')!r}, not "
                          f"true or false; {RECONVERT}")
  return meta


def _verify_files(directory, meta, verify) -> None:
  """Checks every checkpoint file against `meta['files']` (sizes always,
  sha256 if `verify`); raises `NetworkDirError` naming the first that
  differs."""
  files = meta.get("files")
  if files is None:
    print(f"note: {directory} was written before networks recorded file "
          f"hashes: its checkpoint cannot be verified; {RECONVERT}")
    return
  path = os.path.join(directory, META_FILE)
  if not isinstance(files, dict) or not files:
    raise NetworkDirError(f"{path}: 'files' is malformed; {RECONVERT}")
  for name, record in sorted(files.items()):
    if (os.path.isabs(name) or ".." in name.split(os.sep)
        or not isinstance(record, dict)
        or not isinstance(record.get("sha256"), str)
        or not isinstance(record.get("bytes"), int)):
      raise NetworkDirError(
          f"{path}: 'files' entry {name!r} is malformed; {RECONVERT}")
    file = os.path.join(directory, name)
    if not os.path.isfile(file):
      raise NetworkDirError(f"{file}: missing (the network directory is "
                            f"incomplete); {RECONVERT}")
    size = os.path.getsize(file)
    if size != record["bytes"]:
      raise NetworkDirError(
          f"{file}: {size} bytes, {META_FILE} says {record['bytes']} (the "
          f"file was truncated or altered); {RECONVERT}")
    if verify and file_sha256(file) != record["sha256"]:
      raise NetworkDirError(
          f"{file}: content differs from what `convert` wrote (sha256 "
          f"mismatch: the file was altered or damaged); {RECONVERT}")


def load(directory, dtype=jnp.float32, verify=None) -> Network:
  """Loads a `convert` output directory onto the default device.

  Args:
    directory: the directory `convert` wrote.
    dtype: compute dtype (parameters stay float32).
    verify: hash every checkpoint file and compare with `meta.json` before
      reading it (a third of a second for ResNet-50's 130 MB); None: yes,
      unless the environment sets `REPROG_JAX_VERIFY_NETWORKS=0`. File
      sizes are checked either way.

  Raises:
    NetworkDirError: the directory is missing, not ours, damaged or
      inconsistent.
  """
  import orbax.checkpoint as ocp

  meta = read_meta(directory)
  if verify is None:
    verify = os.environ.get(VERIFY_ENV, "1").strip().lower() not in (
        "0", "false", "no")
  _verify_files(directory, meta, verify)
  arch, num_classes = meta["arch"], meta.get("num_classes", 1000)
  expected = abstract_variables(arch, num_classes)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.restore(
          os.path.abspath(os.path.join(directory, CHECKPOINT_DIR)))
  except Exception as e:  # Orbax raises many types; all mean "unreadable".
    raise NetworkDirError(
        f"{directory}/{CHECKPOINT_DIR}: unreadable checkpoint "
        f"({type(e).__name__}: {_first_line(e)}); {RECONVERT}") from None
  for collection in ("params", "batch_stats"):
    _check_tree(directory, collection, tree.get(collection),
                expected[collection])
  params, batch_stats = tree["params"], tree["batch_stats"]
  masks = masks_lib.from_storable(tree.get("masks", {}), params)
  model = resnet.get_architecture(arch)(num_classes=num_classes, dtype=dtype)
  return make_network(model, params, batch_stats, masks, meta)


def _first_line(error, limit=160) -> str:
  """An exception's first line, shortened at a word boundary."""
  text = (str(error).strip().splitlines() or [""])[0]
  if len(text) <= limit:
    return text
  return text[:limit].rsplit(" ", 1)[0] + " ..."


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


def _kind(meta) -> str:
  """What a directory holds, in words: one-shot pruning is no lottery
  ticket."""
  if meta["dense"]:
    return "dense"
  if (meta.get("ticket") or {}).get("lottery_ticket") is False:
    return "pruned (one-shot; not a lottery ticket)"
  return "lottery ticket"


def main(argv=None) -> int:
  """`python -m reprog_jax.model.networks DIR [--image PATH]`."""
  import argparse
  import sys

  parser = argparse.ArgumentParser(
      prog="python -m reprog_jax.model.networks",
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
        f"{_kind(meta)}")
  if weights.get("random_init"):
    print("  weights: RANDOMLY INITIALISED (smoke-run network; predictions "
          "mean nothing)")
  else:
    print(f"  weights: {weights['path']} (sha256 {weights['sha256'][:12]}...)")
  if "mask" in meta["sources"]:
    print(f"  mask:    {meta['sources']['mask']['path']}")
  print(masks_lib.format_report(net.sparsity(), per_layer=args.per_layer))
  probs = np.asarray(jax.nn.softmax(net.logits(prompts.imagenet_normalize(image))))[0]
  names = class_names(net)
  print(f"top-5 prediction for {what}:")
  for i in np.argsort(-probs)[:5]:
    print(f"  {probs[i]:7.2%}  {i:4d} {names[i]}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())


def record_source_accuracy(directory, top1: float, measured_by: str) -> dict:
  """Records a network's source (ImageNet) top-1 accuracy in its meta.json.

  Adds `source_top1` (in %, e.g. 76.1) and `source_top1_from` (how it was
  obtained) and rewrites meta.json atomically. Its integrity records cover
  the checkpoint files, not meta.json, so the directory stays loadable.
  The report compares dense and ticket by it (claim 1's "similar upstream
  performance").

  Returns:
    The new meta.

  Raises:
    NetworkDirError: not a network directory, or `top1` outside [0, 100].
  """
  if not 0.0 <= float(top1) <= 100.0:
    raise NetworkDirError(f"{directory}: source top-1 {top1!r} is not a "
                          f"percentage in [0, 100] (76.1 means 76.1 %)")
  meta = read_meta(directory)
  meta.update(source_top1=float(top1), source_top1_from=measured_by)
  integrity.write_json(os.path.join(directory, META_FILE), meta)
  return meta

