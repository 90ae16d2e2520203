"""What a run's steps consume: its images decoded once, or cached features.

`open_run_data` opens the splits and draws every seed's few-shot subset
(cheap, and where bad data config fails). `load` then fills the stores:

- the images of every seed's training subset (their union: seeds share
  examples) and of the test split, decoded and resized once into uint8
  `data.RowStore`s, from which every epoch, label-mapping pass and
  evaluation gathers its batches; or
- for a method with a frozen `encode` (linear probing) and
  `config.cache_features`, the encoded rows (pooled features), computed
  once from a single streaming pass over the images and kept in the
  workdir (`features/<split>.npz`) so a resumed run reuses them. A file is
  only reused when its key — the network's content, the data, the image
  size, the dtype the features are computed in and the matmul/convolution
  precision (`config.eval_precision`, which the encode runs at for every
  split: `steps.make_encode_step` says why) — equals the run's; otherwise
  it is recomputed and replaced (and said so). A file written before the
  key had a field counts as another key: stale, recomputed.

With `n_shot = -1` every seed's subset is the whole training split: the
seeds then differ only in their order of examples and their initial values.

Temperature scaling needs held-out examples that never train. Each seed's
are up to `config.calibration_holdout` training examples per class from
outside its own few-shot subset (`data.fewshot.calibration_holdout_indices`:
one fixed draw, so the seeds' sets overlap and a seed's set is the same
alone or among others); they are decoded (or encoded) once, into one store
holding the union, like the test split. With `n_shot = -1` there are none
unless `config.calibration_carve_holdout` takes them out of every seed's
training split (training then differs from the PyTorch version's).

Model selection needs a validation split that neither trains nor is the
test split. Each seed's is up to `config.validation_per_class` training
examples per class from outside its few-shot subset and its temperature
hold-out (`data.fewshot.validation_indices`: one fixed draw of its own), in
a store of their union evaluated like the test split; with `n_shot = -1`
there is none unless `config.validation_carve` takes it out of every seed's
training split.
"""

import dataclasses
import hashlib
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from reprog_jax import data
from reprog_jax import fileio
from reprog_jax import layout as file_layout
from reprog_jax.train import checkpoints
from reprog_jax.train import processes
from reprog_jax.train import sharding
from reprog_jax.train import steps
from reprog_jax.data import fewshot
from reprog_jax.data import pipeline



@dataclasses.dataclass(frozen=True)
class RunData:
  """The opened splits of a run and every seed's subset.

  Attributes:
    train, test: `data.sources.Split`s.
    pools: int64 (S, K): seed s's training examples (positions in `train`).
    class_names: the target classes' names.
    holdout: None (no temperature scaling), or per seed the sorted
      positions in `train` of its held-out examples.
    validation: None (no validation split), or per seed the sorted
      positions in `train` of its validation examples.
  """

  train: object
  test: object
  pools: np.ndarray
  class_names: tuple
  holdout: tuple[np.ndarray, ...] | None = None
  validation: tuple[np.ndarray, ...] | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The stores and batch orders of a run.

  Attributes:
    train, test: `data.RowStore`s of images (uint8) or encoded rows.
    train_batches: each seed's shuffled training batches.
    mapping_batches: each seed's training set, unshuffled, for the label
      mapping pass.
    test_batches: the whole test split, unshuffled, shared by the seeds.
    encoded: the stores hold `method.encode`'s outputs, not images.
    examples: a few test images in [0, 1] for pictures (None if encoded).
    holdout: None, or a store of the union of the seeds' held-out examples
      (images or encoded rows, like `test`).
    holdout_batches: each seed's own rows of that store, in store order
      (a seed is scored on its rows only, not on the union).
    holdout_rows: bool (S, len(holdout)): which rows are seed s's.
    validation, validation_batches, validation_rows: the same for the
      seeds' validation examples (None without a validation split).
  """

  train: data.RowStore
  test: data.RowStore
  train_batches: data.Sampler
  mapping_batches: data.Sampler
  test_batches: data.Sampler
  encoded: bool
  examples: np.ndarray | None
  holdout: data.RowStore | None = None
  holdout_batches: data.Sampler | None = None
  holdout_rows: np.ndarray | None = None
  validation: data.RowStore | None = None
  validation_batches: data.Sampler | None = None
  validation_rows: np.ndarray | None = None


def open_run_data(config, seeds) -> RunData:
  """Opens both splits and draws each seed's `config.n_shot` subset.

  Raises:
    data.DataError: missing data or an impossible few-shot budget.
  """
  train = data.open_split_from_config(config.data, "train", config.n_shot)
  test = data.open_split_from_config(config.data, "test", config.n_shot)
  info = data.get_dataset_info(config.data.name)
  pools = data.few_shot_indices_multi(
      train.labels, config.n_shot, seeds, num_classes=info.num_classes,
      class_names=train.class_names)
  pools, holdout = _calibration_holdout(config, train.labels, pools)
  pools, validation = _validation_split(config, train.labels, pools, holdout)
  return RunData(train, test, pools, tuple(train.class_names), holdout,
                 validation)


def _calibration_holdout(config, labels, pools):
  """The seeds' pools and held-out examples (see the module docstring)."""
  per_class = config.calibration_holdout
  if not per_class:
    return pools, None
  if config.n_shot != -1:
    holdout = tuple(fewshot.calibration_holdout_indices(labels, per_class,
                                                        pool)
                    for pool in pools)
    if all(len(h) for h in holdout):
      return pools, holdout
    processes.say("NOTE: no training examples lie outside a seed's few-shot "
                  "subset, so there is no temperature scaling; lower "
                  "--config.n_shot")
    return pools, None
  if not config.calibration_carve_holdout:
    processes.say(
        "NOTE: n_shot=-1 trains on the whole training split, so there is "
        "no temperature scaling; --config.calibration_carve_holdout=True "
        f"holds out {per_class} examples per class from training for it")
    return pools, None
  carved = fewshot.calibration_holdout_indices(labels, per_class,
                                               keep_per_class=1)
  kept = np.setdiff1d(np.arange(len(labels)), carved)
  return np.tile(kept, (len(pools), 1)), (carved,) * len(pools)


def _validation_split(config, labels, pools, holdout):
  """The seeds' pools and validation examples (see the module docstring)."""
  per_class = config.validation_per_class
  if not per_class:
    return pools, None
  held = holdout or (np.zeros(0, np.int64),) * len(pools)
  if config.n_shot != -1:
    validation = tuple(
        fewshot.validation_indices(labels, per_class,
                                   np.concatenate([pool, mine]))
        for pool, mine in zip(pools, held))
    if all(len(v) for v in validation):
      return pools, validation
    processes.say("NOTE: no training examples lie outside a seed's few-shot "
                  "subset and its temperature hold-out, so there is no "
                  "validation split (no `validation` model selection); lower "
                  "--config.n_shot or --config.calibration_holdout")
    return pools, None
  if not config.validation_carve:
    processes.say("NOTE: n_shot=-1 trains on the whole training split, so "
                  "there is no validation split (no `validation` model "
                  "selection); --config.validation_carve=True holds out "
                  f"{per_class} examples per class from training for it")
    return pools, None
  # Every seed trains on the same examples here: carve once, from what the
  # temperature hold-out left, keeping one example of each class to train.
  carved = fewshot.validation_indices(labels, per_class, held[0],
                                      keep_per_class=1)
  kept = np.setdiff1d(pools[0], carved)
  return np.tile(kept, (len(pools), 1)), (carved,) * len(pools)


def load(run_data: RunData, config, *, seeds, image_size, method, network,
         eval_network, layout, workdir) -> Inputs:
  """Decodes the run's images once, or loads / computes cached features.

  Args:
    run_data: from `open_run_data`.
    config: the run's config (batch sizes, data and loader fields).
    seeds: the run's seeds.
    image_size: the images' side.
    method: the `methods.Method`.
    network: the frozen network the training step uses (its dtype encodes
      the training features).
    eval_network: the one evaluation uses (encodes the test features).
    layout: the `sharding.Layout`.
    workdir: where `features/` goes.
  """
  union = np.unique(run_data.pools)
  test_positions = np.arange(len(run_data.test.labels))
  # Held-out and validation examples are scored like test ones: by the
  # evaluation network.
  parts = [("train", run_data.train, union, network),
           ("test", run_data.test, test_positions, eval_network)]
  for name, per_seed in (("holdout", run_data.holdout),
                         ("validation", run_data.validation)):
    if per_seed is not None:
      parts.append((name, run_data.train, np.unique(np.concatenate(per_seed)),
                    eval_network))
  encoded = method.encode is not None and config.cache_features
  if encoded:
    # With several processes each encodes its share on its own devices.
    encode_layout = (layout if jax.process_count() == 1 else
                     sharding.Layout.create(1, jax.local_devices()))
    encode = steps.make_encode_step(method, encode_layout,
                                    precision=config.eval_precision)
    features_dir = os.path.join(workdir, file_layout.FEATURES_DIR)
    stores = [
        _cached_features(os.path.join(features_dir, f"{name}.npz"),
                         split, positions, net, encode, encode_layout, config,
                         image_size, name, workdir)
        for name, split, positions, net in parts]
  else:
    stores = [_decode(split, positions, image_size, config, name)
              for name, split, positions, _ in parts]
  layout.keep_on_device(stores, config.data.store_on_device)
  by_name = {part[0]: store for part, store in zip(parts, stores)}
  train, test = by_name["train"], by_name["test"]
  rows = train.row_of(run_data.pools)
  pad_to = layout.batch_pad
  held_fields = {}
  for name, per_seed in (("holdout", run_data.holdout),
                         ("validation", run_data.validation)):
    if per_seed is not None:
      store = by_name[name]
      mine = np.stack([np.isin(store.split_positions, positions)
                       for positions in per_seed])
      held_fields.update({
          name: store, f"{name}_rows": mine,
          f"{name}_batches": data.Sampler(
              _pools(mine), seeds, batch_size=config.eval_batch_size,
              shuffle=False, pad_to=pad_to)})
  return Inputs(
      train=train, test=test,
      train_batches=data.Sampler(rows, seeds, batch_size=config.batch_size,
                                 shuffle=True, pad_to=pad_to),
      mapping_batches=data.Sampler(rows, seeds,
                                   batch_size=config.eval_batch_size,
                                   shuffle=False, pad_to=pad_to),
      test_batches=data.Sampler(np.arange(len(test))[None], (0,),
                                batch_size=config.eval_batch_size,
                                shuffle=False, pad_to=pad_to),
      encoded=encoded,
      examples=(None if encoded
                else test.rows[:8].astype(np.float32) / np.float32(255)),
      **held_fields)


def _pools(mine: np.ndarray) -> np.ndarray:
  """(S, K) each seed's rows (`mine`: bool (S, N)) in store order, a seed
  with fewer than the most padded with -1 (blank slots)."""
  pools = np.full((len(mine), max(1, mine.sum(axis=1).max())), -1, np.int64)
  for pool, rows in zip(pools, mine):
    pool[:rows.sum()] = np.flatnonzero(rows)
  return pools


def _decode(split, positions, image_size, config, name) -> data.RowStore:
  """The images at `positions`, each process decoding its share of them.

  A file that does not decode on one process alone fails every process
  at once, with its one line (`processes.each_checks`), before the
  gather: no process waits for a share that never comes.
  """
  mine = processes.each_checks(lambda: data.decode_split(
      split, positions[processes.share(len(positions))],
      image_size=image_size, worker_count=config.data.worker_count,
      read_threads=config.data.read_threads,
      prefetch_batches=config.data.prefetch_batches,
      progress=config.progress and processes.is_lead(),
      desc=f"decoding {name} images (once)"))
  return data.RowStore(processes.gather_shares(mine.rows, len(positions)),
                       split.labels[positions], positions)


# --------------------------------------------------------------------------
# Cached features
# --------------------------------------------------------------------------


def fingerprint(tree) -> str:
  """A content hash of a pytree's arrays (shapes, dtypes and bytes)."""
  digest = hashlib.blake2b(digest_size=16)
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}"
                  .encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def feature_key(network, split, positions, config, image_size) -> dict:
  """What cached features depend on; a file with another key is stale."""
  return {
      "network": fingerprint((network.params, network.batch_stats,
                              network.masks)),
      "arch": type(network.model).__name__,
      # The encode's arithmetic: the dtype it computes in and its
      # matmul/convolution precision (on a GPU 'default' is TF32).
      "compute_dtype": jnp.dtype(network.model.dtype).name,
      "precision": config.eval_precision,
      "dataset": config.data.name,
      "source": config.data.source,
      "mock": bool(config.data.mock),
      "image_size": int(image_size),
      "examples": hashlib.sha256(np.asarray(split.indices[positions], np.int64)
                                 .tobytes()).hexdigest(),
      "labels": hashlib.sha256(np.asarray(split.labels[positions], np.int64)
                               .tobytes()).hexdigest(),
  }


def _cached_features(path, split, positions, network, encode, layout, config,
                     image_size, name, workdir) -> data.RowStore:
  key = feature_key(network, split, positions, config, image_size)
  # Every process must agree whether to encode (a collective): the lead
  # looks, and the others follow (reading the same file if it is good).
  if processes.lead_decides(lambda: int(_stored(path, key) is not None)):
    stored = _stored(path, key)
    return data.RowStore(stored[0], stored[1], positions)
  features = _encode_split(split, positions, network, encode, layout, config,
                           image_size, name)
  store = data.RowStore(features, split.labels[positions], positions)
  # The lead writes the file; a failure there (a full disk) reaches every
  # process before the run's next collective.
  processes.lead_only(lambda: checkpoints.full_disk_in_one_line(
      workdir, lambda: _save_atomically(path, key, store)))
  return store


def _stored(path, key) -> tuple[np.ndarray, np.ndarray] | None:
  """The (features, labels) that `path` holds for `key`; None (said why,
  by the lead) if there are none."""
  if not os.path.exists(path):
    return None
  detail = ""
  try:
    with np.load(path) as stored:
      stored_key = json.loads(str(stored["key"]))
      if stored_key == key:
        return stored["features"], stored["labels"]
    why = "features of another network or config"
    # A file from before a field existed lacks it: that field differs.
    old = stored_key if isinstance(stored_key, dict) else {}
    detail = " (they differ in {})".format(", ".join(sorted(
        name for name in key.keys() | old.keys()
        if old.get(name) != key.get(name))))
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    why = f"no readable features ({type(e).__name__})"
  processes.say(f"{path} holds {why}; recomputing them{detail}")
  return None


def _encode_split(split, positions, network, encode, layout, config,
                  image_size, name) -> np.ndarray:
  """One streaming pass: decode, resize, encode; (N, F) float32.

  With several processes each encodes its share of the rows on its own
  devices (no collective per batch), and the shares are gathered.
  """
  every = len(positions)
  if jax.process_count() > 1:  # `layout` is this process's devices'.
    positions = positions[processes.share(every)]
    network = layout.put(network, layout.replicated)
  batch_size = -(-config.eval_batch_size // layout.num_devices) * (
      layout.num_devices)
  batches = data.decode_batches(
      split.source, split.indices[positions], image_size=image_size,
      batch_size=batch_size, worker_count=config.data.worker_count,
      read_threads=config.data.read_threads,
      prefetch_batches=config.data.prefetch_batches,
      origin=data.split_origin(split))  # A bad file is named in one line.
  bar = tqdm.tqdm(batches, total=pipeline.num_batches(len(positions),
                                                      batch_size),
                  leave=False, desc=f"features of the {name} split (once)",
                  dynamic_ncols=True,
                  disable=not (config.progress and processes.is_lead()))

  def encode_share():
    # This process's devices only: no collective, so a bad file here
    # fails every process at once (`each_checks`), not at the gather.
    outputs = [encode(network, layout.put(batch["image"], layout.batch))
               for batch in bar]
    return np.concatenate([jax.device_get(o) for o in outputs])

  features = processes.each_checks(encode_share)
  return processes.gather_shares(
      np.asarray(features[:len(positions)], np.float32), every)


def _save_atomically(path, key, store) -> None:
  """Writes the features under `path` in one rename: a crash leaves either
  no file or a complete one."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fileio.remove_leftovers(path)  # What a crash mid-write left behind.
  with fileio.atomic_file(path) as f:
    np.savez(f, key=json.dumps(key, sort_keys=True),
             features=store.rows, labels=store.labels)
