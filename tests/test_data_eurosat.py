"""EuroSAT's hold-out: the 90/10 split the PyTorch code meant, the same
images whichever source reads them.

The reference is the PyTorch version's own call,
`train_test_split(D.samples, D.targets, test_size=0.1, stratify=D.targets,
random_state=1)`, over the samples of torchvision's `ImageFolder` (sorted
class folders, sorted file names).
"""

import os
import zipfile

import numpy as np
import pytest
from sklearn.model_selection import train_test_split
import tensorflow_datasets as tfds
import torchvision

from reprog_jax import data
from reprog_jax.data import prepare
from reprog_jax.data import sources

import torchvision_files

# Images per class of EuroSAT (RGB), in its ImageFolder class order.
EUROSAT_SIZES = (3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000)


def _pytorch_split(samples, targets):
  """(test samples, train samples) as the PyTorch version cuts them."""
  x_train, x_test, _, _ = train_test_split(
      samples, targets, test_size=0.1, stratify=targets, random_state=1)
  return x_train, x_test


def _folder_samples(sizes):
  """ImageFolder-style (path, target) samples for classes of these sizes."""
  return [(f"2750/c{c}/c{c}_{i}.jpg", c) for c, n in enumerate(sizes)
          for i in range(n)]


@pytest.mark.parametrize("sizes", [
    EUROSAT_SIZES,
    # 10 % of every class is fractional: sklearn rounds some classes up,
    # drawing which at random.
    (7, 13, 21, 5, 9, 33, 11, 17, 6, 14),
    (15, 22, 8),
])
def test_holdout_is_the_pytorch_versions_train_test_split(sizes):
  samples = _folder_samples(sizes)
  targets = [target for _, target in samples]
  x_train, x_test = _pytorch_split(samples, targets)
  position = {sample: i for i, sample in enumerate(samples)}
  train, test = data.stratified_holdout(np.asarray(targets), 0.1, seed=1)
  # The same examples, in the same order.
  np.testing.assert_array_equal(test, [position[s] for s in x_test])
  np.testing.assert_array_equal(train, [position[s] for s in x_train])
  assert len(set(train.tolist()) | set(test.tolist())) == len(samples)


def test_holdout_at_eurosat_sizes_is_a_tenth_of_each_class():
  labels = np.repeat(np.arange(10), EUROSAT_SIZES)
  _, test = data.stratified_holdout(labels, 0.1, seed=1)
  np.testing.assert_array_equal(
      np.bincount(labels[test]),
      [300, 300, 300, 250, 250, 200, 250, 300, 250, 300])


def test_holdout_of_labels_in_any_order():
  labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2],
                                                          [15, 22, 8]))
  samples = [(f"f{i}", int(y)) for i, y in enumerate(labels)]
  _, x_test = _pytorch_split(samples, labels.tolist())
  _, test = data.stratified_holdout(labels, 0.1, seed=1)
  np.testing.assert_array_equal(test, [int(s[0][1:]) for s in x_test])


def test_too_small_a_class_is_one_line():
  with pytest.raises(data.DataError, match="stratified 10%") as error:
    data.stratified_holdout(np.array([0, 0, 0, 1]), 0.1, seed=1)
  assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """A torchvision EuroSAT root with 13 images per class (10 % is 1.3)."""
  path = str(tmp_path_factory.mktemp("eurosat_root"))
  torchvision_files.write_eurosat(path, per_class=13)
  return path


def _names(split):
  return [os.path.basename(split.source.locate(int(i))) for i in split.indices]


def test_torchvision_root_holds_out_the_pytorch_versions_images(root):
  dataset = torchvision.datasets.EuroSAT(os.path.join(root, "eurosat"))
  x_train, x_test = _pytorch_split(dataset.samples, dataset.targets)
  info = data.get_dataset_info("eurosat")
  for split, expected in (("train", x_train), ("test", x_test)):
    ours = sources.open_split(info, split, data_dir=root,
                              source="torchvision")
    assert [ours.source.locate(int(i)) for i in ours.indices] == [
        path for path, _ in expected]
    np.testing.assert_array_equal(ours.labels,
                                  [target for _, target in expected])


def test_tfds_holds_out_the_same_images_as_the_torchvision_root(root,
                                                                tmp_path):
  # tfds's eurosat builder, run on the same images (EuroSAT.zip's layout,
  # 2750/<class>/<file>): its examples come in another order.
  base = os.path.join(root, "eurosat", "eurosat")
  archive = tmp_path / "EuroSAT.zip"
  with zipfile.ZipFile(archive, "w") as z:
    for folder, _, files in os.walk(base):
      for name in files:
        path = os.path.join(folder, name)
        z.write(path, os.path.relpath(path, base))
  data_dir = str(tmp_path / "tfds")
  assert prepare.main(["eurosat", f"--data_dir={data_dir}",
                       f"--archive={archive}"]) == 0
  records = tfds.data_source("eurosat/rgb", split="train", data_dir=data_dir)
  record_names = [records[i]["filename"].decode()
                  for i in range(len(records))]
  assert record_names != sorted(record_names)  # tfds shuffled them.
  info = data.get_dataset_info("eurosat")
  for split in ("train", "test"):
    theirs = sources.open_split(info, split, data_dir=root,
                                source="torchvision")
    ours = sources.open_split(info, split, data_dir=data_dir, source="tfds")
    assert [record_names[i] for i in ours.indices] == _names(theirs)
    np.testing.assert_array_equal(ours.labels, theirs.labels)


def test_mock_eurosat_is_cut_too():
  # Mock labels cycle through the classes: example i is of class i % 10.
  info = data.get_dataset_info("eurosat")
  x_train, x_test = _pytorch_split(np.arange(130), np.arange(130) % 10)
  for split, expected in (("train", x_train), ("test", x_test)):
    ours = sources.open_split(info, split, mock=True, mock_num_examples=130)
    np.testing.assert_array_equal(ours.indices, expected)
    np.testing.assert_array_equal(ours.labels, np.asarray(expected) % 10)
