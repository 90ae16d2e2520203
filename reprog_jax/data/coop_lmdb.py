"""CoOp's datasets as the PyTorch version stored them: one LMDB per split.

The PyTorch code's `COOPLMDBDataset(root, split)` (data/dataset_lmdb.py)
opens `<root>/<split>.lmdb` (a directory or a single file), reads the
pickled `__len__` and `__keys__` entries, and for example i unpickles the
record at `__keys__[i]`: a tuple whose first item is the encoded image and
second the label. Its class names come from `<root>/split.json` (CoOp's
`split_zhou_*.json`): `{label: class name}` over the "test" entries
`[image, label, class name]`, in label order. We read the same files the
same way, with the `lmdb` package (`pip install 'reprog-jax[lmdb]'`), and
show the same class names ('Annual Crop Land', not the registry's
'AnnualCrop'); without a split.json, the registry's. Every value is a
pickle, read with `safe_pickle`: a record that would call code is refused.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np

from reprog_jax.data import safe_pickle
from reprog_jax.data.errors import DataError
from reprog_jax.data.errors import DataNotFound
from reprog_jax.data.registry import DatasetInfo

# The datasets the PyTorch version read only from CoOp's LMDB.
DATASETS = ('food101', 'sun397', 'ucf101', 'stanfordcars')
HOW_TO_GET = ("the PyTorch version's LMDB files (<name>/{train,test}.lmdb "
              "and split.json, written by its data preparation from CoOp's "
              'images and split_zhou_*.json)')

_UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError,
                    AttributeError, IndexError, KeyError)


def _lmdb():
  try:
    import lmdb  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise DataError("reading CoOp's LMDB files needs the lmdb package: pip "
                    "install 'reprog-jax[lmdb]' (or pip install lmdb).") from e
  return lmdb


# py-lmdb refuses to open one environment twice in a process: one handle
# per path, shared by every source (and its unpickled copies) here.
_ENVIRONMENTS: dict = {}


def _open_env(path: str):
  key = os.path.realpath(path)
  if key not in _ENVIRONMENTS:
    _ENVIRONMENTS[key] = _lmdb().open(
        path, subdir=os.path.isdir(path), readonly=True, lock=False,
        readahead=False, meminit=False)
  return _ENVIRONMENTS[key]


def _load(buffer, path: str, what: str, name: str):
  if buffer is None:
    raise DataError(f'{name}: {path} has no {what} entry; it is truncated or '
                    "not the PyTorch version's LMDB; write it again.")
  try:
    return safe_pickle.loads(buffer, what=f'{name}: {path}, {what}')
  except DataError:
    raise
  except _UNPICKLE_ERRORS as e:
    raise DataError(f'{name}: {path}: the {what} entry does not unpickle '
                    f'({type(e).__name__}); the file is truncated or '
                    'corrupt; write it again.') from e


class LmdbSource:
  """Random access to one split's LMDB: `{'image': bytes, 'label'}`.

  The environment is opened lazily in each process (an open LMDB handle
  does not survive pickling to a worker); labels are read once, up front.
  """

  def __init__(self, path: str, name: str, keys: list, labels: np.ndarray):
    self._path, self._name = path, name
    self._keys, self._labels = list(keys), np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self._keys)

  def __getitem__(self, index: int) -> dict:
    with _open_env(self._path).begin(write=False) as txn:
      record = _load(txn.get(self._keys[index]), self._path,
                     _record(index, self._keys[index]), self._name)
    return {'image': bytes(record[0]), 'label': self._labels[index]}

  def labels(self) -> np.ndarray:
    return self._labels.copy()

  def locate(self, index: int) -> str:
    """Where example `index` lives: the LMDB and its key."""
    return f'{self._path} key {self._keys[index]!r}'


def _record(index: int, key) -> str:
  return f'record {index} (key {key!r})'


def class_names(base: str, name: str) -> tuple[str, ...] | None:
  """`COOPLMDBDataset.classes`: split.json's test classes in label order;
  None without a split.json."""
  path = os.path.join(base, 'split.json')
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      test = json.load(f)['test']
    by_label = {entry[-2]: entry[-1] for entry in test}
  except (ValueError, KeyError, TypeError, IndexError) as e:
    raise DataError(f'{name}: {path} is not a CoOp split file '
                    '({"test": [[image, label, class name], ...]}).') from e
  return tuple(by_label[label] for label in sorted(by_label))


def open_lmdb_split(info: DatasetInfo, split: str,
                    base: str) -> tuple[LmdbSource, tuple[str, ...]]:
  """Reads `<base>/{train,test}.lmdb` as `COOPLMDBDataset` does.

  Returns:
    The split's source, and the class names: split.json's where there is
    one, else the registry's.

  Raises:
    DataNotFound: the split's LMDB is missing.
    DataError: a truncated LMDB or pickle, a record that would call code
      (naming the file and key), or a class count that differs from the
      registry's.
  """
  names = class_names(base, info.name)
  if names is None:
    names = info.class_names
  elif len(names) != info.num_classes:
    raise DataError(f'{info.name}: {os.path.join(base, "split.json")} '
                    f'defines {len(names)} classes, the registry expects '
                    f'{info.num_classes}; is this the right dataset?')
  path = os.path.join(base, f'{split}.lmdb')
  if not os.path.exists(path):
    raise DataNotFound(f'{info.name}: {path} not found; get it with '
                       f'{HOW_TO_GET}.')
  lmdb = _lmdb()
  labels = []
  try:
    env = _open_env(path)
    with env.begin(write=False) as txn:
      length = _load(txn.get(b'__len__'), path, '__len__', info.name)
      keys = _load(txn.get(b'__keys__'), path, '__keys__', info.name)
      if not isinstance(keys, (list, tuple)) or len(keys) < length:
        raise DataError(f'{info.name}: {path}: __keys__ lists fewer than '
                        f'__len__ = {length} keys; write it again.')
      keys = list(keys)[:length]
      # Labels up front: few-shot draws need them before any image.
      for i, key in enumerate(keys):
        record = _load(txn.get(key), path, _record(i, key), info.name)
        try:
          labels.append(int(record[1]))
        except (TypeError, IndexError, ValueError, KeyError) as e:
          raise DataError(f'{info.name}: {path}: {_record(i, key)} is not '
                          '(encoded image, label); write it again.') from e
  except lmdb.Error as e:
    raise DataError(f'{info.name}: {path} cannot be read as LMDB '
                    f'({type(e).__name__}: {e}); it is truncated or '
                    'corrupt.') from e
  labels = np.asarray(labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
    raise DataError(f'{info.name}: {path} has labels in [{labels.min()}, '
                    f'{labels.max()}], but the registry has '
                    f'{info.num_classes} classes.')
  return LmdbSource(path, info.name, keys, labels), names
