"""One line for every bad file: what a file that does not read or decode
becomes, in the decoding pass and in a whole run."""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from reprog_jax import data
from reprog_jax import layout
from reprog_jax.data import folder
from reprog_jax.data import pipeline
from reprog_jax.data import sources

import torchvision_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jpeg(path, seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (9, 7, 3), np.uint8)
  Image.fromarray(pixels).save(path, "JPEG")


@pytest.fixture
def folder_split(tmp_path):
  """A 'test' split of four files, the third a few bytes of nothing."""
  paths = [str(tmp_path / f"{i}.jpg") for i in range(4)]
  for i, path in enumerate(paths):
    _jpeg(path, i)
  with open(paths[2], "wb") as f:
    f.write(b"\xff\xd8\x00")
  return sources.Split(
      source=folder.FolderSource(paths, np.zeros(4, np.int64)),
      indices=np.arange(4), labels=np.zeros(4, np.int64),
      class_names=("a",), dataset="dtd", name="test",
      doctor="python -m reprog_jax.data.doctor ROOT --datasets dtd")


# worker_count=1: the error crosses from a grain worker process.
@pytest.mark.parametrize("worker_count", [0, 1])
def test_undecodable_file_is_one_line_naming_it(folder_split, worker_count):
  with pytest.raises(data.DataError) as error:
    data.decode_split(folder_split, np.arange(4), image_size=8,
                      batch_size=2, worker_count=worker_count,
                      read_threads=1)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith("dtd (test split), example 2: cannot read "
                            f"{folder_split.source.locate(2)} (")
  assert "BytesIO" not in message  # PIL's name of an in-memory file.
  assert message.endswith("list every unreadable file with: python -m "
                          "reprog_jax.data.doctor ROOT --datasets dtd")


def test_truncated_file_fails_in_decoding_too(folder_split):
  # Its header reads (PIL opens it); the pixels do not.
  path = folder_split.source.locate(2)
  _jpeg(path)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 40)
  with pytest.raises(data.DataError, match=r"example 2: cannot read .*2\.jpg"
                     r" \(image file is truncated"):
    list(pipeline.decode_batches(folder_split.source, np.arange(4),
                                 image_size=8, batch_size=4))


def test_vanished_file_is_one_line(folder_split):
  os.remove(folder_split.source.locate(1))
  with pytest.raises(data.DataError, match=r"example 1: cannot read "
                     r".*1\.jpg \(\[Errno 2\] No such file"):
    data.decode_split(folder_split, np.arange(4), image_size=8)


def test_lmdb_record_is_named_by_its_key(tmp_path):
  import lmdb  # pylint: disable=g-import-not-at-top
  root = tmp_path / "root"
  torchvision_files.write_coop_lmdb(str(root), "sun397", 397)
  path = root / "sun397" / "test.lmdb"
  env = lmdb.open(str(path), subdir=True, map_size=1 << 24)
  with env.begin(write=True) as txn:
    txn.put(b"00000001", pickle.dumps((b"not an image", 5)))
  env.close()
  split = sources.open_split(data.get_dataset_info("sun397"), "test",
                             data_dir=str(root), source="torchvision")
  with pytest.raises(data.DataError) as error:
    data.decode_split(split, np.arange(len(split.indices)), image_size=8)
  assert str(error.value).startswith(
      f"sun397 (test split), example 1: cannot read {path} key b'00000001' (")
  assert str(error.value).endswith(
      f"python -m reprog_jax.data.doctor {root} --source torchvision "
      "--datasets sun397")


def test_tfds_record_is_named_by_its_index():
  class Records(list):
    def __getitems__(self, keys):
      return [self[k] for k in keys]

  buffer = io.BytesIO()
  Image.new("RGB", (4, 4)).save(buffer, "PNG")
  records = Records([{"image": buffer.getvalue(), "label": 0},
                     {"image": b"\x89PNG", "label": 1}])
  source = sources.TfdsSource(records, where="/tfds/dtd/3.0.1 train")
  with pytest.raises(data.DataError, match=r"^example 1: cannot read "
                     r"/tfds/dtd/3\.0\.1 train record 1 \("):
    list(pipeline.decode_batches(source, np.arange(2), image_size=4,
                                 batch_size=2))


def test_run_over_a_corrupt_jpeg_is_one_line_and_writes_no_result(tmp_path):
  # The linear probe's feature pass (no worker processes: the smoke
  # preset's); ILM-VP decodes through `decode_split`, tested above.
  root = tmp_path / "root"
  torchvision_files.write_eurosat(str(root), per_class=10)
  test = sources.open_split(data.get_dataset_info("eurosat"), "test",
                            data_dir=str(root), source="torchvision")
  bad = test.source.locate(int(test.indices[3]))
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8junk")
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "reprog_jax.main",
       "--config=configs/linear_probe.py:smoke", f"--workdir={workdir}",
       "--config.progress=False", "--config.data.name=eurosat",
       "--config.data.mock=False", "--config.data.source=torchvision",
       f"--config.data.data_dir={root}"],
      cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("reprog_jax.main: error: eurosat (test split)")
  assert f"cannot read {bad} (" in lines[0]
  assert lines[0].endswith(f"python -m reprog_jax.data.doctor {root} "
                           "--source torchvision --datasets eurosat")
  # As a fresh run leaves it before its first epoch: nothing to resume.
  for name in (layout.CHECKPOINTS_DIR, layout.SUMMARY_FILE,
               layout.METRICS_FILE):
    assert not (workdir / name).exists(), name
