"""The pictures a training run writes: PNGs a person would rather look at.

The ILM-VP label-mapping heatmap, the learned prompt, prompted inputs, a
reliability diagram and the training curves. Each `plot_*` function takes a
`title` (the training loop passes the run's name and, for a randomly
initialised network, a warning, so no figure passes for a real result) and
returns the saved figure.

matplotlib and PIL are imported inside the functions that use them, so
importing this module stays cheap. Figures are built on
`matplotlib.figure.Figure` directly, never through `pyplot`, so no global
backend or figure registry is touched and nothing leaks between calls.
"""

import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from reprog_jax.metrics import metric_writer

# Pixel values of the checkerboard drawn over the image area of a prompt.
# Two greys rather than one because an untrained program (zeros) is
# sigmoid(0) = 0.5, mid-grey: a uniform grey image area would be
# indistinguishable from it.
CHECKER_DARK = 96
CHECKER_LIGHT = 160
CHECKER_SQUARE = 8


# ---------------------------------------------------------------------------
# The label-mapping heatmap.
# ---------------------------------------------------------------------------


class MappingTable(NamedTuple):
  """What the label-mapping heatmap shows.

  Attributes:
    percent: Float64 `(rows, columns)`: `percent[i, j]` is the percentage of
      the examples of target `target_indices[i]` that the network predicts
      as source `source_indices[j]`.
    target_indices: The target classes shown, one per row.
    source_indices: The source classes shown, one per column: first the
      mapped source of each shown target (so the diagonal is the mapping),
      then the `top_k` most frequently predicted other sources.
  """
  percent: np.ndarray
  target_indices: np.ndarray
  source_indices: np.ndarray


def mapping_percentages(counts: np.ndarray, mapping_sequence: Sequence[int],
                        top_k: int = 5,
                        max_targets: int | None = 20) -> MappingTable:
  """The label-mapping heatmap's numbers.

  Like the ILM-VP reference figure (`plot_mapping` in its tools), rows are
  target classes and columns their mapped sources followed by frequently
  predicted sources, and a cell is the percentage of a target's examples
  predicted as that source. Differences, on purpose: percentages are not
  truncated to integers; a source is never shown twice (the reference
  repeats mapped sources among its "most frequent" ones); the extra columns
  are controlled by `top_k` and the rows by `max_targets` (the reference
  shows 10 rows, and extra columns only when `T <= 10`); a target with no
  examples gets 0 %, not a division by zero.

  Args:
    counts: Int `(S, T)`: `counts[s, t]` = examples of target `t` predicted
      as source `s` (the ILM count matrix).
    mapping_sequence: Length `T`: the source class of each target.
    top_k: How many extra columns: the sources with the most predictions
      over all targets, excluding the mapped ones already shown.
    max_targets: Show only the first `max_targets` targets; `None` for all.

  Returns:
    The table to draw.
  """
  counts = np.asarray(counts, np.float64)
  mapping_sequence = np.asarray(mapping_sequence, np.int64)
  _, num_targets = counts.shape
  if mapping_sequence.shape != (num_targets,):
    raise ValueError(f"mapping_sequence must have shape ({num_targets},), "
                     f"got {mapping_sequence.shape}.")
  rows = num_targets if max_targets is None else min(max_targets, num_targets)
  target_indices = np.arange(rows)
  mapped = mapping_sequence[:rows]
  by_frequency = np.argsort(-counts.sum(axis=1), kind="stable")
  extra = by_frequency[~np.isin(by_frequency, mapped)][:max(top_k, 0)]
  source_indices = np.concatenate([mapped, extra]).astype(np.int64)
  # Each target's share over all S sources, not just the shown columns, so
  # a row sums to at most 100.
  per_target = counts[:, target_indices].sum(axis=0)
  percent = 100.0 * counts[np.ix_(source_indices, target_indices)].T
  percent /= np.maximum(per_target, 1.0)[:, None]
  return MappingTable(percent, target_indices, source_indices)


def mean_mapped_percentage(counts: np.ndarray,
                           mapping_sequence: Sequence[int]) -> float:
  """How much of a target's examples its mapped source gets, on average.

  Args:
    counts: Int `(S, T)` count matrix, as for `mapping_percentages`.
    mapping_sequence: Length `T`, the source class of each target.

  Returns:
    The mean over the targets that have examples of the percentage of
    their examples predicted as their mapped source; NaN if none has any.
  """
  counts = np.asarray(counts, np.float64)
  mapping_sequence = np.asarray(mapping_sequence, np.int64)
  mapped = counts[mapping_sequence, np.arange(counts.shape[1])]
  totals = counts.sum(axis=0)
  has_examples = totals > 0
  if not has_examples.any():
    return math.nan
  return float(100.0 * np.mean(mapped[has_examples] / totals[has_examples]))


def shorten(name: str, length: int = 22) -> str:
  # ImageNet names can be a list of synonyms; one is enough for a label.
  name = name.split(",")[0].strip()
  return name if len(name) <= length else name[:length - 1] + "\u2026"


def plot_label_mapping(counts: np.ndarray, mapping_sequence: Sequence[int],
                       target_names: Sequence[str],
                       source_names: Sequence[str] | None, path: str, *,
                       top_k: int = 5, max_targets: int | None = 20,
                       title: str | None = None):
  """Draws the ILM-VP label-mapping heatmap as a PNG.

  Rows are target classes, columns their mapped sources (the diagonal) and
  then the `top_k` most predicted other sources; cells are percentages from
  `mapping_percentages`. With many target classes (up to 1000) only the
  first `max_targets` rows are drawn and the title says so; it also gives
  the mean over *all* targets of the share predicted as the mapped source.
  The figure grows with the table, so labels stay readable.

  Args:
    counts: Int `(S, T)` count matrix, `counts[s, t]` = examples of target
      `t` predicted as source `s`.
    mapping_sequence: Length `T`, the source class of each target.
    target_names: `T` target class names.
    source_names: `S` source class names; `None` for ImageNet's.
    path: Output PNG.
    top_k: Extra most-predicted source columns.
    max_targets: Rows to draw at most; `None` for all (large for big `T`).
    title: Optional first title line(s), e.g. the run's name.

  Returns:
    The saved `matplotlib.figure.Figure`.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  counts = np.asarray(counts)
  if source_names is None:
    # pylint: disable-next=g-import-not-at-top
    from reprog_jax.model import network as network_lib
    source_names = network_lib.imagenet_classes()
  num_sources, num_targets = counts.shape
  if len(source_names) != num_sources or len(target_names) != num_targets:
    raise ValueError(
        f"Need {num_sources} source and {num_targets} target names, got "
        f"{len(source_names)} and {len(target_names)}.")
  table = mapping_percentages(counts, mapping_sequence, top_k, max_targets)
  rows, columns = table.percent.shape

  # Over all targets, not only the rows drawn.
  mean_mapped = mean_mapped_percentage(counts, mapping_sequence)

  lines = [title] if title else []
  shown = (f"all {num_targets} target classes" if rows == num_targets else
           f"first {rows} of {num_targets} target classes")
  lines.append(f"{shown}; mapped source gets {mean_mapped:.1f}% of a "
               "target's examples on average (all targets)")

  cell = 0.42  # inches per cell: room for a two-digit annotation.
  figure = Figure(figsize=(max(6.0, 2.5 + cell * columns),
                           max(4.0, 2.8 + cell * rows)), dpi=100)
  axes = figure.add_subplot()
  image = axes.imshow(table.percent, cmap="YlGn", vmin=0.0, vmax=100.0,
                      aspect="auto")
  colorbar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
  colorbar.set_label("examples predicted as the source (%)")
  axes.set_xticks(np.arange(columns),
                  [shorten(source_names[s]) for s in table.source_indices])
  axes.set_yticks(np.arange(rows),
                  [shorten(target_names[t]) for t in table.target_indices])
  axes.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False,
                   labelsize=8)
  for label in axes.get_xticklabels():
    label.set(rotation=60, ha="left", rotation_mode="anchor")
  # Separates the mapped-source columns from the extra ones.
  if columns > rows:
    axes.axvline(rows - 0.5, color="black", linewidth=1.0)
  for i in range(rows):
    for j in range(columns):
      value = table.percent[i, j]
      if value >= 0.5:  # Blank rather than a wall of zeros.
        axes.text(j, i, f"{value:.0f}", ha="center", va="center",
                  fontsize=7, color="white" if value > 60 else "black")
  axes.set_xlabel("source class: mapped, then most predicted")
  axes.set_ylabel("target class")
  axes.set_title("\n".join(lines), fontsize=9, pad=10)
  figure.savefig(path, format="png", bbox_inches="tight")
  return figure


# ---------------------------------------------------------------------------
# Pictures of the prompt and of prompted inputs.
# ---------------------------------------------------------------------------


def _to_uint8(image: np.ndarray) -> np.ndarray:
  """`[0, 1]` floats to bytes, rounding to nearest."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _picture_figure(pixels: np.ndarray, lines: Sequence[str], path: str,
                    width_range: tuple[float, float]):
  """Draws `pixels` under a title and saves the PNG (100 dpi).

  The picture is one inch per 100 pixels (one screen pixel each), clipped
  to `width_range` inches; the title is wrapped to the picture's width.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  height, width, _ = pixels.shape
  picture_width = min(max(width_range[0], width / 100), width_range[1])
  picture_height = picture_width * height / width
  # About 13 characters of 9-point text to an inch.
  wrapped = [part for line in "\n".join(lines).split("\n")
             for part in textwrap.wrap(line, int(picture_width * 13))]
  title_height = 0.2 + 0.17 * len(wrapped)
  figure = Figure(figsize=(picture_width, picture_height + title_height),
                  dpi=100)
  axes = figure.add_axes(
      (0.0, 0.0, 1.0, picture_height / (picture_height + title_height)))
  # Nearest: every program value stays one flat square, no blur.
  axes.imshow(pixels, interpolation="nearest")
  axes.set_axis_off()
  figure.suptitle("\n".join(wrapped), fontsize=9, y=1.0 - 0.08 / (
      picture_height + title_height), va="top")
  figure.savefig(path, format="png")
  return figure


def prompt_picture(program: np.ndarray, image_size: int) -> np.ndarray:
  """The learned prompt as uint8 pixels: `sigmoid(program)` on the frame.

  The image area, which the program never affects, shows a grey
  checkerboard (`CHECKER_DARK`/`CHECKER_LIGHT`, `CHECKER_SQUARE`-pixel
  squares starting dark at the area's top-left corner).

  Args:
    program: Float `(H, H, 3)` pre-sigmoid program (HWC).
    image_size: Side of the target image in the middle.

  Returns:
    Uint8 `(H, H, 3)` RGB.
  """
  from reprog_jax.model import prompts  # pylint: disable=g-import-not-at-top
  program = np.asarray(program, np.float64)
  output_size = program.shape[0]
  if program.shape != (output_size, output_size, 3):
    raise ValueError(f"program must be (H, H, 3), got {program.shape}.")
  pixels = _to_uint8(1.0 / (1.0 + np.exp(-program)))
  frame = prompts.frame_mask(image_size, output_size)[..., 0] > 0
  before, _ = prompts.padding(image_size, output_size)
  rows, cols = np.indices((output_size, output_size)) - before
  light = ((rows // CHECKER_SQUARE + cols // CHECKER_SQUARE) % 2) == 1
  checker = np.where(light, CHECKER_LIGHT, CHECKER_DARK).astype(np.uint8)
  return np.where(frame[..., None], pixels, checker[..., None])


def plot_prompt(program: np.ndarray, image_size: int, path: str,
                title: str | None = None):
  """Draws `prompt_picture(program, image_size)` under a title as a PNG.

  5 to 6 inches wide at 100 dpi: a 224-pixel prompt gets two screen
  pixels or more per program value, each drawn as a flat square.

  Args:
    program: Float `(H, H, 3)` pre-sigmoid program (HWC, e.g. 224 x 224).
    image_size: Side of the target image in the middle.
    path: Output PNG.
    title: Optional first title line(s), e.g. the run's name.

  Returns:
    The saved `matplotlib.figure.Figure`.
  """
  pixels = prompt_picture(program, image_size)
  side = pixels.shape[0]
  lines = [title] if title else []
  lines.append(f"learned prompt sigmoid(program), {side}x{side}; "
               f"checkerboard: the {image_size}x{image_size} image's place")
  return _picture_figure(pixels, lines, path, width_range=(5.0, 6.0))


def prompted_grid(prompted_images_normalised: np.ndarray,
                  columns: int = 8) -> np.ndarray:
  """A grid of network inputs as uint8 pixels, ImageNet normalisation undone.

  Images fill rows of `columns` (fewer if there are fewer images), 2-pixel
  white gaps between them; empty cells of the last row stay white.

  Args:
    prompted_images_normalised: Float `(N, H, W, 3)`, what the network saw.
    columns: Images per grid row at most.

  Returns:
    Uint8 `(rows * (H + 2) - 2, columns * (W + 2) - 2, 3)` RGB.
  """
  from reprog_jax.model import prompts  # pylint: disable=g-import-not-at-top
  images = np.asarray(prompted_images_normalised, np.float64)
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
    raise ValueError(f"Need (N, H, W, 3) with N > 0, got {images.shape}.")
  images = (images * np.asarray(prompts.IMAGENET_STD)
            + np.asarray(prompts.IMAGENET_MEAN))
  count, height, width, _ = images.shape
  columns = min(columns, count)
  grid_rows = -(-count // columns)
  gap = 2
  grid = np.full((grid_rows * (height + gap) - gap,
                  columns * (width + gap) - gap, 3), 255, np.uint8)
  for k, image in enumerate(_to_uint8(images)):
    top = (k // columns) * (height + gap)
    left = (k % columns) * (width + gap)
    grid[top:top + height, left:left + width] = image
  return grid


def plot_prompted_examples(prompted_images_normalised: np.ndarray, path: str,
                           columns: int = 8, title: str | None = None):
  """Draws `prompted_grid(...)` under a title as a PNG, at least 4 inches
  wide (about one screen pixel per image pixel, at most 12 inches).

  Args:
    prompted_images_normalised: Float `(N, H, W, 3)`, what the network saw.
    path: Output PNG.
    columns: Images per grid row at most.
    title: Optional first title line(s), e.g. the run's name.

  Returns:
    The saved `matplotlib.figure.Figure`.
  """
  grid = prompted_grid(prompted_images_normalised, columns)
  lines = [title] if title else []
  lines.append("test images in the learned prompt, as the network sees them")
  return _picture_figure(grid, lines, path, width_range=(4.0, 12.0))


# ---------------------------------------------------------------------------
# Calibration and training curves.
# ---------------------------------------------------------------------------


def plot_reliability(bins, path: str, title: str | None = None):
  """Draws a reliability diagram with a confidence histogram below it.

  Bars are each bin's accuracy, red the gap to its mean confidence (Guo et
  al., 2017); empty bins are left blank. The title gives the ECE.

  Args:
    bins: `calibration.CalibrationBins` of the evaluated split (e.g. from
      `calibration.calibration_bins(probs, labels)`, summed over batches).
    path: Output PNG.
    title: Optional first title line(s), e.g. the run's name.

  Returns:
    The saved `matplotlib.figure.Figure`.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from reprog_jax.metrics import calibration  # pylint: disable=g-import-not-at-top
  stats = calibration.bin_statistics(bins)
  ece = float(calibration.ece_from_bins(bins))
  count = np.asarray(stats.count, np.float64)
  accuracy = np.asarray(stats.accuracy, np.float64)
  confidence = np.asarray(stats.confidence, np.float64)
  nonempty = count > 0
  width = stats.upper - stats.lower
  centre = (stats.lower + stats.upper) / 2

  figure = Figure(figsize=(5.0, 6.0), dpi=100)
  top, bottom = figure.subplots(
      2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
  top.bar(centre[nonempty], accuracy[nonempty], width=width[nonempty],
          color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
  gap_low = np.minimum(accuracy, confidence)[nonempty]
  top.bar(centre[nonempty],
          np.abs(accuracy - confidence)[nonempty], bottom=gap_low,
          width=width[nonempty], color="tab:red", alpha=0.35,
          edgecolor="tab:red", hatch="//", label="gap to confidence")
  top.plot([0, 1], [0, 1], "k--", linewidth=1.0, label="perfect calibration")
  top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
  top.legend(loc="upper left", fontsize=8)
  total = count.sum()
  bottom.bar(centre, count / max(total, 1.0), width=width, color="grey",
             edgecolor="black", linewidth=0.5)
  bottom.set(xlabel="confidence", ylabel="fraction of examples")
  lines = [title] if title else []
  lines.append(f"ECE = {100 * ece:.2f}% ({int(total)} examples, "
               f"{len(count)} bins)")
  top.set_title("\n".join(lines), fontsize=10)
  figure.tight_layout()
  figure.savefig(path, format="png")
  return figure


# Panel title -> metric-name suffixes it collects (`train_acc`, `test_ece`).
_CURVE_PANELS = (("accuracy", ("acc", "accuracy")),
                 ("loss", ("loss",)),
                 ("ECE", ("ece",)))


def _plain_ticks(axes):
  """Tick labels a reader takes as they are: whole epochs on x, and no
  offset ("+0.9" in the corner) or power of ten ("1e-3") on either axis."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  axes.ticklabel_format(axis="both", style="plain", useOffset=False)
  axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _curve_value(value: Any) -> float:
  # NaN is a gap in a matplotlib line; an infinity would wreck the y-range.
  if metric_writer.is_number(value) and math.isfinite(value):
    return float(value)
  return math.nan


def plot_training_curves(metrics_list: Sequence[Mapping[str, Any]], path: str,
                         title: str | None = None):
  """Draws accuracy, loss and ECE against the epoch, one panel each.

  Every metric whose name ends in `_acc`/`_accuracy`, `_loss` or `_ece`
  (e.g. `train_acc`, `test_acc`, `train_loss`, `test_loss`, `test_ece`)
  becomes a curve in its panel; a record without it, or with a non-numeric
  or non-finite value, leaves a gap. A panel with no such metric says so.

  Args:
    metrics_list: Records as from `read_metrics`, each with `"epoch"`.
    path: Output PNG.
    title: Optional figure title.

  Returns:
    The saved `matplotlib.figure.Figure`.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  records = sorted(metrics_list, key=lambda record: record["epoch"])
  epochs = [record["epoch"] for record in records]
  names = sorted({name for record in records for name in record})

  figure = Figure(figsize=(13.0, 4.0), dpi=100)
  for axes, (panel, suffixes) in zip(figure.subplots(1, len(_CURVE_PANELS)),
                                     _CURVE_PANELS):
    curves = [name for name in names
              if name.rsplit("_", 1)[-1] in suffixes and name != "epoch"]
    for name in curves:
      values = [_curve_value(record.get(name)) for record in records]
      axes.plot(epochs, values, marker="o", markersize=3, label=name)
    if curves:
      axes.legend(fontsize=8)
    else:
      axes.text(0.5, 0.5, "not recorded", ha="center", va="center",
                transform=axes.transAxes, color="grey")
    axes.set(title=panel, xlabel="epoch")
    axes.grid(alpha=0.3)
    _plain_ticks(axes)
  return _save(figure, path, title)


def _save(figure, path, title):
  """Titles (if `title`), lays out and writes `figure` as PNG; returns it."""
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, format="png")
  return figure


def plot_seed_curves(metrics_list: Sequence[Mapping[str, Any]], path: str,
                     title: str | None = None):
  """Draws each seed's test accuracy and ECE against the epoch, and the mean.

  Args:
    metrics_list: Records as from `read_metrics`, each with `"epoch"` and
      `"seed"`.
    path: Output PNG.
    title: Optional figure title.

  Returns:
    The saved `matplotlib.figure.Figure`.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  seeds = sorted({record["seed"] for record in metrics_list})
  epochs = sorted({record["epoch"] for record in metrics_list})
  figure = Figure(figsize=(10.0, 4.0), dpi=100)
  for axes, (name, label) in zip(figure.subplots(1, 2),
                                 (("test_acc", "test accuracy"),
                                  ("test_ece", "test ECE"))):
    table = np.full((len(seeds), len(epochs)), math.nan)
    for record in metrics_list:
      table[seeds.index(record["seed"]), epochs.index(record["epoch"])] = (
          _curve_value(record.get(name)))
    for seed, values in zip(seeds, table):
      axes.plot(epochs, values, linewidth=1.0, alpha=0.6, label=f"seed {seed}")
    with warnings.catch_warnings():  # An epoch with no finite value: a gap.
      warnings.simplefilter("ignore", RuntimeWarning)
      mean = np.nanmean(table, axis=0)
    axes.plot(epochs, mean, "k-", linewidth=2.0, label="mean")
    axes.set(title=label, xlabel="epoch")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _plain_ticks(axes)
  return _save(figure, path, title)
