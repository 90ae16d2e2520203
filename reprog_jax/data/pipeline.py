"""The input pipeline: per-epoch batches of preprocessed images, via grain.

One grain `MapDataset` covers all epochs back to back: position p of it is
example `p % E` of epoch `p // E` (E = the epoch length rounded up to a
whole batch), whose order is a permutation drawn from (seed, epoch). So:
- the order depends only on (seed, epoch), never on worker counts or on
  where a run resumed;
- a long-lived iterator serves consecutive epochs, and its worker
  processes are already preparing epoch e+1 while epoch e finishes, so the
  device does not wait at epoch boundaries;
- the last batch of an epoch is padded with blank examples whose `mask` is
  False: shapes stay static and every example is seen exactly once.

Decoding, resizing, scaling and batching run inside grain: in
`worker_count` spawned processes, each with `read_threads` threads (PIL
releases the GIL), or in threads of the calling process when
`worker_count == 0`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
import math
from typing import Any

from absl import flags
import grain
import numpy as np

from reprog_jax.data.preprocess import load_uint8_image

# A virtual length: iterators start at any epoch without a fixed total.
_MAX_EPOCHS = 1_000_000


class _Schedule:
  """Global position -> source index, or -1 for a padding slot."""

  def __init__(self, pool: np.ndarray, epoch_length: int, shuffle: bool,
               seed: int):
    self._pool = np.asarray(pool, np.int64)
    self._epoch_length = epoch_length
    self._shuffle = shuffle
    self._seed = seed
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return self._epoch_length * _MAX_EPOCHS

  def order(self, epoch: int) -> np.ndarray:
    """The source indices of one epoch, in the order they are served."""
    order = self._orders.get(epoch)
    if order is None:
      if self._shuffle:
        rng = np.random.default_rng([self._seed, epoch])
        order = self._pool[rng.permutation(len(self._pool))]
      else:
        order = self._pool
      # Reader threads only touch adjacent epochs: keep a few. Rebinding
      # (not clearing) keeps concurrent readers of the old dict safe.
      if len(self._orders) > 2:
        self._orders = {}
      self._orders[epoch] = order
    return order

  def __getitem__(self, position: int) -> int:
    epoch, offset = divmod(int(position), self._epoch_length)
    order = self.order(epoch)
    return int(order[offset]) if offset < len(order) else -1


class _LoadBatch:
  """Source indices (B,) -> {'image', 'label', 'mask'}; -1 is a blank slot.

  Works on a whole batch: images are decoded into one preallocated uint8
  array and scaled to float32 in a single vectorised division, which is
  several times faster at 224 px than converting image by image. In a
  worker process the float32 batch is written straight into shared memory,
  which grain then hands to the main process without another copy.
  """

  def __init__(self, source, image_size: int, shared_memory: bool = False,
               uint8: bool = False):
    self._source = source
    self._size = image_size
    self._shared_memory = shared_memory
    self._uint8 = uint8

  def __call__(self, indices: np.ndarray) -> dict:
    count = len(indices)
    pixels = np.zeros((count, self._size, self._size, 3), np.uint8)
    labels = np.zeros(count, np.int32)
    mask = np.asarray(indices) >= 0
    for row, index in enumerate(indices):
      if index >= 0:
        item = self._source[int(index)]
        pixels[row] = load_uint8_image(item['image'], self._size)
        labels[row] = item['label']
    dtype = np.uint8 if self._uint8 else np.float32
    images = (grain.multiprocessing.SharedMemoryArray(pixels.shape, dtype)
              if self._shared_memory else np.empty(pixels.shape, dtype))
    if self._uint8:
      images[...] = pixels
    else:
      np.divide(pixels, np.float32(255), out=images, dtype=np.float32)
    return {'image': images, 'label': labels, 'mask': mask}


class _Stream:
  """A live grain iterator and the global batch number it yields next."""

  def __init__(self, iterator, position: int):
    self.iterator = iterator
    self.position = position

  def close(self):
    if hasattr(self.iterator, 'close'):
      self.iterator.close()


class Loader:
  """Batches of one split, epoch by epoch.

  Each batch is a dict: 'image' float32 (B, H, W, 3) in [0, 1] (or the
  uint8 pixels with `uint8=True`), 'label' int32 (B,), 'mask' bool (B,)
  (False on padding). `epoch(e)` yields exactly
  `steps_per_epoch` batches.

  Calling `epoch` for consecutive epochs reuses the running workers. Up to
  `max_streams` iterators stay alive, so two consumers walking the epochs in
  step (ILM's label-mapping pass and the training pass over the same loader)
  each keep theirs; an unshuffled loader serves every epoch the same order,
  so any finished stream continues. Any other call starts a stream at that
  epoch (and, with workers, new processes).

  Attributes:
    num_examples: examples per epoch (without padding).
    batch_size: B.
    image_size: H = W.
    steps_per_epoch: ceil(num_examples / B).
    labels: int64 labels of the pool, in `indices` order.
    indices: the pool: indices into the split's source.
    class_names: names in label order.
  """

  max_streams = 2

  def __init__(self, source, indices: np.ndarray, labels: np.ndarray,
               class_names: tuple[str, ...], *, image_size: int,
               batch_size: int, shuffle: bool, seed: int,
               worker_count: int = 0, read_threads: int = 4,
               prefetch_batches: int = 2, uint8: bool = False):
    self.indices = np.asarray(indices, np.int64)
    self.labels = np.asarray(labels, np.int64)
    self.class_names = tuple(class_names)
    self.num_examples = len(self.indices)
    self.batch_size = batch_size
    self.image_size = image_size
    self.steps_per_epoch = max(1, math.ceil(self.num_examples / batch_size))
    self._shuffle = shuffle
    self._schedule = _Schedule(self.indices,
                               self.steps_per_epoch * batch_size,
                               shuffle, seed)
    # Batch the indices first, then load a whole batch per call (see
    # `_LoadBatch`); grain runs that call in its threads / workers.
    self._batches = (grain.MapDataset.source(self._schedule)
                     .batch(batch_size, batch_fn=np.asarray)
                     .map(_LoadBatch(source, image_size,
                                     shared_memory=worker_count > 0,
                                     uint8=uint8)))
    self._worker_count = worker_count
    self._read_threads = read_threads
    self._prefetch_batches = prefetch_batches
    self._streams: list[_Stream] = []  # Most recently used last.

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return self.steps_per_epoch

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The source indices served in `epoch`, padding slots as -1."""
    order = self._schedule.order(epoch)
    pad = self.steps_per_epoch * self.batch_size - len(order)
    return np.concatenate([order, np.full(pad, -1, np.int64)])

  def _start(self, position: int, stop: int | None = None) -> _Stream:
    # A thread can only work on a batch it has buffer room for.
    dataset = self._batches[position:stop].to_iter_dataset(grain.ReadOptions(
        num_threads=self._read_threads,
        prefetch_buffer_size=max(self._read_threads, self._prefetch_batches)))
    if self._worker_count > 0:
      # grain reads absl flags when it starts workers; outside `app.run`
      # (notebooks, tests, benchmark) they are unparsed, so use defaults.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._worker_count,
          per_worker_buffer_size=self._prefetch_batches))
    return _Stream(iter(dataset), position)

  def _stream_for(self, start: int) -> _Stream:
    """A live stream about to yield global batch `start`, or a new one."""
    for stream in self._streams:
      exact = stream.position == start
      any_epoch = (not self._shuffle
                   and stream.position % self.steps_per_epoch == 0)
      if exact or any_epoch:
        self._streams.remove(stream)
        break
    else:
      stream = self._start(start)
      while len(self._streams) >= self.max_streams:
        self._streams.pop(0).close()
    self._streams.append(stream)
    return stream

  def epoch(self, epoch: int) -> Iterator[dict]:
    """Yields the `steps_per_epoch` batches of `epoch` (0-based)."""
    stream = self._stream_for(epoch * self.steps_per_epoch)
    for _ in range(self.steps_per_epoch):
      batch = next(stream.iterator)
      stream.position += 1
      yield batch

  def single_pass(self, epoch: int = 0) -> Iterator[dict]:
    """Yields the batches of `epoch` from a stream that ends with it.

    For a one-off pass (decoding a split once): `epoch` keeps its stream
    running into the next epoch, whose first batches the readers would
    then decode in vain.
    """
    start = epoch * self.steps_per_epoch
    stream = self._start(start, start + self.steps_per_epoch)
    try:
      yield from stream.iterator
    finally:
      stream.close()

  def close(self):
    """Stops every stream and its worker processes."""
    while self._streams:
      self._streams.pop().close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass  # Interpreter shutdown: grain cleans its workers up itself.


def prefetch_to_device(batches: Iterable[dict], size: int = 2,
                       sharding: Any = None) -> Iterator[dict]:
  """Keeps `size` batches in flight to the device ahead of the consumer.

  `jax.device_put` is asynchronous, so while the device computes step t the
  host-to-device copies of steps t+1..t+size are already under way.

  Args:
    batches: host batches (e.g. `loader.epoch(e)`).
    size: how many batches to keep in flight.
    sharding: where to put them (e.g. a batch-sharded `NamedSharding`);
      None means the default device.

  Yields:
    The same batches, as device arrays.
  """
  # Imported here so grain's worker processes, which import this module to
  # unpickle the pipeline, do not pay for importing JAX.
  import jax  # pylint: disable=g-import-not-at-top
  queue = collections.deque()
  for batch in batches:
    queue.append(jax.device_put(batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
