"""Datasets stored as a folder tree: `root/<split>/<class>/<image>`.

This is what tfds's `ImageFolder` builder reads, but that builder needs
TensorFlow, so this module is the equivalent: it lists the tree once in the
main process and serves `{'image': encoded bytes, 'label': int}` by index, so
decoding happens in the loader's workers like for tfds data.

Labels follow the registry's `folder_classes` when it fixes the class
directory names (GTSRB's `00000`..`00042`, UCF101's action names); otherwise
the sorted directory names, torchvision's `ImageFolder` rule.
"""

from __future__ import annotations

from collections.abc import Sequence
import os

import numpy as np

from reprog_jax.data.errors import DataError
from reprog_jax.data.errors import DataNotFound

# torchvision's ImageFolder extensions, so the same trees work in both.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                    '.tiff', '.webp')


def _subdirectories(path: str) -> list[str]:
  return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())


def list_folder_split(
    root: str,
    split: str,
    *,
    dataset: str,
    num_classes: int,
    folder_classes: Sequence[str] | None = None,
    prepare_hint: str = '',
) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
  """Lists the images of one split of a folder dataset.

  Args:
    root: the dataset's folder; the split is `root/<split>`.
    split: subdirectory name, e.g. 'train'.
    dataset: registry name, for error messages.
    num_classes: the number of class directories expected.
    folder_classes: the expected class directory names in label order, or
      None to take the sorted directory names.
    prepare_hint: appended to the "not found" message (how to prepare it).

  Returns:
    (paths, labels, class_dirs): image paths sorted by class then file name,
    their int64 labels, and the class directory names in label order.

  Raises:
    DataNotFound: if the split directory is missing.
    DataError: if its class directories are not the expected ones, or a
      class directory holds no image.
  """
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise DataNotFound(f'{dataset}: no folder split at {split_dir}.'
                       + (f' {prepare_hint}' if prepare_hint else ''))
  found = _subdirectories(split_dir)
  if folder_classes is not None:
    missing = [c for c in folder_classes if c not in found]
    extra = [c for c in found if c not in folder_classes]
    if missing or extra:
      raise DataError(
          f'{dataset}: {split_dir} must hold exactly the {num_classes} class '
          f'directories of the registry; missing {missing[:3]} '
          f'({len(missing)}), unexpected {extra[:3]} ({len(extra)}).')
    class_dirs = tuple(folder_classes)
  else:
    if len(found) != num_classes:
      raise DataError(f'{dataset}: {split_dir} holds {len(found)} class '
                      f'directories, expected {num_classes}.')
    class_dirs = tuple(found)
  paths, labels = [], []
  for label, class_dir in enumerate(class_dirs):
    class_path = os.path.join(split_dir, class_dir)
    files = sorted(f for f in os.listdir(class_path)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise DataError(f'{dataset}: class directory {class_path} holds no '
                      f'image ({", ".join(IMAGE_EXTENSIONS)}).')
    paths.extend(os.path.join(class_path, f) for f in files)
    labels.extend([label] * len(files))
  return paths, np.asarray(labels, np.int64), class_dirs


class FolderSource:
  """Random access to a listed folder split: `{'image': bytes, 'label'}`.

  Reading returns the file's bytes undecoded, so decoding runs wherever the
  item is consumed (the loader's worker processes).
  """

  def __init__(self, paths: Sequence[str], labels: np.ndarray):
    if len(paths) != len(labels):
      raise ValueError('paths and labels differ in length.')
    self._paths = list(paths)
    self._labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict:
    with open(self._paths[index], 'rb') as f:
      return {'image': f.read(), 'label': self._labels[index]}

  def labels(self) -> np.ndarray:
    """The label of every example, without reading an image."""
    return self._labels.copy()

  def locate(self, index: int) -> str:
    """The file of example `index`."""
    return self._paths[index]
