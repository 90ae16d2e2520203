"""The `config.data` block of the training configs, and opening its splits.

    train = open_split_from_config(config.data, 'train', config.n_shot)
    pools = few_shot_indices_multi(train.labels, config.n_shot, seeds)
    store = decode_split(train, np.unique(pools), image_size=32)
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from reprog_jax.data import sources
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
    mock_num_examples: mock split size; 0 picks enough for the run's
      `n_shot` (a top-level field of the training config).
    worker_count: grain worker processes decoding a run's images (0:
      threads of the main process only).
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


def open_split_from_config(data_config: ml_collections.ConfigDict,
                           split: str, n_shot: int = -1) -> sources.Split:
  """Opens 'train' or 'test' with the fields of `default_data_config()`.

  `n_shot` (the run's examples per class; -1: all) only sizes a mock split.
  Both splits share one mock size, so a hold-out cut is the same for both.
  """
  info = get_dataset_info(data_config.name)
  return sources.open_split(
      info, split, data_dir=data_config.data_dir, mock=data_config.mock,
      mock_num_examples=(data_config.mock_num_examples
                         or default_mock_num_examples(data_config.name,
                                                      n_shot)),
      source=data_config.source, root=data_config.folder_root)
