"""Decode once, serve from memory: stores and samplers."""

import numpy as np
import pytest

from reprog_jax import data


class _NumberedSource:
  """Example i is a 6x5 image filled with the value i, label i % 3."""

  def __len__(self):
    return 100

  def __getitem__(self, i):
    return {'image': np.full((6, 5, 3), i, np.uint8), 'label': i % 3}


def _store(positions):
  positions = np.asarray(positions)
  return data.decode_once(_NumberedSource(), positions, positions % 3,
                          positions, image_size=4, batch_size=7)


def _ids(images):
  return images[..., 0, 0, 0].astype(int)


@pytest.mark.parametrize('shuffle', [True, False])
def test_sampler_order_is_each_seeds_own_draw(shuffle):
  pools = np.array([[4, 9, 0, 17, 3, 11, 12, 5, 8, 2, 1],
                    [6, 7, 13, 2, 19, 3, 0, 14, 1, 10, 4]])
  seeds = (3, 8)
  store = _store(np.arange(20))
  sampler = data.Sampler(store.row_of(pools), seeds, batch_size=4,
                         shuffle=shuffle)
  assert sampler.steps_per_epoch == 3 and sampler.num_examples == 11
  for epoch in (0, 2):
    batches = [store.gather(index) for index in sampler.epoch(epoch)]
    for k, (seed, pool) in enumerate(zip(seeds, pools)):
      # The contract: a permutation drawn from (seed, epoch) only, or the
      # pool order; the last batch padded with blank slots.
      expected = (pool[np.random.default_rng([seed, epoch]).permutation(11)]
                  if shuffle else pool)
      served = np.concatenate([_ids(b['image'][k])[b['mask'][k]]
                               for b in batches])
      np.testing.assert_array_equal(served, expected)
      assert [int(b['mask'][k].sum()) for b in batches] == [4, 4, 3]
      for b in batches:
        np.testing.assert_array_equal(b['label'][k][b['mask'][k]],
                                      _ids(b['image'][k])[b['mask'][k]] % 3)
      # Alone, a seed is served exactly what it is served beside another.
      alone = data.Sampler(store.row_of(pool[None]), (seed,), batch_size=4,
                           shuffle=shuffle)
      np.testing.assert_array_equal(alone.epoch_order(epoch)[0],
                                    sampler.epoch_order(epoch)[k])
  if shuffle:  # Epochs differ; a fresh sampler (a resumed run) agrees.
    assert not np.array_equal(sampler.epoch_order(0), sampler.epoch_order(1))
    again = data.Sampler(store.row_of(pools), seeds, batch_size=4,
                         shuffle=True)
    np.testing.assert_array_equal(again.epoch_order(2),
                                  sampler.epoch_order(2))


def test_device_padding_adds_blank_slots_and_drops_nothing():
  store = _store(np.arange(10))
  sampler = data.Sampler(np.arange(10)[None], (0,), batch_size=4,
                         shuffle=True, pad_to=3)
  assert sampler.padded_batch_size == 6
  batches = [store.gather(index[0]) for index in sampler.epoch(1)]
  assert [b['mask'].tolist() for b in batches] == [
      [True] * 4 + [False] * 2, [True] * 4 + [False] * 2,
      [True] * 2 + [False] * 4]
  served = np.concatenate([_ids(b['image'])[b['mask']] for b in batches])
  assert sorted(served.tolist()) == list(range(10))
  # Unpadded, the same examples come in the same order.
  plain = data.Sampler(np.arange(10)[None], (0,), batch_size=4, shuffle=True)
  np.testing.assert_array_equal(served, plain.epoch_order(1)[0][:10])
  for batch in batches:  # Blank slots are blank.
    assert not batch['image'][~batch['mask']].any()
    assert not batch['label'][~batch['mask']].any()


def test_store_rows_follow_split_positions():
  store = _store([2, 5, 7, 11])
  np.testing.assert_array_equal(store.row_of([11, 2]), [3, 0])
  np.testing.assert_array_equal(_ids(store.rows_at(np.array([[3, -1]]))),
                                [[11, 0]])
  with pytest.raises(ValueError, match='not in this store'):
    store.row_of([3])


def test_decode_once_decodes_each_image_once(monkeypatch):
  from reprog_jax.data import pipeline
  calls = []
  real = pipeline.load_uint8_image

  def counting(raw, size):
    calls.append(int(np.asarray(raw)[0, 0, 0]))
    return real(raw, size)

  monkeypatch.setattr(pipeline, 'load_uint8_image', counting)
  store = _store(np.arange(0, 30, 2))
  sampler = data.Sampler(np.arange(15)[None], (0,), batch_size=4,
                         shuffle=True)
  for epoch in range(3):
    for index in sampler.epoch(epoch):
      store.gather(index)
  assert sorted(calls) == list(range(0, 30, 2))


def test_a_pool_smaller_than_the_batch_is_one_step_of_its_own_size():
  # 1-shot CIFAR-10 at the paper's batch 128: PyTorch's DataLoader hands
  # over one batch of the 10 images; so do we, in the same order (the
  # permutation of the pool), with no blank slots beyond the device
  # multiple.
  pools = np.array([np.arange(10), np.arange(10, 20)])
  wide = data.Sampler(pools, (3, 4), batch_size=128, shuffle=True)
  assert (wide.batch_size, wide.padded_batch_size, len(wide)) == (10, 10, 1)
  for epoch in range(3):
    (index,) = list(wide.epoch(epoch))
    assert index.shape == (2, 10)
    for k, seed in enumerate((3, 4)):
      order = np.random.default_rng([seed, epoch]).permutation(10)
      np.testing.assert_array_equal(index[k], pools[k][order])
  on_devices = data.Sampler(pools, (3, 4), batch_size=128, shuffle=True,
                            pad_to=4)
  (index,) = list(on_devices.epoch(0))
  assert index.shape == (2, 12) and (index[:, 10:] == -1).all()
  np.testing.assert_array_equal(index[:, :10], next(wide.epoch(0)))
