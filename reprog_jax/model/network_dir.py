"""The network directory format `convert` writes, and loading it.

A network directory holds

  checkpoint/  an Orbax checkpoint of {'params', 'batch_stats', 'masks'}
               (masks only on the prunable kernels, see `masks.py`);
  meta.json    what it is: architecture, source files with sha256, whether
               it is a lottery ticket, its sparsity report, and the sha256
               and size of every checkpoint file (`files`).

`load` checks every checkpoint file against `files` before reading it, so a
damaged copy is refused rather than silently loaded; set
`REPROG_JAX_VERIFY_NETWORKS=0` (or pass `verify=False`) to skip the hashes
(sizes are still checked). The loaded `network.Network` is the pytree the
training code uses.
"""

import datetime
import json
import os

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax.model import masks as masks_lib
from reprog_jax.model import network as network_lib
from reprog_jax.model import resnet

FORMAT = network_lib.FORMAT
FORMAT_VERSION = network_lib.FORMAT_VERSION
META_FILE = "meta.json"
CHECKPOINT_DIR = "checkpoint"
# Set to 0 to skip hashing a network's checkpoint files on `load`.
VERIFY_ENV = "REPROG_JAX_VERIFY_NETWORKS"
RECONVERT = "re-run `python -m convert ... --force` to write it again"


class NetworkDirError(errors.UserError, ValueError):
  """A directory that is not a valid `convert` output."""


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
  with fileio.atomic_directory(directory, replace=True) as tmp:
    tree = {"params": params, "batch_stats": batch_stats,
            "masks": masks_lib.to_storable(masks)}
    tree = jax.tree.map(np.asarray, tree)
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, CHECKPOINT_DIR), tree)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
            "created": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), **meta,
            "files": fileio.file_records(tmp, CHECKPOINT_DIR)}
    fileio.write_json(os.path.join(tmp, META_FILE), meta)


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
  problem = fileio.malformed(files)
  if problem:
    raise NetworkDirError(f"{os.path.join(directory, META_FILE)}: 'files' "
                          f"{problem}; {RECONVERT}")
  problem = fileio.first_difference(directory, files, hashes=verify)
  if problem:
    raise NetworkDirError(f"{problem}; {RECONVERT}")


def load(directory, dtype=jnp.float32, verify=None) -> network_lib.Network:
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
  expected = network_lib.abstract_variables(arch, num_classes)
  # This process's own read, with none of Orbax's barriers across
  # processes: each checks its own copy before they agree
  # (`train.processes.each_checks`), so one whose directory is bad cannot
  # strand the others at a barrier it never reaches.
  alone = ocp.options.MultiprocessingOptions(
      primary_host=jax.process_index(),
      active_processes={jax.process_index()})
  try:
    with ocp.StandardCheckpointer(
        multiprocessing_options=alone) as checkpointer:
      tree = checkpointer.restore(
          os.path.abspath(os.path.join(directory, CHECKPOINT_DIR)))
  except Exception as e:  # Orbax raises many types; all mean "unreadable".
    raise NetworkDirError(
        f"{directory}/{CHECKPOINT_DIR}: unreadable checkpoint "
        f"({type(e).__name__}: {errors.first_line(e)}); {RECONVERT}") from None
  for collection in ("params", "batch_stats"):
    _check_tree(directory, collection, tree.get(collection),
                expected[collection])
  params, batch_stats = tree["params"], tree["batch_stats"]
  masks = masks_lib.from_storable(tree.get("masks", {}), params)
  model = resnet.get_architecture(arch)(num_classes=num_classes, dtype=dtype)
  return network_lib.make_network(model, params, batch_stats, masks, meta)


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
  fileio.write_json(os.path.join(directory, META_FILE), meta)
  return meta
