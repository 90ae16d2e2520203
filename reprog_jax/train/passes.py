"""What a run builds once (`Run`), and one pass of each kind over its data,
every seed at once: the label-mapping counts, a training epoch, the
evaluation that runs every epoch (temperature scaling on held-out
examples, each seed's validation accuracy: `validate`) and the one on the
test split (`evaluate_test`, where `evaluation.must_test` says). The loop
(`loop.py`) calls them epoch by epoch.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from reprog_jax import methods
from reprog_jax.errors import TrainingError
from reprog_jax.metrics import calibration
from reprog_jax.metrics import calibration_host
from reprog_jax.model import network as network_lib
from reprog_jax.train import inputs as inputs_lib
from reprog_jax.train import sharding


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run builds once, before its first epoch.

  Attributes:
    config: the run's locked config.
    workdir: where its files go.
    seeds: the seeds trained at once, in order.
    image_size: the images' side.
    layout: where every array lives (`sharding.Layout`).
    net: the frozen network as loaded (host).
    network: `net` replicated on the devices, at the compute dtype.
    eval_network: `network` at the evaluation dtype (label mapping and
      evaluation).
    run_data: the splits, pools and class names (`inputs.RunData`).
    inputs: the decoded images or cached features (`inputs.Inputs`).
    method: what is trained and how (`methods.Method`).
    optimizer: the optax optimiser.
    schedule: its learning rate per step.
    train_step, eval_step, count_step: the jitted steps (`steps.py`).
    seed_eval_step: `eval_step` over each seed's own batch (its held-out
      and validation rows).
    encode_step: for a method whose frozen `encode` is recomputed every
      step (`cache_features=False`), the jitted encode the cache would
      use; the train step then takes its outputs. None otherwise.
    started: when this invocation started (`time.time()`).
    is_lead: whether this process writes the run's files.
  """
  config: ml_collections.ConfigDict
  workdir: str
  seeds: tuple[int, ...]
  image_size: int
  layout: sharding.Layout
  net: network_lib.Network
  network: network_lib.Network
  eval_network: network_lib.Network
  run_data: inputs_lib.RunData
  inputs: inputs_lib.Inputs
  method: methods.Method
  optimizer: Any
  schedule: Callable[[int], Any]
  train_step: Callable
  eval_step: Callable
  seed_eval_step: Callable
  count_step: Callable
  started: float
  is_lead: bool
  encode_step: Callable | None = None

  @property
  def num_classes(self) -> int:
    return self.run_data.num_classes

  def bar(self, iterable, total, desc):
    """A progress bar over `iterable`, if the config wants them (on the
    lead process only: one bar however many hosts)."""
    return tqdm.tqdm(iterable, total=total, desc=desc, leave=False,
                     dynamic_ncols=True,
                     disable=not (self.config.progress and self.is_lead))

  def zero_counts(self, num_seeds, dtype=np.int32):
    """(num_seeds, num_scores, T) zeros, seed-sharded: the counts of
    (argmax score, label) the label mapping starts from (float32 for a
    method's own `mapping_statistic`)."""
    return self.layout.put(np.zeros((num_seeds, self.method.num_scores,
                                     self.num_classes), dtype),
                           self.layout.per_seed)


def count_pass(run: Run, state, epoch) -> np.ndarray:
  """Each seed's (argmax score, label) counts (or its method's
  `mapping_statistic` sums) over its training set with its current trained
  values: (S, num_scores, T), the input of ILM/FLM/BLM/BLM++."""
  sampler, layout = run.inputs.mapping_batches, run.layout
  counts = run.zero_counts(len(sampler.seeds), np.int32 if
                           run.method.mapping_statistic is None else
                           np.float32)
  for index in run.bar(sampler.epoch(epoch), len(sampler),
                       f"epoch {epoch} mapping"):
    batch = layout.put_rows(run.inputs.train, index, layout.seed_batch)
    counts = run.count_step(counts, state.params, run.eval_network, batch)
  return np.asarray(layout.to_host(counts))


def train_epoch(run: Run, state, mappings, epoch):
  """One epoch of every seed; returns the state and (S,) loss and accuracy.

  Each step's sums stay on the device until the epoch ends and are added on
  the host in float64: a float32 running sum of large but finite losses
  would overflow to infinity and hide where the run diverged.
  """
  sampler, layout, schedule = run.inputs.train_batches, run.layout, (
      run.schedule)
  per_step, seen = [], None
  bar = run.bar(sampler.epoch(epoch), len(sampler), f"epoch {epoch} train")
  for i, index in enumerate(bar):
    batch = layout.put_rows(run.inputs.train, index, layout.seed_batch)
    if run.encode_step is not None:
      batch["image"] = _encoded(run, batch["image"])
    state, metrics = run.train_step(state, run.network, mappings, batch)
    per_step.append(metrics)
    if run.config.progress:
      counted = (metrics["correct"], metrics["count"])
      seen = counted if seen is None else jax.tree.map(jnp.add, seen, counted)
      if i % 10 == 0 or i == len(sampler) - 1:
        # A host sync; only as often as a person can read the bar.
        bar.set_postfix(loss=f"{float(jnp.mean(metrics['loss'])):.4f}",
                        acc=f"{float(jnp.mean(seen[0] / seen[1])):.2%}",
                        lr=f"{float(schedule(int(state.step[0]) - 1)):.1e}")
  per_step = layout.to_host(jax.tree.map(lambda *x: jnp.stack(x), *per_step))
  losses = np.asarray(per_step["loss"])  # (steps, S)
  bad = np.argwhere(~np.isfinite(losses))
  if bad.size:
    step, seed = bad[0]
    raise TrainingError(
        f"non-finite loss at epoch {epoch} step {step} (seed "
        f"{sampler.seeds[seed]}, lr "
        f"{float(schedule(epoch * len(sampler) + step)):g}); "
        f"{kept(epoch)}; lower --config.lr")
  sums = {k: np.asarray(per_step[k], np.float64).sum(axis=0)
          for k in ("loss_sum", "correct", "count")}
  return state, {"train_loss": sums["loss_sum"] / sums["count"],
                 "train_acc": sums["correct"] / sums["count"]}


def _encoded(run: Run, images):
  """Every seed's (S, B, ...) images through `run.encode_step`, as one
  (S * B, ...) batch: (S, B, features), placed as training batches are."""
  seeds, width = images.shape[:2]
  features = run.encode_step(run.network,
                             images.reshape((seeds * width,) + images.shape[2:]))
  features = features.reshape((seeds, width) + features.shape[1:])
  return jax.device_put(features, run.layout.seed_batch)


def kept(epoch) -> str:
  """What survives a run that diverged in `epoch`."""
  return (f"the last good checkpoint (epoch {epoch - 1}) is kept"
          if epoch > 0 else "no checkpoint was written")


def score_pass(run: Run, params, mappings, store, sampler, desc,
               per_seed: bool = False):
  """Every seed's logits of a store's rows, batch by batch in sampler order.

  Without `per_seed` the sampler's one pool (the test split) is one batch
  every seed sees (`eval_step`). With it, the sampler has a pool per seed
  (held-out, validation rows) and each seed is scored on its own rows only
  (`seed_eval_step`), never on the union of every seed's rows; one seed's
  batches go through `eval_step` as before.

  Returns:
    ((S, N, T) logits, their rows in `store` (-1: padding): (N,), or
    (S, N) with `per_seed`, (S, K, T) counts of (argmax score, label)).
  """
  layout = run.layout
  own_batches = per_seed and len(run.seeds) > 1
  step = run.seed_eval_step if own_batches else run.eval_step
  counts = run.zero_counts(mappings.shape[0])
  logits, order = [], []
  for index in run.bar(sampler.epoch(0), len(sampler), desc):
    batch = layout.put_rows(
        store, index if own_batches else index[0],
        layout.seed_batch if own_batches else layout.shared_batch)
    counts, out = step(counts, params, run.eval_network, mappings, batch)
    logits.append(out)
    order.append(index if per_seed else index[0])
  logits = np.asarray(layout.to_host(jnp.concatenate(logits, axis=1)))
  return (logits, np.concatenate(order, axis=-1),
          np.asarray(layout.to_host(counts)))


def validate(run: Run, state, mappings) -> list[dict]:
  """What runs every epoch besides training: with held-out examples each
  seed's temperature, fitted on its own (`temperature`); with a
  validation split each seed's accuracy and ECE there (`val_acc`,
  `val_ece`). Both are evaluated exactly as the test split (`evaluate_test`).

  Returns:
    Per seed, a dict of those metrics (empty without either split).
  """
  inputs = run.inputs
  metrics = [{} for _ in run.seeds]
  if inputs.holdout is not None:
    held_logits, held_order, _ = score_pass(
        run, state.params, mappings, inputs.holdout, inputs.holdout_batches,
        "held-out", per_seed=True)
    for k, seed_metrics in enumerate(metrics):
      seed_metrics["temperature"] = calibration_host.fit_temperature(
          held_logits[k], inputs.holdout.labels_at(held_order[k]),
          held_order[k] >= 0)
  if inputs.validation is not None:
    val_logits, val_order, _ = score_pass(
        run, state.params, mappings, inputs.validation,
        inputs.validation_batches, "validation", per_seed=True)
    for k, seed_metrics in enumerate(metrics):
      # As the test split's metrics are computed, on seed k's own rows.
      report = calibration.metrics_from_logits(
          np.asarray(val_logits[k], np.float32),
          inputs.validation.labels_at(val_order[k]), val_order[k] >= 0)
      seed_metrics["val_acc"] = float(report["accuracy"])
      seed_metrics["val_ece"] = float(report["ece"])
  return metrics


def evaluate_test(run: Run, state, mappings, held_out):
  """Each seed's accuracy and calibration over the whole test split, and
  with a temperature (`held_out`: `validate`'s metrics) the test
  calibration at it.

  Returns:
    (per-seed dicts of `test_*` metrics, per-seed `CalibrationBins`,
    (S, K, T) counts of (argmax score, label) on the test split).
  """
  inputs = run.inputs
  logits, order, counts = score_pass(run, state.params, mappings,
                                     inputs.test, inputs.test_batches, "test")
  valid, labels = order >= 0, inputs.test.labels_at(order)
  metrics = []
  for seed_logits, seed_held_out in zip(logits, held_out):
    seed_metrics = {f"test_{name}": value for name, value in
                    calibration_host.split_report(seed_logits, labels,
                                                  valid).items()}
    if "temperature" in seed_held_out:
      seed_metrics.update({
          f"test_{name}": value for name, value in
          calibration_host.temperature_scaled_report(
              seed_logits, labels, seed_held_out["temperature"],
              valid).items()})
    metrics.append(seed_metrics)
  # Every seed's reliability bins at once, on the host (no device trips).
  bins = calibration_host.calibration_bins(logits, labels, mask=valid)
  return metrics, bins, counts
