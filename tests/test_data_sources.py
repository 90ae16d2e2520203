"""Every dataset opened and decoded: mock mode, real tfds files, errors."""

import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from reprog_jax import data


def _config(name, **fields):
  config = data.default_data_config()
  config.name, config.worker_count = name, 0
  for field, value in fields.items():
    config[field] = value
  return config


@pytest.mark.parametrize('name', data.dataset_names())
def test_mock_images_for_vp_size_and_224(name):
  info = data.get_dataset_info(name)
  for split in ('train', 'test'):
    opened = data.open_split_from_config(_config(name, mock=True), split)
    assert 0 <= opened.labels.min() and opened.labels.max() < info.num_classes
    assert opened.class_names == info.class_names
    for size in (info.vp_size, 224):
      store = data.decode_split(opened, np.arange(4), image_size=size)
      assert store.rows.shape == (4, size, size, 3)
      assert store.rows.dtype == np.uint8
      assert store.rows.std() > 0.1 * 255  # Random mock pixels, not blanks.
      np.testing.assert_array_equal(store.labels, opened.labels[:4])


def test_mock_split_is_sized_for_the_few_shot_budget():
  train = data.open_split_from_config(_config('dtd', mock=True), 'train', 3)
  pools = data.few_shot_indices_multi(train.labels, 3, seeds=(4, 5),
                                      num_classes=47)
  np.testing.assert_array_equal(np.bincount(train.labels[pools[0]],
                                            minlength=47), [3] * 47)
  assert set(pools[0].tolist()) != set(pools[1].tolist())


def test_mock_eurosat_holdout_is_disjoint_and_stratified():
  config = _config('eurosat', mock=True, mock_num_examples=200)
  train = data.open_split_from_config(config, 'train')
  test = data.open_split_from_config(config, 'test')
  assert not set(train.indices.tolist()) & set(test.indices.tolist())
  assert len(train.indices) + len(test.indices) == 200
  np.testing.assert_array_equal(np.bincount(test.labels), [2] * 10)


def test_config_round_trip():
  config = _config('flowers102', mock=True)
  assert config.data_dir is None and config.source == 'auto'
  train = data.open_split_from_config(config, 'train', 2)
  test = data.open_split_from_config(config, 'test', 2)
  assert len(test.indices) == 3 * 102  # The whole mock split.
  rows = data.few_shot_indices_multi(train.labels, 2, seeds=[0, 1])
  assert rows.shape == (2, 2 * 102)
  np.testing.assert_array_equal(
      rows[0], data.few_shot_indices(train.labels, 2, 0))


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
  split = data.open_split_from_config(_config('cifar10', data_dir=cifar10_dir),
                                      'test')
  assert len(split.indices) == 7
  store = data.decode_split(split, np.arange(7), image_size=32, batch_size=4)
  # tfds shuffles records on write; match each image to its source by
  # pixels, then check its label and exact value.
  sources = {i: _image(i) for i in range(100, 107)}
  found = []
  for image, label in zip(store.rows, store.labels):
    match = [i for i, s in sources.items() if np.array_equal(s, image)]
    assert len(match) == 1 and label == match[0] % 10
    found += match
  assert sorted(found) == list(range(100, 107))


def test_few_shot_on_prepared_files(cifar10_dir):
  split = data.open_split_from_config(_config('cifar10', data_dir=cifar10_dir),
                                      'train', 2)
  pool = data.few_shot_indices(split.labels, 2, 0)
  np.testing.assert_array_equal(np.bincount(split.labels[pool]), [2] * 10)
  store = data.decode_split(split, np.sort(pool)[:8], image_size=224)
  assert store.rows.shape == (8, 224, 224, 3)


def test_missing_data_names_dataset_place_and_command(tmp_path):
  with pytest.raises(data.DataError) as error:
    data.open_split_from_config(_config('dtd', data_dir=str(tmp_path)),
                                'train')
  message = str(error.value)
  assert message.startswith('dtd:') and '\n' not in message
  assert str(tmp_path) in message
  assert f'python -m reprog_jax.data.prepare dtd --data_dir={tmp_path}' in (
      message)
  assert not os.listdir(tmp_path)  # Nothing written.


@pytest.mark.parametrize('split,source', [('valid', 'auto'),
                                          ('train', 'hub')])
def test_bad_split_or_source(split, source):
  config = _config('cifar10', mock=True, mock_num_examples=40, source=source)
  with pytest.raises(data.DataError, match=split if split == 'valid'
                     else 'source'):
    data.open_split_from_config(config, split)


@pytest.mark.parametrize('n_shot,match', [(0, 'n_shot'), (50, 'exceeds')])
def test_bad_budget_on_a_mock_split(n_shot, match):
  config = _config('cifar10', mock=True, mock_num_examples=40)
  labels = data.open_split_from_config(config, 'train').labels
  with pytest.raises(data.DataError, match=match):
    data.few_shot_indices(labels, n_shot, 0)
