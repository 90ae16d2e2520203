"""The paper's 13 target datasets: where each comes from and how it is split.

Names are the PyTorch version's. Each entry says which tensorflow-datasets
(tfds) builder holds the data and which of its splits play "train" and
"test", or, where tfds has no such data (GTSRB, UCF101 frames), that it is
read from a folder tree `root/<split>/<class>/<image>` (see `folder.py`).
`notes` records every place where the split is not the PyTorch version's,
including where its code did not do what it meant (EuroSAT); the README's
"Differences from the PyTorch version" lists them all, with its few-shot
sampler (which drew nothing for list-labelled datasets) and its "ECE".
"""

from __future__ import annotations

import dataclasses
import functools

import tensorflow_datasets as tfds

from reprog_jax.data.errors import DataError

_CIFAR10_CLASSES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
    'ship', 'truck')

# tfds reads the CIFAR-100 names from the downloaded archive, so its builder
# code only knows "0".."99"; these are the archive's names, in label order.
_CIFAR100_CLASSES = (
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle',
    'bicycle', 'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel',
    'can', 'castle', 'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock',
    'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur',
    'dolphin', 'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster',
    'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion',
    'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain',
    'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree',
    'pear', 'pickup_truck', 'pine_tree', 'plain', 'plate', 'poppy',
    'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket',
    'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail',
    'snake', 'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet_pepper',
    'table', 'tank', 'telephone', 'television', 'tiger', 'tractor', 'train',
    'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf',
    'woman', 'worm')

# The meaning of GTSRB's class ids 0..42; its folders are named by the id.
_GTSRB_CLASSES = (
    'speed limit 20', 'speed limit 30', 'speed limit 50', 'speed limit 60',
    'speed limit 70', 'speed limit 80', 'end of speed limit 80',
    'speed limit 100', 'speed limit 120', 'no passing',
    'no passing for trucks', 'right of way at next intersection',
    'priority road', 'yield', 'stop', 'no vehicles', 'no trucks', 'no entry',
    'general caution', 'curve to the left', 'curve to the right',
    'double curve', 'bumpy road', 'slippery road', 'road narrows on the right',
    'road work', 'traffic signals', 'pedestrians', 'children crossing',
    'bicycles crossing', 'ice or snow', 'wild animals crossing',
    'end of all limits', 'turn right ahead', 'turn left ahead', 'ahead only',
    'straight or right', 'straight or left', 'keep right', 'keep left',
    'roundabout', 'end of no passing', 'end of no passing for trucks')


def _ucf101_classes() -> tuple[str, ...]:
  # tfds ships UCF101's official class list (classInd order, which CoOp's
  # labels follow too) even though its video builder needs TensorFlow.
  path = tfds.core.tfds_path('video/ucf101_labels.txt')
  return tuple(line.strip() for line in path.read_text().splitlines()
               if line.strip())


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the pipeline needs to know about one target dataset.

  Attributes:
    name: the PyTorch version's name, e.g. 'oxfordpets'.
    tfds_name: the tfds builder, e.g. 'eurosat'; None for folder-only data.
    tfds_config: the builder config, e.g. 'rgb', or None.
    train_split: the tfds split (or folder subdirectory) used for training.
    test_split: the tfds split (or folder subdirectory) used for testing.
    num_classes: number of target classes T.
    class_names: T names, in label order.
    vp_size: side of the image inside the visual prompt (32 or 128).
    holdout_fraction: if set, train and test are one split cut in two: a
      stratified `holdout_fraction` is the test set (`stratified_holdout`:
      scikit-learn's `train_test_split`, over the examples in
      torchvision's `ImageFolder` order).
    holdout_seed: `random_state` of that cut.
    folder_classes: for folder datasets, the class directory names in label
      order; None means "sorted directory names" (torchvision's rule).
    notes: how this differs from the PyTorch version's data, if at all.
  """
  name: str
  tfds_name: str | None
  tfds_config: str | None
  train_split: str
  test_split: str
  num_classes: int
  class_names: tuple[str, ...]
  vp_size: int
  holdout_fraction: float | None = None
  holdout_seed: int = 1
  folder_classes: tuple[str, ...] | None = None
  notes: str = ''

  @property
  def source(self) -> str:
    """'tfds' or 'folder': where the data is read from by default."""
    return 'folder' if self.tfds_name is None else 'tfds'

  @property
  def tfds_full_name(self) -> str | None:
    """The name `tfds.data_source` takes, e.g. 'eurosat/rgb'."""
    if self.tfds_name is None:
      return None
    if self.tfds_config is None:
      return self.tfds_name
    return f'{self.tfds_name}/{self.tfds_config}'


@dataclasses.dataclass(frozen=True)
class _Spec:
  """A registry entry; class names come from tfds unless given here."""
  tfds_name: str | None
  tfds_config: str | None
  train_split: str
  test_split: str
  num_classes: int
  vp_size: int
  class_names: tuple[str, ...] | None = None
  holdout_fraction: float | None = None
  folder_classes: tuple[str, ...] | None = None
  notes: str = ''


_REGISTRY: dict[str, _Spec] = {
    'cifar10': _Spec('cifar10', None, 'train', 'test', 10, 32,
                     class_names=_CIFAR10_CLASSES),
    'cifar100': _Spec('cifar100', None, 'train', 'test', 100, 32,
                      class_names=_CIFAR100_CLASSES),
    'svhn': _Spec('svhn_cropped', None, 'train', 'test', 10, 32,
                  class_names=tuple(str(d) for d in range(10))),
    'gtsrb': _Spec(
        None, None, 'train', 'test', 43, 32, class_names=_GTSRB_CLASSES,
        folder_classes=tuple(f'{i:05d}' for i in range(43)),
        notes='Not in tfds: folder layout, prepared from torchvision files.'),
    'dtd': _Spec('dtd', None, 'train', 'test', 47, 128,
                 notes='tfds dtd = partition 1, as torchvision.'),
    'flowers102': _Spec('oxford_flowers102', None, 'train', 'test', 102, 128),
    'oxfordpets': _Spec('oxford_iiit_pet', None, 'train', 'test', 37, 128,
                        notes="tfds 'train' is the trainval split."),
    'eurosat': _Spec(
        'eurosat', 'rgb', 'train', 'train', 10, 128, holdout_fraction=0.1,
        notes='The stratified 90/10 cut the PyTorch version meant, the same '
        'images: sklearn train_test_split(test_size=0.1, stratify=labels, '
        'random_state=1) over the images in ImageFolder order (tfds '
        'examples matched by file name). Its code serves all 27,000 images '
        'as both train and test (it assigns .data/.targets to an '
        'ImageFolder, which reads .samples), so its EuroSAT numbers are '
        'test-on-train.'),
    'food101': _Spec(
        'food101', None, 'train', 'validation', 101, 128,
        notes='The PyTorch version reads CoOp\'s split (its train and test '
        'lists: 500 and 300 images per class). tfds '
        'has the official 750/250 per class split, used by default; '
        'CoOp\'s is offered when its split file is given: `python -m '
        'reprog_jax.data.prepare food101 --split_json '
        'split_zhou_Food101.json --image_dir ...`, then source=folder.'),
    'sun397': _Spec(
        'sun397', 'standard-part1-120k', 'train', 'test', 397, 128,
        notes='Partition 1: test = CoOp test; train has 50 per class '
        '(CoOp: 40); images capped at 120k pixels.'),
    'ucf101': _Spec(
        None, None, 'train', 'test', 101, 128,
        class_names=None, folder_classes=None,
        notes='Not in tfds without TensorFlow: CoOp middle frames, folder '
        'layout.'),
    'stanfordcars': _Spec(
        'cars196', None, 'train', 'test', 196, 128,
        notes='Official split: test = CoOp test; train = CoOp train + val.'),
    'caltech101': _Spec(
        'caltech101', None, 'train', 'test', 102, 128,
        notes='tfds split (30 per class train, background class kept); the '
        "PyTorch version's .npz split is not published."),
}

# Not the paper's: targets of the offline demo (`python -m reprog_jax.demo`
# writes their folder trees). `get_dataset_info` knows them too;
# `dataset_names()` stays the paper's 13.
_EXTRA: dict[str, _Spec] = {
    'digits': _Spec(
        None, None, 'train', 'test', 10, 16,
        class_names=tuple(str(d) for d in range(10)),
        folder_classes=tuple(str(d) for d in range(10)),
        notes="Not one of the paper's: scikit-learn's 8x8 handwritten "
        'digits (UCI), upsampled; folder layout written by '
        '`python -m reprog_jax.demo`.'),
}


def dataset_names() -> tuple[str, ...]:
  """The registered dataset names, in the paper's order."""
  return tuple(_REGISTRY)


@functools.cache
def get_dataset_info(name: str) -> DatasetInfo:
  """Returns the registry entry of a dataset.

  Args:
    name: one of `dataset_names()`, or a demo target ('digits').

  Returns:
    The dataset's `DatasetInfo`; class names are read from the tfds builder
    code (no data needed) unless the registry fixes them.

  Raises:
    DataError: if `name` is not registered.
  """
  if name not in _REGISTRY and name not in _EXTRA:
    raise DataError(f'Unknown dataset {name!r}; valid names: '
                    f'{", ".join(_REGISTRY)} (and the demo\'s '
                    f'{", ".join(_EXTRA)}).')
  spec = _REGISTRY.get(name) or _EXTRA[name]
  class_names, folder_classes = spec.class_names, spec.folder_classes
  if name == 'ucf101':
    class_names = folder_classes = _ucf101_classes()
  if class_names is None:
    full_name = spec.tfds_name + (f'/{spec.tfds_config}'
                                  if spec.tfds_config else '')
    class_names = tuple(tfds.builder(full_name).info.features['label'].names)
  if len(class_names) != spec.num_classes:
    raise DataError(f'{name}: expected {spec.num_classes} class names, '
                    f'found {len(class_names)}.')
  return DatasetInfo(
      name=name, tfds_name=spec.tfds_name, tfds_config=spec.tfds_config,
      train_split=spec.train_split, test_split=spec.test_split,
      num_classes=spec.num_classes, class_names=class_names,
      vp_size=spec.vp_size, holdout_fraction=spec.holdout_fraction,
      folder_classes=folder_classes, notes=spec.notes)
