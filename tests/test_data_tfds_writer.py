"""`prepare --archive`: tfds files for CIFAR and SVHN without TensorFlow."""

import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reprog_jax import data
from reprog_jax.data import prepare
from reprog_jax.data import sources

import torchvision_files


def _by_id(data_source):
  """{id: (image, labels...)} of a tfds split, whatever its shuffled order."""
  out = {}
  for i in range(len(data_source)):
    example = data_source[i]
    identifier = example["id"]
    identifier = (identifier.decode() if isinstance(identifier, bytes)
                  else str(identifier))
    out[identifier] = example
  return out


def test_tensorflow_is_not_installed():
  # What the next tests prove depends on it.
  with pytest.raises(ModuleNotFoundError):
    __import__("tensorflow")


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"),
                                         ("cifar100", "cifar-100-python")])
def test_prepare_cifar_archive_reads_back_through_tfds(tmp_path, name,
                                                       folder):
  written = torchvision_files.write_cifar(str(tmp_path / "src"), name)
  archive = tmp_path / f"{folder}.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "src" / name / folder, arcname=folder)
  data_dir = tmp_path / "tfds"
  assert prepare.main([name, f"--data_dir={data_dir}",
                       f"--archive={archive}"]) == 0
  info = data.get_dataset_info(name)
  for split in ("train", "test"):
    source = tfds.data_source(info.tfds_full_name, split=split,
                              data_dir=str(data_dir))
    images, labels = written[split]
    examples = _by_id(source)
    assert len(examples) == len(labels)
    for index in range(len(labels)):
      example = examples[f"{split}_{index:05d}"]
      np.testing.assert_array_equal(example["image"], images[index])
      assert int(example["label"]) == labels[index]
      if name == "cifar100":
        assert int(example["coarse_label"]) == labels[index] // 5
    # Our tfds reader opens what was written, no TensorFlow anywhere.
    split_data = sources.open_split(info, split, data_dir=str(data_dir))
    np.testing.assert_array_equal(np.sort(split_data.labels), np.sort(labels))
  builder = tfds.builder(info.tfds_full_name, data_dir=str(data_dir))
  expected = ([f"c{i}" for i in range(10)] if name == "cifar10"
              else [f"f{i}" for i in range(100)])
  assert builder.info.features["label"].names == expected


def test_prepare_svhn_from_torchvision_root(tmp_path):
  torchvision_files.write_svhn(str(tmp_path / "root"))
  data_dir = tmp_path / "tfds"
  assert prepare.main(["svhn", f"--data_dir={data_dir}",
                       f"--archive={tmp_path / 'root' / 'svhn'}"]) == 0
  ours = sources.open_split(data.get_dataset_info("svhn"), "test",
                            data_dir=str(tmp_path / "root"),
                            source="torchvision")
  examples = _by_id(tfds.data_source("svhn_cropped", split="test",
                                     data_dir=str(data_dir)))
  assert len(examples) == len(ours.labels)
  for index in range(len(ours.labels)):
    example = examples[f"test_{index:06d}"]
    np.testing.assert_array_equal(example["image"],
                                  ours.source[index]["image"])
    assert int(example["label"]) == ours.labels[index]


def test_truncated_archive_is_one_line(tmp_path, capsys):
  archive = tmp_path / "cifar-10-python.tar.gz"
  torchvision_files.write_cifar(str(tmp_path / "src"), "cifar10")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "src" / "cifar10" / "cifar-10-batches-py",
            arcname="cifar-10-batches-py")
  with open(archive, "r+b") as f:
    f.truncate(os.path.getsize(archive) // 2)
  assert prepare.main(["cifar10", f"--data_dir={tmp_path / 'tfds'}",
                       f"--archive={archive}"]) == 1
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and str(archive) in err and "truncated" in err
  assert not os.path.exists(tmp_path / "tfds" / "cifar10")


def _dtd_archive(tmp_path):
  """A tiny dtd-r1.0.1.tar.gz (a plain tar, as DTD's own) with partition 1
  lists over a few of the real class names."""
  classes = data.get_dataset_info("dtd").class_names[:3]
  folder = tmp_path / "dtd_src"
  rng = np.random.default_rng(0)
  lists = {"train1": [], "test1": [], "val1": []}
  for c in classes:
    for i, split in enumerate(lists):
      path = folder / "dtd" / "images" / c / f"{c}_{i}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      from PIL import Image
      Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(
          path, "JPEG")
      lists[split].append(f"{c}/{c}_{i}.jpg")
  (folder / "dtd" / "labels").mkdir()
  for split, lines in lists.items():
    (folder / "dtd" / "labels" / f"{split}.txt").write_text(
        "\n".join(lines) + "\n")
  archive = tmp_path / "dtd-r1.0.1.tar.gz"
  with tarfile.open(archive, "w") as tar:
    tar.add(folder / "dtd", arcname="dtd")
  return archive, folder, lists


def test_prepare_dtd_from_its_archive_without_tensorflow(tmp_path):
  archive, folder, lists = _dtd_archive(tmp_path)
  data_dir = tmp_path / "tfds"
  assert prepare.main(["dtd", f"--data_dir={data_dir}",
                       f"--archive={archive}"]) == 0
  names = data.get_dataset_info("dtd").class_names
  source = tfds.data_source("dtd", split="train", data_dir=str(data_dir))
  assert len(source) == len(lists["train1"])
  for i in range(len(source)):
    example = source[i]
    file_name = example["file_name"]
    file_name = (file_name.decode() if isinstance(file_name, bytes)
                 else str(file_name))
    from PIL import Image
    expected = np.asarray(Image.open(folder / "dtd" / "images" / file_name))
    np.testing.assert_array_equal(example["image"], expected)
    assert names[int(example["label"])] == file_name.split("/")[0]


def test_archive_the_builder_does_not_download_is_one_line(tmp_path, capsys):
  wrong = tmp_path / "something.tar.gz"
  wrong.write_bytes(b"")
  assert prepare.main(["dtd", f"--data_dir={tmp_path / 'tfds'}",
                       f"--archive={wrong}"]) == 1
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and "dtd-r1.0.1.tar.gz" in err


def test_builder_needing_more_tensorflow_is_one_line():
  from reprog_jax.data import tfds_writer
  tf = tfds_writer._GfileOnly("sun397")  # pylint: disable=protected-access
  assert tf.io.gfile.exists(os.getcwd())
  with pytest.raises(data.DataError, match=r"^sun397: .*tf\.image") as error:
    tf.image.decode_image(b"")
  assert "\n" not in str(error.value)


def test_without_archives_the_builders_download_is_used(tmp_path):
  # What plain `prepare dtd` does without TensorFlow: tfds's manager
  # downloads (here: hands back a local file), we extract.
  from reprog_jax.data import tfds_writer
  archive, _, _ = _dtd_archive(tmp_path)

  class Manager:
    def download(self, url):
      assert url.endswith("dtd-r1.0.1.tar.gz")
      return str(archive)

  downloads = tfds_writer._LocalDownloads(  # pylint: disable=protected-access
      "dtd", [], str(tmp_path / "x"), Manager())
  extracted = downloads.download_and_extract(
      "https://example.org/dtd/dtd-r1.0.1.tar.gz")
  assert (extracted / "dtd" / "labels" / "train1.txt").exists()
