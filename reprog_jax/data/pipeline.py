"""One decoding pass over some examples of a split, via grain.

A run decodes each of its images once (`store.decode_once`; a linear probe
encodes them once too): `decode_batches` yields them batch by batch, in the
order given, the last batch padded with blank examples whose `mask` is
False, so shapes stay static and every example comes exactly once.

Decoding, resizing and batching run inside grain: in `worker_count` spawned
processes, each with `read_threads` threads (PIL releases the GIL), or in
threads of the calling process when `worker_count == 0`. A file that does
not read or decode raises one `DataError` line naming it
(`preprocess.unreadable`), from a worker process too.
"""

from __future__ import annotations

from collections.abc import Iterator
import math

from absl import flags
import grain
import numpy as np

from reprog_jax.data import preprocess
from reprog_jax.data.errors import DataError
from reprog_jax.data.preprocess import load_uint8_image


class _LoadBatch:
  """Source indices (B,) -> {'image', 'label', 'mask'}; -1 is a blank slot.

  Works on a whole batch: images are decoded into one preallocated uint8
  array. In a worker process the batch is written straight into shared
  memory, which grain then hands to the main process without another copy.
  """

  def __init__(self, source, image_size: int, shared_memory: bool = False,
               origin: preprocess.Origin = preprocess.Origin()):
    self._source = source
    self._size = image_size
    self._shared_memory = shared_memory
    self._origin = origin

  def __call__(self, indices: np.ndarray) -> dict:
    count = len(indices)
    shape = (count, self._size, self._size, 3)
    images = (grain.multiprocessing.SharedMemoryArray(shape, np.uint8)
              if self._shared_memory else np.empty(shape, np.uint8))
    images[...] = 0
    labels = np.zeros(count, np.int32)
    mask = np.asarray(indices) >= 0
    for row, index in enumerate(indices):
      if index >= 0:
        try:
          item = self._source[int(index)]
          pixels = load_uint8_image(item['image'], self._size)
        except (DataError, *preprocess.DECODE_ERRORS) as e:
          if self._shared_memory:  # Nobody else will free it.
            images.unlink_on_del()
          raise preprocess.unreadable(self._origin, self._source,
                                      int(index), e) from e
        images[row] = pixels
        labels[row] = item['label']
    return {'image': images, 'label': labels, 'mask': mask}


def num_batches(count: int, batch_size: int) -> int:
  """How many batches `decode_batches` yields for `count` examples."""
  return max(1, math.ceil(count / batch_size))


def decode_batches(source, source_indices: np.ndarray, *, image_size: int,
                   batch_size: int, worker_count: int = 0,
                   read_threads: int = 4, prefetch_batches: int = 2,
                   origin: preprocess.Origin = preprocess.Origin()
                   ) -> Iterator[dict]:
  """Yields the examples `source_indices` of `source`, decoded, in order.

  Args:
    source: a split's random-access source (`sources.Split.source`): item
      i is {'image': encoded bytes or a uint8 array, 'label': int}.
    source_indices: (N,) indices into `source`.
    image_size: output side (H = W).
    batch_size: B; the last batch is padded with blank slots.
    worker_count: grain worker processes (0: threads of this process).
    read_threads: decoding threads per process.
    prefetch_batches: batches buffered ahead (per worker process).
    origin: the split the examples belong to, named with a bad file.

  Yields:
    `num_batches(N, B)` dicts: 'image' uint8 (B, H, W, 3) (zeros in blank
    slots), 'label' int32 (B,), 'mask' bool (B,) (False on blank slots).

  Raises:
    DataError: an example whose file cannot be read or decoded (the first
      one met), in one line naming it.
  """
  indices = np.asarray(source_indices, np.int64)
  padded = np.full(num_batches(len(indices), batch_size) * batch_size, -1,
                   np.int64)
  padded[:len(indices)] = indices
  batches = (grain.MapDataset.source(padded)
             .batch(batch_size, batch_fn=np.asarray)
             .map(_LoadBatch(source, image_size,
                             shared_memory=worker_count > 0, origin=origin)))
  # A thread can only work on a batch it has buffer room for.
  dataset = batches.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads,
      prefetch_buffer_size=max(read_threads, prefetch_batches)))
  if worker_count > 0:
    # grain reads absl flags when it starts workers; outside `app.run`
    # (notebooks, tests, benchmark) they are unparsed, so use defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=prefetch_batches))
  iterator = iter(dataset)
  try:
    yield from iterator
  finally:
    # Stops the worker processes even when the consumer stops early.
    if hasattr(iterator, 'close'):
      iterator.close()
