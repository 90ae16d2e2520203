"""The general pictures a training run writes: PNGs a person would rather
look at.

A reliability diagram and the training curves (one run's, and each seed's
with their mean). The visual-prompting pictures (label mapping, prompt,
prompted inputs) are in `prompt_plots`. Each `plot_*` function takes a
`title` (the training loop passes the run's name and, for a randomly
initialised network, a warning, so no figure passes for a real result) and
returns the saved figure.

matplotlib is imported inside the functions that use it, so importing this
module stays cheap. Figures are built on `matplotlib.figure.Figure`
directly, never through `pyplot`, so no global backend or figure registry is
touched and nothing leaks between calls.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reprog_jax.metrics import metric_writer


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
