"""metrics.jsonl and TensorBoard events (`reprog_jax.metrics.metric_writer`)."""

import errno
import glob
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import threading

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from reprog_jax.metrics import metric_writer


def read_events(workdir):
  """All TensorBoard events under `workdir/tensorboard`, file by file.

  Parses the TFRecord framing by hand (TensorFlow is not installed and
  tensorboardX only writes): u64 length, masked CRC of the length, the
  serialized `Event`, masked CRC of it. Both CRCs are checked.
  """
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c
  files = sorted(glob.glob(os.path.join(workdir, "tensorboard",
                                        "events.out.tfevents.*")))
  per_file = []
  for path in files:
    with open(path, "rb") as f:
      data = f.read()
    events, offset = [], 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
      assert header_crc == masked_crc32c(header)
      payload = data[offset + 12:offset + 12 + length]
      (payload_crc,) = struct.unpack(
          "<I", data[offset + 12 + length:offset + 16 + length])
      assert payload_crc == masked_crc32c(payload)
      event = event_pb2.Event()
      event.ParseFromString(payload)
      events.append(event)
      offset += 16 + length
    per_file.append(events)
  return per_file


def scalars(events):
  return {(value.tag, event.step): value.simple_value
          for event in events if event.HasField("summary")
          for value in event.summary.value if value.HasField("simple_value")}


def strict_json(line):
  def reject(constant):
    raise ValueError(f"non-standard JSON constant {constant}")
  return json.loads(line, parse_constant=reject)


# ---------------------------------------------------------------------------
# MetricWriter and read_metrics.
# ---------------------------------------------------------------------------


RECORDS = [
    {"train_loss": 2.5, "train_acc": 0.25, "test_acc": 0.5, "method": "vp"},
    {"train_loss": 1.5, "train_acc": 0.5, "test_acc": 0.625, "method": "vp"},
    {"train_loss": 1.0, "train_acc": 0.75, "test_acc": 0.75, "method": "vp"},
    {"train_loss": 0.5, "train_acc": 0.875, "test_acc": 0.8125,
     "method": "vp"},
]


def test_jsonl_round_trip_and_tensorboard_scalars(tmp_path):
  workdir = str(tmp_path / "run")
  with metric_writer.MetricWriter(workdir) as writer:
    for epoch, metrics in enumerate(RECORDS):
      writer.write(epoch, metrics)
  expected = [{"epoch": epoch, **metrics}
              for epoch, metrics in enumerate(RECORDS)]
  assert metric_writer.read_metrics(workdir) == expected
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = f.read().splitlines()
  assert [strict_json(line) for line in lines] == expected

  (events,) = read_events(workdir)
  written = scalars(events)
  for epoch, metrics in enumerate(RECORDS):
    for name in ("train_loss", "train_acc", "test_acc"):
      assert written[(name, epoch)] == pytest.approx(metrics[name])
  # Strings are in the JSON only.
  assert not any(tag == "method" for tag, _ in written)
  assert len(written) == 3 * len(RECORDS)


def test_numpy_and_jax_scalars_become_plain_json(tmp_path):
  workdir = str(tmp_path)
  with metric_writer.MetricWriter(workdir) as writer:
    writer.write(0, {"a": np.float32(0.5), "b": jnp.asarray(0.25),
                     "c": np.int64(7), "d": True})
  assert metric_writer.read_metrics(workdir) == [
      {"epoch": 0, "a": 0.5, "b": 0.25, "c": 7, "d": True}]


def test_bad_metrics_are_refused(tmp_path):
  with metric_writer.MetricWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="epoch"):
      writer.write(0, {"epoch": 3})
    with pytest.raises(TypeError, match="vector"):
      writer.write(0, {"vector": np.zeros(3)})
  assert metric_writer.read_metrics(str(tmp_path)) == []


def test_non_finite_metrics_give_valid_json(tmp_path):
  workdir = str(tmp_path)
  with metric_writer.MetricWriter(workdir) as writer:
    writer.write(0, {"loss": float("nan"), "up": float("inf"),
                     "down": np.float32(-np.inf), "ok": 1.0})
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    (line,) = f.read().splitlines()
  assert strict_json(line) == {"epoch": 0, "loss": "NaN", "up": "Infinity",
                               "down": "-Infinity", "ok": 1.0}
  (record,) = metric_writer.read_metrics(workdir)
  assert math.isnan(record["loss"])
  assert record["up"] == math.inf and record["down"] == -math.inf
  (events,) = read_events(workdir)
  assert math.isnan(scalars(events)[("loss", 0)])


def test_truncate_after_resume_equals_uninterrupted_run(tmp_path):
  uninterrupted = str(tmp_path / "uninterrupted")
  with metric_writer.MetricWriter(uninterrupted) as writer:
    for epoch, metrics in enumerate(RECORDS):
      writer.write(epoch, metrics)

  resumed = str(tmp_path / "resumed")
  with metric_writer.MetricWriter(resumed) as writer:
    for epoch, metrics in enumerate(RECORDS[:3]):
      writer.write(epoch, metrics)
  # The crash: epoch 2 was logged but its checkpoint was not saved, and the
  # line of epoch 3 was cut off mid-write.
  with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
    f.write('{"epoch": 3, "train_lo')
  assert [r["epoch"] for r in metric_writer.read_metrics(resumed)] == [0, 1, 2]

  with metric_writer.MetricWriter(resumed) as writer:
    writer.truncate_after(1)
    for epoch in (2, 3):
      writer.write(epoch, RECORDS[epoch])

  with open(os.path.join(uninterrupted, "metrics.jsonl"), "rb") as f:
    expected = f.read()
  with open(os.path.join(resumed, "metrics.jsonl"), "rb") as f:
    assert f.read() == expected
  # No temporary file left behind.
  assert sorted(os.listdir(resumed)) == ["metrics.jsonl", "tensorboard"]

  first, second = read_events(resumed)
  assert set(scalars(first)) == {(n, e) for n in ("train_loss", "train_acc",
                                                  "test_acc")
                                 for e in (0, 1, 2)}
  # TensorBoard drops the first file's steps >= 2 on this marker.
  purges = [event.step for event in second if event.HasField("session_log")]
  assert purges == [2]
  assert {e for _, e in scalars(second)} == {2, 3}


def test_truncate_after_writes_went_to_a_new_event_file(tmp_path):
  workdir = str(tmp_path)
  with metric_writer.MetricWriter(workdir) as writer:
    writer.write(0, {"x": 1.0})
    writer.write(1, {"x": 2.0})
    writer.truncate_after(0)
    writer.write(1, {"x": 3.0})
  assert metric_writer.read_metrics(workdir) == [{"epoch": 0, "x": 1.0},
                                             {"epoch": 1, "x": 3.0}]
  first, second = read_events(workdir)
  assert scalars(first) == {("x", 0): 1.0, ("x", 1): 2.0}
  assert scalars(second) == {("x", 1): 3.0}


def test_read_metrics_without_a_file(tmp_path):
  assert metric_writer.read_metrics(str(tmp_path)) == []


def test_image_goes_to_tensorboard(tmp_path):
  png = str(tmp_path / "picture.png")
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(png)
  workdir = str(tmp_path / "run")
  with metric_writer.MetricWriter(workdir) as writer:
    writer.image("prompt", png, epoch=5)
  (events,) = read_events(workdir)
  images = [(value.tag, event.step, value.image.height, value.image.width)
            for event in events if event.HasField("summary")
            for value in event.summary.value if value.HasField("image")]
  assert images == [("prompt", 5, 30, 40)]


_WRITE_IN_A_FRESH_PROCESS = """
import importlib.util, sys
from reprog_jax.metrics import metric_writer, plots
print(sorted(m for m in ('matplotlib', 'tensorboardX', 'PIL', 'jax')
             if m in sys.modules))
with metric_writer.MetricWriter(sys.argv[1]) as writer:
  writer.write(0, {"x": 1.5})
print("torch" in sys.modules, importlib.util.find_spec("torch") is not None)
"""


def test_import_is_cheap_and_writing_events_does_not_import_torch(tmp_path):
  # tensorboardX imports PyTorch (2-4 s) wherever it is installed, as here.
  assert importlib.util.find_spec("torch") is not None
  workdir = str(tmp_path / "run")
  out = subprocess.run(
      [sys.executable, "-c", _WRITE_IN_A_FRESH_PROCESS, workdir], check=True,
      capture_output=True, text=True).stdout.splitlines()
  assert out[0] == "[]"  # Importing the writer imports none of them.
  assert out[1] == "False True"  # Not imported, still importable.
  (events,) = read_events(workdir)
  assert scalars(events) == {("x", 0): 1.5}


# --------------------------------------------------------------------------
# A full disk: raised in the main thread, naming the file; no thread's
# traceback, no writer thread left to block.
# --------------------------------------------------------------------------


class _FillingFile:
  """An events file on a disk that fills after `room` bytes: as a real
  buffered file, the write is taken and its flush fails (an OSError that
  names no file)."""

  def __init__(self, path, room):
    self._file = open(path, "wb")
    self.room = room

  def write(self, data):
    self.room -= len(data)
    return self._file.write(data)

  def flush(self):
    if self.room < 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    self._file.flush()

  def fileno(self):
    return self._file.fileno()

  def close(self):
    self._file.close()


def test_a_full_disk_under_tensorboard_is_raised_here_naming_the_file(
    tmp_path, monkeypatch):
  from tensorboardX import record_writer
  thread_errors = []
  monkeypatch.setattr(threading, "excepthook", thread_errors.append)
  monkeypatch.setattr(record_writer, "open_file",
                      lambda path: _FillingFile(path, room=200))
  writer = metric_writer.MetricWriter(str(tmp_path))
  with pytest.raises(OSError) as raised:
    for epoch in range(20):  # The events outgrow the room within these.
      writer.write(epoch, {f"m{i}": float(i) for i in range(10)})
  events = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  assert raised.value.errno == errno.ENOSPC
  assert [raised.value.filename] == events
  # metrics.jsonl is whole: its lines are written (and fsynced) first.
  assert [r["epoch"] for r in metric_writer.read_metrics(tmp_path)] == list(
      range(epoch + 1))
  # Raised again until closed, and closing quietly (an error on its way)
  # stops TensorBoard's thread without a word.
  with pytest.raises(OSError):
    writer.write(epoch + 1, {"m0": 0.0})
  worker = writer._summary_writer.file_writer.event_writer._worker
  writer.close(quietly=True)
  assert not worker.is_alive()
  assert thread_errors == []  # Its thread never died of it.


def test_a_full_disk_under_metrics_jsonl_names_it(tmp_path, monkeypatch):
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(0, {"acc": 0.5})

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(OSError) as raised:
    writer.write(1, {"acc": 0.6})
  assert raised.value.filename == str(tmp_path / "metrics.jsonl")
  monkeypatch.undo()
  writer.close(quietly=True)


def test_other_write_errors_are_not_taken_for_a_full_disk(tmp_path,
                                                          monkeypatch):
  from tensorboardX import record_writer
  opened = []

  class Failing(_FillingFile):
    failing = True

    def flush(self):
      if self.failing:
        raise OSError(errno.EIO, os.strerror(errno.EIO))
      super().flush()

  thread_errors = []
  monkeypatch.setattr(threading, "excepthook", thread_errors.append)
  monkeypatch.setattr(record_writer, "open_file", lambda path: opened.append(
      Failing(path, room=1 << 20)) or opened[-1])
  writer = metric_writer.MetricWriter(str(tmp_path))
  with pytest.raises(OSError) as raised:  # As tensorboardX raises it.
    writer.write(0, {"acc": 0.5})
  assert raised.value.errno == errno.EIO and not raised.value.filename
  with pytest.raises(OSError):
    writer.close(quietly=True)  # Quiet for a full disk only.
  opened[0].failing = False  # Repaired: its files close at exit.
