"""source=torchvision: the PyTorch version's data root, read without it.

Every format is written tiny here; torchvision's own dataset classes (and a
transcription of the PyTorch code's `COOPLMDBDataset`) read the same files,
through `Resize((s, s))` and `ToTensor`, and our pixels and labels must equal
theirs exactly.
"""

import io
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import torchvision
from torchvision import transforms
from PIL import Image

from reprog_jax import data
from reprog_jax import layout
from reprog_jax.data import sources
from reprog_jax.data.preprocess import load_uint8_image
from reprog_jax.train import loop as train

from conftest import smoke_config
import torchvision_files

SIZE = 12  # Not any file's native size, so Resize really resamples.


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("torch_root"))
  torchvision_files.write_root(path)
  return path


@pytest.fixture(autouse=True)
def _no_md5(monkeypatch):
  # The tiny files are not the published ones: skip torchvision's checksums.
  for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.SVHN,
              torchvision.datasets.Flowers102):
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
  monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                      lambda *args, **kwargs: True)


def _pytorch_transform():
  # The PyTorch version's expansive preprocessing (prepare_data.py).
  return transforms.Compose([transforms.Lambda(lambda x: x.convert("RGB")),
                             transforms.Resize((SIZE, SIZE)),
                             transforms.ToTensor()])


def _torchvision(name, split, root):
  base, t = os.path.join(root, name), _pytorch_transform()
  train = split == "train"
  return {
      "cifar10": lambda: torchvision.datasets.CIFAR10(base, train=train,
                                                      transform=t),
      "cifar100": lambda: torchvision.datasets.CIFAR100(base, train=train,
                                                        transform=t),
      "svhn": lambda: torchvision.datasets.SVHN(base, split=split,
                                                transform=t),
      "gtsrb": lambda: torchvision.datasets.GTSRB(base, split=split,
                                                  transform=t),
      "dtd": lambda: torchvision.datasets.DTD(base, split=split, transform=t),
      "flowers102": lambda: torchvision.datasets.Flowers102(
          base, split=split, transform=t),
      "oxfordpets": lambda: torchvision.datasets.OxfordIIITPet(
          base, split="trainval" if train else "test", transform=t),
      "eurosat": lambda: torchvision.datasets.EuroSAT(base, transform=t),
  }[name]()


class CoopLmdbReference(torch.utils.data.Dataset):
  """The PyTorch code's COOPLMDBDataset, transcribed: pickled __len__ and
  __keys__, records (encoded image, label), classes from split.json."""

  def __init__(self, base, split, transform):
    import json
    import lmdb
    path = os.path.join(base, f"{split}.lmdb")
    self.env = lmdb.open(path, subdir=os.path.isdir(path), readonly=True,
                         lock=False, readahead=False, meminit=False)
    with self.env.begin(write=False) as txn:
      self.length = pickle.loads(txn.get(b"__len__"))
      self.keys = pickle.loads(txn.get(b"__keys__"))
    with open(os.path.join(base, "split.json")) as f:
      test = json.load(f)["test"]
    self.classes = [c for _, c in sorted({s[-2]: s[-1] for s in test}.items())]
    self.transform = transform

  def __len__(self):
    return self.length

  def __getitem__(self, index):
    with self.env.begin(write=False) as txn:
      image_bytes, target = pickle.loads(txn.get(self.keys[index]))
    return self.transform(Image.open(io.BytesIO(image_bytes))), target


def _ours(name, split, root):
  info = data.get_dataset_info(name)
  return sources.open_split(info, split, data_dir=root, source="torchvision")


def _assert_same(ours, reference, positions):
  assert len(positions) == len(ours.labels)
  for row, position in enumerate(positions):
    tensor, label = reference[int(position)]
    item = ours.source[int(ours.indices[row])]
    # What a run computes: uint8 pixels, then x / 255 in float32 (the
    # steps' exact table), which is ToTensor's division.
    pixels = load_uint8_image(item["image"], SIZE)
    np.testing.assert_array_equal(pixels.astype(np.float32) / np.float32(255),
                                  tensor.permute(1, 2, 0).numpy())
    assert int(item["label"]) == int(ours.labels[row]) == int(label)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "gtsrb",
                                  "dtd", "flowers102", "oxfordpets"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_torchvision_formats_equal_torchvision(root, name, split):
  ours = _ours(name, split, root)
  reference = _torchvision(name, split, root)
  assert len(ours.indices) == len(reference) > 0
  _assert_same(ours, reference, np.arange(len(reference)))


def test_cifar_pixels_are_the_pickled_rows(root, tmp_path):
  # Independent of torchvision: a row is the R plane, then G, then B.
  written = torchvision_files.write_cifar(str(tmp_path), "cifar10", seed=3)
  ours = _ours("cifar10", "train", str(tmp_path))
  images, labels = written["train"]
  np.testing.assert_array_equal(ours.labels, labels)
  np.testing.assert_array_equal(ours.source[4]["image"], images[4])


def test_eurosat_is_cut_90_10_stratified(root):
  reference = _torchvision("eurosat", "train", root)
  train, test = _ours("eurosat", "train", root), _ours("eurosat", "test",
                                                       root)
  assert len(train.indices) + len(test.indices) == len(reference) == 100
  assert not set(train.indices) & set(test.indices)
  np.testing.assert_array_equal(np.bincount(test.labels), np.ones(10))
  _assert_same(test, reference, test.indices)


@pytest.mark.parametrize("name", ["food101", "sun397", "ucf101",
                                  "stanfordcars"])
def test_coop_lmdb_equals_cooplmdbdataset(root, tmp_path, name):
  # py-lmdb opens a path once per process: the reference reads a copy.
  copy = shutil.copytree(os.path.join(root, name), tmp_path / name)
  for split in ("train", "test"):
    ours = _ours(name, split, root)
    reference = CoopLmdbReference(str(copy), split, _pytorch_transform())
    assert len(reference.classes) == data.get_dataset_info(name).num_classes
    # The names COOPLMDBDataset shows (split.json's), not the registry's.
    assert ours.class_names == tuple(reference.classes)
    assert ours.class_names != data.get_dataset_info(name).class_names
    _assert_same(ours, reference, np.arange(len(reference)))


def test_coop_lmdb_without_split_json_has_the_registrys_names(root,
                                                              tmp_path):
  location = _copy(root, tmp_path, "ucf101")
  os.remove(os.path.join(location, "ucf101", "split.json"))
  ours = _ours("ucf101", "test", location)
  assert ours.class_names == data.get_dataset_info("ucf101").class_names
  np.testing.assert_array_equal(ours.labels,
                                _ours("ucf101", "test", root).labels)


def test_lmdb_source_survives_pickling(root):
  ours = _ours("food101", "train", root)
  ours.source[0]  # Opens the environment in this process.
  clone = pickle.loads(pickle.dumps(ours.source))
  assert clone[2]["image"] == ours.source[2]["image"]


def _copy(root, tmp_path, name):
  target = tmp_path / "root"
  shutil.copytree(os.path.join(root, name), target / name, symlinks=True)
  return str(target)


@pytest.mark.parametrize("name,relative,needle", [
    ("cifar10", "cifar-10-batches-py/data_batch_3", "data_batch_3"),
    ("svhn", "test_32x32.mat", "test_32x32.mat"),
    ("gtsrb", "gtsrb/GT-final_test.csv", "GT-final_test.csv"),
    ("flowers102", "flowers-102/setid.mat", "setid.mat"),
    ("oxfordpets", "oxford-iiit-pet/annotations/test.txt", "test.txt"),
    ("food101", "test.lmdb", "test.lmdb"),
])
def test_missing_file_is_one_line(root, tmp_path, name, relative, needle):
  location = _copy(root, tmp_path, name)
  path = os.path.join(location, name, relative)
  (shutil.rmtree if os.path.isdir(path) else os.remove)(path)
  with pytest.raises(data.DataError) as error:
    for split in ("train", "test"):
      _ours(name, split, location)
  message = str(error.value)
  assert "\n" not in message and needle in message
  assert message.startswith(f"{name}: ") and "get it with" in message
  # Not there, rather than broken: the doctor lists it as "not found".
  assert isinstance(error.value, data.DataNotFound)


@pytest.mark.parametrize("name,relative", [
    ("cifar10", "cifar-10-batches-py/test_batch"),
    ("cifar100", "cifar-100-python/test"),
    ("svhn", "test_32x32.mat"),
])
def test_truncated_file_is_named(root, tmp_path, name, relative):
  location = _copy(root, tmp_path, name)
  path = os.path.join(location, name, relative)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(data.DataError, match=r"truncated") as error:
    _ours(name, "test", location)
  assert path in str(error.value) and "\n" not in str(error.value)


def test_truncated_lmdb_is_named(root, tmp_path):
  location = _copy(root, tmp_path, "ucf101")
  path = os.path.join(location, "ucf101", "test.lmdb", "data.mdb")
  with open(path, "r+b") as f:
    f.truncate(100)
  with pytest.raises(data.DataError) as error:
    _ours("ucf101", "test", location)
  assert "test.lmdb" in str(error.value) and "\n" not in str(error.value)


def test_class_count_differing_from_registry(root, tmp_path):
  location = _copy(root, tmp_path, "gtsrb")
  shutil.rmtree(os.path.join(location, "gtsrb", "gtsrb", "GTSRB", "Training",
                             "00042"))
  with pytest.raises(data.DataError, match=r"42 classes.*expects 43"):
    _ours("gtsrb", "train", location)
  # A CIFAR-100 root where CIFAR-10 is expected.
  other = tmp_path / "swapped"
  shutil.copytree(os.path.join(root, "cifar100", "cifar-100-python"),
                  other / "cifar10" / "cifar-10-batches-py")
  os.rename(other / "cifar10" / "cifar-10-batches-py" / "meta",
            other / "cifar10" / "cifar-10-batches-py" / "batches.meta")
  with pytest.raises(data.DataError, match=r"batches.meta"):
    _ours("cifar10", "test", str(other))


def test_lmdb_class_count_differing_from_registry(root, tmp_path):
  import json
  location = _copy(root, tmp_path, "stanfordcars")
  path = os.path.join(location, "stanfordcars", "split.json")
  with open(path) as f:
    split_file = json.load(f)
  split_file["test"] = split_file["test"][:-1]
  with open(path, "w") as f:
    json.dump(split_file, f)
  with pytest.raises(data.DataError, match=r"split.json defines 195 classes"
                     r", the registry expects 196"):
    _ours("stanfordcars", "train", location)


def test_data_dir_is_required(root):
  with pytest.raises(data.DataError, match="needs data_dir"):
    sources.open_split(data.get_dataset_info("cifar10"), "train",
                       source="torchvision")


def test_smoke_run_reads_a_torchvision_root(tmp_path):
  # In this process: what reads the root is the run, not the command line
  # (test_data_bad_files and test_multihost give these flags to
  # `reprog_jax.main` in its own process).
  import json
  torchvision_files.write_cifar(str(tmp_path / "root"), "cifar10",
                                per_split=(4, 6), cycle_labels=True)
  workdir = tmp_path / "run"
  train.train_and_evaluate(
      smoke_config("ilm_vp", epochs=1, data__mock=False,
                   data__source="torchvision",
                   data__data_dir=str(tmp_path / "root")), str(workdir))
  with open(workdir / layout.CONFIG_FILE) as f:
    recorded = json.load(f)
  assert recorded["data.source"] == "torchvision"
  assert recorded["data.mock"] is False
  with open(workdir / layout.METRICS_FILE) as f:
    assert len(f.read().splitlines()) == 1
