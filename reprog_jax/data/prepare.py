"""Prepares a dataset where the loader looks for it.

    python -m reprog_jax.data.prepare NAME [--data_dir=DIR] [source flags]

- tfds datasets: runs the tfds builder with `file_format=array_record` (the
  format `tfds.data_source` reads); without TensorFlow installed, through
  `tfds_writer.py` (its builder code, `tf.io.gfile` stood in for).
- `--archive` (repeatable): write from files already downloaded, without
  TensorFlow or internet (`tfds_writer.py`): for cifar10/cifar100 the python
  archive (`cifar-10-python.tar.gz`) or the PyTorch root's `<ROOT>/<name>`,
  for svhn the folder of its `.mat` files; for other tfds datasets the
  files its builder downloads, matched by file name.
- gtsrb: `--src` is torchvision's GTSRB folder (`<root>/gtsrb` after
  `torchvision.datasets.GTSRB(root, split=..., download=True)` for both
  splits); its 26,640 training and 12,630 test images are linked into
  `<out>/{train,test}/<class id>/`.
- ucf101, or the CoOp split of any dataset: `--split_json` is CoOp's
  `split_zhou_<Name>.json` and `--image_dir` its image folder; the `train`
  and `test` lists are linked into `<out>/{train,test}/<class>/`.

Nothing is written unless every input checks out; errors are one line and
exit with status 1.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import socket
import sys
import urllib.parse

from absl import logging
import tensorflow_datasets as tfds

from reprog_jax import cli
from reprog_jax.data import registry
from reprog_jax.data import tfds_writer
from reprog_jax.data.errors import DataError

_MODULE = 'python -m reprog_jax.data.prepare'


def prepare_command(name: str, data_dir: str, root: str | None = None) -> str:
  """The command line that prepares `name` where the loader will look."""
  info = registry.get_dataset_info(name)
  out = root or os.path.join(data_dir, 'folders', name)
  if name == 'gtsrb':
    return f'{_MODULE} gtsrb --src=<torchvision>/gtsrb --out={out}'
  if info.source == 'folder' or root is not None:
    return (f'{_MODULE} {name} --split_json=<split_zhou_*.json> '
            f'--image_dir=<CoOp images> --out={out}')
  if name in tfds_writer.ARCHIVES:
    return f'{_MODULE} {name} --data_dir={data_dir} --archive=<archive>'
  return f'{_MODULE} {name} --data_dir={data_dir}'


def _gtsrb_plan(src: str) -> list[tuple[str, str, str]]:
  """(split, class dir, image path) of torchvision's GTSRB files."""
  train_dir = os.path.join(src, 'GTSRB', 'Training')
  test_dir = os.path.join(src, 'GTSRB', 'Final_Test', 'Images')
  test_csv = os.path.join(src, 'GT-final_test.csv')
  for path in (train_dir, test_dir, test_csv):
    if not os.path.exists(path):
      raise DataError(f'gtsrb: {path} not found; --src must be the folder '
                      'torchvision.datasets.GTSRB downloads into (.../gtsrb).')
  plan = []
  for class_dir in sorted(os.listdir(train_dir)):
    class_path = os.path.join(train_dir, class_dir)
    if os.path.isdir(class_path):
      plan += [('train', class_dir, os.path.join(class_path, f))
               for f in sorted(os.listdir(class_path)) if f.endswith('.ppm')]
  with open(test_csv, newline='') as f:
    for row in csv.DictReader(f, delimiter=';'):
      plan.append(('test', f'{int(row["ClassId"]):05d}',
                   os.path.join(test_dir, row['Filename'])))
  return plan


def _coop_plan(name: str, split_json: str,
               image_dir: str) -> list[tuple[str, str, str]]:
  """(split, class dir, image path) from a CoOp split file."""
  info = registry.get_dataset_info(name)
  try:
    with open(split_json) as f:
      splits = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{name}: cannot read {split_json}: {e}') from e
  plan = []
  for split in ('train', 'test'):
    if not isinstance(splits, dict) or not isinstance(splits.get(split),
                                                      list):
      raise DataError(f'{name}: {split_json} has no {split!r} list; a CoOp '
                      'split file is {"train": [[image, label, class], '
                      '...], "test": [...]}.')
    for i, entry in enumerate(splits[split]):
      if not _is_coop_entry(entry, info.folder_classes):
        raise DataError(
            f'{name}: {split_json}: {split} entry {i} is {entry!r}, not '
            f'[image path, label, class name]'
            + (f' with a label in [0, {len(info.folder_classes)})'
               if info.folder_classes else '') + '.')
      image, label, class_name = entry
      # UCF101's folders keep the registry's (official) names; elsewhere
      # the CoOp class name is the directory.
      class_dir = (info.folder_classes[label] if info.folder_classes
                   else class_name)
      plan.append((split, class_dir, os.path.join(image_dir, image)))
  return plan


def _is_coop_entry(entry, folder_classes) -> bool:
  """Whether `entry` is CoOp's [image path, label, class name]."""
  if not (isinstance(entry, list) and len(entry) == 3):
    return False
  image, label, class_name = entry
  return (isinstance(image, str) and isinstance(class_name, str)
          and isinstance(label, int) and not isinstance(label, bool)
          and label >= 0
          and (not folder_classes or label < len(folder_classes)))


def _write_folder(plan: list[tuple[str, str, str]], out: str, copy: bool):
  """Links (or copies) every planned image into `out/<split>/<class>/`."""
  missing = [path for _, _, path in plan if not os.path.isfile(path)]
  if missing:
    raise DataError(f'{len(missing)} listed images do not exist, e.g. '
                    f'{missing[0]}.')
  if os.path.exists(out) and os.listdir(out):
    raise DataError(f'{out} exists and is not empty; remove it or pick '
                    'another --out.')
  targets = {}
  for split, class_dir, path in plan:
    target_dir = os.path.join(out, split, class_dir)
    # CoOp lists may repeat a file name across subfolders (cars_train/1.jpg,
    # cars_test/1.jpg): prefix the parent folder's name when that happens.
    target = os.path.join(target_dir, os.path.basename(path))
    if target in targets:
      target = os.path.join(target_dir, os.path.basename(
          os.path.dirname(path)) + '_' + os.path.basename(path))
    if target in targets:
      raise DataError(f'{path} and {targets[target]} would both become '
                      f'{target}.')
    targets[target] = path
  for target, path in targets.items():
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if copy:
      shutil.copyfile(path, target)
    else:
      os.symlink(os.path.abspath(path), target)


_PROXY_VARIABLES = ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY',
                    'all_proxy', 'ALL_PROXY')
_PORTS = {'https': 443, 'http': 80, 'ftp': 21}


def _check_reachable(name: str, builder, data_dir: str):
  """Fails at once when a host the builder downloads from is unreachable.

  tfds would retry each file ten times with growing pauses (minutes), then
  end in a long traceback. Behind a proxy the hosts need not be reachable
  directly, so nothing is checked there.
  """
  if builder.is_prepared() or any(os.environ.get(v) for v in _PROXY_VARIABLES):
    return
  hosts = sorted({(url.hostname, url.port or _PORTS.get(url.scheme, 443))
                  for url in map(urllib.parse.urlparse,
                                 builder.url_infos or ())})
  for host, port in hosts:
    try:
      socket.create_connection((host, port), timeout=10).close()
    except OSError as e:
      raise DataError(
          f'{name}: cannot reach {host}:{port} to download the data ({e}); '
          f'run this command where the internet is reachable (or set '
          f'HTTPS_PROXY), then copy its <data_dir>/{builder.name} folder to '
          f'{os.path.join(data_dir, builder.name)}.') from e


def _prepare_tfds(name: str, data_dir: str):
  info = registry.get_dataset_info(name)
  builder = tfds.builder(info.tfds_full_name, data_dir=data_dir,
                         file_format='array_record')
  _check_reachable(name, builder, data_dir)
  if (name not in tfds_writer.ARCHIVES
      and importlib.util.find_spec('tensorflow') is None):
    # Without TensorFlow: the builder's own code, tf.io.gfile stood in for.
    tfds_writer.write_from_archives(name, data_dir, [])
    return
  try:
    builder.download_and_prepare()
  except ModuleNotFoundError as e:
    # tfds re-raises with its own message, which may drop `e.name`.
    missing = 'tensorflow' if 'tensorflow' in str(e) else (e.name or str(e))
    hint = (f'; or, without it, pass --archive: {tfds_writer.ARCHIVES[name]}'
            if name in tfds_writer.ARCHIVES else '')
    raise DataError(
        f'{name}: the tfds builder needs {missing} to write the files; run '
        f'this command once where `pip install {missing}` is allowed, with '
        f'the same --data_dir (reading them needs no TensorFlow){hint}.'
    ) from e


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog='python -m reprog_jax.data.prepare', description=__doc__.split('\n')[0])
  parser.add_argument('name', help=', '.join(registry.dataset_names()))
  parser.add_argument('--data_dir', default=None,
                      help="tfds data directory (default: tfds's own).")
  parser.add_argument('--out', default=None, help='folder dataset root '
                      '(default: <data_dir>/folders/<name>).')
  parser.add_argument('--src', help="gtsrb: torchvision's gtsrb folder.")
  parser.add_argument('--split_json', help="CoOp's split_zhou_*.json.")
  parser.add_argument('--image_dir', help="CoOp's image folder.")
  parser.add_argument('--archive', action='append', default=[],
                      help='a file the tfds builder downloads (repeat for '
                      'several; cifar10/cifar100: the python archive or '
                      'folder, svhn: the .mat folder), to write its files '
                      'without TensorFlow or internet.')
  parser.add_argument('--copy', action='store_true',
                      help='copy images instead of symlinking them.')
  args = parser.parse_args(argv)
  # Library chatter (tfds's missing-variant warnings) is not for users.
  logging.set_verbosity(logging.ERROR)

  def prepare():
    info = registry.get_dataset_info(args.name)
    data_dir = os.path.expanduser(args.data_dir or tfds.core.constants.DATA_DIR)
    out = args.out or os.path.join(data_dir, 'folders', args.name)
    if args.archive:
      print(tfds_writer.write_from_archives(args.name, data_dir,
                                            args.archive))
    elif args.name == 'gtsrb':
      if not args.src:
        raise DataError('gtsrb needs --src (torchvision\'s gtsrb folder).')
      _write_folder(_gtsrb_plan(args.src), out, args.copy)
    elif args.split_json or info.source == 'folder':
      if not (args.split_json and args.image_dir):
        raise DataError(f'{args.name} needs --split_json and --image_dir.')
      _write_folder(_coop_plan(args.name, args.split_json, args.image_dir),
                    out, args.copy)
    else:
      _prepare_tfds(args.name, data_dir)

  return cli.run('reprog_jax.data.prepare', prepare)


if __name__ == '__main__':
  sys.exit(main())
