"""tfds files written from downloaded archives, without TensorFlow.

tfds's builders for these datasets hand NumPy images to `Image` features,
which encode them with TensorFlow. Everything else of tfds's writing path
(serialisation, the shuffle by example key, array_record shards,
`dataset_info.json`, `features.json`) needs no TensorFlow. So we run the
builder itself, with only its split generators replaced: they read the
already downloaded data (the python CIFAR archive, SVHN's `.mat` files, or
the PyTorch version's torchvision root) and yield the same examples, under
the same keys and ids, with images PNG-encoded by PIL (lossless: decoding
gives the same pixels). `tfds.data_source` then reads the result as if tfds
had written it.

The other builders (DTD, Flowers102, EuroSAT, Food-101, Cars196, Caltech101,
...) yield file paths, but read their lists through `tf.io.gfile` and get
their files from tfds's download manager (whose extractor calls TensorFlow
too). For them `write_from_archives` runs the builder's own split
generators with the builder module's `tf` replaced by `_GfileOnly` (the
standard library behind `tf.io.gfile`) and a download manager that serves
the given archives by file name and extracts them with tarfile/zipfile.
A builder that needs more of TensorFlow (SUN397 and Oxford-IIIT Pet decode
and re-encode images with it) fails in one line naming what it asked for.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import sys
import tarfile
import tempfile
import types
import urllib.parse
import zipfile

from etils import epath

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from reprog_jax.data import registry
from reprog_jax.data import torchvision_root
from reprog_jax.data.errors import DataError

# What --archive may be, per dataset.
ARCHIVES = {
    'cifar10': 'cifar-10-python.tar.gz, or the folder holding '
               'cifar-10-batches-py (torchvision root <ROOT>/cifar10)',
    'cifar100': 'cifar-100-python.tar.gz, or the folder holding '
                'cifar-100-python (torchvision root <ROOT>/cifar100)',
    'svhn': 'the folder holding train_32x32.mat and test_32x32.mat '
            '(extra_32x32.mat optional; torchvision root <ROOT>/svhn)',
}


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


@contextlib.contextmanager
def _unpacked(name: str, archive: str):
  """The folder `archive` is, or a temporary one it is extracted into."""
  archive = os.path.expanduser(archive)
  if os.path.isdir(archive):
    yield archive
    return
  if not os.path.isfile(archive) or name == 'svhn':
    raise DataError(f'{name}: --archive {archive} is not '
                    f'{ARCHIVES[name]}.')
  with tempfile.TemporaryDirectory() as folder:
    try:
      with tarfile.open(archive) as tar:
        tar.extractall(folder, filter='data')
    except (tarfile.TarError, EOFError, OSError) as e:
      raise DataError(f'{name}: {archive} is truncated or not a tar archive '
                      f'({type(e).__name__}); download it again.') from e
    yield folder


def _cifar_splits(builder, info, folder: str) -> dict:
  """The CIFAR builder's splits: keys 0.., ids 'train_00000', ..."""
  splits, names = {}, {}
  for split in ('train', 'test'):
    images, labels, meta = torchvision_root.read_cifar(info, split, folder)
    if info.name == 'cifar10':
      columns = {'label': labels['labels']}
      names = {'label': meta['label_names']}
    else:
      if 'coarse_labels' not in labels:
        raise DataError(f'{info.name}: {folder} pickles have no '
                        "'coarse_labels'; download the archive again.")
      columns = {'label': labels['fine_labels'],
                 'coarse_label': labels['coarse_labels']}
      names = {'label': meta['fine_label_names'],
               'coarse_label': meta.get('coarse_label_names')}
    splits[split] = _examples(images, columns, f'{split}_', 5)
  for key, values in names.items():
    if values is None:
      raise DataError(f'{info.name}: the meta file lacks the {key} names.')
    builder.info.features[key].names = list(values)
  return splits


def _svhn_splits(builder, info, folder: str) -> dict:
  del info  # The registry's 'svhn' is tfds's svhn_cropped.
  with_id = 'id' in builder.info.features
  splits = {}
  for split in ('train', 'test', 'extra'):
    path = os.path.join(folder, f'{split}_32x32.mat')
    if split == 'extra' and not os.path.exists(path):
      continue  # Never used by the paper; tfds's builder downloads it too.
    images, labels = torchvision_root.read_svhn_mat(path)
    splits[split] = _examples(images, {'label': labels},
                              f'{split}_' if with_id else None, 6)
  return splits


def _examples(images, columns, id_prefix, id_digits):
  for i, image in enumerate(images):
    record = {'image': _png(image)}
    record.update({key: int(values[i]) for key, values in columns.items()})
    if id_prefix is not None:
      record['id'] = f'{id_prefix}{i:0{id_digits}d}'
    yield i, record


def write_tfds(name: str, data_dir: str, archive: str) -> str:
  """Writes `name`'s tfds array_record files from a downloaded archive.

  Args:
    name: 'cifar10', 'cifar100' or 'svhn'.
    data_dir: the tfds data directory to write into.
    archive: see `ARCHIVES`.

  Returns:
    The folder written (`<data_dir>/<builder>/<version>`).

  Raises:
    DataError: an unsupported dataset, or a missing / truncated input.
  """
  if name not in ARCHIVES:
    raise DataError(f'{name}: --archive is for {", ".join(ARCHIVES)} (whose '
                    'tfds builders need TensorFlow to write); the others '
                    'are written by their tfds builder without it.')
  info = registry.get_dataset_info(name)
  builder = tfds.builder(info.tfds_full_name, data_dir=data_dir,
                         file_format='array_record')
  if builder.is_prepared():
    return str(builder.data_dir)
  make_splits = _cifar_splits if name.startswith('cifar') else _svhn_splits
  with _unpacked(name, archive) as folder:
    if name.startswith('cifar'):
      # The archive holds cifar-*-python/; accept that folder itself too.
      inner = os.path.basename(os.path.normpath(folder))
      if inner in ('cifar-10-batches-py', 'cifar-100-python'):
        folder = os.path.dirname(os.path.normpath(folder))
    # Arrays are read here, so a bad input fails before tfds starts; the
    # examples are encoded as tfds consumes them.
    splits = make_splits(builder, info, folder)
    # The builder's own writing path, fed our examples: an instance
    # attribute shadows the class's `_split_generators`.
    builder._split_generators = lambda dl_manager: splits  # pylint: disable=protected-access
    builder.download_and_prepare()
  return str(builder.data_dir)


class _GfileOnly:
  """What tfds builders use of TensorFlow to read files, without it."""

  def __init__(self, name: str):
    self._name = name
    self.io = types.SimpleNamespace(gfile=types.SimpleNamespace(
        GFile=lambda path, mode='r': open(os.fspath(path), mode),  # pylint: disable=unspecified-encoding
        exists=lambda path: os.path.exists(os.fspath(path)),
        isdir=lambda path: os.path.isdir(os.fspath(path)),
        listdir=lambda path: os.listdir(os.fspath(path)),
        glob=lambda pattern: sorted(glob.glob(os.fspath(pattern))),
        walk=lambda path: os.walk(os.fspath(path)),
        makedirs=lambda path: os.makedirs(os.fspath(path), exist_ok=True)))

  def __getattr__(self, attribute):
    raise DataError(f'{self._name}: its tfds builder needs TensorFlow '
                    f'(tf.{attribute}) to write its files; run prepare once '
                    'where `pip install tensorflow` is allowed, or use '
                    '--config.data.source=torchvision / folder.')


class _LocalDownloads:
  """tfds's download manager, serving the given archives by file name."""

  def __init__(self, name: str, archives: list[str], extract_dir: str,
               manager=None):
    """Serves `archives`; with none given, downloads through `manager`
    (tfds's own: its HTTP download needs no TensorFlow)."""
    self._name, self._extract_dir, self._manager = name, extract_dir, manager
    self._by_name = {}
    for archive in archives:
      archive = os.path.expanduser(archive)
      if not os.path.exists(archive):
        raise DataError(f'{name}: --archive {archive} not found.')
      self._by_name[os.path.basename(os.path.normpath(archive))] = archive

  def _local(self, url) -> epath.Path:
    url = str(getattr(url, 'url', url))
    file_name = os.path.basename(urllib.parse.urlparse(url).path)
    if not self._by_name and self._manager is not None:
      return epath.Path(self._manager.download(url))
    if file_name not in self._by_name:
      raise DataError(f'{self._name}: the tfds builder needs {url}; download '
                      f'it and pass --archive=<folder>/{file_name} (given: '
                      f'{", ".join(self._by_name) or "none"}).')
    return epath.Path(self._by_name[file_name])

  def _extracted(self, path: epath.Path) -> epath.Path:
    if path.is_dir():
      return path
    target = os.path.join(self._extract_dir, path.name)
    if os.path.isdir(target):
      return epath.Path(target)
    partial = target + '.incomplete'
    shutil.rmtree(partial, ignore_errors=True)
    try:
      if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
          archive.extractall(partial)
      elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
          archive.extractall(partial, filter='data')
      else:
        return path  # A plain file (.mat, .txt, ...): used as it is.
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
      raise DataError(f'{self._name}: {path} is truncated or not an archive '
                      f'({type(e).__name__}); download it again.') from e
    os.replace(partial, target)
    return epath.Path(target)

  def download(self, urls):
    return tfds.core.utils.map_nested(self._local, urls)

  def extract(self, paths):
    return tfds.core.utils.map_nested(
        lambda p: self._extracted(epath.Path(getattr(p, 'path', p))), paths)

  def download_and_extract(self, urls):
    return self.extract(self.download(urls))

  @property
  def manual_dir(self):
    return epath.Path(self._extract_dir)


def write_from_archives(name: str, data_dir: str,
                        archives: list[str]) -> str:
  """Writes a tfds builder's files from downloaded archives, no TensorFlow.

  Args:
    name: a registry name whose data is in tfds.
    data_dir: the tfds data directory to write into.
    archives: the files the builder downloads (matched by file name), or
      folders already extracted under those names; none: tfds downloads
      them (over HTTP, which needs no TensorFlow).

  Returns:
    The folder written.

  Raises:
    DataError: a missing or bad archive, or a builder that needs TensorFlow
      for more than reading files.
  """
  if name in ARCHIVES:
    if len(archives) != 1:
      raise DataError(f'{name}: give one --archive: {ARCHIVES[name]}.')
    return write_tfds(name, data_dir, archives[0])
  info = registry.get_dataset_info(name)
  if info.tfds_name is None:
    raise DataError(f'{name} is not in tfds; --archive does not apply.')
  builder = tfds.builder(info.tfds_full_name, data_dir=data_dir,
                         file_format='array_record')
  if builder.is_prepared():
    return str(builder.data_dir)
  extract_dir = os.path.join(data_dir, 'downloads', 'extracted', name)
  os.makedirs(extract_dir, exist_ok=True)
  # Every module of the builder's class hierarchy that imported `tf`.
  modules = [sys.modules[c.__module__] for c in type(builder).__mro__
             if hasattr(sys.modules.get(c.__module__), 'tf')]
  saved = [(module, module.tf) for module in modules]
  original = type(builder)._split_generators  # pylint: disable=protected-access
  builder._split_generators = lambda dl_manager: original(  # pylint: disable=protected-access
      builder, _LocalDownloads(name, archives, extract_dir, dl_manager))
  try:
    for module in modules:
      module.tf = _GfileOnly(name)
    builder.download_and_prepare()
  finally:
    for module, tf in saved:
      module.tf = tf
  return str(builder.data_dir)
