"""Decode once, serve every epoch from memory: row stores and samplers.

The protocol has no augmentation, so each image of a run is decoded and
resized exactly once, into a `RowStore` of uint8 pixels; every training
epoch, label-mapping pass and evaluation then gathers its batches from
there. A linear probe's store holds pooled features instead of pixels: to
the rest of the pipeline a row is a row.

A `Sampler` says which rows each step uses: for every seed of a run, its own
pool of rows (its few-shot subset) in its own order, as `(S, B)` arrays of
row positions, padded with -1. The order of seed s in epoch e is a
permutation of its pool drawn from `default_rng([s, e])` (or the pool order
unshuffled), so it depends only on (seed, epoch), never on where a run
resumed or how many seeds train beside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import math

import numpy as np
import tqdm

from reprog_jax.data import pipeline
from reprog_jax.data import preprocess


class RowStore:
  """Rows of some examples of one split, in host memory, with their labels.

  Attributes:
    rows: (N, ...) array: uint8 pixels (N, H, W, 3) or float features.
    labels: int32 (N,).
    split_positions: int64 (N,), sorted: row i is example
      `split_positions[i]` of the split.
    device_rows: None, or `rows` replicated on every device.
  """

  def __init__(self, rows: np.ndarray, labels: np.ndarray,
               split_positions: np.ndarray):
    if not len(rows) == len(labels) == len(split_positions):
      raise ValueError(f'{len(rows)} rows, {len(labels)} labels and '
                       f'{len(split_positions)} positions must agree')
    self.rows = rows
    self.labels = np.asarray(labels, np.int32)
    self.split_positions = np.asarray(split_positions, np.int64)
    # A copy of `rows` on every device, when the run keeps them there
    # (`sharding.Layout.keep_on_device`): batches are then gathered there.
    self.device_rows = None

  def __len__(self) -> int:
    return len(self.rows)

  def row_of(self, split_positions: np.ndarray) -> np.ndarray:
    """The rows holding these split examples (each must be stored)."""
    split_positions = np.asarray(split_positions, np.int64)
    rows = np.searchsorted(self.split_positions, split_positions)
    if rows.size and (rows.max() >= len(self) or not np.array_equal(
        self.split_positions[rows], split_positions)):
      raise ValueError('some examples are not in this store')
    return rows

  def rows_at(self, index: np.ndarray) -> np.ndarray:
    """Rows at positions `index` (any shape); zeros where it is -1."""
    index = np.asarray(index)
    rows = self.rows[np.maximum(index, 0)]
    blank = index < 0
    if blank.any():
      rows[blank] = 0
    return rows

  def labels_at(self, index: np.ndarray) -> np.ndarray:
    """int32 labels at positions `index`; 0 where it is -1."""
    index = np.asarray(index)
    return np.where(index >= 0, self.labels[np.maximum(index, 0)], 0).astype(
        np.int32)

  def gather(self, index: np.ndarray) -> dict:
    """The host batch at positions `index`: {'image', 'label', 'mask'}
    (blank slots: zero image, label 0, mask False)."""
    index = np.asarray(index)
    return {'image': self.rows_at(index), 'label': self.labels_at(index),
            'mask': index >= 0}


def decode_once(source, source_indices: np.ndarray, labels: np.ndarray,
                split_positions: np.ndarray, *, image_size: int,
                worker_count: int = 0, read_threads: int = 4,
                prefetch_batches: int = 2, batch_size: int = 256,
                progress: bool = False, desc: str = 'decoding',
                origin: preprocess.Origin = preprocess.Origin()) -> RowStore:
  """Decodes and resizes examples once, into a uint8 `RowStore`.

  Args:
    source: the split's random-access source (`sources.Split.source`).
    source_indices: (N,) indices into `source` of the examples to keep.
    labels: (N,) their labels.
    split_positions: (N,) sorted unique positions of these examples in the
      split (what samplers and few-shot draws index).
    image_size: output side.
    worker_count, read_threads, prefetch_batches: see
      `pipeline.decode_batches`.
    batch_size: images decoded per grain call.
    progress: show a progress bar.
    desc: its label.
    origin: the split the examples belong to, named with a bad file.

  Raises:
    DataError: a file that cannot be read or decoded, in one line.
  """
  count = len(source_indices)
  pixels = np.zeros((count, image_size, image_size, 3), np.uint8)
  done = 0
  batches = pipeline.decode_batches(
      source, source_indices, image_size=image_size, batch_size=batch_size,
      worker_count=worker_count, read_threads=read_threads,
      prefetch_batches=prefetch_batches, origin=origin)
  bar = tqdm.tqdm(batches, total=pipeline.num_batches(count, batch_size),
                  desc=desc, leave=False, dynamic_ncols=True,
                  disable=not progress, unit='batch')
  for batch in bar:
    valid = int(batch['mask'].sum())
    pixels[done:done + valid] = batch['image'][:valid]
    done += valid
  return RowStore(pixels, labels, split_positions)


def decode_split(split, positions: np.ndarray, **kwargs) -> RowStore:
  """`decode_once` of the examples at `positions` (sorted, unique) of a
  `sources.Split`; `kwargs` are `decode_once`'s (`image_size`, ...)."""
  positions = np.asarray(positions, np.int64)
  return decode_once(split.source, split.indices[positions],
                     split.labels[positions], positions,
                     origin=split_origin(split), **kwargs)


def split_origin(split) -> preprocess.Origin:
  """The `preprocess.Origin` of a `sources.Split`'s examples."""
  return preprocess.Origin(split.dataset, split.name, split.doctor)


class Sampler:
  """Per-seed epoch orders over pools of rows, batch by batch.

  Attributes:
    pools: int64 (S, K): seed s's rows, in pool order.
    seeds: the S seeds (each seed's shuffling comes from its own).
    batch_size: B, examples per step and seed: the `batch_size` asked
      for, or K when the pools are smaller. A 10-image few-shot set at
      batch 128 is one step of 10, as PyTorch's DataLoader hands it over
      (same examples, order and gradient), not 10 images among 118 blanks.
    padded_batch_size: B rounded up to a multiple of `pad_to` (so a batch
      splits evenly over devices); the extra slots are blank.
    steps_per_epoch: ceil(K / B).
  """

  def __init__(self, pools: np.ndarray, seeds: Sequence[int], *,
               batch_size: int, shuffle: bool, pad_to: int = 1):
    self.pools = np.atleast_2d(np.asarray(pools, np.int64))
    self.seeds = tuple(int(s) for s in seeds)
    if len(self.seeds) != len(self.pools):
      raise ValueError(f'{len(self.pools)} pools for {len(self.seeds)} seeds')
    self.num_examples = self.pools.shape[1]
    batch_size = max(1, min(batch_size, self.num_examples))
    self.batch_size = batch_size
    self.padded_batch_size = math.ceil(batch_size / pad_to) * pad_to
    self.shuffle = shuffle
    self.steps_per_epoch = max(1, math.ceil(self.num_examples / batch_size))

  def __len__(self) -> int:
    return self.steps_per_epoch

  def epoch_order(self, epoch: int) -> np.ndarray:
    """(S, steps_per_epoch * B) rows served in `epoch`, padding as -1."""
    orders = []
    for seed, pool in zip(self.seeds, self.pools):
      if self.shuffle:  # A function of (seed, epoch) only.
        pool = pool[np.random.default_rng([seed, epoch]).permutation(
            len(pool))]
      orders.append(pool)
    pad = self.steps_per_epoch * self.batch_size - self.num_examples
    return np.pad(np.stack(orders), ((0, 0), (0, pad)), constant_values=-1)

  def epoch(self, epoch: int) -> Iterator[np.ndarray]:
    """Yields the epoch's (S, padded_batch_size) row positions per step."""
    order = self.epoch_order(epoch).reshape(
        len(self.seeds), self.steps_per_epoch, self.batch_size)
    extra = self.padded_batch_size - self.batch_size
    order = np.pad(order, ((0, 0), (0, 0), (0, extra)), constant_values=-1)
    for step in range(self.steps_per_epoch):
      yield order[:, step]
