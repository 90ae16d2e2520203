"""tfds files for CIFAR-10/100 and SVHN, written without TensorFlow.

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
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile

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

