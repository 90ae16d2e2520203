"""Tests for reporting: metrics.jsonl, TensorBoard events and the PNGs."""

import glob
import json
import math
import os
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from reprog_jax import calibration
from reprog_jax import reporting


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
  with reporting.MetricWriter(workdir) as writer:
    for epoch, metrics in enumerate(RECORDS):
      writer.write(epoch, metrics)
  expected = [{"epoch": epoch, **metrics}
              for epoch, metrics in enumerate(RECORDS)]
  assert reporting.read_metrics(workdir) == expected
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
  with reporting.MetricWriter(workdir) as writer:
    writer.write(0, {"a": np.float32(0.5), "b": jnp.asarray(0.25),
                     "c": np.int64(7), "d": True})
  assert reporting.read_metrics(workdir) == [
      {"epoch": 0, "a": 0.5, "b": 0.25, "c": 7, "d": True}]


def test_bad_metrics_are_refused(tmp_path):
  with reporting.MetricWriter(str(tmp_path)) as writer:
    with pytest.raises(ValueError, match="epoch"):
      writer.write(0, {"epoch": 3})
    with pytest.raises(TypeError, match="vector"):
      writer.write(0, {"vector": np.zeros(3)})
  assert reporting.read_metrics(str(tmp_path)) == []


def test_non_finite_metrics_give_valid_json(tmp_path):
  workdir = str(tmp_path)
  with reporting.MetricWriter(workdir) as writer:
    writer.write(0, {"loss": float("nan"), "up": float("inf"),
                     "down": np.float32(-np.inf), "ok": 1.0})
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    (line,) = f.read().splitlines()
  assert strict_json(line) == {"epoch": 0, "loss": "NaN", "up": "Infinity",
                               "down": "-Infinity", "ok": 1.0}
  (record,) = reporting.read_metrics(workdir)
  assert math.isnan(record["loss"])
  assert record["up"] == math.inf and record["down"] == -math.inf
  (events,) = read_events(workdir)
  assert math.isnan(scalars(events)[("loss", 0)])


def test_truncate_after_resume_equals_uninterrupted_run(tmp_path):
  uninterrupted = str(tmp_path / "uninterrupted")
  with reporting.MetricWriter(uninterrupted) as writer:
    for epoch, metrics in enumerate(RECORDS):
      writer.write(epoch, metrics)

  resumed = str(tmp_path / "resumed")
  with reporting.MetricWriter(resumed) as writer:
    for epoch, metrics in enumerate(RECORDS[:3]):
      writer.write(epoch, metrics)
  # The crash: epoch 2 was logged but its checkpoint was not saved, and the
  # line of epoch 3 was cut off mid-write.
  with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
    f.write('{"epoch": 3, "train_lo')
  assert [r["epoch"] for r in reporting.read_metrics(resumed)] == [0, 1, 2]

  with reporting.MetricWriter(resumed) as writer:
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
  with reporting.MetricWriter(workdir) as writer:
    writer.write(0, {"x": 1.0})
    writer.write(1, {"x": 2.0})
    writer.truncate_after(0)
    writer.write(1, {"x": 3.0})
  assert reporting.read_metrics(workdir) == [{"epoch": 0, "x": 1.0},
                                             {"epoch": 1, "x": 3.0}]
  first, second = read_events(workdir)
  assert scalars(first) == {("x", 0): 1.0, ("x", 1): 2.0}
  assert scalars(second) == {("x", 1): 3.0}


def test_read_metrics_without_a_file(tmp_path):
  assert reporting.read_metrics(str(tmp_path)) == []


def test_image_goes_to_tensorboard(tmp_path):
  png = str(tmp_path / "picture.png")
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(png)
  workdir = str(tmp_path / "run")
  with reporting.MetricWriter(workdir) as writer:
    writer.image("prompt", png, epoch=5)
  (events,) = read_events(workdir)
  images = [(value.tag, event.step, value.image.height, value.image.width)
            for event in events if event.HasField("summary")
            for value in event.summary.value if value.HasField("image")]
  assert images == [("prompt", 5, 30, 40)]


def test_import_is_cheap():
  code = ("import sys, reprog_jax.reporting; "
          "print(sorted(m for m in ('matplotlib', 'tensorboardX', 'PIL', "
          "'jax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "[]"


# ---------------------------------------------------------------------------
# Label-mapping heatmap.
# ---------------------------------------------------------------------------

# counts[s, t]: examples of target t predicted as source s. Target totals
# 10, 10, 1; source totals 6, 5, 8, 2.
COUNTS = np.array([[5, 0, 1],
                   [3, 2, 0],
                   [0, 8, 0],
                   [2, 0, 0]])
MAPPING = [0, 2, 1]


def test_mapping_percentages_hand_computed():
  table = reporting.mapping_percentages(COUNTS, MAPPING, top_k=1,
                                        max_targets=None)
  # Mapped sources 0, 2, 1, then the most predicted other source: 3.
  np.testing.assert_array_equal(table.source_indices, [0, 2, 1, 3])
  np.testing.assert_array_equal(table.target_indices, [0, 1, 2])
  np.testing.assert_allclose(table.percent, [[50, 0, 30, 20],
                                             [0, 80, 20, 0],
                                             [100, 0, 0, 0]])


def test_mapping_percentages_limits_rows_and_skips_shown_sources():
  table = reporting.mapping_percentages(COUNTS, MAPPING, top_k=5,
                                        max_targets=2)
  # Mapped 0, 2; the others by frequency: 1 (5 predictions), 3 (2).
  np.testing.assert_array_equal(table.source_indices, [0, 2, 1, 3])
  np.testing.assert_array_equal(table.target_indices, [0, 1])
  np.testing.assert_allclose(table.percent, [[50, 0, 30, 20],
                                             [0, 80, 20, 0]])
  only_mapped = reporting.mapping_percentages(COUNTS, MAPPING, top_k=0)
  np.testing.assert_array_equal(only_mapped.source_indices, MAPPING)


def test_mapping_percentages_target_without_examples_is_zero():
  counts = np.array([[4, 0], [0, 0]])
  table = reporting.mapping_percentages(counts, [0, 1], top_k=0)
  np.testing.assert_allclose(table.percent, [[100, 0], [0, 0]])


def test_mean_mapped_percentage():
  # Targets 0, 1, 2 give their mapped sources 5/10, 8/10 and 0/1.
  assert reporting.mean_mapped_percentage(COUNTS, MAPPING) == pytest.approx(
      (50 + 80 + 0) / 3)
  # A target without examples does not count.
  assert reporting.mean_mapped_percentage(
      np.array([[4, 0], [0, 0]]), [0, 1]) == pytest.approx(100)
  assert math.isnan(reporting.mean_mapped_percentage(np.zeros((2, 1)), [0]))


def test_mapping_percentages_rejects_wrong_mapping_length():
  with pytest.raises(ValueError, match="mapping_sequence"):
    reporting.mapping_percentages(COUNTS, [0, 1])


def assert_png(path, width_range, height_range):
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.verify()
  with Image.open(path) as image:
    width, height = image.size
  assert width_range[0] <= width <= width_range[1], width
  assert height_range[0] <= height <= height_range[1], height


def test_plot_label_mapping_many_targets(tmp_path):
  rng = np.random.default_rng(0)
  num_targets = 400
  counts = rng.integers(0, 5, size=(1000, num_targets))
  mapping = rng.permutation(1000)[:num_targets]
  path = str(tmp_path / "mapping.png")
  reporting.plot_label_mapping(
      counts, mapping, [f"target class {t}" for t in range(num_targets)],
      None, path, title="ILM-VP, epoch 3")
  # 20 rows and 25 columns: legible, not a 400-row wall.
  assert_png(path, (800, 2000), (800, 2000))


def test_plot_label_mapping_checks_names(tmp_path):
  with pytest.raises(ValueError, match="names"):
    reporting.plot_label_mapping(COUNTS, MAPPING, ["a", "b"],
                                 ["s0", "s1", "s2", "s3"],
                                 str(tmp_path / "x.png"))


# ---------------------------------------------------------------------------
# Prompt pictures.
# ---------------------------------------------------------------------------


def test_save_prompt_image_frame_and_checkerboard(tmp_path):
  # s = 31: the frame is 97 pixels before the image and 96 after it.
  program = np.zeros((224, 224, 3), np.float32)
  program[0, 0] = [2.0, -1.0, 0.0]
  program[223, 223] = [-3.0, 4.0, 1.0]
  program[97:128, 97:128] = 10.0  # Never used: the image covers it.
  path = str(tmp_path / "prompt.png")
  reporting.save_prompt_image(program, 31, path)
  with Image.open(path) as image:
    assert image.size == (224, 224) and image.mode == "RGB"
    pixels = np.asarray(image)

  def sigmoid_byte(x):
    return round(255 / (1 + math.exp(-x)))

  assert [sigmoid_byte(x) for x in (2.0, -1.0, 0.0)] == [225, 69, 128]
  np.testing.assert_array_equal(pixels[0, 0], [225, 69, 128])
  np.testing.assert_array_equal(
      pixels[223, 223], [sigmoid_byte(x) for x in (-3.0, 4.0, 1.0)])
  np.testing.assert_array_equal(pixels[96, 96], [128] * 3)  # Last frame row.
  np.testing.assert_array_equal(pixels[128, 128], [128] * 3)
  # Checkerboard of 8-pixel squares from the image's corner (97, 97).
  dark, light = reporting.CHECKER_DARK, reporting.CHECKER_LIGHT
  for (row, col), grey in {(97, 97): dark, (97, 104): dark, (97, 105): light,
                           (105, 97): light, (105, 105): dark,
                           (127, 127): dark, (127, 120): light}.items():
    np.testing.assert_array_equal(pixels[row, col], [grey] * 3,
                                  err_msg=f"({row}, {col})")
  assert {dark, light}.isdisjoint({128})


def test_save_prompt_image_scale(tmp_path):
  program = np.full((224, 224, 3), 3.0, np.float32)
  path = str(tmp_path / "prompt.png")
  reporting.save_prompt_image(program, 128, path, scale=2)
  with Image.open(path) as image:
    pixels = np.asarray(image)
  assert pixels.shape == (448, 448, 3)
  np.testing.assert_array_equal(pixels[0, 0], [round(255 / (1 + math.exp(-3)))]
                                * 3)
  # Image area from 48 on; 2x scale: pixel (2*48, 2*48) is its dark corner.
  np.testing.assert_array_equal(pixels[96, 96], [reporting.CHECKER_DARK] * 3)
  np.testing.assert_array_equal(pixels[95, 95], pixels[0, 0])


def test_save_prompted_examples_denormalises(tmp_path):
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  raw = np.zeros((3, 10, 12, 3))
  raw[0] = 1.0
  raw[1, :, :] = [0.2, 0.4, 0.6]
  normalised = (raw - mean) / std
  path = str(tmp_path / "examples.png")
  reporting.save_prompted_examples(normalised, path, columns=2)
  with Image.open(path) as image:
    pixels = np.asarray(image)
  # Two columns, two rows, 2-pixel white gaps.
  assert pixels.shape == (2 * 10 + 2, 2 * 12 + 2, 3)
  np.testing.assert_array_equal(pixels[0, 0], [255] * 3)
  np.testing.assert_array_equal(pixels[5, 14], [51, 102, 153])
  np.testing.assert_array_equal(pixels[12, 0], [0] * 3)
  np.testing.assert_array_equal(pixels[10, 0], [255] * 3)  # Gap.
  np.testing.assert_array_equal(pixels[12, 14], [255] * 3)  # Empty cell.


# ---------------------------------------------------------------------------
# Reliability diagram and training curves.
# ---------------------------------------------------------------------------


def test_plot_reliability(tmp_path):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(200, 10)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  labels = rng.integers(0, 10, size=200)
  bins = calibration.calibration_bins(probs, labels)
  path = str(tmp_path / "reliability.png")
  reporting.plot_reliability(bins, path, title="dense, LP")
  assert_png(path, (500, 500), (600, 600))


def test_plot_training_curves(tmp_path):
  workdir = str(tmp_path)
  with reporting.MetricWriter(workdir) as writer:
    for epoch, metrics in enumerate(RECORDS):
      writer.write(epoch, {**metrics, "test_loss": 1.0 / (epoch + 1),
                           "test_ece": float("nan") if epoch == 1 else 0.1})
  path = str(tmp_path / "curves.png")
  reporting.plot_training_curves(reporting.read_metrics(workdir), path)
  assert_png(path, (1300, 1300), (400, 400))
  # Without any known metric the panels say so rather than failing.
  reporting.plot_training_curves([{"epoch": 0, "lr": 0.1}], path)
  assert_png(path, (1300, 1300), (400, 400))
