"""The PNGs (`reprog_jax.metrics.plots`, `prompt_plots`, `mapping_plot`):
heatmaps, prompt, reliability, curves."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from reprog_jax.metrics import calibration
from reprog_jax.metrics import plots
from reprog_jax.metrics import prompt_plots


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
  table = prompt_plots.mapping_percentages(COUNTS, MAPPING, top_k=1,
                                           max_targets=None)
  # Mapped sources 0, 2, 1, then the most predicted other source: 3.
  np.testing.assert_array_equal(table.source_indices, [0, 2, 1, 3])
  np.testing.assert_array_equal(table.target_indices, [0, 1, 2])
  np.testing.assert_allclose(table.percent, [[50, 0, 30, 20],
                                             [0, 80, 20, 0],
                                             [100, 0, 0, 0]])


def test_mapping_percentages_limits_rows_and_skips_shown_sources():
  table = prompt_plots.mapping_percentages(COUNTS, MAPPING, top_k=5,
                                           max_targets=2)
  # Mapped 0, 2; the others by frequency: 1 (5 predictions), 3 (2).
  np.testing.assert_array_equal(table.source_indices, [0, 2, 1, 3])
  np.testing.assert_array_equal(table.target_indices, [0, 1])
  np.testing.assert_allclose(table.percent, [[50, 0, 30, 20],
                                             [0, 80, 20, 0]])
  only_mapped = prompt_plots.mapping_percentages(COUNTS, MAPPING, top_k=0)
  np.testing.assert_array_equal(only_mapped.source_indices, MAPPING)


def test_mapping_percentages_target_without_examples_is_zero():
  counts = np.array([[4, 0], [0, 0]])
  table = prompt_plots.mapping_percentages(counts, [0, 1], top_k=0)
  np.testing.assert_allclose(table.percent, [[100, 0], [0, 0]])


def test_mean_mapped_percentage():
  # Targets 0, 1, 2 give their mapped sources 5/10, 8/10 and 0/1.
  assert prompt_plots.mean_mapped_percentage(
      COUNTS, MAPPING) == pytest.approx((50 + 80 + 0) / 3)
  # A target without examples does not count.
  assert prompt_plots.mean_mapped_percentage(
      np.array([[4, 0], [0, 0]]), [0, 1]) == pytest.approx(100)
  assert math.isnan(
      prompt_plots.mean_mapped_percentage(np.zeros((2, 1)), [0]))


def test_mapping_percentages_rejects_wrong_mapping_length():
  with pytest.raises(ValueError, match="mapping_sequence"):
    prompt_plots.mapping_percentages(COUNTS, [0, 1])


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
  prompt_plots.plot_label_mapping(
      counts, mapping, [f"target class {t}" for t in range(num_targets)],
      None, path, title="ILM-VP, epoch 3")
  # 20 rows and 25 columns: legible, not a 400-row wall.
  assert_png(path, (800, 2000), (800, 2000))


def test_plot_label_mapping_checks_names(tmp_path):
  with pytest.raises(ValueError, match="names"):
    prompt_plots.plot_label_mapping(COUNTS, MAPPING, ["a", "b"],
                                    ["s0", "s1", "s2", "s3"],
                                    str(tmp_path / "x.png"))


# ---------------------------------------------------------------------------
# Prompt pictures.
# ---------------------------------------------------------------------------


def test_prompt_picture_frame_and_checkerboard():
  # s = 31: the frame is 97 pixels before the image and 96 after it.
  program = np.zeros((224, 224, 3), np.float32)
  program[0, 0] = [2.0, -1.0, 0.0]
  program[223, 223] = [-3.0, 4.0, 1.0]
  program[97:128, 97:128] = 10.0  # Never used: the image covers it.
  pixels = prompt_plots.prompt_picture(program, 31)
  assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8

  def sigmoid_byte(x):
    return round(255 / (1 + math.exp(-x)))

  assert [sigmoid_byte(x) for x in (2.0, -1.0, 0.0)] == [225, 69, 128]
  np.testing.assert_array_equal(pixels[0, 0], [225, 69, 128])
  np.testing.assert_array_equal(
      pixels[223, 223], [sigmoid_byte(x) for x in (-3.0, 4.0, 1.0)])
  np.testing.assert_array_equal(pixels[96, 96], [128] * 3)  # Last frame row.
  np.testing.assert_array_equal(pixels[128, 128], [128] * 3)
  # Checkerboard of 8-pixel squares from the image's corner (97, 97).
  dark, light = prompt_plots.CHECKER_DARK, prompt_plots.CHECKER_LIGHT
  for (row, col), grey in {(97, 97): dark, (97, 104): dark, (97, 105): light,
                           (105, 97): light, (105, 105): dark,
                           (127, 127): dark, (127, 120): light}.items():
    np.testing.assert_array_equal(pixels[row, col], [grey] * 3,
                                  err_msg=f"({row}, {col})")
  assert {dark, light}.isdisjoint({128})


def figure_text(figure):
  """Every title in `figure`: its suptitle and each Axes' title."""
  return "\n".join([text.get_text() for text in figure.texts]
                   + [axes.get_title() for axes in figure.axes])


def test_plot_prompt_is_titled_large_and_unblurred(tmp_path):
  program = np.full((224, 224, 3), 3.0, np.float32)
  path = str(tmp_path / "prompt.png")
  figure = prompt_plots.plot_prompt(program, 128, path,
                                    title="run 7\nRANDOM net")
  text = figure_text(figure)
  assert "run 7" in text and "RANDOM net" in text
  assert "learned prompt" in text and "128x128" in text
  width, height = figure.get_size_inches()
  assert width >= 4 and height >= 4 and figure.dpi >= 100
  with Image.open(path) as image:
    assert image.size == (round(width * figure.dpi),
                          round(height * figure.dpi))
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
  # Nearest-neighbour drawing: the frame's exact colour, and both greys of
  # the checkerboard, fill many screen pixels (no blended colours).
  colours, counts = np.unique(pixels, axis=0, return_counts=True)
  present = {tuple(c) for c, n in zip(colours, counts) if n >= 1000}
  frame = (round(255 / (1 + math.exp(-3.0))),) * 3
  assert {frame, (prompt_plots.CHECKER_DARK,) * 3,
          (prompt_plots.CHECKER_LIGHT,) * 3} <= present


def test_prompted_grid_denormalises():
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  raw = np.zeros((3, 10, 12, 3))
  raw[0] = 1.0
  raw[1, :, :] = [0.2, 0.4, 0.6]
  normalised = (raw - mean) / std
  pixels = prompt_plots.prompted_grid(normalised, columns=2)
  # Two columns, two rows, 2-pixel white gaps.
  assert pixels.shape == (2 * 10 + 2, 2 * 12 + 2, 3)
  np.testing.assert_array_equal(pixels[0, 0], [255] * 3)
  np.testing.assert_array_equal(pixels[5, 14], [51, 102, 153])
  np.testing.assert_array_equal(pixels[12, 0], [0] * 3)
  np.testing.assert_array_equal(pixels[10, 0], [255] * 3)  # Gap.
  np.testing.assert_array_equal(pixels[12, 14], [255] * 3)  # Empty cell.


def test_plot_prompted_examples_is_titled_and_large(tmp_path):
  images = np.zeros((8, 64, 64, 3))
  path = str(tmp_path / "examples.png")
  figure = prompt_plots.plot_prompted_examples(images, path, columns=4,
                                               title="RANDOM net")
  assert "RANDOM net" in figure_text(figure)
  width, _ = figure.get_size_inches()
  assert width >= 4 and figure.dpi >= 100
  with Image.open(path) as image:
    assert image.size[0] >= 400


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
  plots.plot_reliability(bins, path, title="dense, LP")
  assert_png(path, (500, 500), (600, 600))


def test_plot_training_curves(tmp_path):
  records = [{"epoch": epoch, "train_loss": 2.5 - 0.5 * epoch,
              "train_acc": 0.25 * (epoch + 1), "test_acc": 0.5 + 0.1 * epoch,
              "method": "vp", "test_loss": 1.0 / (epoch + 1),
              "test_ece": float("nan") if epoch == 1 else 0.1}
             for epoch in range(4)]
  path = str(tmp_path / "curves.png")
  plots.plot_training_curves(records, path)
  assert_png(path, (1300, 1300), (400, 400))
  # Without any known metric the panels say so rather than failing.
  plots.plot_training_curves([{"epoch": 0, "lr": 0.1}], path)
  assert_png(path, (1300, 1300), (400, 400))


def test_every_plot_puts_the_title_in_the_figure(tmp_path):
  note = "RANDOMLY INITIALISED resnet18: results mean nothing"
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(3), size=20)
  bins = calibration.calibration_bins(probs, rng.integers(0, 3, size=20))
  records = [{"epoch": e, "seed": s, "test_acc": 0.5, "test_ece": 0.1}
             for e in range(2) for s in (0, 1)]
  figures = [
      prompt_plots.plot_label_mapping(COUNTS, MAPPING, ["a", "b", "c"],
                                      ["s0", "s1", "s2", "s3"],
                                      str(tmp_path / "m.png"), title=note),
      plots.plot_reliability(bins, str(tmp_path / "r.png"), title=note),
      plots.plot_training_curves(records, str(tmp_path / "c.png"),
                                 title=note),
      plots.plot_seed_curves(records, str(tmp_path / "s.png"), title=note),
      prompt_plots.plot_prompt(np.zeros((16, 16, 3)), 8,
                               str(tmp_path / "p.png"), title=note),
      prompt_plots.plot_prompted_examples(np.zeros((2, 16, 16, 3)),
                                          str(tmp_path / "e.png"),
                                          title=note)]
  for figure in figures:
    # Long titles may wrap at a space; the words all stay.
    assert " ".join(figure_text(figure).split()).count(note) == 1


# Values whose tick labels matplotlib would by default write as small
# differences from an offset in the corner ("+1e3", "1e-6+9e-1").
LOSSES = [1000.1, 1000.2, 1000.3, 1000.4]
ACCURACIES = [0.9000011, 0.9000022, 0.9000033, 0.9000044]


def _labelled_ticks(axes):
  """(tick position, the number its label shows) on the y axis."""
  return [(position, float(label.get_text().replace("\u2212", "-")))
          for position, label in zip(axes.get_yticks(),
                                     axes.get_yticklabels())]


def test_curves_have_plain_tick_labels(tmp_path):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  # The control: matplotlib's default draws these with an offset.
  for values in (LOSSES, ACCURACIES):
    default = Figure().add_subplot()
    default.plot(range(4), values)
    default.figure.savefig(io.BytesIO(), format="png")  # Draws the ticks.
    assert default.yaxis.get_major_formatter().get_offset() != ""

  records = [{"epoch": e, "seed": s, "test_acc": acc, "test_ece": acc - 0.8,
              "train_loss": loss}
             for e, (acc, loss) in enumerate(zip(ACCURACIES, LOSSES))
             for s in (0, 1)]
  curves = plots.plot_training_curves(
      [r for r in records if r["seed"] == 0], str(tmp_path / "c.png"))
  seeds = plots.plot_seed_curves(records, str(tmp_path / "s.png"))
  for axes in curves.axes + seeds.axes:
    for axis in (axes.xaxis, axes.yaxis):
      assert axis.get_major_formatter().get_offset() == "", axes.get_title()
    # Every label shows the value at its tick, not a difference from one.
    ticks = _labelled_ticks(axes)
    spacing = ticks[1][0] - ticks[0][0]
    for position, shown in ticks:
      assert abs(shown - position) < 0.01 * spacing, (axes.get_title(), ticks)
    # Epochs are whole numbers.
    assert all(float(x).is_integer() for x in axes.get_xticks())


# ---------------------------------------------------------------------------
# A matrix mapping's heat map (`mapping_plot`).
# ---------------------------------------------------------------------------


def test_top_weights_per_target_hand_computed(tmp_path):
  from reprog_jax.metrics import mapping_plot
  matrix = np.array([[0.5, 0.0, 0.2],
                     [0.1, 0.7, 0.2],
                     [0.4, 0.3, 0.6]])
  table = mapping_plot.top_weights(matrix, top_k=2, max_targets=2)
  np.testing.assert_array_equal(table.sources, [[0, 2], [1, 2]])
  np.testing.assert_allclose(table.weights, [[0.5, 0.4], [0.7, 0.3]])
  # Ties: the first source (0.2 at sources 0 and 1 of target 2).
  tied = mapping_plot.top_weights(matrix, top_k=3)
  np.testing.assert_array_equal(tied.sources[2], [2, 0, 1])
  path = tmp_path / "m.png"
  mapping_plot.plot_mapping_matrix(matrix, ["a", "b", "c"],
                                   ["s0", "s1", "s2"], str(path),
                                   title="run")
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size[0] > 300
  with pytest.raises(ValueError, match="Need 3 source and 3 target names"):
    mapping_plot.plot_mapping_matrix(matrix, ["a"], ["s0"], str(path))
