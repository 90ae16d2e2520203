"""The report's figures (`reprog_jax.report`): accuracy and ECE against the
remaining weights, accuracy against n_shot, reliability diagrams of dense
networks against tickets; all at the study's primary model selection (the
rows' `stats` and `reliability`)."""

import io

from reprog_jax.data.fewshot import shot_name
from reprog_jax.study import claims


def figures(rows, directory, selection="validation-selected epoch") -> dict:
  """{relative path under `directory`: function returning PNG bytes} of
  the report's rows; error bars are the seeds' ddof=1 std; `selection`
  names the rows' model selection on the axes."""
  accuracy = f"test accuracy (%), {selection}"
  drawn = {
      f"{directory}/accuracy_vs_remaining.png":
          lambda: _versus_remaining(rows, "test_acc", accuracy, 100.0),
      f"{directory}/ece_vs_remaining.png":
          lambda: _versus_remaining(rows, "test_ece", f"ECE, {selection}",
                                    1.0),
      f"{directory}/accuracy_vs_n_shot.png":
          lambda: _versus_n_shot(rows, accuracy),
  }
  for dataset, n_shot in sorted({(r.dataset, r.n_shot) for r in rows
                                 if r.reliability}):
    chosen = [r for r in rows if (r.dataset, r.n_shot) == (dataset, n_shot)
              and r.reliability]
    name = f"reliability_{dataset}_{shot_name(n_shot)}.png"
    drawn[f"{directory}/{name}"] = lambda chosen=chosen: _reliability(chosen)
  return drawn


def _panels(count, width=5.0, height=4.0):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=(width * count, height), dpi=100)
  axes = figure.subplots(1, count, squeeze=False)[0]
  return figure, axes


def _png(figure) -> bytes:
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  return buffer.getvalue()


def _versus_remaining(rows, metric, ylabel, scale) -> bytes:
  datasets = sorted({r.dataset for r in rows})
  figure, panels = _panels(len(datasets))
  for axes, dataset in zip(panels, datasets):
    mine = [r for r in rows if r.dataset == dataset and metric in r.stats]
    series = sorted({(r.method, r.n_shot) for r in mine},
                    key=lambda s: (claims.method_rank(s[0]), s[1] == -1,
                                   s[1]))
    for method, n_shot in series:
      points = sorted(((r.remaining, r.stats[metric]) for r in mine
                       if (r.method, r.n_shot) == (method, n_shot)),
                      reverse=True)
      axes.errorbar([p[0] for p in points], [scale * p[1][0] for p in points],
                    yerr=[scale * (p[1][1] or 0.0) for p in points], marker="o",
                    capsize=3, label=f"{claims.label(method)}, "
                    f"{shot_name(n_shot)}")
    remaining = sorted({r.remaining for r in mine})
    axes.set_xscale("log")
    axes.set_xticks(remaining, [f"{x:.3g}" for x in remaining])
    axes.minorticks_off()
    axes.invert_xaxis()  # Sparser to the right, as pruning proceeds.
    axes.set(title=dataset, xlabel="remaining weights (%)", ylabel=ylabel)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize=8)
  return _png(figure)


def _versus_n_shot(rows, ylabel) -> bytes:
  datasets = sorted({r.dataset for r in rows})
  figure, panels = _panels(len(datasets))
  for axes, dataset in zip(panels, datasets):
    mine = [r for r in rows if r.dataset == dataset and "test_acc" in r.stats]
    shots = sorted({r.n_shot for r in mine}, key=lambda n: (n == -1, n))
    series = sorted({(r.method, r.network, r.remaining) for r in mine},
                    key=lambda s: (claims.method_rank(s[0]), -s[2], s[1]))
    for method, network, _ in series:
      points = sorted((shots.index(r.n_shot), r.stats["test_acc"])
                      for r in mine if (r.method, r.network) == (method,
                                                                  network))
      axes.errorbar([p[0] for p in points], [100 * p[1][0] for p in points],
                    yerr=[100 * (p[1][1] or 0.0) for p in points], marker="o",
                    capsize=3,
                    label=f"{claims.label(method)}, {network}")
    axes.set_xticks(range(len(shots)), [
        "full" if n == -1 else str(n) for n in shots])
    axes.set(title=dataset, xlabel="training examples per class (n_shot)",
             ylabel=ylabel)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize=8)
  return _png(figure)


def _reliability(rows) -> bytes:
  """One panel per method: each network's bin accuracy against its bin
  confidence (non-empty bins), pooled over seeds."""
  chosen_methods = sorted({r.method for r in rows}, key=claims.method_rank)
  figure, panels = _panels(len(chosen_methods), 4.5, 4.5)
  for axes, method in zip(panels, chosen_methods):
    for r in sorted((r for r in rows if r.method == method),
                    key=lambda r: (r.kind != "dense", -(r.remaining or 0))):
      bins = r.reliability
      kept = [i for i, c in enumerate(bins["count"]) if c > 0]
      axes.plot([bins["confidence"][i] for i in kept],
                [bins["accuracy"][i] for i in kept], marker="o",
                linestyle="-" if r.kind == "dense" else "--",
                label=f"{r.network} ({r.kind}), mean ECE "
                f"{r.stats['test_ece'][0]:.3f}")
    axes.plot([0, 1], [0, 1], "k:", linewidth=1.0, label="perfect")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence",
             ylabel="accuracy", title=f"{claims.label(method)}: "
             f"{rows[0].dataset}, {shot_name(rows[0].n_shot)}")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize=8)
  return _png(figure)
