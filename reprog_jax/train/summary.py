"""`summary.json`: what a finished run found, per seed and over the seeds.

Each seed's metrics at three model selections: `validation` (the epoch
with its best validation accuracy, the first of equals; only with a
validation split), `best` (its best test accuracy: the PyTorch version's
selection, optimistic; with `config.test_every` other than 1 the best
among the epochs whose test split was evaluated, `best_test_over` says
which) and `last` (the last epoch).
"""

import importlib.metadata
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from reprog_jax import layout as file_layout
from reprog_jax import fileio
from reprog_jax import methods
from reprog_jax.metrics import calibration
from reprog_jax.metrics import metric_writer
from reprog_jax.model import label_mapping
from reprog_jax.train import run_config


# Every installed package whose version can change a run's numbers (kernels,
# optimiser, checkpoint and data reading, image decoding and resizing).
NUMERIC_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                    "grain", "tensorflow-datasets", "numpy", "Pillow")


def package_versions() -> dict[str, str | None]:
  """The installed version of each of `NUMERIC_PACKAGES` (None: absent)."""
  versions = {}
  for name in NUMERIC_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def write(config, workdir, net, run_data, inputs, mappings, best, seeds,
          layout, started) -> dict:
  """Writes `workdir/summary.json` from the run's metrics; returns it.

  Args:
    config: the run's config.
    workdir: the run's directory (its `metrics.jsonl` is read).
    net: the frozen `network.Network`.
    run_data: `inputs.RunData` (classes).
    inputs: `inputs.Inputs` (split sizes).
    mappings: the last epoch's mappings, (S, T) sequences or (S, K, T)
      matrices.
    best: each seed's selected epochs (`best.Best`).
    seeds: the run's seeds.
    layout: its `sharding.Layout`.
    started: when this invocation started (`time.time()`).
  """
  records = metric_writer.read_metrics(workdir)
  timing = metric_writer.TIMING_KEYS
  per_seed = []
  for k, seed in enumerate(seeds):
    mine = [{key: v for key, v in r.items() if key not in timing}
            for r in records if r.get("seed") == seed]
    selected = {}
    if run_data.validation is not None:
      selected = {
          "validation": _epoch_record(mine, int(best.val_epoch[k]), seed),
          "validation_mapping_sequence": [
              int(i) for i in
              label_mapping.dominant_sources(best.val_mapping_sequence[k])],
          "validation_reliability": _reliability(best.val_reliability, k)}
    per_seed.append({
        "seed": seed,
        # Among the epochs whose test split was evaluated (every epoch
        # with test_every=1; the last one always).
        "best": max((r for r in mine if "test_acc" in r),
                    key=lambda r: (r["test_acc"], -r["epoch"])),
        "last": mine[-1],
        # A matrix mapping: each target's source of largest weight.
        "mapping_sequence": [int(i) for i in
                             label_mapping.dominant_sources(mappings[k])],
        "best_mapping_sequence": [
            int(i) for i in
            label_mapping.dominant_sources(best.mapping_sequence[k])],
        "reliability": _reliability(best.reliability, k),
        **selected})
  numbers = [key for key, v in per_seed[0]["best"].items()
             if metric_writer.is_number(v)
             and key not in ("epoch", "seed", "lr", "best_epoch")]
  seeds_mean_std = {
      which: {key: mean_std([p[which][key] for p in per_seed])
              for key in numbers if all(key in p[which] for p in per_seed)}
      for which in ("validation", "best", "last")
      if all(which in p for p in per_seed)}
  sparsity = {k: v for k, v in net.sparsity().items() if k != "layers"}
  epoch_records = [r for r in records if r.get("seed") == seeds[0]]
  summary = {
      "method": config.method,
      # Where the method is defined, so that export, sweep and report can
      # import it again (`methods.find`), a plug-in's too.
      "method_module": methods.get(config.method).module,
      "dataset": config.data.name,
      "n_shot": config.n_shot,
      "seeds": list(seeds),
      "num_classes": run_data.num_classes,
      "train_examples": inputs.train_batches.num_examples,
      "test_examples": inputs.test_batches.num_examples,
      "network": {"dir": config.network_dir, "arch": net.arch,
                  "dense": net.meta["dense"], "ticket": net.meta.get("ticket"),
                  "sources": net.meta["sources"],
                  # Its source (ImageNet) top-1 in %, if recorded: the
                  # report's claim 1 needs it without the directory.
                  "source_top1": net.meta.get("source_top1")},
      "sparsity": sparsity,
      "test_every": config.test_every,
      "best_test_over": ("every epoch" if config.test_every == 1 else
                         "tested epochs"),
      "tested_epochs": sum("test_acc" in r for r in epoch_records),
      "per_seed": per_seed,
      "seeds_mean_std": seeds_mean_std,
      "wall_time_seconds": sum(r["epoch_seconds"] for r in epoch_records),
      "this_invocation_seconds": time.time() - started,
      "train_images_per_second": float(np.mean(
          [r["train_images_per_second"] for r in epoch_records])),
      # Where the numbers come from: timings depend on all of it.
      "platform": {"backend": jax.default_backend(),
                   "devices": [d.device_kind for d in jax.devices()],
                   "data_parallel_devices": layout.num_devices,
                   "seed_sharded": layout.seed_sharded,
                   "processes": jax.process_count(),
                   "compute_dtype": jnp.dtype(net.model.dtype).name,
                   "eval_dtype": jnp.dtype(run_config.eval_dtype(config)).name,
                   "packages": package_versions()},
      "config": run_config.to_dict(config),
  }
  if len(seeds) == 1:  # The single seed's figures, at the top as before.
    summary.update(best=per_seed[0]["best"], last=per_seed[0]["last"],
                   mapping_sequence=per_seed[0]["mapping_sequence"])
    if "validation" in per_seed[0]:
      summary["validation"] = per_seed[0]["validation"]
  fileio.write_json(os.path.join(workdir, file_layout.SUMMARY_FILE), summary)
  best_acc = seeds_mean_std["best"]["test_acc"]
  print(f"best test accuracy"
        + ("" if config.test_every == 1 else " among tested epochs")
        + f" {best_acc['mean']:.2%}"
        + (f" +- {best_acc['std']:.2%} (sample std, ddof=1) over "
           f"{len(seeds)} seeds"
           if len(seeds) > 1 else
           f" (ECE {per_seed[0]['best']['test_ece']:.4f}) at epoch "
           f"{per_seed[0]['best']['epoch']}")
        + (f"; at the validation-selected epochs "
           f"{seeds_mean_std['validation']['test_acc']['mean']:.2%}"
           if "validation" in seeds_mean_std else "")
        + f"; results in {workdir}: summary.json, metrics.jsonl, plots/, "
        f"tensorboard/, checkpoints/")
  return summary


def _epoch_record(records, epoch, seed) -> dict:
  """The metrics line of `epoch` among one seed's `records`."""
  for record in records:
    if record["epoch"] == epoch:
      return record
  raise ValueError(f"metrics.jsonl has no line of epoch {epoch} (seed "
                   f"{seed}), the epoch its checkpoint selected")


def mean_std(values) -> dict:
  """The mean of `values` (one per seed) and their spread.

  Returns:
    {'mean', 'std': the sample standard deviation (ddof=1; None for a single
    seed, where it is undefined), 'std_ddof': 1, 'n_seeds'}.
  """
  values = np.asarray(values, np.float64)
  return {"mean": float(np.mean(values)),
          "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
          "std_ddof": 1, "n_seeds": len(values)}


def _reliability(sums, k) -> dict:
  """Seed k's best-epoch reliability diagram (equal-width bins), as lists:
  {'lower', 'upper', 'count', 'accuracy', 'confidence'}; empty bins have
  accuracy and confidence 0."""
  stats = calibration.bin_statistics(calibration.CalibrationBins(
      **{name: np.asarray(value[k]) for name, value in sums.items()}))
  return {name: [(int if name == "count" else float)(v)
                 for v in np.asarray(getattr(stats, name))]
          for name in ("lower", "upper", "count", "accuracy", "confidence")}
