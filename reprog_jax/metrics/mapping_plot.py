"""The picture of a matrix label mapping (BLM, BLM++, FullyMap): per target
class, the sources of largest weight.

A one-to-one mapping is drawn by `prompt_plots.plot_label_mapping`
(counts of predictions); a `(S, T)` weight matrix has no single source per
target, so its picture is a table: one row per target class, its `top_k`
sources by weight, each cell that weight. Kept apart from `prompt_plots.py`
to keep both short; it follows the same conventions (a `title`, `Figure` without
`pyplot`, matplotlib imported inside).
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from reprog_jax.metrics import prompt_plots


class TopWeights(NamedTuple):
  """The largest weights of each target's column, largest first.

  Attributes:
    weights: `(rows, top_k)` float64.
    sources: `(rows, top_k)` int, the source class of each weight.
    target_indices: `(rows,)` the target classes drawn.
  """
  weights: np.ndarray
  sources: np.ndarray
  target_indices: np.ndarray


def top_weights(matrix: np.ndarray, top_k: int = 5,
                max_targets: int | None = 20) -> TopWeights:
  """Per target column of `matrix` (S, T), its `top_k` sources by weight
  (the first source on ties), for the first `max_targets` targets."""
  matrix = np.asarray(matrix, np.float64)
  num_sources, num_targets = matrix.shape
  rows = num_targets if max_targets is None else min(num_targets,
                                                     max_targets)
  top_k = min(top_k, num_sources)
  columns = matrix[:, :rows].T  # (rows, S)
  # A stable sort of the negated weights keeps the first source on ties.
  sources = np.argsort(-columns, axis=1, kind="stable")[:, :top_k]
  weights = np.take_along_axis(columns, sources, axis=1)
  return TopWeights(weights, sources, np.arange(rows))


def plot_mapping_matrix(matrix: np.ndarray, target_names: Sequence[str],
                        source_names: Sequence[str], path: str, *,
                        top_k: int = 5, max_targets: int | None = 20,
                        what: str = "mapping weight",
                        title: str | None = None):
  """Draws the heat map of the largest weights per target class as a PNG.

  Rows are target classes; cell `(t, j)` is the j-th largest weight of
  target `t`'s column, annotated with its source class's name.

  Args:
    matrix: Float `(S, T)`: target logits are `source_logits @ matrix`.
    target_names: `T` target class names.
    source_names: `S` source class names.
    path: Output PNG.
    top_k: Sources drawn per target.
    max_targets: Rows drawn at most; None: all.
    what: What a weight is, for the colour bar.
    title: Optional first title line(s), e.g. the run's name.

  Returns:
    The saved `matplotlib.figure.Figure`.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  matrix = np.asarray(matrix)
  num_sources, num_targets = matrix.shape
  if len(source_names) != num_sources or len(target_names) != num_targets:
    raise ValueError(
        f"Need {num_sources} source and {num_targets} target names, got "
        f"{len(source_names)} and {len(target_names)}.")
  table = top_weights(matrix, top_k, max_targets)
  rows, columns = table.weights.shape
  lines = [title] if title else []
  shown = (f"all {num_targets} target classes" if rows == num_targets else
           f"first {rows} of {num_targets} target classes")
  lines.append(f"{shown}: the {columns} sources of largest weight each")
  figure = Figure(figsize=(max(6.0, 3.0 + 1.3 * columns),
                           max(4.0, 2.5 + 0.42 * rows)), dpi=100)
  axes = figure.add_subplot()
  image = axes.imshow(table.weights, cmap="YlGn", aspect="auto")
  figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02).set_label(what)
  axes.set_xticks(np.arange(columns), [f"#{j + 1}" for j in range(columns)])
  axes.set_yticks(np.arange(rows), [prompt_plots.shorten(target_names[t])
                                    for t in table.target_indices])
  high = np.max(table.weights) if table.weights.size else 0.0
  for i in range(rows):
    for j in range(columns):
      value = table.weights[i, j]
      source = prompt_plots.shorten(source_names[table.sources[i, j]], 14)
      axes.text(j, i, f"{source}\n{value:.2g}", ha="center", va="center",
                fontsize=6,
                color="white" if value > 0.6 * high > 0 else "black")
  axes.set_xlabel("sources by weight, largest first")
  axes.set_ylabel("target class")
  axes.set_title("\n".join(lines), fontsize=9, pad=10)
  figure.savefig(path, format="png", bbox_inches="tight")
  return figure
