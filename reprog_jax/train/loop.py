"""Linear probing and ILM-VP on a frozen (dense or ticket) network: one loop.

`train_and_evaluate(config, workdir)` runs a whole config (see `configs/`)
for every seed of `config.seeds` at once: setup, network, data, method and
optimiser, restore, then per epoch each seed's label mapping, training,
evaluation on the full test split, metrics, plots and one checkpoint;
finally `summary.json`. The loop never asks which method runs: what varies
lives in `methods.Method`. Re-running it on the same workdir resumes after
the last checkpointed epoch and ends with exactly the result of an
uninterrupted run.
"""

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from reprog_jax.metrics import calibration
from reprog_jax.train import checkpoints
from reprog_jax.train import inputs as inputs_lib
from reprog_jax import methods
from reprog_jax.metrics import metric_writer
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.metrics import plots
from reprog_jax.train import run_config
from reprog_jax.train import sharding
from reprog_jax.train import steps
from reprog_jax.train import summary as summary_lib
from reprog_jax.metrics import wandb_log
from reprog_jax.train import workdir as workdir_lib
from reprog_jax.errors import TrainingError

# --------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------


def load_network(config, dtype) -> network_lib.Network:
  if config.random_network:
    print(f"NOTE: random_network={config.random_network}: a RANDOMLY "
          f"INITIALISED network (smoke run); its results mean nothing.")
    # One fixed network whatever the training seeds, so that runs with
    # different seeds (or several at once) adapt the same network.
    return network_lib.random_network(config.random_network, 0, dtype)
  net = network_dir.load(config.network_dir, dtype=dtype)
  kind = "dense" if net.meta["dense"] else "ticket"
  if kind != config.network:
    raise TrainingError(
        f"{config.network_dir} is a {kind} network but the config says "
        f"network={config.network!r}; pass --config.network={kind}")
  return net


# --------------------------------------------------------------------------
# One pass of each kind, every seed at once
# --------------------------------------------------------------------------


def _bar(iterable, total, desc, config):
  return tqdm.tqdm(iterable, total=total, desc=desc, leave=False,
                   dynamic_ncols=True, disable=not config.progress)


def count_pass(count_step, params, network, inputs, layout, num_scores,
               num_classes, epoch, config) -> np.ndarray:
  """Each seed's (argmax score, label) counts over its training set with
  its current trained values: (S, num_scores, T), the input of ILM/FLM."""
  sampler = inputs.mapping_batches
  counts = layout.put(np.zeros((len(sampler.seeds), num_scores, num_classes),
                               np.int32), layout.per_seed)
  for index in _bar(sampler.epoch(epoch), len(sampler),
                    f"epoch {epoch} mapping", config):
    batch = layout.put_rows(inputs.train, index, layout.seed_batch)
    counts = count_step(counts, params, network, batch)
  return np.asarray(layout.to_host(counts))


def train_epoch(train_step, state, network, mappings, inputs, layout, epoch,
                schedule, config):
  """One epoch of every seed; returns the state and (S,) loss and accuracy.

  Each step's sums stay on the device until the epoch ends and are added on
  the host in float64: a float32 running sum of large but finite losses
  would overflow to infinity and hide where the run diverged.
  """
  sampler = inputs.train_batches
  per_step, seen = [], None
  bar = _bar(sampler.epoch(epoch), len(sampler), f"epoch {epoch} train",
             config)
  for i, index in enumerate(bar):
    batch = layout.put_rows(inputs.train, index, layout.seed_batch)
    state, metrics = train_step(state, network, mappings, batch)
    per_step.append(metrics)
    if config.progress:
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
        f"{_kept(epoch)}; lower --config.lr")
  sums = {k: np.asarray(per_step[k], np.float64).sum(axis=0)
          for k in ("loss_sum", "correct", "count")}
  return state, {"train_loss": sums["loss_sum"] / sums["count"],
                 "train_acc": sums["correct"] / sums["count"]}


def score_pass(eval_step, params, network, mappings, store, sampler, layout,
               num_scores, num_classes, desc, config):
  """Every seed's logits of a store's rows, batch by batch in sampler order.

  Returns:
    ((S, N, T) logits, (N,) their rows in `store` (-1: padding), (S, K, T)
    counts of (argmax score, label)).
  """
  counts = layout.put(np.zeros((mappings.shape[0], num_scores, num_classes),
                               np.int32), layout.per_seed)
  logits, order = [], []
  for index in _bar(sampler.epoch(0), len(sampler), desc, config):
    batch = layout.put_rows(store, index[0], layout.shared_batch)
    counts, out = eval_step(counts, params, network, mappings, batch)
    logits.append(out)
    order.append(index[0])
  logits = np.asarray(layout.to_host(jnp.concatenate(logits, axis=1)))
  return logits, np.concatenate(order), np.asarray(layout.to_host(counts))


def evaluate(eval_step, params, network, mappings, inputs, layout,
             num_scores, num_classes, config):
  """Each seed's accuracy and calibration over the whole test split, and
  with held-out examples its temperature and the test calibration at it.

  Returns:
    (per-seed metric dicts, per-seed `CalibrationBins`, (S, K, T) counts of
    (argmax score, label) on the test split).
  """
  scoring = (eval_step, params, network, mappings)
  sizes = (layout, num_scores, num_classes)
  logits, order, counts = score_pass(*scoring, inputs.test,
                                     inputs.test_batches, *sizes, "test",
                                     config)
  valid, labels = order >= 0, inputs.test.labels_at(order)
  if inputs.holdout is not None:  # Evaluated exactly as the test split.
    held_logits, held_order, _ = score_pass(
        *scoring, inputs.holdout, inputs.holdout_batches, *sizes, "held-out",
        config)
    held_labels = inputs.holdout.labels_at(held_order)
  metrics, bins = [], []
  for k, seed_logits in enumerate(logits):
    seed_metrics = {f"test_{name}": value for name, value in
                    calibration.split_report(seed_logits, labels,
                                             valid).items()}
    if inputs.holdout is not None:
      mine = held_order >= 0  # Seed k's own rows of the union, unpadded.
      mine[mine] = inputs.holdout_rows[k][held_order[mine]]
      temperature = calibration.fit_temperature(held_logits[k], held_labels,
                                                mine)
      seed_metrics["temperature"] = temperature
      seed_metrics.update({
          f"test_{name}": value for name, value in
          calibration.temperature_scaled_report(
              seed_logits, labels, temperature, valid).items()})
    metrics.append(seed_metrics)
    bins.append(calibration.calibration_bins(
        jax.nn.softmax(jnp.asarray(seed_logits, jnp.float32)), labels,
        mask=valid))
  return metrics, bins, counts


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def train_and_evaluate(config, workdir, stop_after_epoch=None) -> dict:
  """Runs (or resumes) `config` in `workdir`; returns the summary.

  Args:
    config: a locked ConfigDict from `configs/`.
    workdir: where checkpoints, metrics, plots and the summary go.
    stop_after_epoch: stop once this epoch is checkpointed (to split a long
      run into jobs); re-running resumes.
  """
  # Whatever ends the run (an error included), its files get closed.
  with contextlib.ExitStack() as closing:
    return _run(config, workdir, stop_after_epoch, closing)


def _run(config, workdir, stop_after_epoch, closing) -> dict:
  """`train_and_evaluate`, with `closing` to close what it opens."""
  started = time.time()
  run_config.check(config)
  wandb_log.check(config)  # Before any slow work: is wandb there if asked?
  dtype, eval_dtype = run_config.compute_dtype(config), run_config.eval_dtype(
      config)
  seeds = run_config.seeds(config)
  image_size = run_config.image_size(config)
  layout = sharding.Layout.create(len(seeds))
  is_lead = jax.process_index() == 0  # The process that writes files.
  if is_lead:
    workdir_lib.check(workdir)

  # Network: one frozen pytree, replicated on every device; evaluation and
  # label mapping run at `eval_dtype` (float32: the PyTorch version runs
  # them outside autocast).
  net = load_network(config, dtype)
  network = layout.put(net, layout.replicated)
  eval_network = network.with_dtype(eval_dtype)

  # Data: every seed's few-shot subset; method; optimiser.
  run_data = inputs_lib.open_run_data(config, seeds)
  num_classes = run_data.num_classes
  method = methods.build(config, net, num_classes, image_size)
  steps_per_epoch = -(-run_data.pools.shape[1] // config.batch_size)
  optimizer, schedule = steps.make_optimizer(
      config.lr, config.epochs, steps_per_epoch, config.milestone_fractions,
      config.gamma, config.b1, config.b2, config.eps, config.weight_decay)

  # Workdir: every input is checked by now, so this is the first write.
  if is_lead:
    workdir_lib.prepare(config, workdir, dtype)
  inputs = inputs_lib.load(run_data, config, seeds=seeds,
                           image_size=image_size, method=method,
                           network=network, eval_network=eval_network,
                           layout=layout, workdir=workdir)
  train_step = steps.make_train_step(method, optimizer, layout,
                                     inputs.encoded)
  eval_step = steps.make_eval_step(method, layout, inputs.encoded)
  count_step = steps.make_count_step(method, layout, inputs.encoded)

  # State, or its checkpoint.
  state = layout.put(steps.init_state(method, optimizer, seeds),
                     layout.per_seed)
  mappings = np.tile(method.initial_mapping, (len(seeds), 1))
  best = {"params": layout.to_host(state.params), "mapping_sequence": mappings,
          "test_acc": np.full(len(seeds), -1.0),
          "epoch": np.full(len(seeds), -1, np.int32),
          "reliability": {name: np.zeros((len(seeds),
                                          calibration.DEFAULT_NUM_BINS),
                                         np.float32)
                          for name in calibration.CalibrationBins._fields}}
  start_epoch = 0
  if checkpoints.latest_epoch(workdir) is not None:
    restored = checkpoints.restore(workdir, checkpoints.pack(
        state, epoch=0, mappings=mappings, best=best))
    state, mappings, best = (restored["state"], restored["mapping_sequence"],
                             restored["best"])
    start_epoch = restored["epoch"] + 1
    print(f"resuming {workdir} after epoch {restored['epoch']}")
  writer = None
  if is_lead:
    mirror = None
    if wandb_log.enabled(config):  # W&B gets what TensorBoard gets.
      mirror = wandb_log.start(config, workdir, resume=start_epoch > 0, extra={
          "seeds": list(seeds),
          "remaining_percent": net.sparsity()["remaining_percent"]})
    writer = closing.enter_context(
        metric_writer.MetricWriter(workdir, mirror=mirror))
    # Lines past the last checkpoint (a crash in between) go.
    writer.truncate_after(start_epoch - 1)

  # Loop.
  for epoch in range(start_epoch, config.epochs):
    epoch_started = time.time()
    mappings = method.epoch_mapping(
        epoch, mappings, seeds, lambda: count_pass(
            count_step, state.params, eval_network, inputs, layout,
            method.num_scores, num_classes, epoch, config))
    mappings_on_device = layout.put(mappings, layout.per_seed)  # Once.
    train_started = time.time()
    state, train_metrics = train_epoch(train_step, state, network,
                                       mappings_on_device, inputs, layout,
                                       epoch, schedule, config)
    train_seconds = time.time() - train_started
    test_metrics, bins, test_counts = evaluate(
        eval_step, state.params, eval_network, mappings_on_device, inputs,
        layout, method.num_scores, num_classes, config)
    params = layout.to_host(state.params)
    best = _update_best(best, epoch, params, mappings, np.array(
        [m["test_accuracy"] for m in test_metrics]), bins)
    lr = steps.epoch_lr(config.lr, config.epochs, epoch,
                        config.milestone_fractions, config.gamma)
    timing = {"train_images_per_second":
              len(seeds) * inputs.train_batches.num_examples / train_seconds,
              "epoch_seconds": time.time() - epoch_started}
    records = [{"lr": lr, "train_loss": float(train_metrics["train_loss"][k]),
                "train_acc": float(train_metrics["train_acc"][k]),
                "test_acc": test_metrics[k].pop("test_accuracy"),
                **test_metrics[k], "best_test_acc": float(best["test_acc"][k]),
                "best_epoch": int(best["epoch"][k]), **timing}
               for k in range(len(seeds))]
    _check_finite(epoch, records, seeds)  # Before anything of it is kept.
    if writer:
      for seed, record in zip(seeds, records):
        writer.write(epoch, record, seed=seed, tag_prefix=_seed_prefix(
            seeds, seed, "/"))
      if (epoch + 1) % config.plot_interval == 0 or epoch + 1 == config.epochs:
        _plots(writer, workdir, epoch, method, params, bins, test_counts,
               mappings, inputs.examples, run_data.class_names, seeds, config)
    checkpoints.save(workdir, checkpoints.pack(
        state, epoch=epoch, mappings=mappings, best=best))
    print(_epoch_line(epoch, records, best))
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      if epoch + 1 < config.epochs:
        if writer:
          writer.close()
        print(f"stopped after epoch {epoch}; run the same command to resume")
        return {}
  if not writer:
    return {}
  writer.close()

  # Summary.
  return summary_lib.write(config, workdir, net, run_data, inputs, mappings,
                           best, seeds, layout, started)


def _update_best(best, epoch, params, mappings, accuracies, bins) -> dict:
  """Each seed's best epoch so far: where its test accuracy rose, this
  epoch's values (trained values, mapping, accuracy, epoch and reliability
  bins) replace the kept ones (the first of equals stays)."""
  improved = accuracies > best["test_acc"]

  def pick(new, old):
    new, old = np.asarray(new), np.asarray(old)
    return np.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new,
                    old)

  return {"params": jax.tree.map(pick, params, best["params"]),
          "mapping_sequence": pick(mappings, best["mapping_sequence"]),
          "test_acc": pick(accuracies, best["test_acc"]),
          "epoch": pick(np.full(len(improved), epoch), best["epoch"]),
          "reliability": {name: pick(np.stack(per_seed),
                                     best["reliability"][name])
                          for name, per_seed in zip(
                              calibration.CalibrationBins._fields,
                              zip(*bins))}}


def _kept(epoch) -> str:
  """What survives a run that diverged in `epoch`."""
  return (f"the last good checkpoint (epoch {epoch - 1}) is kept"
          if epoch > 0 else "no checkpoint was written")


def _check_finite(epoch, records, seeds) -> None:
  """Raises `TrainingError` if an epoch metric of a seed is NaN or infinite:
  the run diverged, and an epoch of it would be no result to keep."""
  for seed, record in zip(seeds, records):
    for name, value in record.items():
      if metric_writer.is_number(value) and not np.isfinite(value):
        raise TrainingError(
            f"the run diverged: {name} is {value} at epoch {epoch} (seed "
            f"{seed}); {_kept(epoch)}; lower --config.lr")


def _seed_prefix(seeds, seed, separator) -> str:
  """Where a seed's outputs go: nowhere special when it is the only one."""
  return "" if len(seeds) == 1 else f"seed_{seed}{separator}"


def _epoch_line(epoch, records, best) -> str:
  if len(records) == 1:
    r = records[0]
    return (f"epoch {epoch}: train loss {r['train_loss']:.4f} acc "
            f"{r['train_acc']:.2%}  test acc {r['test_acc']:.2%} ece "
            f"{r['test_ece']:.4f}  (best {r['best_test_acc']:.2%} @ "
            f"{r['best_epoch']})")
  acc, ece = (np.array([r[k] for r in records]) for k in ("test_acc",
                                                          "test_ece"))
  return (f"epoch {epoch}: {len(records)} seeds, test acc {acc.mean():.2%} "
          f"+- {acc.std():.2%}  ece {ece.mean():.4f} +- {ece.std():.4f}  "
          f"(best mean {np.mean(best['test_acc']):.2%})")


def _figure_title(config, seeds, epoch) -> str:
  """The first lines of every figure's title: what ran, and on which
  network, saying so loudly when it was randomly initialised."""
  seed_text = ("seed" if len(seeds) == 1 else "seeds") + " " + ", ".join(
      str(s) for s in seeds)
  if config.random_network:
    network = (f"RANDOMLY INITIALISED {config.random_network}: results "
               f"mean nothing")
  else:
    network = (f"{config.network} network "
               f"{os.path.basename(os.path.normpath(config.network_dir))}")
  shots = f"{config.n_shot}-shot" if config.n_shot > 0 else "all data"
  return (f"{config.method} on {config.data.name} ({shots}), {seed_text}, "
          f"epoch {epoch}\n{network}")


def _plots(writer, workdir, epoch, method, params, bins, counts, mappings,
           examples, class_names, seeds, config):
  records = metric_writer.read_metrics(workdir)
  if len(seeds) > 1:
    plots.plot_seed_curves(records, os.path.join(workdir, "plots",
                                                 "curves.png"),
                           title=_figure_title(config, seeds, epoch))
  for k, seed in enumerate(seeds):
    title = _figure_title(config, (seed,), epoch)
    plot_dir = os.path.join(workdir, "plots", _seed_prefix(seeds, seed, ""))
    os.makedirs(plot_dir, exist_ok=True)
    plots.plot_reliability(bins[k], os.path.join(plot_dir, "reliability.png"),
                           title=title)
    plots.plot_training_curves([r for r in records if r.get("seed") == seed],
                               os.path.join(plot_dir, "curves.png"),
                               title=title)
    pictures = method.pictures(plot_dir, jax.tree.map(lambda x: x[k], params),
                               counts[k], mappings[k], examples, class_names,
                               title)
    for tag, path in pictures.items():
      writer.image(_seed_prefix(seeds, seed, "/") + tag, path, epoch)
