"""Data files are not code: CIFAR batches and CoOp LMDB records are read
with an unpickler that admits plain data only."""

import io
import os
import pickle

import numpy as np
import pytest

from reprog_jax import data
from reprog_jax.data import safe_pickle
from reprog_jax.data import sources

import torchvision_files


class _Runs:
  """Pickles as a call of `os.system(command)`: what a poisoned file holds."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def _plain_data():
  return {"data": np.arange(24, dtype=np.uint8).reshape(2, 12),
          "labels": [1, 2], "scalar": np.int64(7), "float": 0.5,
          "bytes": b"\x00\xff", "bytearray": bytearray(b"ab"),
          "set": {3, 4}, "frozenset": frozenset({5}), "complex": 1j,
          "str": "x", "tuple": (b"jpeg", 3), "none": None,
          "float32": np.zeros((2, 2), np.float32).T}  # Fortran order.


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_loads_as_pickle_loads_it(protocol):
  blob = pickle.dumps(_plain_data(), protocol=protocol)
  ours = safe_pickle.loads(blob, what="test")
  reference = pickle.loads(blob)
  assert ours.keys() == reference.keys()
  for key, value in reference.items():
    if isinstance(value, np.ndarray):
      np.testing.assert_array_equal(ours[key], value)
      assert ours[key].dtype == value.dtype
    else:
      assert ours[key] == value and type(ours[key]) is type(value)


def test_numpy_1_spelling_of_an_array_loads():
  # NumPy 1 (and the published CIFAR pickles) name `numpy.core.multiarray`;
  # protocol 2 spells globals as text lines, so the name can be swapped.
  blob = pickle.dumps({"data": np.arange(6, dtype=np.uint8)}, protocol=2)
  old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
  assert old != blob
  np.testing.assert_array_equal(
      safe_pickle.loads(old, what="test")["data"], np.arange(6))


def test_a_pickle_naming_another_callable_runs_nothing(tmp_path):
  marker = tmp_path / "MARKER"
  blob = pickle.dumps({"data": _Runs(f"touch {marker}")}, protocol=2)
  with pytest.raises(data.DataError) as error:
    safe_pickle.loads(blob, what="cifar10: /x/data_batch_1")
  message = str(error.value)
  assert message.startswith("cifar10: /x/data_batch_1: ")
  assert "system" in message and "\n" not in message
  assert not marker.exists()
  pickle.loads(blob)  # What plain pickle does with the same bytes.
  assert marker.exists()


def test_poisoned_cifar_batch_is_refused_in_one_line(tmp_path):
  root = tmp_path / "root"
  torchvision_files.write_cifar(str(root), "cifar10")
  batch = root / "cifar10" / "cifar-10-batches-py" / "data_batch_2"
  marker = tmp_path / "MARKER"
  with open(batch, "wb") as f:
    pickle.dump({"data": _Runs(f"touch {marker}"), "labels": [0]}, f)
  with pytest.raises(data.DataError) as error:
    sources.open_split(data.get_dataset_info("cifar10"), "train",
                       data_dir=str(root), source="torchvision")
  message = str(error.value)
  assert str(batch) in message and "posix.system" in message
  assert "\n" not in message
  assert not marker.exists()


def test_poisoned_lmdb_record_is_refused_naming_its_key(tmp_path):
  import lmdb  # pylint: disable=g-import-not-at-top
  root = tmp_path / "root"
  torchvision_files.write_coop_lmdb(str(root), "food101", 101)
  path = root / "food101" / "train.lmdb"
  marker = tmp_path / "MARKER"
  env = lmdb.open(str(path), subdir=True, map_size=1 << 24)
  with env.begin(write=True) as txn:
    txn.put(b"00000002", pickle.dumps((_Runs(f"touch {marker}"), 0)))
  env.close()
  with pytest.raises(data.DataError) as error:
    sources.open_split(data.get_dataset_info("food101"), "train",
                       data_dir=str(root), source="torchvision")
  message = str(error.value)
  assert str(path) in message and "b'00000002'" in message
  assert "posix.system" in message and "\n" not in message
  assert not marker.exists()


def test_truncated_pickle_is_still_an_unpickling_error():
  blob = pickle.dumps(_plain_data(), protocol=4)
  with pytest.raises((pickle.UnpicklingError, EOFError)):
    safe_pickle.load(io.BytesIO(blob[:len(blob) // 2]), what="test")
