"""The loader benchmark's command line (the numbers live in BENCHMARKS.md)."""

from reprog_jax.data import benchmark


def test_tiny_run_prints_a_row(capsys):
  assert benchmark.main(['--cases=32:png32,64:jpeg500', '--batch_size=8',
                         '--batches=2', '--warmup=1',
                         '--worker_counts=0']) == 0
  rows = [line for line in capsys.readouterr().out.splitlines()
          if line.startswith('| 32 ') or line.startswith('| 64 ')]
  assert [row.split('|')[1:4] for row in rows] == [
      [' 32 ', ' png32 ', ' 0 '], [' 64 ', ' jpeg500 ', ' 0 ']]


def test_mock_dataset_run(capsys):
  assert benchmark.main(['--dataset=oxfordpets', '--mock', '--cases=128',
                         '--batch_size=4', '--batches=2', '--warmup=1',
                         '--worker_counts=0']) == 0
  assert '| 128 | oxfordpets | 0 |' in capsys.readouterr().out


def test_bad_input_is_one_line_and_status_1(capsys):
  assert benchmark.main(['--dataset=mnist', '--mock']) == 1
  assert benchmark.main(['--cases=32:gif']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and all(
      line.startswith('reprog_jax.data.benchmark: error: ') for line in err)
  assert 'valid names' in err[0]
