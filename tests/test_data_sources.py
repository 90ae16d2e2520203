"""Every dataset through the loader: mock mode, real tfds files, errors."""

import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from reprog_jax import data


@pytest.mark.parametrize('name', data.dataset_names())
def test_mock_batches_for_vp_size_and_224(name):
  info = data.get_dataset_info(name)
  for size in (info.vp_size, 224):
    for split in ('train', 'test'):
      loader = data.make_loader(name, split, image_size=size, batch_size=4,
                                mock=True, seed=0)
      batch = next(iter(loader.epoch(0)))
      assert batch['image'].shape == (4, size, size, 3)
      assert batch['image'].dtype == np.float32
      assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
      assert batch['image'].std() > 0.1  # Random mock pixels, not blanks.
      assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
      assert batch['mask'].all()
      assert 0 <= loader.labels.min() and loader.labels.max() < info.num_classes
      assert loader.class_names == info.class_names


def test_mock_few_shot_through_the_loader():
  loader = data.make_loader('dtd', 'train', image_size=128, batch_size=16,
                            mock=True, n_shot=3, seed=4)
  assert loader.num_examples == 3 * 47
  np.testing.assert_array_equal(np.bincount(loader.labels, minlength=47),
                                [3] * 47)
  other = data.make_loader('dtd', 'train', image_size=128, batch_size=16,
                           mock=True, n_shot=3, seed=5)
  assert set(loader.indices.tolist()) != set(other.indices.tolist())


def test_mock_eurosat_holdout_is_disjoint_and_stratified():
  kwargs = dict(image_size=128, batch_size=8, mock=True, mock_num_examples=200)
  train = data.make_loader('eurosat', 'train', **kwargs)
  test = data.make_loader('eurosat', 'test', **kwargs)
  assert not set(train.indices.tolist()) & set(test.indices.tolist())
  assert train.num_examples + test.num_examples == 200
  np.testing.assert_array_equal(np.bincount(test.labels), [2] * 10)


def test_config_round_trip():
  config = data.default_data_config()
  config.name, config.mock, config.n_shot, config.worker_count = (
      'flowers102', True, 2, 0)
  assert config.data_dir is None and config.source == 'auto'
  train = data.make_loader_from_config(config, 'train', image_size=128,
                                       batch_size=32, seed=0)
  test = data.make_loader_from_config(config, 'test', image_size=128,
                                      batch_size=32, seed=0)
  assert train.num_examples == 2 * 102
  assert test.num_examples == 3 * 102  # The whole mock split.
  labels = data.split_labels_from_config(config)
  rows = data.few_shot_indices_multi(labels, 2, seeds=[0, 1])
  again = data.make_loader_from_config(config, 'train', image_size=128,
                                       batch_size=32, seed=0,
                                       indices=rows[0])
  np.testing.assert_array_equal(again.indices, train.indices)


# --- Real tfds files, prepared offline --------------------------------------


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  buffer.seek(0)
  return buffer


def _image(i):
  return np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)


class _FakeCifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes real array_record files under the name and version of cifar10.

  Images are passed already encoded, so no TensorFlow is needed to write.
  """
  name = 'cifar10'
  VERSION = tfds.core.Version('3.0.2')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'id': tfds.features.Text(),
        'image': tfds.features.Image(shape=(32, 32, 3)),
        'label': tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(range(0, 25)),
            'test': self._generate_examples(range(100, 107))}

  def _generate_examples(self, ids):
    for i in ids:
      yield i, {'id': str(i), 'image': _png(_image(i)), 'label': i % 10}


@pytest.fixture(scope='module')
def cifar10_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  _FakeCifar10(data_dir=data_dir,
               file_format='array_record').download_and_prepare()
  return data_dir


def test_reads_prepared_array_record_files(cifar10_dir):
  loader = data.make_loader('cifar10', 'test', image_size=32, batch_size=4,
                            data_dir=cifar10_dir)
  assert loader.num_examples == 7
  batches = list(loader.epoch(0))
  images = np.concatenate([b['image'][b['mask']] for b in batches])
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  # tfds shuffles records on write; match each image to its source by
  # pixels, then check its label and exact value.
  sources = {i: _image(i) / np.float32(255) for i in range(100, 107)}
  found = []
  for image, label in zip(images, labels):
    match = [i for i, s in sources.items() if np.array_equal(s, image)]
    assert len(match) == 1 and label == match[0] % 10
    found += match
  assert sorted(found) == list(range(100, 107))


def test_few_shot_on_prepared_files(cifar10_dir):
  loader = data.make_loader('cifar10', 'train', image_size=224, batch_size=8,
                            data_dir=cifar10_dir, n_shot=2, seed=0)
  np.testing.assert_array_equal(np.bincount(loader.labels), [2] * 10)
  batch = next(iter(loader.epoch(0)))
  assert batch['image'].shape == (8, 224, 224, 3)


def test_missing_data_names_dataset_place_and_command(tmp_path):
  with pytest.raises(data.DataError) as error:
    data.make_loader('dtd', 'train', image_size=128, batch_size=4,
                     data_dir=str(tmp_path))
  message = str(error.value)
  assert message.startswith('dtd:') and '\n' not in message
  assert str(tmp_path) in message
  assert f'python -m reprog_jax.data.prepare dtd --data_dir={tmp_path}' in (
      message)
  assert not os.listdir(tmp_path)  # Nothing written.


@pytest.mark.parametrize('kwargs,match', [
    (dict(split='test', n_shot=5), 'train split only'),
    (dict(split='train', n_shot=0), 'n_shot'),
    (dict(split='train', n_shot=50), 'exceeds'),
    (dict(split='valid'), 'split'),
    (dict(split='train', batch_size=0), 'batch_size'),
    (dict(split='train', source='hub'), 'source'),
    (dict(split='train', indices=[0, 10_000]), 'indices'),
])
def test_bad_arguments(kwargs, match):
  arguments = dict(image_size=32, batch_size=4, mock=True,
                   mock_num_examples=40)
  arguments.update(kwargs)
  with pytest.raises(data.DataError, match=match):
    data.make_loader('cifar10', **arguments)
