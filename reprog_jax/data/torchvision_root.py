"""The PyTorch version's data root, read as it is (no torchvision import).

The PyTorch scripts call `prepare_expansive_data(args, dataset, data_path)`,
which builds each dataset at `<data_path>/<name>`: torchvision's downloads
(CIFAR pickles, SVHN `.mat`, GTSRB folders and CSV, DTD partition 1,
Flowers102 `.mat` files, Oxford-IIIT Pet lists, EuroSAT folders) and CoOp's
LMDB files (`coop_lmdb.py`). `open_root_split(info, split, root)` reads one
split of `<root>/<name>` with the labels, class order and example order that
torchvision's dataset class (or `COOPLMDBDataset`) gives for the same files,
so that after our Resize and [0, 1] scaling the pixels equal theirs.

EuroSAT is one set in torchvision: `RootSplit.needs_holdout` tells the caller
to cut the registry's stratified 90/10 split out of it (the split the
PyTorch code meant; see the registry notes). CIFAR's pickles are read with
`safe_pickle` (a root whose pickle would call code is refused).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle

import numpy as np

from reprog_jax.data import coop_lmdb
from reprog_jax.data import folder as folder_lib
from reprog_jax.data import safe_pickle
from reprog_jax.data.errors import DataError
from reprog_jax.data.errors import DataNotFound
from reprog_jax.data.registry import DatasetInfo


@dataclasses.dataclass(frozen=True)
class RootSplit:
  """One split read from the root.

  Attributes:
    source: random-access `{'image', 'label'}` items (uint8 arrays or
      encoded bytes) with `labels()`.
    needs_holdout: the files hold one set (EuroSAT); the caller cuts the
      registry's hold-out out of it for both 'train' and 'test'.
    class_names: the names the files give the classes (a CoOp LMDB's
      split.json), or None for the registry's.
  """
  source: object
  needs_holdout: bool = False
  class_names: tuple[str, ...] | None = None


class ArraySource:
  """Decoded uint8 images (N, H, W, 3) held in memory, with their labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               where: str = ''):
    if len(images) != len(labels):
      raise ValueError('images and labels differ in length.')
    self._images = images
    self._labels = np.asarray(labels, np.int64)
    self._where = where

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index: int) -> dict:
    return {'image': self._images[index], 'label': self._labels[index]}

  def labels(self) -> np.ndarray:
    return self._labels.copy()

  def locate(self, index: int) -> str:
    """Where example `index` came from (the files it was read from)."""
    return f'{self._where} image {index}'


# What to run in the PyTorch environment when a file is missing.
_DOWNLOAD = {
    'cifar10': 'torchvision.datasets.CIFAR10(ROOT/cifar10, download=True)',
    'cifar100': 'torchvision.datasets.CIFAR100(ROOT/cifar100, download=True)',
    'svhn': "torchvision.datasets.SVHN(ROOT/svhn, split='train'/'test', "
            'download=True)',
    'gtsrb': "torchvision.datasets.GTSRB(ROOT/gtsrb, split='train'/'test', "
             'download=True)',
    'dtd': 'torchvision.datasets.DTD(ROOT/dtd, download=True)',
    'flowers102': 'torchvision.datasets.Flowers102(ROOT/flowers102, '
                  'download=True)',
    'oxfordpets': 'torchvision.datasets.OxfordIIITPet(ROOT/oxfordpets, '
                  'download=True)',
    'eurosat': 'torchvision.datasets.EuroSAT(ROOT/eurosat, download=True)',
}


# What `<root>/<name>` must hold, per dataset (the doctor shows it).
LAYOUT = {
    'cifar10': 'cifar10/cifar-10-batches-py/ (the python pickles)',
    'cifar100': 'cifar100/cifar-100-python/',
    'svhn': 'svhn/train_32x32.mat, svhn/test_32x32.mat',
    'gtsrb': 'gtsrb/gtsrb/GTSRB/Training/<class id>/*.ppm, '
             'gtsrb/gtsrb/GTSRB/Final_Test/Images/, '
             'gtsrb/gtsrb/GT-final_test.csv',
    'dtd': 'dtd/dtd/dtd/images/, dtd/dtd/dtd/labels/{train,test}1.txt',
    'flowers102': 'flowers102/flowers-102/jpg/, imagelabels.mat, setid.mat',
    'oxfordpets': 'oxfordpets/oxford-iiit-pet/images/, '
                  'annotations/{trainval,test}.txt',
    'eurosat': 'eurosat/eurosat/2750/<class>/*.jpg',
}
for _name in coop_lmdb.DATASETS:
  LAYOUT[_name] = f'{_name}/{{train,test}}.lmdb, {_name}/split.json (CoOp LMDB)'


def reads(name: str) -> bool:
  """Whether the PyTorch version read `name` from its data root."""
  return name in LAYOUT


def _require(path: str, name: str) -> str:
  """Returns `path`, or raises the one-line error naming what to fetch."""
  if not os.path.exists(path):
    how = _DOWNLOAD.get(name, coop_lmdb.HOW_TO_GET)
    raise DataNotFound(f'{name}: {path} not found (torchvision data root); '
                       f'get it with {how}, or pick another data_dir.')
  return path


def _check_labels(name: str, labels: np.ndarray, num_classes: int,
                  where: str) -> np.ndarray:
  labels = np.asarray(labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f'{name}: {where} has labels in [{labels.min()}, '
                    f'{labels.max()}], but the registry has {num_classes} '
                    'classes.')
  return labels


def _check_class_count(name: str, found: int, expected: int, where: str):
  if found != expected:
    raise DataError(f'{name}: {where} defines {found} classes, the registry '
                    f'expects {expected}; is this the right dataset?')


def _unpickle(path: str, name: str):
  # CIFAR's batches are Python 2 pickles of dicts, lists, str and a NumPy
  # array: `safe_pickle` admits that and refuses a pickle that calls code.
  try:
    with open(path, 'rb') as f:
      return safe_pickle.load(f, what=f'{name}: {path}', encoding='latin1')
  except DataError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
          AttributeError, IndexError) as e:
    raise DataError(f'{name}: {path} is truncated or not a CIFAR pickle '
                    f'({type(e).__name__}); download it again.') from e


def read_cifar(info: DatasetInfo, split: str,
               base: str) -> tuple[np.ndarray, dict, dict]:
  """torchvision.datasets.CIFAR10/100's data: the python pickles, in order.

  Args:
    info: the registry entry of 'cifar10' or 'cifar100'.
    split: 'train' or 'test'.
    base: the folder holding `cifar-10-batches-py` / `cifar-100-python`.

  Returns:
    (images, labels, meta): uint8 (N, 32, 32, 3); every label list of the
    pickles by its key ('labels', or 'fine_labels' and 'coarse_labels') as
    int64 arrays; the meta pickle (class names).
  """
  if info.name == 'cifar10':
    folder, meta, names_key = 'cifar-10-batches-py', 'batches.meta', (
        'label_names')
    files = ([f'data_batch_{i}' for i in range(1, 6)] if split == 'train'
             else ['test_batch'])
  else:
    folder, meta, names_key = 'cifar-100-python', 'meta', 'fine_label_names'
    files = ['train' if split == 'train' else 'test']
  directory = os.path.join(base, folder)
  meta_path = _require(os.path.join(directory, meta), info.name)
  meta_entry = _unpickle(meta_path, info.name)
  if not isinstance(meta_entry, dict) or names_key not in meta_entry:
    raise DataError(f'{info.name}: {meta_path} has no {names_key!r}; '
                    'download it again.')
  _check_class_count(info.name, len(meta_entry[names_key]), info.num_classes,
                     meta_path)
  images, labels = [], {}
  for file_name in files:
    path = _require(os.path.join(directory, file_name), info.name)
    entry = _unpickle(path, info.name)
    keys = [k for k in ('labels', 'fine_labels', 'coarse_labels')
            if isinstance(entry, dict) and k in entry]
    if not isinstance(entry, dict) or 'data' not in entry or not keys:
      raise DataError(f'{info.name}: {path} has no data/labels; download it '
                      'again.')
    # Rows are 3072 bytes, channel-major (R plane, G, B): torchvision's
    # reshape to (N, 3, 32, 32) then transpose to HWC.
    images.append(np.asarray(entry['data'], np.uint8).reshape(
        -1, 3, 32, 32).transpose(0, 2, 3, 1))
    for key in keys:
      labels.setdefault(key, []).extend(entry[key])
  labels = {k: np.asarray(v, np.int64) for k, v in labels.items()}
  return np.concatenate(images), labels, meta_entry


def _cifar(info: DatasetInfo, split: str, base: str) -> RootSplit:
  images, labels, _ = read_cifar(info, split, base)
  key = 'labels' if info.name == 'cifar10' else 'fine_labels'
  if key not in labels:
    raise DataError(f'{info.name}: {base} pickles have no {key!r}; is this '
                    'the right dataset?')
  labels = _check_labels(info.name, labels[key], info.num_classes, base)
  return RootSplit(ArraySource(images, labels,
                               where=f'{base} ({split} pickles)'))


def read_svhn_mat(path: str, name: str = 'svhn') -> tuple[np.ndarray,
                                                         np.ndarray]:
  """SVHN's `X` (32, 32, 3, N) and `y` (N, 1) as HWC images and labels 0..9."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  _require(path, name)
  try:
    mat = scipy.io.loadmat(path)
    images = np.ascontiguousarray(np.transpose(mat['X'], (3, 0, 1, 2)))
    labels = mat['y'].astype(np.int64).reshape(-1)
  except (ValueError, TypeError, KeyError, OSError, EOFError) as e:
    raise DataError(f'{name}: {path} is truncated or not an SVHN .mat file '
                    f'({type(e).__name__}); download it again.') from e
  # torchvision maps the digit 0's label 10 to 0.
  labels[labels == 10] = 0
  return images.astype(np.uint8), labels


def _svhn(info: DatasetInfo, split: str, base: str) -> RootSplit:
  path = os.path.join(base, f'{split}_32x32.mat')
  images, labels = read_svhn_mat(path, info.name)
  labels = _check_labels(info.name, labels, info.num_classes, base)
  return RootSplit(ArraySource(images, labels, where=path))


def _gtsrb(info: DatasetInfo, split: str, base: str) -> RootSplit:
  base = os.path.join(base, 'gtsrb')
  if split == 'train':
    # torchvision's make_dataset: sorted class folders, then every .ppm
    # below each (sorted walk); the label is the class folder's rank.
    train_dir = _require(os.path.join(base, 'GTSRB', 'Training'), info.name)
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    _check_class_count(info.name, len(classes), info.num_classes, train_dir)
    paths, labels = [], []
    for label, class_dir in enumerate(classes):
      for directory, _, files in sorted(os.walk(os.path.join(train_dir,
                                                             class_dir))):
        for file_name in sorted(files):
          if file_name.lower().endswith('.ppm'):
            paths.append(os.path.join(directory, file_name))
            labels.append(label)
  else:
    test_dir = os.path.join(base, 'GTSRB', 'Final_Test', 'Images')
    csv_path = _require(os.path.join(base, 'GT-final_test.csv'), info.name)
    try:
      with open(csv_path, newline='') as f:
        rows = [(os.path.join(test_dir, row['Filename']), int(row['ClassId']))
                for row in csv.DictReader(f, delimiter=';',
                                          skipinitialspace=True)]
    except (KeyError, ValueError, TypeError) as e:
      raise DataError(f'{info.name}: {csv_path} is not GTSRB\'s test CSV '
                      f'(Filename;...;ClassId); download it again.') from e
    paths = [path for path, _ in rows]
    labels = [label for _, label in rows]
  return _files(info, paths, labels, base)


def _files(info: DatasetInfo, paths: list[str], labels, where: str,
           needs_holdout: bool = False) -> RootSplit:
  labels = _check_labels(info.name, labels, info.num_classes, where)
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    _require(missing[0], info.name)
  return RootSplit(folder_lib.FolderSource(paths, labels), needs_holdout)


def _read_lines(path: str, name: str) -> list[str]:
  with open(_require(path, name)) as f:
    return [line.strip() for line in f if line.strip()]


def _dtd(info: DatasetInfo, split: str, base: str) -> RootSplit:
  # torchvision.datasets.DTD, partition 1: `labels/{split}1.txt` lists
  # "class/file"; labels index the sorted classes of that list.
  data = os.path.join(base, 'dtd', 'dtd')
  list_path = os.path.join(data, 'labels', f'{split}1.txt')
  entries = [line.split('/') for line in _read_lines(list_path, info.name)]
  if any(len(e) != 2 for e in entries):
    raise DataError(f'{info.name}: {list_path} must list "class/file" lines.')
  classes = sorted({c for c, _ in entries})
  _check_class_count(info.name, len(classes), info.num_classes, list_path)
  index = {c: i for i, c in enumerate(classes)}
  return _files(info, [os.path.join(data, 'images', c, f) for c, f in entries],
                [index[c] for c, _ in entries], list_path)


def _flowers102(info: DatasetInfo, split: str, base: str) -> RootSplit:
  import scipy.io  # pylint: disable=g-import-not-at-top
  base = os.path.join(base, 'flowers-102')
  mats = {}
  for file_name in ('imagelabels.mat', 'setid.mat'):
    path = _require(os.path.join(base, file_name), info.name)
    try:
      mats[file_name] = scipy.io.loadmat(path, squeeze_me=True)
    except (ValueError, TypeError, OSError, EOFError) as e:
      raise DataError(f'{info.name}: {path} is truncated or not a .mat file '
                      f'({type(e).__name__}); download it again.') from e
  try:
    ids = np.atleast_1d(mats['setid.mat']['trnid' if split == 'train'
                                          else 'tstid']).astype(np.int64)
    all_labels = np.atleast_1d(mats['imagelabels.mat']['labels']).astype(
        np.int64) - 1
  except KeyError as e:
    raise DataError(f'{info.name}: {base} .mat files lack {e}; download '
                    'them again.') from e
  if ids.size and (ids.min() < 1 or ids.max() > all_labels.size):
    raise DataError(f'{info.name}: setid.mat names images beyond the '
                    f'{all_labels.size} of imagelabels.mat.')
  return _files(info, [os.path.join(base, 'jpg', f'image_{i:05d}.jpg')
                       for i in ids], all_labels[ids - 1], base)


def _oxfordpets(info: DatasetInfo, split: str, base: str) -> RootSplit:
  # torchvision.datasets.OxfordIIITPet: "image_id class_id species breed"
  # lines; the label is class_id - 1.
  base = os.path.join(base, 'oxford-iiit-pet')
  list_path = os.path.join(base, 'annotations',
                           'trainval.txt' if split == 'train' else 'test.txt')
  rows = [line.split() for line in _read_lines(list_path, info.name)]
  try:
    entries = [(row[0], int(row[1]) - 1) for row in rows]
  except (IndexError, ValueError) as e:
    raise DataError(f'{info.name}: {list_path} must hold "image_id class_id '
                    'species breed_id" lines.') from e
  return _files(info, [os.path.join(base, 'images', f'{i}.jpg')
                       for i, _ in entries],
                [label for _, label in entries], list_path)


def _eurosat(info: DatasetInfo, split: str, base: str) -> RootSplit:
  del split  # One set: the caller cuts the hold-out.
  # torchvision.datasets.EuroSAT is an ImageFolder over eurosat/2750.
  directory = _require(os.path.join(base, 'eurosat', '2750'), info.name)
  classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
  _check_class_count(info.name, len(classes), info.num_classes, directory)
  paths, labels = [], []
  for label, class_dir in enumerate(classes):
    for root, _, files in sorted(os.walk(os.path.join(directory, class_dir))):
      for file_name in sorted(files):
        if file_name.lower().endswith(folder_lib.IMAGE_EXTENSIONS):
          paths.append(os.path.join(root, file_name))
          labels.append(label)
  return _files(info, paths, labels, directory, needs_holdout=True)


_READERS = {
    'cifar10': _cifar, 'cifar100': _cifar, 'svhn': _svhn, 'gtsrb': _gtsrb,
    'dtd': _dtd, 'flowers102': _flowers102, 'oxfordpets': _oxfordpets,
    'eurosat': _eurosat,
}


def open_root_split(info: DatasetInfo, split: str, root: str) -> RootSplit:
  """Reads 'train' or 'test' of `<root>/<info.name>`.

  A dataset folder holding CoOp's `train.lmdb` is read as LMDB whatever the
  dataset (later PyTorch versions stored DTD, Flowers102, Pets and EuroSAT
  that way too); otherwise torchvision's files are expected.

  Args:
    info: the registry entry.
    split: 'train' or 'test'.
    root: the PyTorch scripts' `--data_path`.

  Returns:
    The `RootSplit`.

  Raises:
    DataError: a missing or malformed file, or a class count that is not the
      registry's.
  """
  base = os.path.join(os.path.expanduser(root), info.name)
  if os.path.exists(os.path.join(base, 'train.lmdb')) or (
      info.name not in _READERS and info.name in coop_lmdb.DATASETS):
    source, class_names = coop_lmdb.open_lmdb_split(info, split, base)
    return RootSplit(source, class_names=class_names)
  if info.name not in _READERS:
    raise DataError(f'{info.name}: the PyTorch version did not read it from '
                    'a torchvision data root; use source=tfds or folder.')
  return _READERS[info.name](info, split, base)
