"""The dataset registry against the paper's table (reference section 8)."""

import dataclasses

import pytest
import tensorflow_datasets as tfds

from reprog_jax import data

# Independent expectations: the PyTorch version's names, VP sizes and class
# counts (reference sections 3 and 8, and the datasets' own papers).
_EXPECTED = {
    'cifar10': (32, 10), 'cifar100': (32, 100), 'svhn': (32, 10),
    'gtsrb': (32, 43), 'dtd': (128, 47), 'flowers102': (128, 102),
    'oxfordpets': (128, 37), 'eurosat': (128, 10), 'food101': (128, 101),
    'sun397': (128, 397), 'ucf101': (128, 101), 'stanfordcars': (128, 196),
    'caltech101': (128, 102),
}


def test_registry_has_exactly_the_papers_datasets():
  assert set(data.dataset_names()) == set(_EXPECTED)


@pytest.mark.parametrize('name', sorted(_EXPECTED))
def test_every_dataset_resolves(name):
  info = data.get_dataset_info(name)
  vp_size, num_classes = _EXPECTED[name]
  assert info.name == name
  assert info.vp_size == vp_size
  assert info.num_classes == num_classes
  assert len(info.class_names) == num_classes
  assert len(set(info.class_names)) == num_classes
  assert info.train_split and info.test_split
  if info.source == 'tfds':
    # The registry's class count is the tfds builder's.
    builder = tfds.builder(info.tfds_full_name)
    assert builder.info.features['label'].num_classes == num_classes
  else:
    assert info.tfds_name is None
    assert len(info.folder_classes) == num_classes


def test_tfds_choices_follow_the_pytorch_version():
  pets = data.get_dataset_info('oxfordpets')
  assert (pets.tfds_name, pets.train_split, pets.test_split) == (
      'oxford_iiit_pet', 'train', 'test')  # tfds 'train' is trainval.
  eurosat = data.get_dataset_info('eurosat')
  assert eurosat.tfds_full_name == 'eurosat/rgb'
  assert eurosat.train_split == eurosat.test_split == 'train'
  assert (eurosat.holdout_fraction, eurosat.holdout_seed) == (0.1, 1)
  assert data.get_dataset_info('svhn').tfds_name == 'svhn_cropped'
  assert data.get_dataset_info('stanfordcars').tfds_name == 'cars196'
  assert data.get_dataset_info('gtsrb').source == 'folder'
  assert data.get_dataset_info('ucf101').source == 'folder'
  assert data.get_dataset_info('cifar10').class_names[:2] == (
      'airplane', 'automobile')
  assert data.get_dataset_info('gtsrb').folder_classes[42] == '00042'


def test_unknown_name_lists_valid_ones():
  with pytest.raises(data.DataError) as error:
    data.get_dataset_info('imagenet')
  message = str(error.value)
  assert 'imagenet' in message and '\n' not in message
  for name in _EXPECTED:
    assert name in message


def test_info_is_frozen():
  info = data.get_dataset_info('cifar10')
  with pytest.raises(dataclasses.FrozenInstanceError):
    info.vp_size = 64
