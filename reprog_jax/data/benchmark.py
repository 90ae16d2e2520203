"""Data benchmark: images/s of the input pipeline alone (no model).

    python -m reprog_jax.data.benchmark                      # synthetic images
    python -m reprog_jax.data.benchmark --dataset=food101 --data_dir=DIR

Without `--dataset` it serves synthetic encoded images shaped like the real
inputs: 32x32 PNGs (CIFAR, SVHN) and 500x375 JPEGs (the photo datasets),
so decoding and resizing cost what they cost on real data. Each case is
`SIZE:SOURCE` (SOURCE: png32 or jpeg500). It measures what a run does: the
pass that decodes its images once (`pipeline.decode_batches`, as
`store.decode_once` calls it; the consumer only keeps the batches, so the
figure is the pipeline's ceiling), then an epoch of a `Sampler`'s shuffled
batches gathered from the decoded `RowStore`. Prints a markdown table.
"""

from __future__ import annotations

import io
import os
import sys
import time

import numpy as np
from PIL import Image

from reprog_jax.data import pipeline
from reprog_jax.data import sources
from reprog_jax.data import store as store_lib
from reprog_jax import cli
from reprog_jax.data.errors import DataError
from reprog_jax.data.registry import get_dataset_info

_SOURCES = {'png32': ((32, 32), 'PNG'), 'jpeg500': ((500, 375), 'JPEG')}


class SyntheticEncodedSource:
  """`count` distinct encoded images, served cyclically with cycling labels.

  Pixels are smooth (upsampled coarse noise plus fine noise) so JPEG files
  have the size and decoding cost of photographs, not of white noise.
  """

  def __init__(self, kind: str, count: int = 64, num_classes: int = 10):
    (width, height), fmt = _SOURCES[kind]
    rng = np.random.default_rng(0)
    self._images = []
    for _ in range(count):
      coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
      image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
      pixels = np.asarray(image, np.int16) + rng.integers(
          -8, 9, (height, width, 3))
      buffer = io.BytesIO()
      Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
          buffer, format=fmt, quality=90)
      self._images.append(buffer.getvalue())
    self._num_classes = num_classes

  def __len__(self) -> int:
    return 1 << 30

  def __getitem__(self, index: int) -> dict:
    return {'image': self._images[index % len(self._images)],
            'label': index % self._num_classes}


def _measure(args, source, pool, labels, size: int, workers: int
             ) -> tuple[float, float]:
  """Images/s decoding `pool` (after `args.warmup` batches: worker
  start-up), and images/s serving one shuffled epoch of it from memory."""
  batches = pipeline.decode_batches(
      source, pool, image_size=size, batch_size=args.batch_size,
      worker_count=workers, read_threads=args.read_threads,
      prefetch_batches=args.prefetch_batches)
  times, images = [time.perf_counter()], []
  for batch in batches:
    images.append(batch['image'])
    times.append(time.perf_counter())
  decode_rate = args.batches * args.batch_size / (times[-1] -
                                                  times[args.warmup])
  rows = np.arange(len(pool))
  store = store_lib.RowStore(np.concatenate(images)[:len(pool)], labels, rows)
  sampler = store_lib.Sampler(rows[None], (0,), batch_size=args.batch_size,
                              shuffle=True)
  start = time.perf_counter()
  for index in sampler.epoch(0):
    store.gather(index)
  return decode_rate, len(pool) / (time.perf_counter() - start)


def _source(args, kind: str):
  """The source to decode and (pool, labels): as many examples as the
  measured batches hold (a dataset's split repeated as needed)."""
  count = (args.warmup + args.batches) * args.batch_size
  if args.dataset:
    split = sources.open_split(get_dataset_info(args.dataset), args.split,
                               data_dir=args.data_dir, mock=args.mock)
    return (split.source, np.resize(split.indices, count),
            np.resize(split.labels, count))
  pool = np.arange(count)
  return SyntheticEncodedSource(kind), pool, pool % 10


def _check(args) -> tuple[list[tuple[int, str]], list[int]]:
  """Parses --cases and --worker_counts; DataError on any bad flag."""
  cases = []
  for case in args.cases.split(','):
    size, _, kind = case.partition(':')
    if not size.isdigit() or (kind not in _SOURCES and not args.dataset):
      raise DataError(f'bad case {case!r}: want SIZE:SOURCE, SOURCE in '
                      f'{", ".join(_SOURCES)}.')
    cases.append((int(size), kind))
  try:
    workers = [int(w) for w in args.worker_counts.split(',')]
  except ValueError:
    workers = [-1]
  if min(workers) < 0:
    raise DataError('--worker_counts must list integers >= 0, got '
                    f'{args.worker_counts!r}.')
  if min(args.batch_size, args.batches, args.read_threads,
         args.prefetch_batches) < 1 or args.warmup < 0:
    raise DataError('--batch_size, --batches, --read_threads and '
                    '--prefetch_batches must be >= 1, --warmup >= 0.')
  if args.dataset:
    get_dataset_info(args.dataset)  # Fail before printing anything.
  return cases, workers


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog='python -m reprog_jax.data.benchmark', description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default='32:png32,128:jpeg500,224:jpeg500,'
                      '224:png32', help='comma-separated SIZE:SOURCE.')
  parser.add_argument('--dataset', default=None,
                      help='benchmark a registered dataset instead.')
  parser.add_argument('--split', default='train')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--mock', action='store_true')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--worker_counts', default='0,2',
                      help='comma-separated grain worker counts to try.')
  parser.add_argument('--read_threads', type=int, default=4)
  parser.add_argument('--prefetch_batches', type=int, default=2)
  args = parser.parse_args(argv)

  def benchmark():
    cases, workers = _check(args)
    print(f'# {args.dataset or "synthetic"}, batch {args.batch_size}, '
          f'{args.batches} timed batches after {args.warmup}, read_threads '
          f'{args.read_threads}, {os.cpu_count()} CPUs')
    print('| size | source | workers | decode images/s | serve images/s |')
    print('| --- | --- | --- | --- | --- |')
    for size, kind in cases:
      source, pool, labels = _source(args, kind)
      for count in workers:
        decode, serve = _measure(args, source, pool, labels, size, count)
        print(f'| {size} | {args.dataset or kind} | {count} | {decode:,.0f} '
              f'| {serve:,.0f} |', flush=True)

  return cli.run('reprog_jax.data.benchmark', benchmark)


if __name__ == '__main__':
  sys.exit(main())
