"""Folder datasets (`root/<split>/<class>/<image>`) and the prepare CLI."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from reprog_jax import data
from reprog_jax.data import prepare


def _pixel_image(value, size=(6, 5)):
  """A tiny image whose every pixel is `value`, to identify it later."""
  return Image.fromarray(np.full(size + (3,), value, np.uint8))


def _write_tree(root, split, classes, per_class, ext='png', start=0):
  """Writes per_class images per class; returns {pixel value: label}."""
  expected, value = {}, start
  for label, class_dir in enumerate(classes):
    os.makedirs(os.path.join(root, split, class_dir), exist_ok=True)
    for k in range(per_class):
      _pixel_image(value).save(
          os.path.join(root, split, class_dir, f'img{k}.{ext}'))
      expected[value] = label
      value += 1
  return expected


def _served(loader):
  values, labels = [], []
  for batch in loader.epoch(0):
    mask = batch['mask']
    values += np.rint(batch['image'][mask, 0, 0, 0] * 255).astype(int).tolist()
    labels += batch['label'][mask].tolist()
  return dict(zip(values, labels)), values


def test_gtsrb_tree_labels_follow_class_ids(tmp_path):
  classes = [f'{i:05d}' for i in range(43)]
  expected = _write_tree(str(tmp_path / 'folders' / 'gtsrb'), 'test',
                         classes, per_class=2, ext='ppm')
  loader = data.make_loader('gtsrb', 'test', image_size=32, batch_size=16,
                            data_dir=str(tmp_path))
  assert loader.num_examples == 86 and loader.steps_per_epoch == 6
  served, values = _served(loader)
  assert len(values) == 86 and served == expected
  assert loader.class_names[14] == 'stop'


def test_folder_source_for_a_tfds_dataset_uses_sorted_directories(tmp_path):
  # E.g. a CoOp split of a tfds dataset: labels follow the sorted names.
  classes = [f'class_{c}' for c in 'jihgfedcba']
  expected = _write_tree(str(tmp_path), 'train', sorted(classes), 3)
  loader = data.make_loader('cifar10', 'train', image_size=32, batch_size=7,
                            source='folder', folder_root=str(tmp_path),
                            n_shot=2, seed=1)
  assert loader.class_names == tuple(sorted(classes))
  served, values = _served(loader)
  assert len(values) == 20 and all(expected[v] == y for v, y in served.items())
  np.testing.assert_array_equal(np.bincount(loader.labels), [2] * 10)


def test_empty_class_is_an_error(tmp_path):
  classes = [f'{i:05d}' for i in range(43)]
  _write_tree(str(tmp_path), 'train', classes, 1)
  for f in os.listdir(tmp_path / 'train' / '00007'):
    os.remove(tmp_path / 'train' / '00007' / f)
  with pytest.raises(data.DataError, match='00007 holds no image'):
    data.make_loader('gtsrb', 'train', image_size=32, batch_size=4,
                     folder_root=str(tmp_path))


def test_wrong_class_directories_are_an_error(tmp_path):
  classes = [f'{i:05d}' for i in range(42)] + ['stop_signs']
  _write_tree(str(tmp_path), 'train', classes, 1)
  with pytest.raises(data.DataError, match="missing \\['00042'\\]"):
    data.make_loader('gtsrb', 'train', image_size=32, batch_size=4,
                     folder_root=str(tmp_path))


def test_missing_folder_names_the_prepare_command(tmp_path):
  with pytest.raises(data.DataError) as error:
    data.make_loader('ucf101', 'train', image_size=128, batch_size=4,
                     data_dir=str(tmp_path))
  message = str(error.value)
  assert message.startswith('ucf101: no folder split at')
  assert 'python -m reprog_jax.data.prepare ucf101 --split_json=' in message
  assert not os.listdir(tmp_path)


def _fake_torchvision_gtsrb(src):
  """torchvision's GTSRB layout: Training/<id>/*.ppm, Final_Test + CSV."""
  values = {}
  for i in range(43):
    class_dir = os.path.join(src, 'GTSRB', 'Training', f'{i:05d}')
    os.makedirs(class_dir)
    _pixel_image(i).save(os.path.join(class_dir, f'00000_0000{i % 3}.ppm'))
    values[i] = i
  test_dir = os.path.join(src, 'GTSRB', 'Final_Test', 'Images')
  os.makedirs(test_dir)
  rows = ['Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId']
  for k in range(43):
    _pixel_image(100 + k).save(os.path.join(test_dir, f'{k:05d}.ppm'))
    rows.append(f'{k:05d}.ppm;5;6;0;0;5;6;{42 - k}')
  with open(os.path.join(src, 'GT-final_test.csv'), 'w') as f:
    f.write('\n'.join(rows) + '\n')


def test_prepare_gtsrb_then_load(tmp_path):
  src, out = str(tmp_path / 'gtsrb_src'), str(tmp_path / 'gtsrb')
  _fake_torchvision_gtsrb(src)
  assert prepare.main(['gtsrb', f'--src={src}', f'--out={out}']) == 0
  train = data.make_loader('gtsrb', 'train', image_size=32, batch_size=16,
                           folder_root=out)
  assert _served(train)[0] == {i: i for i in range(43)}
  test = data.make_loader('gtsrb', 'test', image_size=32, batch_size=16,
                          folder_root=out)
  assert _served(test)[0] == {100 + k: 42 - k for k in range(43)}


def test_prepare_coop_split_then_load(tmp_path):
  image_dir = tmp_path / 'UCF-101-midframes'
  names = data.get_dataset_info('ucf101').class_names
  splits = {'train': [], 'val': [], 'test': []}
  for label, name in enumerate(names):
    os.makedirs(image_dir / name)
    for split, value in (('train', label), ('test', 150 + label % 100)):
      path = f'{name}/v_{name}_{split}.png'
      _pixel_image(value).save(image_dir / path)
      # CoOp stores [relative path, label, CoOp class name].
      splits[split].append([path, label, f'coop_{label}'])
  split_json = tmp_path / 'split_zhou_UCF101.json'
  split_json.write_text(json.dumps(splits))
  out = str(tmp_path / 'ucf101')
  assert prepare.main(['ucf101', f'--split_json={split_json}',
                       f'--image_dir={image_dir}', f'--out={out}']) == 0
  assert sorted(os.listdir(os.path.join(out, 'train'))) == sorted(names)
  loader = data.make_loader('ucf101', 'train', image_size=128, batch_size=32,
                            folder_root=out)
  assert _served(loader)[0] == {label: label for label in range(101)}


def test_prepare_bad_input_exits_1_and_writes_nothing(tmp_path, capsys):
  out = tmp_path / 'out'
  assert prepare.main(['gtsrb', f'--src={tmp_path / "nope"}',
                       f'--out={out}']) == 1
  assert prepare.main(['ucf101', f'--out={out}']) == 1
  assert prepare.main(['mnist', f'--out={out}']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 3 and all(
      line.startswith('reprog_jax.data.prepare: error: ') for line in err)
  assert 'valid names' in err[2]
  assert not out.exists()
