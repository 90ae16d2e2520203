"""Linear probing and ILM-VP on a frozen (dense or ticket) network: one loop.

`train_and_evaluate(config, workdir)` runs a whole config (see `configs/`)
for every seed of `config.seeds` at once: setup (network, data, method,
optimiser, steps: one `passes.Run`), restore, then per epoch each seed's
label mapping, training, validation (which selects an epoch per seed:
`best.Best`), evaluation on the full test split (every epoch, or only where
a selection needs it: `evaluation.must_test`), metrics, one checkpoint
(written while the next epoch runs: `saver.Saver`) and plots; finally
`summary.json`. The loop never asks which method runs: what varies lives
in `methods.Method`. Re-running it on the same workdir resumes after the
last checkpointed epoch and ends with exactly the result of an
uninterrupted run.
"""

import collections
import contextlib
import os
import time

import jax
import numpy as np

from reprog_jax import compile_cache
from reprog_jax import data
from reprog_jax import layout as files
from reprog_jax import methods
from reprog_jax.errors import TrainingError
from reprog_jax.metrics import metric_writer
from reprog_jax.metrics import plots
from reprog_jax.metrics import wandb_log
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.train import best as best_lib
from reprog_jax.train import checkpoints
from reprog_jax.train import evaluation
from reprog_jax.train import inputs as inputs_lib
from reprog_jax.train import passes
from reprog_jax.train import processes
from reprog_jax.train import run_lock
from reprog_jax.train import run_config
from reprog_jax.train import saver as saver_lib
from reprog_jax.train import sharding
from reprog_jax.train import steps
from reprog_jax.train import summary as summary_lib
from reprog_jax.train import workdir as workdir_lib


def load_network(config, dtype) -> network_lib.Network:
  if config.random_network:
    processes.say(f"NOTE: random_network={config.random_network}: a "
                  f"RANDOMLY INITIALISED network (smoke run); its results "
                  f"mean nothing.")
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


def train_and_evaluate(config, workdir, stop_after_epoch=None) -> dict:
  """Runs (or resumes) `config` in `workdir`; returns the summary.

  Args:
    config: a locked ConfigDict from `configs/`.
    workdir: where checkpoints, metrics, plots and the summary go.
    stop_after_epoch: stop once this epoch is checkpointed (to split a long
      run into jobs); re-running resumes.
  """
  # Before anything compiles: a second run of the same shapes loads them.
  compile_cache.enable(config.compile_cache)
  def run():
    # Whatever ends the run (an error included), its files get closed and
    # its last checkpoint is committed and recorded.
    with contextlib.ExitStack() as closing:
      return _run(config, workdir, stop_after_epoch, closing)
  # A full disk under any write (metrics, TensorBoard, figures, summary) is
  # one line saying which checkpoint is intact; anything else is not.
  return checkpoints.full_disk_in_one_line(workdir, run)


def _run(config, workdir, stop_after_epoch, closing) -> dict:
  """`train_and_evaluate`, with `closing` to close what it opens."""
  # --- Setup: every input checked, then the one `Run`. ---------------------
  run, latest = _setup(config, workdir, closing)

  # --- Restore: the state, mappings and best epochs of a checkpoint. -------
  # One checkpoint manager for the run (every process builds it: a
  # collective); closed last of all on every exit path.
  saver = closing.enter_context(saver_lib.Saver(workdir))
  state, mappings, best, start_epoch = _restore(run, latest, saver)
  writer = _on_lead(run, lambda: _open_writer(run, start_epoch, closing))
  note = evaluation.note(config, run.run_data.validation is not None)
  if note:
    processes.say(note)

  # --- Loop: map, train, evaluate, record, checkpoint. ---------------------
  for epoch in range(start_epoch, config.epochs):
    stopping = stop_after_epoch is not None and epoch >= stop_after_epoch
    state, mappings, best = _epoch(run, writer, state, mappings, best, epoch,
                                   saver=saver, stopping=stopping)
    if stopping and epoch + 1 < config.epochs:
      saver.wait()  # Committed and recorded before the job says so.
      _on_lead(run, lambda: writer.close())
      processes.say(f"stopped after epoch {epoch}; run the same command "
                    f"to resume")
      return {}
  saver.wait()  # The last checkpoint is committed before the summary.

  # --- Summary. ------------------------------------------------------------
  def summary():
    writer.close()
    return summary_lib.write(config, workdir, run.net, run.run_data,
                             run.inputs, mappings, best, run.seeds,
                             run.layout, run.started)
  return _on_lead(run, summary) or {}  # {} on the other processes.


def _setup(config, workdir, closing) -> tuple[passes.Run, int | None]:
  """Checks the config, loads the network and data, builds the method, the
  optimiser and the steps, and prepares the workdir (its first write) under
  the run's lock (held until `closing` closes).

  Returns:
    The `Run`, and the epoch of the checkpoint to resume from (None: none).
    With several processes, each first checks its own inputs (the config,
    the workdir's access, the data, the network) and they agree: a bad
    input on one ends all of them at once with its line. Then the lead
    alone locks and prepares the workdir and finds that epoch; every
    process gets its answer, or its error, before anything collective.
  """
  started = time.time()

  def own_inputs():  # Nothing collective: a failed process never comes.
    run_config.check(config)
    wandb_log.check(config)  # Before any slow work: is wandb there?
    workdir_lib.check(workdir)  # Every process writes its shards there.
    # The data (every seed's few-shot subset), then the slower frozen
    # network, then the method.
    run_data = inputs_lib.open_run_data(config, run_config.seeds(config))
    net = load_network(config, run_config.compute_dtype(config))
    return net, run_data, _method(config, net, run_data.num_classes)
  net, run_data, method = processes.each_checks(own_inputs)
  dtype = run_config.compute_dtype(config)
  seeds = run_config.seeds(config)
  image_size = run_config.image_size(config)
  is_lead = processes.is_lead()  # The process that writes files.

  # The network replicated on every device; evaluation and label mapping
  # run at `eval_dtype` (float32: the PyTorch version runs them outside
  # autocast).
  steps_per_epoch = -(-run_data.pools.shape[1] // config.batch_size)
  layout = _kept(("layout", len(seeds), tuple(jax.devices())),
                 lambda: sharding.Layout.create(len(seeds)))
  network = layout.put(net, layout.replicated)
  eval_network = network.with_dtype(run_config.eval_dtype(config))

  # Workdir: every input is checked by now, so this is the first write.
  def claim():
    closing.enter_context(run_lock.hold(workdir))  # One run per workdir.
    workdir_lib.prepare(config, workdir, dtype)
    return checkpoints.latest_epoch(workdir)
  latest = processes.lead_decides(claim)
  # Nobody reads the workdir before overwrite's deletions are done.
  processes.barrier("reprog_jax: workdir prepared")
  inputs = inputs_lib.load(run_data, config, seeds=seeds,
                           image_size=image_size, method=method,
                           network=network, eval_network=eval_network,
                           layout=layout, workdir=workdir)
  encodes_each_step = method.encode is not None and not inputs.encoded
  jitted = _kept(("steps", id(method), steps_per_epoch, id(layout),
                  inputs.encoded, encodes_each_step),
                 lambda: _steps(config, method, layout, steps_per_epoch,
                                inputs.encoded, encodes_each_step),
                 alive=(method, layout))
  return passes.Run(
      config=config, workdir=workdir, seeds=seeds, image_size=image_size,
      layout=layout, net=net, network=network, eval_network=eval_network,
      run_data=run_data, inputs=inputs, method=method, started=started,
      is_lead=is_lead, **jitted), latest


# Kept per process, the last few: what a run builds from its config, its
# network and its data's shapes (the method, the layout, the optimiser and
# the jitted steps), so that a run equal in those to one before it (the
# same config run again or resumed in one process: a notebook, a test)
# traces nothing again, which costs seconds a run. Keys hold objects by
# identity, and each entry keeps its key's objects alive (a network among
# them: hence few entries). `forget_kept` empties it.
_KEPT: collections.OrderedDict = collections.OrderedDict()
_KEEP = 6


def _kept(key, build, alive=()):
  """`build()`, or what it returned for `key` before; `alive`: the objects
  whose `id` is in `key`, kept alive with the entry (so no other takes it)."""
  if key in _KEPT:
    _KEPT.move_to_end(key)
    return _KEPT[key][1]
  value = build()
  _KEPT[key] = (alive, value)
  while len(_KEPT) > _KEEP:
    _KEPT.popitem(last=False)  # The least recently used.
  return value


def forget_kept() -> None:
  """Forgets every kept method and step (for code that changes what they
  trace: a test that patches a function the steps call)."""
  _KEPT.clear()


def _method(config, net, num_classes):
  """`methods.build` for this run, or the one an earlier run in this
  process built from an equal config (all of it), the same network object
  and registered method, and the same class count."""
  spec = methods.get(config.method)
  image_size = run_config.image_size(config)
  build = lambda: methods.build(config, net, num_classes, image_size)
  try:
    fields = config.to_json(sort_keys=True)
  except TypeError:  # A value JSON cannot hold (a plug-in's object): no
    return build()   # key says all of it, so nothing is kept or reused.
  return _kept(("method", fields, id(spec), id(net), num_classes,
                image_size), build, alive=(spec, net))


def _steps(config, method, layout, steps_per_epoch, encoded,
           encodes_each_step) -> dict:
  """The optimiser and the jitted steps of a run (`passes.Run`'s fields)."""
  optimizer, schedule = steps.make_optimizer(
      config.lr, config.epochs, steps_per_epoch, config.milestone_fractions,
      config.gamma, config.b1, config.b2, config.eps, config.weight_decay)
  precision = config.eval_precision
  return dict(
      optimizer=optimizer, schedule=schedule,
      # Features recomputed every step go through the same jitted encode
      # program as cached ones (`encode_step`), so that the two train on
      # the same bits under bfloat16 too, not on another fusion's rounding.
      train_step=steps.make_train_step(method, optimizer, layout,
                                       encoded or encodes_each_step),
      encode_step=(steps.make_encode_step(method, layout, precision=precision)
                   if encodes_each_step else None),
      eval_step=steps.make_eval_step(method, layout, encoded,
                                     precision=precision),
      seed_eval_step=steps.make_eval_step(method, layout, encoded,
                                          precision=precision, per_seed=True),
      count_step=steps.make_count_step(method, layout, encoded,
                                       precision=precision))


def _restore(run: passes.Run, latest, saver):
  """(state, mappings, best, first epoch to run): fresh, or those of the
  checkpoint of epoch `latest` (read through the run's `saver`)."""
  layout, seeds = run.layout, run.seeds
  state = layout.put(steps.init_state(run.method, run.optimizer, seeds),
                     layout.per_seed)
  mappings = np.stack([run.method.initial_mapping] * len(seeds))
  best = best_lib.Best.initial(layout.to_host(state.params), mappings)
  if latest is None:
    return state, mappings, best, 0
  restored = checkpoints.restore(run.workdir, checkpoints.pack(
      state, epoch=0, mappings=mappings, best=best), latest,
                                 manager=saver.manager)
  processes.say(f"resuming {run.workdir} after epoch {restored['epoch']}")
  return (restored["state"], restored["mapping_sequence"], restored["best"],
          restored["epoch"] + 1)


def _on_lead(run: passes.Run, work):
  """`work()` on the lead process (the run's files: metrics, figures, the
  summary; None elsewhere); a failure there ends every process at once,
  a full disk with its one line on all (`processes.lead_only`)."""
  if jax.process_count() == 1:
    # A full disk is said by `train_and_evaluate`, once the checkpoint
    # still being written is committed: its line names that one.
    return work()
  return processes.lead_only(
      lambda: checkpoints.full_disk_in_one_line(run.workdir, work))


def _open_writer(run: passes.Run, start_epoch, closing):
  """The metric writer (the lead's: `_on_lead`), with the lines past the
  last checkpoint (a crash in between) dropped."""
  mirror = None
  if wandb_log.enabled(run.config):  # W&B gets what TensorBoard gets.
    mirror = wandb_log.start(run.config, run.workdir,
                             resume=start_epoch > 0, extra={
                                 "seeds": list(run.seeds),
                                 "remaining_percent":
                                     run.net.sparsity()["remaining_percent"]})
  writer = closing.enter_context(
      metric_writer.MetricWriter(run.workdir, mirror=mirror))
  writer.truncate_after(start_epoch - 1)
  return writer


def _epoch(run: passes.Run, writer, state, mappings, best, epoch, *, saver,
           stopping=False):
  """One epoch of every seed, recorded and checkpointed; returns the new
  (state, mappings, best). `stopping`: the last epoch of a job that stops
  early (its test split evaluated, its figures drawn)."""
  config, seeds, layout = run.config, run.seeds, run.layout
  epoch_started, clock = time.time(), evaluation.Clock()
  with clock("mapping"):
    mappings = run.method.epoch_mapping(
        epoch, mappings, seeds, lambda: passes.count_pass(run, state, epoch))
    mappings_on_device = layout.put(mappings, layout.per_seed)  # Once.
  with clock("train"):
    state, train_metrics = passes.train_epoch(run, state, mappings_on_device,
                                              epoch)
    jax.block_until_ready(state)
  with clock("validation"):
    held_out = passes.validate(run, state, mappings_on_device)
  tested = evaluation.agreed(
      evaluation.must_test(config, epoch, best, held_out), epoch)
  test_metrics = bins = test_counts = None
  if tested or stopping:
    with clock("test"):
      test_metrics, bins, test_counts = passes.evaluate_test(
          run, state, mappings_on_device, held_out)
  params = layout.to_host(state.params)
  best = best.update(
      epoch, params, mappings,
      [m["test_accuracy"] for m in test_metrics] if tested else None,
      bins if tested else None,
      val_accuracies=(None if run.run_data.validation is None else
                      [m["val_acc"] for m in held_out]))
  saver.wait()  # The previous epoch's checkpoint: committed and recorded.
  clock.seconds["checkpoint"] = saver.take_waited()
  timing = {"train_images_per_second": len(seeds) *
            run.inputs.train_batches.num_examples / clock.seconds["train"],
            "epoch_seconds": time.time() - epoch_started, **clock.fields()}
  records = evaluation.records(config, epoch, train_metrics, held_out,
                               test_metrics if tested else None, best, timing)
  _check_finite(epoch, records, seeds)  # Before anything of it is kept.
  def write_records():
    for seed, record in zip(seeds, records):
      writer.write(epoch, record, seed=seed,
                   tag_prefix=files.seed_prefix(seeds, seed, "/"))
  _on_lead(run, write_records)
  # Written while the next epoch runs (and the figures are drawn).
  saver.save(checkpoints.pack(state, epoch=epoch, mappings=mappings,
                              best=best))
  # Plotting is host work between epochs that may take milliseconds on
  # a GPU: every `plot_interval` epochs, the last, and where a job stops;
  # never with `plot_interval` 0.
  if config.plot_interval and (
      stopping or (epoch + 1) % config.plot_interval == 0
      or epoch + 1 == config.epochs):
    _on_lead(run, lambda: _plots(run, writer, epoch, params, bins,
                                 test_counts, mappings))
  processes.say(evaluation.epoch_line(
      epoch, records, best, shown=None if tested else test_metrics))
  return state, mappings, best


def _check_finite(epoch, records, seeds) -> None:
  """Raises `TrainingError` if an epoch metric of a seed is NaN or infinite:
  the run diverged, and an epoch of it would be no result to keep."""
  for seed, record in zip(seeds, records):
    for name, value in record.items():
      if metric_writer.is_number(value) and not np.isfinite(value):
        raise TrainingError(
            f"the run diverged: {name} is {value} at epoch {epoch} (seed "
            f"{seed}); {passes.kept(epoch)}; lower --config.lr")


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
  return (f"{config.method} on {config.data.name} "
          f"({data.shot_name(config.n_shot)}), {seed_text}, "
          f"epoch {epoch}\n{network}")


def _plots(run: passes.Run, writer, epoch, params, bins, counts, mappings):
  """The epoch's figures: each seed's reliability diagram, training curves
  and the method's pictures, and with several seeds their curves together.
  An epoch whose test split was not evaluated (`bins` None) draws the
  curves only."""
  config, seeds = run.config, run.seeds
  records = metric_writer.read_metrics(run.workdir)
  if len(seeds) > 1:
    plots.plot_seed_curves(
        records, os.path.join(run.workdir, files.PLOTS_DIR,
                              files.CURVES_PLOT),
        title=_figure_title(config, seeds, epoch))
  for k, seed in enumerate(seeds):
    title = _figure_title(config, (seed,), epoch)
    plot_dir = files.plot_dir(run.workdir, seeds, seed)
    os.makedirs(plot_dir, exist_ok=True)
    plots.plot_training_curves([r for r in records if r.get("seed") == seed],
                               os.path.join(plot_dir, files.CURVES_PLOT),
                               title=title)
    if bins is None:
      continue
    plots.plot_reliability(bins[k], os.path.join(plot_dir,
                                                 files.RELIABILITY_PLOT),
                           title=title)
    pictures = run.method.pictures(
        plot_dir, jax.tree.map(lambda x: x[k], params), counts[k],
        mappings[k], run.inputs.examples, run.run_data.class_names, title)
    for tag, path in pictures.items():
      writer.image(files.seed_prefix(seeds, seed, "/") + tag, path, epoch)
