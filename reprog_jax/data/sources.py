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

Every source also says where example i lives (`locate(i)`: a file, an LMDB
key, a tfds record), so that a file that does not decode is named.

EuroSAT is one set cut in two (`stratified_holdout`) over its images in
torchvision's `ImageFolder` order, whichever source reads it: tfds's
examples are put in that order by their file names, so both sources hold
out the same images.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from reprog_jax.data import folder as folder_lib
from reprog_jax.data import torchvision_root
from reprog_jax.data.errors import DataError
from reprog_jax.data.errors import DataNotFound
from reprog_jax.data.fewshot import stratified_holdout
from reprog_jax.data.registry import DatasetInfo

SOURCES = ('auto', 'tfds', 'folder', 'torchvision')

# (tfds data dir, split) -> {'label': ..., 'filename': ...} read once.
_COLUMN_CACHE: dict[tuple[str, str], dict[str, np.ndarray]] = {}


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

  def __init__(self, data_source, labels: np.ndarray | None = None,
               where: str = 'tfds'):
    """Wraps a tfds data source.

    Args:
      data_source: what `tfds.data_source` returned.
      labels: every example's label if already known (mock labels, or a
        cached read); None reads them from the records when asked.
      where: the split's files, for `locate`.
    """
    self._source = data_source
    self._labels = labels
    self._where = where

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
    return self.columns(('label',))['label']

  def columns(self, names) -> dict[str, np.ndarray]:
    """Some scalar features of every example (e.g. 'label', 'filename'),
    read in chunks of records (images undecoded)."""
    out, chunk = {name: [] for name in names}, 2048
    for start in range(0, len(self), chunk):
      keys = list(range(start, min(start + chunk, len(self))))
      for example in self._source.__getitems__(keys):
        for name in names:
          value = example[name]
          out[name].append(value.decode() if isinstance(value, bytes)
                           else value)
    return {name: np.asarray(values, np.int64 if name == 'label' else None)
            for name, values in out.items()}

  def locate(self, index: int) -> str:
    """Where example `index` lives: its record in the split's files."""
    return f'{self._where} record {index}'


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

  def locate(self, index: int) -> str:
    return f'synthetic image {index}'


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset, ready for few-shot sampling and loading.

  Attributes:
    source: random-access source of `{'image', 'label'}` items, with
      `locate(i)`: where item i lives.
    indices: the split's examples as indices into `source` (the whole source
      unless the registry cuts a hold-out out of it).
    labels: the label of each of those examples, aligned with `indices`.
    class_names: names in label order.
    dataset: the registry name.
    name: 'train' or 'test'.
    doctor: the command that lists every unreadable file of the dataset
      (empty for mock data), for error lines.
  """
  source: object
  indices: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  dataset: str = ''
  name: str = ''
  doctor: str = ''


def _prepare_command(*args) -> str:
  # Imported here: `python -m reprog_jax.data.prepare` must not find its
  # module already imported by the package (runpy warns about that).
  from reprog_jax.data import prepare
  return prepare.prepare_command(*args)


def _open_tfds(info: DatasetInfo, split_name: str, data_dir: str | None
               ) -> tuple[TfdsSource, np.ndarray | None]:
  """The split's source, and its examples in ImageFolder order where the
  registry cuts a hold-out out of it (None elsewhere)."""
  data_dir = data_dir or default_data_dir()
  command = _prepare_command(info.name, data_dir)
  builder = tfds.builder(info.tfds_full_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DataNotFound(f'{info.name}: tfds data {info.tfds_full_name!r} not '
                       f'found in {builder.data_dir}; prepare it with: '
                       f'{command}')
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
  # read its labels (and EuroSAT's file names) once per process.
  names = ('label',)
  if info.holdout_fraction is not None and 'filename' in features:
    names += ('filename',)
  key = (str(builder.data_dir), split_name)
  if key not in _COLUMN_CACHE:
    _COLUMN_CACHE[key] = TfdsSource(data_source).columns(names)
  columns = _COLUMN_CACHE[key]
  source = TfdsSource(data_source, labels=columns['label'],
                      where=f'{builder.data_dir} {split_name}')
  order = (imagefolder_order(columns['label'], columns['filename'],
                             info.class_names)
           if 'filename' in columns else None)
  return source, order


def imagefolder_order(labels: np.ndarray, filenames: np.ndarray,
                      class_names) -> np.ndarray:
  """Examples in the order torchvision's `ImageFolder` lists their files.

  ImageFolder walks the sorted class folders and, in each, the sorted file
  names; tfds names each class folder after its class and keeps each
  example's file name, so sorting by (class name, file name) puts tfds's
  examples in ImageFolder's order.

  Args:
    labels: int (N,), the examples' labels.
    filenames: (N,) their file names.
    class_names: the names of the labels (the class folders).

  Returns:
    int64 (N,): the example indices, in ImageFolder order.
  """
  keys = [(class_names[label], str(name))
          for label, name in zip(labels, filenames)]
  return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), np.int64)


def doctor_command(name: str, kind: str, data_dir: str | None,
                   root: str | None = None) -> str:
  """The doctor's command line for one dataset read from `kind`."""
  command = (f'python -m reprog_jax.data.doctor '
             f'{data_dir or default_data_dir()} --source {kind} '
             f'--datasets {name}')
  return command + (f' --folder_root {root}' if root else '')


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
    The `Split`. Where the registry cuts a hold-out (EuroSAT), its
    `indices` are that part of the examples in `stratified_holdout`'s
    order, cut over the examples in ImageFolder order.

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
  # The source's examples in ImageFolder order, where it differs from the
  # source's own (tfds EuroSAT): the hold-out is cut over that order.
  order = None
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
    class_names = root_split.class_names or class_names
  elif kind in ('folder', 'torchvision'):
    data = SyntheticSource(mock_num_examples, info.num_classes)
  elif mock:
    data = _open_mock_tfds(info, split_name, mock_num_examples)
  else:
    data, order = _open_tfds(info, split_name, data_dir)
  all_labels = data.labels()
  indices = np.arange(len(all_labels), dtype=np.int64)
  if kind == 'tfds':
    holdout = info.holdout_fraction is not None
  if holdout:
    if order is None:
      order = indices
    try:
      train, test = stratified_holdout(all_labels[order],
                                       info.holdout_fraction,
                                       info.holdout_seed)
    except DataError as e:
      raise DataError(f'{info.name}: {e}') from e
    indices = order[train if split == 'train' else test]
  return Split(source=data, indices=indices, labels=all_labels[indices],
               class_names=tuple(class_names), dataset=info.name, name=split,
               doctor='' if mock else doctor_command(info.name, kind,
                                                     data_dir, root))
