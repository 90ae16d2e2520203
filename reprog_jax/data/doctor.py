"""Checks a data root before any GPU time is spent on it.

    python -m reprog_jax.data.doctor ROOT [--source auto|torchvision|tfds|folder]
        [--datasets a,b] [--quick] [--folder_root DIR] [--threads N]

ROOT is what a run's `config.data.data_dir` would be: the PyTorch scripts'
`--data_path` with `--source torchvision`, a tfds data directory with
`tfds`, the folder holding `folders/<name>/` with `folder`; `auto` (the
default, as a run's) takes each dataset's own source from the registry.
For each of the paper's 13 datasets (or those of `--datasets`), one table
row: found or not (and the layout expected where not), examples per split,
classes, the hold-out the run will apply; then every file that does not
read or decode, by path, from one pass over all images with a progress bar
(`--quick` only opens each file: its header, not its pixels).

Exit status: 0 when everything found is readable (datasets not found are
listed, and are not an error by themselves), 1 when a file is unreadable
or a dataset's files are malformed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
from concurrent import futures
import dataclasses
import os
import sys

from absl import logging
import tqdm

from reprog_jax import cli
from reprog_jax.data import preprocess
from reprog_jax.data import prepare
from reprog_jax.data import registry
from reprog_jax.data import sources
from reprog_jax.data import torchvision_root
from reprog_jax.data.errors import DataError
from reprog_jax.data.errors import DataNotFound

PROG = 'python -m reprog_jax.data.doctor'
USAGE = 2  # The exit status of bad usage.
OK, NOT_FOUND, NOT_APPLICABLE = 'ok', 'not found', 'n/a'


@dataclasses.dataclass
class Row:
  """What the doctor found for one dataset.

  Attributes:
    name: the registry name.
    status: OK, NOT_FOUND, NOT_APPLICABLE, 'error' (malformed files) or
      'N unreadable'.
    train, test: examples per split (None when not read).
    classes: number of classes (None when not read).
    holdout: the hold-out a run applies ('-': the files' own split).
    detail: the layout expected (not found), or why not applicable.
    unreadable: one line per file that does not read or decode.
  """
  name: str
  status: str
  train: int | None = None
  test: int | None = None
  classes: int | None = None
  holdout: str = '-'
  detail: str = ''
  unreadable: list[str] = dataclasses.field(default_factory=list)


def _kind(info: registry.DatasetInfo, source: str) -> str:
  return info.source if source == 'auto' else source


def _layout(info: registry.DatasetInfo, kind: str, root: str,
            folder_root: str | None) -> str:
  """What the dataset needs under `root` to be found."""
  if kind == 'torchvision':
    return torchvision_root.LAYOUT[info.name]
  if kind == 'folder':
    where = folder_root or os.path.join('folders', info.name)
    return (f'{where}/{{train,test}}/<class>/<image>; '
            f'{prepare.prepare_command(info.name, root, folder_root)}')
  return (f'{info.tfds_full_name}/ (array_record); '
          f'{prepare.prepare_command(info.name, root)}')


def _not_applicable(info: registry.DatasetInfo, kind: str) -> str | None:
  """Why `kind` cannot hold the dataset, or None."""
  if kind == 'tfds' and info.tfds_name is None:
    return 'not in tfds: use --source folder'
  if kind == 'torchvision' and not torchvision_root.reads(info.name):
    return 'not in a PyTorch data root: use --source tfds'
  return None


def _check_one(split, index: int, quick: bool) -> str | None:
  """None if example `index` of `split.source` reads, else its line."""
  try:
    preprocess.check_image(split.source[index]['image'], quick=quick)
  except (DataError, *preprocess.DECODE_ERRORS) as e:
    origin = preprocess.Origin(split.dataset, split.name)
    return str(preprocess.unreadable(origin, split.source, index, e))
  return None


def check_files(splits, *, quick: bool, threads: int, desc: str) -> list[str]:
  """Reads (and decodes, unless `quick`) every example of `splits` once.

  An example of two splits (the same file: EuroSAT's two parts share its
  files) is read once, as part of the first.

  Returns:
    One line per example that does not read or decode, in split order.
  """
  work, seen = [], set()
  for split in splits:
    locate = getattr(split.source, 'locate', None)
    for index in split.indices:
      index = int(index)
      where = locate(index) if locate else (id(split.source), index)
      if where not in seen:
        seen.add(where)
        work.append((split, index))
  with futures.ThreadPoolExecutor(max_workers=threads) as pool:
    results = pool.map(lambda job: _check_one(*job, quick), work)
    bar = tqdm.tqdm(results, total=len(work), desc=desc, unit='file',
                    leave=False, dynamic_ncols=True, disable=None)
    return [line for line in bar if line is not None]


def examine(name: str, root: str, *, source: str = 'auto',
            folder_root: str | None = None, quick: bool = False,
            threads: int = 4) -> Row:
  """Opens both splits of `name` as a run would, and checks their files."""
  info = registry.get_dataset_info(name)
  kind = _kind(info, source)
  why_not = _not_applicable(info, kind)
  if why_not:
    return Row(name, NOT_APPLICABLE, detail=why_not)
  try:
    train = sources.open_split(info, 'train', data_dir=root, source=kind,
                               root=folder_root)
    test = sources.open_split(info, 'test', data_dir=root, source=kind,
                              root=folder_root)
  except DataNotFound:
    return Row(name, NOT_FOUND,
               detail='expects ' + _layout(info, kind, root, folder_root))
  except DataError as e:
    return Row(name, 'error', unreadable=[str(e)])
  holdout = '-'
  if (info.holdout_fraction is not None and len(train.source) ==
      len(test.source) == len(train.indices) + len(test.indices)):
    holdout = (f'{info.holdout_fraction:.0%} stratified, seed '
               f'{info.holdout_seed}')
  unreadable = check_files(
      (train, test), quick=quick, threads=threads,
      desc=f'{name}: {"opening" if quick else "decoding"}')
  return Row(name, f'{len(unreadable)} unreadable' if unreadable else OK,
             train=len(train.indices), test=len(test.indices),
             classes=len(train.class_names), holdout=holdout,
             unreadable=unreadable)


def render(rows: list[Row], root: str, source: str, quick: bool) -> str:
  """The doctor's report: the table, then every unreadable file."""
  what = 'each file opened (--quick)' if quick else 'every image decoded'
  header = ('dataset', 'status', 'train', 'test', 'classes', 'hold-out',
            'note')
  cells = [header] + [
      (r.name, r.status, *('-' if v is None else str(v)
                           for v in (r.train, r.test, r.classes)),
       r.holdout, r.detail) for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
  right = (2, 3, 4)  # Numbers align right.

  def line(row):
    return '  '.join(cell.rjust(w) if i in right else cell.ljust(w)
                     for i, (cell, w) in enumerate(zip(row, widths))).rstrip()

  out = [f'Data root {root}, source {source}, {what}.', '']
  out += [line(c) for c in cells]
  bad = [entry for r in rows for entry in r.unreadable]
  if bad:
    out += ['', f'Unreadable ({len(bad)}):'] + [f'  {entry}' for entry in bad]
  missing = [r.name for r in rows if r.status == NOT_FOUND]
  out.append('')
  if missing:
    out.append(f'Not found ({len(missing)}): {", ".join(missing)}; not an '
               'error by itself (a run on one stops at once, saying what '
               'to get).')
    if len(missing) == len(rows):
      out.append('Nothing found: is ROOT the data root of this --source?')
  out.append('Unreadable files: fix or replace them, then run this again.'
             if bad else 'Everything found is readable.')
  return '\n'.join(out)


def _dataset_list(text: str) -> list[str]:
  names = [n.strip() for n in text.split(',') if n.strip()]
  unknown = [n for n in names if n not in registry.dataset_names()]
  if unknown or not names:
    raise argparse.ArgumentTypeError(
        f'unknown dataset {", ".join(unknown) or repr(text)}; valid names: '
        f'{",".join(registry.dataset_names())}')
  return names


class _Parser(cli.ArgumentParser):
  """Bad usage is one line and exit status 2 (1 means unreadable files)."""

  def error(self, message):
    self.exit(USAGE, f'{self.prog}: error: {message} (see --help)\n')


def main(argv: list[str] | None = None) -> int:
  parser = _Parser(prog=PROG, description=__doc__.split('\n')[0])
  parser.add_argument('root', metavar='ROOT', help='the data root '
                      "(a run's config.data.data_dir).")
  parser.add_argument('--source', default='auto',
                      choices=sources.SOURCES,
                      help="as a run's config.data.source (default: auto, "
                      "each dataset's own).")
  parser.add_argument('--datasets', type=_dataset_list,
                      default=list(registry.dataset_names()),
                      help='comma-separated names (default: all 13).')
  parser.add_argument('--quick', action='store_true',
                      help='only open each file (no decoding).')
  parser.add_argument('--folder_root', default=None,
                      help="with one folder dataset: its folder (a run's "
                      'config.data.folder_root).')
  parser.add_argument('--threads', type=cli.positive_int,
                      default=min(8, os.cpu_count() or 1),
                      help='files read at once (default: up to 8).')
  args = parser.parse_args(argv)
  root = os.path.expanduser(args.root)
  if not os.path.isdir(root):
    parser.error(f'ROOT {root} is not a directory')
  if args.folder_root and len(args.datasets) != 1:
    parser.error('--folder_root is one dataset\'s folder: give one name '
                 'with --datasets')
  # Library chatter (tfds's missing-variant warnings) is not for users.
  logging.set_verbosity(logging.ERROR)

  def doctor():
    rows = [examine(name, root, source=args.source,
                    folder_root=args.folder_root, quick=args.quick,
                    threads=args.threads) for name in args.datasets]
    print(render(rows, root, args.source, args.quick))
    return 1 if any(r.unreadable for r in rows) else 0

  return cli.run(PROG, doctor)


if __name__ == '__main__':
  sys.exit(main())
