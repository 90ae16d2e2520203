"""The grain pipeline: epochs, padding, determinism, and pixel parity."""

import io

import numpy as np
from PIL import Image
import pytest

from reprog_jax import data


class _NumberedSource:
  """Example i is a 6x5 image filled with the value i, label i % 3."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {'image': np.full((6, 5, 3), i, np.uint8), 'label': i % 3}


def _loader(n=23, batch_size=8, shuffle=True, seed=0, indices=None, **kw):
  indices = np.arange(n) if indices is None else np.asarray(indices)
  return data.Loader(_NumberedSource(n), indices, indices % 3,
                     ('a', 'b', 'c'), image_size=4, batch_size=batch_size,
                     shuffle=shuffle, seed=seed, **kw)


def _served(loader, epoch):
  """The example ids a loader serves in one epoch, and its batches."""
  batches = list(loader.epoch(epoch))
  ids = np.concatenate([np.rint(b['image'][:, 0, 0, 0] * 255).astype(int)
                        [b['mask']] for b in batches])
  return ids, batches


def test_every_example_once_per_epoch_with_padded_last_batch():
  loader = _loader(n=23, batch_size=8)
  assert loader.steps_per_epoch == 3 and loader.num_examples == 23
  for epoch in range(3):
    ids, batches = _served(loader, epoch)
    assert sorted(ids.tolist()) == list(range(23))
    assert [int(b['mask'].sum()) for b in batches] == [8, 8, 7]
    last = batches[-1]
    assert not last['mask'][-1] and not last['image'][-1].any()
    for batch in batches:  # Static shapes and the promised dtypes.
      assert batch['image'].shape == (8, 4, 4, 3)
      assert batch['image'].dtype == np.float32
      assert batch['label'].dtype == np.int32
      assert batch['mask'].dtype == np.bool_
      np.testing.assert_array_equal(
          batch['label'][batch['mask']],
          np.rint(batch['image'][batch['mask'], 0, 0, 0] * 255) % 3)
  loader.close()


def test_order_is_a_function_of_seed_and_epoch():
  first = _loader(seed=5)
  orders = [_served(first, e)[0] for e in range(3)]
  assert not np.array_equal(orders[0], orders[1])
  # A fresh loader, as after a restart, jumps straight to epoch 2.
  resumed = _loader(seed=5)
  np.testing.assert_array_equal(_served(resumed, 2)[0], orders[2])
  np.testing.assert_array_equal(_served(resumed, 0)[0], orders[0])
  np.testing.assert_array_equal(first.epoch_order(1)[:23], orders[1])
  assert not np.array_equal(_served(_loader(seed=6), 0)[0], orders[0])


def test_unshuffled_order_is_the_pool_order():
  indices = np.array([4, 0, 9, 7, 3])
  loader = _loader(n=10, batch_size=2, shuffle=False, indices=indices)
  for epoch in range(2):
    np.testing.assert_array_equal(_served(loader, epoch)[0], indices)


def test_abandoned_epoch_restarts_cleanly():
  loader = _loader(seed=1)
  expected = _served(_loader(seed=1), 1)[0]
  next(iter(loader.epoch(0)))  # Consume one batch, then move on.
  np.testing.assert_array_equal(_served(loader, 1)[0], expected)


def _count_starts(loader):
  starts = []
  original = loader._start  # pylint: disable=protected-access

  def counting(position):
    starts.append(position)
    return original(position)

  loader._start = counting  # pylint: disable=protected-access
  return starts


def test_two_consumers_in_step_keep_their_streams():
  # ILM's pattern: a label-mapping pass then a training pass over the same
  # loader, both asking for epoch e, for e = 0, 1, 2.
  loader = _loader(n=20, batch_size=8, seed=2)
  starts = _count_starts(loader)
  reference = _loader(n=20, batch_size=8, seed=2)
  for epoch in range(3):
    expected = _served(reference, epoch)[0]
    np.testing.assert_array_equal(_served(loader, epoch)[0], expected)
    np.testing.assert_array_equal(_served(loader, epoch)[0], expected)
  assert starts == [0, 0]  # One stream per consumer, none restarted.


def test_unshuffled_loader_reuses_its_stream_for_any_epoch():
  loader = _loader(n=10, batch_size=4, shuffle=False)
  starts = _count_starts(loader)
  for _ in range(3):
    np.testing.assert_array_equal(_served(loader, 0)[0], np.arange(10))
  assert starts == [0]


def test_prefetch_to_device_passes_batches_through():
  jax = pytest.importorskip('jax')
  loader = _loader(n=20, batch_size=8, seed=4)
  host = list(loader.epoch(0))
  device = list(data.prefetch_to_device(loader.epoch(0), size=2))
  assert len(device) == len(host) == 3
  for h, d in zip(host, device):
    assert isinstance(d['image'], jax.Array)
    for key in h:
      np.testing.assert_array_equal(np.asarray(d[key]), h[key])


def test_workers_serve_the_same_batches_as_threads():
  # One test with worker processes: mock tfds data must reach spawned
  # workers intact, in the same order as in the main process.
  kwargs = dict(image_size=32, batch_size=8, mock=True, mock_num_examples=20,
                seed=3)
  local = data.make_loader('cifar10', 'train', worker_count=0, **kwargs)
  spawned = data.make_loader('cifar10', 'train', worker_count=2, **kwargs)
  for epoch in range(2):
    for a, b in zip(local.epoch(epoch), spawned.epoch(epoch)):
      for key in ('image', 'label', 'mask'):
        np.testing.assert_array_equal(a[key], b[key])
  spawned.close()


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
  ours = data.load_image(raw, size)
  assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
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


def test_loader_pixels_equal_torchvision():
  # The same parity as above, through the batched loader path.
  torchvision = pytest.importorskip('torchvision')
  transforms = torchvision.transforms
  source = _EncodedSource()
  loader = data.Loader(source, np.arange(3), np.arange(3), ('a', 'b', 'c'),
                       image_size=128, batch_size=2, shuffle=False, seed=0)
  images = np.concatenate([b['image'][b['mask']] for b in loader.epoch(0)])
  to_tensor = transforms.Compose([transforms.Resize((128, 128)),
                                  transforms.ToTensor()])
  for image, raw in zip(images, source.raw):
    reference = to_tensor(Image.open(io.BytesIO(raw)).convert('RGB'))
    np.testing.assert_array_equal(image, reference.numpy().transpose(1, 2, 0))


def test_same_size_image_is_not_resampled():
  array = np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)
  np.testing.assert_array_equal(data.load_image(_encoded(array, 'PNG'), 32),
                                array / np.float32(255))
  np.testing.assert_array_equal(data.load_image(array, 32),
                                array / np.float32(255))
