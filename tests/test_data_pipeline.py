"""The grain decoding pass: order, padding, workers, and pixel parity."""

import io

import numpy as np
from PIL import Image
import pytest

from reprog_jax import data
from reprog_jax.data import pipeline
from reprog_jax.data import preprocess


class _NumberedSource:
  """Example i is a 6x5 image filled with the value i, label i % 3."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {'image': np.full((6, 5, 3), i, np.uint8), 'label': i % 3}


def _batches(indices, batch_size=8, n=30, **kwargs):
  return list(data.decode_batches(_NumberedSource(n), np.asarray(indices),
                                  image_size=4, batch_size=batch_size,
                                  **kwargs))


def _ids(batches):
  return np.concatenate([b['image'][:, 0, 0, 0].astype(int)[b['mask']]
                         for b in batches])


def test_every_example_once_in_order_with_padded_last_batch():
  indices = np.random.default_rng(0).permutation(23)
  batches = _batches(indices, batch_size=8, n=23)
  assert len(batches) == pipeline.num_batches(23, 8) == 3
  np.testing.assert_array_equal(_ids(batches), indices)
  assert [int(b['mask'].sum()) for b in batches] == [8, 8, 7]
  last = batches[-1]
  assert not last['mask'][-1] and not last['image'][-1].any()
  assert last['label'][-1] == 0
  for batch in batches:  # Static shapes and the promised dtypes.
    assert batch['image'].shape == (8, 4, 4, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32
    assert batch['mask'].dtype == np.bool_
    np.testing.assert_array_equal(
        batch['label'][batch['mask']],
        batch['image'][batch['mask'], 0, 0, 0] % 3)


def test_an_abandoned_pass_leaves_the_next_one_whole():
  indices = np.array([4, 0, 9, 7, 3])
  next(iter(data.decode_batches(_NumberedSource(10), indices, image_size=4,
                                batch_size=2)))
  np.testing.assert_array_equal(_ids(_batches(indices, batch_size=2)),
                                indices)


def test_workers_serve_the_same_batches_as_threads():
  # One test with worker processes: mock tfds data must reach spawned
  # workers intact, in the same order as in the main process.
  config = data.default_data_config()
  config.mock, config.mock_num_examples = True, 20
  split = data.open_split_from_config(config, 'train')
  order = np.random.default_rng(3).permutation(len(split.indices))
  local, spawned = (
      list(data.decode_batches(split.source, split.indices[order],
                               image_size=32, batch_size=8,
                               worker_count=workers))
      for workers in (0, 2))
  assert len(local) == len(spawned) == 3
  for a, b in zip(local, spawned):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])
  labels = np.concatenate([b['label'][b['mask']] for b in local])
  np.testing.assert_array_equal(labels, split.labels[order])


def _encoded(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.mark.parametrize('size', [32, 128, 224])
@pytest.mark.parametrize('fmt,shape', [('PNG', (47, 61, 3)),
                                       ('JPEG', (300, 200, 3)),
                                       ('PNG', (40, 30))])
def test_pixels_equal_torchvision(size, fmt, shape):
  # The PyTorch version's transform: convert('RGB'), Resize((s, s)),
  # ToTensor. Our HWC output must equal its CHW output exactly.
  torchvision = pytest.importorskip('torchvision')
  transforms = torchvision.transforms
  array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  raw = _encoded(array, fmt)
  reference = transforms.Compose([
      transforms.Lambda(lambda image: image.convert('RGB')),
      transforms.Resize((size, size)), transforms.ToTensor(),
  ])(Image.open(io.BytesIO(raw))).numpy().transpose(1, 2, 0)
  pixels = preprocess.load_uint8_image(raw, size)
  assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3)
  # The model side's ToTensor (train/steps.py): a division by 255.
  ours = pixels / np.float32(255)
  np.testing.assert_array_equal(ours, reference)


class _EncodedSource:
  """Three encoded images of different kinds and sizes."""

  def __init__(self):
    rng = np.random.default_rng(2)
    self.raw = [_encoded(rng.integers(0, 256, shape, dtype=np.uint8), fmt)
                for shape, fmt in (((90, 60, 3), 'JPEG'), ((20, 33), 'PNG'),
                                   ((32, 32, 3), 'PNG'))]

  def __len__(self):
    return len(self.raw)

  def __getitem__(self, i):
    return {'image': self.raw[i], 'label': i}


def test_decoded_pixels_equal_torchvision():
  # The same parity as above, through the decoding pass runs use.
  torchvision = pytest.importorskip('torchvision')
  transforms = torchvision.transforms
  source = _EncodedSource()
  store = data.decode_once(source, np.arange(3), np.arange(3), np.arange(3),
                           image_size=128, batch_size=2)
  images = store.rows / np.float32(255)
  to_tensor = transforms.Compose([transforms.Resize((128, 128)),
                                  transforms.ToTensor()])
  for image, raw in zip(images, source.raw):
    reference = to_tensor(Image.open(io.BytesIO(raw)).convert('RGB'))
    np.testing.assert_array_equal(image, reference.numpy().transpose(1, 2, 0))


def test_same_size_image_is_not_resampled():
  array = np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)
  np.testing.assert_array_equal(
      preprocess.load_uint8_image(_encoded(array, 'PNG'), 32), array)
  np.testing.assert_array_equal(preprocess.load_uint8_image(array, 32),
                                array)
