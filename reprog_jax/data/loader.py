"""What the training code calls: the data config and the loader factories.

    loader = make_loader_from_config(config.data, 'train', image_size=32,
                                     batch_size=128, seed=4)
    for epoch in range(start_epoch, num_epochs):
      for batch in loader.epoch(epoch):
        ...  # batch['image'] (B, 32, 32, 3) float32, 'label', 'mask'

To train on several few-shot subsets at once, draw them with
`few_shot_indices_multi(split_labels_from_config(config.data), n_shot, seeds)`
and pass each row as `indices=`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict
import numpy as np

from reprog_jax.data import sources
from reprog_jax.data.errors import DataError
from reprog_jax.data.fewshot import few_shot_indices
from reprog_jax.data.pipeline import Loader
from reprog_jax.data.registry import get_dataset_info


def default_data_config() -> ml_collections.ConfigDict:
  """The `config.data` block of the training configs.

  Fields:
    name: registry name of the target dataset.
    data_dir: tfds data directory; None means tfds's default
      ($TFDS_DATA_DIR or ~/tensorflow_datasets). With source='torchvision',
      the PyTorch scripts' data root (their --data_path).
    source: 'auto' (the registry's), 'tfds', 'folder' (e.g. CoOp splits) or
      'torchvision' (the PyTorch version's files, read as they are).
    folder_root: folder dataset location; None means
      `<data_dir>/folders/<name>`.
    mock: serve tfds mock examples (no data needed) for smoke runs.
    mock_num_examples: mock split size; 0 picks enough for `n_shot`.
    n_shot: training examples per class; -1 is the full split.
    worker_count: grain worker processes per loader (0: threads of the main
      process only).
    read_threads: decoding threads per process.
    prefetch_batches: batches buffered per worker process.
    store_on_device: where a run keeps its decoded images: 'auto' (on the
      accelerator when a copy per device takes at most a quarter of its
      memory, else in host memory; always host memory on a CPU), 'yes' or
      'no'.
  """
  config = ml_collections.ConfigDict()
  config.name = 'cifar10'
  config.data_dir = config_dict.placeholder(str)
  config.source = 'auto'
  config.folder_root = config_dict.placeholder(str)
  config.mock = False
  config.mock_num_examples = 0
  config.n_shot = -1
  config.worker_count = 2
  config.read_threads = 4
  config.prefetch_batches = 2
  config.store_on_device = 'auto'
  return config


def default_mock_num_examples(name: str, n_shot: int) -> int:
  """A mock split just large enough for `n_shot` per class (and a test cut).

  Mock labels cycle through the classes, so k examples per class give every
  class k examples; EuroSAT's 10 % hold-out needs at least 10 per class.
  """
  info = get_dataset_info(name)
  per_class = max(2, n_shot + 1)
  if info.holdout_fraction is not None:
    per_class = max(10, 2 * per_class)
  return per_class * info.num_classes


def split_labels(name: str, split: str, *, n_shot: int = -1,
                 data_dir: str | None = None, mock: bool = False,
                 mock_num_examples: int | None = None, source: str = 'auto',
                 folder_root: str | None = None) -> np.ndarray:
  """The labels of a whole split: what `few_shot_indices*` draw from.

  Takes `make_loader`'s arguments (`n_shot` only sizes a mock split) so the
  labels are those of the split the loader will index.
  """
  info = get_dataset_info(name)
  if mock_num_examples is None:
    mock_num_examples = default_mock_num_examples(name, n_shot)
  return sources.open_split(info, split, data_dir=data_dir, mock=mock,
                            mock_num_examples=mock_num_examples,
                            source=source, root=folder_root).labels


def open_split_from_config(data_config: ml_collections.ConfigDict,
                           split: str) -> sources.Split:
  """Opens 'train' or 'test' with the fields of `default_data_config()`.

  Both splits share one mock size (chosen from `n_shot`), so a hold-out cut
  is the same for both.
  """
  info = get_dataset_info(data_config.name)
  return sources.open_split(
      info, split, data_dir=data_config.data_dir, mock=data_config.mock,
      mock_num_examples=(data_config.mock_num_examples
                         or default_mock_num_examples(data_config.name,
                                                      data_config.n_shot)),
      source=data_config.source, root=data_config.folder_root)


def split_labels_from_config(data_config: ml_collections.ConfigDict,
                             split: str = 'train') -> np.ndarray:
  """`split_labels` with the fields of `default_data_config()`."""
  return open_split_from_config(data_config, split).labels


def make_loader(
    name: str,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool | None = None,
    seed: int = 0,
    n_shot: int = -1,
    data_dir: str | None = None,
    mock: bool = False,
    worker_count: int = 0,
    indices: np.ndarray | None = None,
    source: str = 'auto',
    folder_root: str | None = None,
    mock_num_examples: int | None = None,
    read_threads: int = 4,
    prefetch_batches: int = 2,
) -> Loader:
  """Builds the loader of one split of a registered dataset.

  Args:
    name: registry name, e.g. 'cifar10'.
    split: 'train' or 'test'.
    image_size: output side: `get_dataset_info(name).vp_size` for VP, 224
      for linear probing.
    batch_size: batch size B (the last batch of an epoch is padded).
    shuffle: reshuffle every epoch; default True for 'train' only.
    seed: seed of the few-shot draw and of every epoch's order.
    n_shot: examples per class drawn from the train split; -1 for all.
    data_dir: tfds data directory; None means tfds's default.
    mock: serve mock examples (see `sources.open_split`).
    worker_count: grain worker processes (0: main-process threads).
    indices: pre-chosen examples (indices into the split, e.g. a row of
      `few_shot_indices_multi`); overrides `n_shot`.
    source: 'auto', 'tfds' or 'folder'.
    folder_root: folder dataset location (default under `data_dir`).
    mock_num_examples: mock split size; None picks enough for `n_shot`.
    read_threads: decoding threads per process.
    prefetch_batches: batches buffered ahead (per worker process).

  Returns:
    A `Loader`; nothing is read until its first epoch is iterated, apart
    from the labels of the split.

  Raises:
    DataError: on any bad argument or missing / malformed data.
  """
  info = get_dataset_info(name)
  for field, value in (('image_size', image_size),
                       ('batch_size', batch_size)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or value < 1:
      raise DataError(f'{field} must be a positive integer, got {value!r}.')
  if worker_count < 0:
    raise DataError(f'worker_count must be >= 0, got {worker_count}.')
  if split == 'test' and n_shot != -1 and indices is None:
    raise DataError('n_shot applies to the train split only; the test split '
                    'is always complete.')
  if mock_num_examples is None:
    mock_num_examples = default_mock_num_examples(name, n_shot)
  data = sources.open_split(info, split, data_dir=data_dir, mock=mock,
                            mock_num_examples=mock_num_examples,
                            source=source, root=folder_root)
  if indices is not None:
    chosen = np.asarray(indices, np.int64)
    if chosen.ndim != 1 or (chosen.size and (
        chosen.min() < 0 or chosen.max() >= len(data.indices))):
      raise DataError(f'indices must be a 1-D array of positions in the '
                      f'{len(data.indices)}-example {split} split.')
  else:
    chosen = few_shot_indices(data.labels, n_shot, seed,
                              num_classes=info.num_classes,
                              class_names=data.class_names)
  if shuffle is None:
    shuffle = split == 'train'
  return Loader(data.source, data.indices[chosen], data.labels[chosen],
                data.class_names, image_size=image_size,
                batch_size=batch_size, shuffle=shuffle, seed=seed,
                worker_count=worker_count, read_threads=read_threads,
                prefetch_batches=prefetch_batches)


def make_loader_from_config(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    shuffle: bool | None = None,
    indices: np.ndarray | None = None,
) -> Loader:
  """`make_loader` with the fields of `default_data_config()`.

  `n_shot` applies to 'train' only; both splits share one mock size (chosen
  from `n_shot`), so a hold-out cut is the same for both.
  """
  mock_num_examples = (data_config.mock_num_examples
                       or default_mock_num_examples(data_config.name,
                                                    data_config.n_shot))
  return make_loader(
      data_config.name, split, image_size=image_size, batch_size=batch_size,
      shuffle=shuffle, seed=seed,
      n_shot=data_config.n_shot if split == 'train' else -1,
      data_dir=data_config.data_dir, mock=data_config.mock,
      worker_count=data_config.worker_count, indices=indices,
      source=data_config.source, folder_root=data_config.folder_root,
      mock_num_examples=mock_num_examples,
      read_threads=data_config.read_threads,
      prefetch_batches=data_config.prefetch_batches)
