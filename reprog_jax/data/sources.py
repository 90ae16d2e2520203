"""Opens one split of a registered dataset as a random-access source.

Four kinds of source, one interface (`len`, `source[i] -> {'image', 'label'}`
with the image still encoded or a raw uint8 array, and `labels()`):
- tfds data on disk, read with `tfds.data_source` (array_record files, no
  TensorFlow); images come back as encoded bytes and are decoded in the
  loader's workers;
- a folder tree (`folder.py`);
- the PyTorch version's data root: torchvision's files and CoOp's LMDB
  (`torchvision_root.py`), read as it is;
- mock data for smoke runs: `tfds.testing.mock_data` examples with the real
  builder's features, or synthetic images for folder-only datasets.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from reprog_jax.data import folder as folder_lib
from reprog_jax.data import torchvision_root
from reprog_jax.data.errors import DataError
from reprog_jax.data.fewshot import stratified_holdout
from reprog_jax.data.registry import DatasetInfo

SOURCES = ('auto', 'tfds', 'folder', 'torchvision')

_LABEL_CACHE: dict[tuple[str, str], np.ndarray] = {}


def default_data_dir() -> str:
  """tfds's default data directory: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.path.expanduser(tfds.core.constants.DATA_DIR)


def folder_root(info: DatasetInfo, data_dir: str | None,
                root: str | None = None) -> str:
  """Where a folder dataset lives: `root`, else `<data_dir>/folders/<name>`."""
  if root:
    return os.path.expanduser(root)
  return os.path.join(data_dir or default_data_dir(), 'folders', info.name)


class TfdsSource:
  """A tfds data source reduced to `{'image', 'label'}` items.

  Attributes are plain picklable objects (tfds data sources, mock ones
  included, pickle), so grain can ship the source to spawned workers.
  """

  def __init__(self, data_source, labels: np.ndarray | None = None):
    """Wraps a tfds data source.

    Args:
      data_source: what `tfds.data_source` returned.
      labels: every example's label if already known (mock labels, or a
        cached read); None reads them from the records when asked.
    """
    self._source = data_source
    self._labels = labels

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    example = self._source[int(index)]
    label = (example['label'] if self._labels is None
             else self._labels[index])
    return {'image': example['image'], 'label': label}

  def labels(self) -> np.ndarray:
    """Every example's label; reads records in chunks (images undecoded)."""
    if self._labels is not None:
      return self._labels.copy()
    out, chunk = [], 2048
    for start in range(0, len(self), chunk):
      keys = list(range(start, min(start + chunk, len(self))))
      out.extend(int(ex['label']) for ex in self._source.__getitems__(keys))
    return np.asarray(out, np.int64)


class SyntheticSource:
  """Deterministic random images for mock runs of folder-only datasets.

  Like tfds's mock generator: example i is drawn from a generator seeded
  with i (sides 5..49 pixels, uint8 RGB); labels cycle through the classes.
  """

  def __init__(self, num_examples: int, num_classes: int, seed: int = 0):
    self._n, self._num_classes, self._seed = num_examples, num_classes, seed

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict:
    rng = np.random.default_rng(self._seed + int(index))
    height, width = rng.integers(5, 50, size=2)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return {'image': image, 'label': int(index) % self._num_classes}

  def labels(self) -> np.ndarray:
    return np.arange(self._n, dtype=np.int64) % self._num_classes


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset, ready for few-shot sampling and loading.

  Attributes:
    source: random-access source of `{'image', 'label'}` items.
    indices: the split's examples as indices into `source` (the whole source
      unless the registry cuts a hold-out out of it).
    labels: the label of each of those examples, aligned with `indices`.
    class_names: names in label order.
  """
  source: object
  indices: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]


def _prepare_command(*args) -> str:
  # Imported here: `python -m reprog_jax.data.prepare` must not find its
  # module already imported by the package (runpy warns about that).
  from reprog_jax.data import prepare
  return prepare.prepare_command(*args)


def _open_tfds(info: DatasetInfo, split_name: str, data_dir: str | None):
  data_dir = data_dir or default_data_dir()
  command = _prepare_command(info.name, data_dir)
  builder = tfds.builder(info.tfds_full_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DataError(f'{info.name}: tfds data {info.tfds_full_name!r} not found '
                    f'in {builder.data_dir}; prepare it with: {command}')
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise DataError(
        f'{info.name}: {builder.data_dir} holds {builder.info.file_format} '
        f'files but reading without TensorFlow needs array_record; '
        f'prepare them with: {command}')
  if split_name not in builder.info.splits:
    raise DataError(f'{info.name}: split {split_name!r} missing in '
                    f'{builder.data_dir} (has {list(builder.info.splits)}).')
  # Leave every image encoded: our workers decode with PIL as the PyTorch
  # version does, and reading labels (few-shot) then costs no decoding.
  features = builder.info.features
  decoders = {key: tfds.decode.SkipDecoding() for key, feature in
              features.items() if isinstance(feature, tfds.features.Image)}
  data_source = builder.as_data_source(split=split_name, decoders=decoders)
  # The train split is opened by several loaders (training, label mapping);
  # read its labels once per process.
  key = (str(builder.data_dir), split_name)
  if key not in _LABEL_CACHE:
    _LABEL_CACHE[key] = TfdsSource(data_source).labels()
  return TfdsSource(data_source, labels=_LABEL_CACHE[key])


def _open_mock_tfds(info: DatasetInfo, split_name: str, num_examples: int):
  # mock_data patches tfds only inside the `with`; the data source it returns
  # keeps its fake generator and pickles, so it also serves spawned workers.
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    data_source = tfds.data_source(info.tfds_full_name, split=split_name)
  # Mock labels are uniform random; cycling through the classes instead
  # guarantees every class is present so few-shot budgets can be met.
  labels = np.arange(num_examples, dtype=np.int64) % info.num_classes
  return TfdsSource(data_source, labels=labels)


def open_split(
    info: DatasetInfo,
    split: str,
    *,
    data_dir: str | None = None,
    mock: bool = False,
    mock_num_examples: int = 64,
    source: str = 'auto',
    root: str | None = None,
) -> Split:
  """Opens the 'train' or 'test' split of a dataset.

  Args:
    info: the registry entry.
    split: 'train' or 'test' (mapped to the registry's split names).
    data_dir: tfds data directory; None means tfds's default.
    mock: serve mock examples instead of reading data.
    mock_num_examples: size of the mock source (before any hold-out cut).
    source: 'auto' (the registry's), 'tfds', 'folder' or 'torchvision'
      (then `data_dir` is the PyTorch scripts' `--data_path`).
    root: folder dataset location; None means `<data_dir>/folders/<name>`.

  Returns:
    The `Split`.

  Raises:
    DataError: bad `split`/`source`, or data not found / malformed.
  """
  if split not in ('train', 'test'):
    raise DataError(f"split must be 'train' or 'test', got {split!r}.")
  if source not in SOURCES:
    raise DataError(f'source must be one of {SOURCES}, got {source!r}.')
  kind = info.source if source == 'auto' else source
  if kind == 'tfds' and info.tfds_name is None:
    raise DataError(f'{info.name} is not in tfds; use source=folder.')
  # Folder trees always use `train/` and `test/`; the registry's split names
  # (and EuroSAT's hold-out cut) describe the tfds data.
  if kind in ('folder', 'torchvision'):
    split_name = split
  else:
    split_name = info.train_split if split == 'train' else info.test_split
  class_names = info.class_names
  holdout = False
  if kind == 'folder' and not mock:
    location = folder_root(info, data_dir, root)
    paths, labels, class_dirs = folder_lib.list_folder_split(
        location, split_name, dataset=info.name,
        num_classes=info.num_classes, folder_classes=info.folder_classes,
        prepare_hint='Prepare it with: ' + _prepare_command(
            info.name, data_dir or default_data_dir(), location))
    if info.folder_classes is None:
      class_names = class_dirs
    data = folder_lib.FolderSource(paths, labels)
  elif kind == 'torchvision' and not mock:
    if not data_dir:
      raise DataError(f'{info.name}: source=torchvision needs data_dir, the '
                      "PyTorch scripts' data root (--data_path).")
    root_split = torchvision_root.open_root_split(info, split, data_dir)
    data, holdout = root_split.source, root_split.needs_holdout
  elif kind in ('folder', 'torchvision'):
    data = SyntheticSource(mock_num_examples, info.num_classes)
  elif mock:
    data = _open_mock_tfds(info, split_name, mock_num_examples)
  else:
    data = _open_tfds(info, split_name, data_dir)
  all_labels = data.labels()
  indices = np.arange(len(all_labels), dtype=np.int64)
  if kind == 'tfds':
    holdout = info.holdout_fraction is not None
  if holdout:
    train, test = stratified_holdout(all_labels, info.holdout_fraction,
                                     info.holdout_seed)
    indices = train if split == 'train' else test
  return Split(source=data, indices=indices, labels=all_labels[indices],
               class_names=class_names)
