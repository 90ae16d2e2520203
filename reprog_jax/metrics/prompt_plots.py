"""The visual-prompting pictures of an ILM-VP run: PNGs of the label
mapping, the learned prompt and prompted inputs.

The ILM-VP label-mapping heatmap (a matrix mapping's heat map is in
`mapping_plot`), the learned prompt and a grid of prompted test images. The
run's general figures (reliability diagram, training curves) are in `plots`,
whose conventions these follow: each `plot_*` function takes a `title` and
returns the saved figure; matplotlib is imported inside the functions and
figures are built on `matplotlib.figure.Figure`, never through `pyplot`.
"""

import math
import textwrap
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

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
