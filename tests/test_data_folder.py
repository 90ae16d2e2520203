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


def _open(name, split, n_shot=-1, **fields):
  config = data.default_data_config()
  config.name = name
  for field, value in fields.items():
    config[field] = value
  return data.open_split_from_config(config, split, n_shot)


def _served(split, image_size, positions=None):
  """{pixel value: label} of the decoded examples, and the values."""
  if positions is None:
    positions = np.arange(len(split.indices))
  store = data.decode_split(split, positions, image_size=image_size,
                            batch_size=16)
  values = store.rows[:, 0, 0, 0].astype(int).tolist()
  return dict(zip(values, store.labels.tolist())), values


def test_gtsrb_tree_labels_follow_class_ids(tmp_path):
  classes = [f'{i:05d}' for i in range(43)]
  expected = _write_tree(str(tmp_path / 'folders' / 'gtsrb'), 'test',
                         classes, per_class=2, ext='ppm')
  split = _open('gtsrb', 'test', data_dir=str(tmp_path))
  assert len(split.indices) == 86
  served, values = _served(split, 32)
  assert len(values) == 86 and served == expected
  assert split.class_names[14] == 'stop'


def test_folder_source_for_a_tfds_dataset_uses_sorted_directories(tmp_path):
  # E.g. a CoOp split of a tfds dataset: labels follow the sorted names.
  classes = [f'class_{c}' for c in 'jihgfedcba']
  expected = _write_tree(str(tmp_path), 'train', sorted(classes), 3)
  split = _open('cifar10', 'train', 2, source='folder',
                folder_root=str(tmp_path))
  assert split.class_names == tuple(sorted(classes))
  pool = np.sort(data.few_shot_indices(split.labels, 2, 1))
  served, values = _served(split, 32, pool)
  assert len(values) == 20 and all(expected[v] == y for v, y in served.items())
  np.testing.assert_array_equal(np.bincount(split.labels[pool]), [2] * 10)


def test_empty_class_is_an_error(tmp_path):
  classes = [f'{i:05d}' for i in range(43)]
  _write_tree(str(tmp_path), 'train', classes, 1)
  for f in os.listdir(tmp_path / 'train' / '00007'):
    os.remove(tmp_path / 'train' / '00007' / f)
  with pytest.raises(data.DataError, match='00007 holds no image'):
    _open('gtsrb', 'train', folder_root=str(tmp_path))


def test_wrong_class_directories_are_an_error(tmp_path):
  classes = [f'{i:05d}' for i in range(42)] + ['stop_signs']
  _write_tree(str(tmp_path), 'train', classes, 1)
  with pytest.raises(data.DataError, match="missing \\['00042'\\]"):
    _open('gtsrb', 'train', folder_root=str(tmp_path))


def test_missing_folder_names_the_prepare_command(tmp_path):
  with pytest.raises(data.DataError) as error:
    _open('ucf101', 'train', data_dir=str(tmp_path))
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
  train = _open('gtsrb', 'train', folder_root=out)
  assert _served(train, 32)[0] == {i: i for i in range(43)}
  test = _open('gtsrb', 'test', folder_root=out)
  assert _served(test, 32)[0] == {100 + k: 42 - k for k in range(43)}


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
  split = _open('ucf101', 'train', folder_root=out)
  assert _served(split, 128)[0] == {label: label for label in range(101)}


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
