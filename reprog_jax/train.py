"""Linear probing and ILM-VP on a frozen (dense or ticket) network: one loop.

`train_and_evaluate(config, workdir)` runs a whole config (see `configs/`):
setup, network, data, method and optimiser, restore, then per epoch the
label mapping (VP), training, evaluation on the full test split, metrics,
plots and checkpoints; finally `summary.json`. Re-running it on the same
workdir resumes after the last checkpointed epoch and ends with exactly the
result of an uninterrupted run.
"""

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from reprog_jax import calibration
from reprog_jax import checkpoints
from reprog_jax import data
from reprog_jax import label_mapping
from reprog_jax import methods
from reprog_jax import networks
from reprog_jax import metric_writer
from reprog_jax import plots
from reprog_jax import run_config
from reprog_jax import steps

CONFIG_FILE = "config.json"
# Fields that may differ between a run and its resumption: they change how
# fast or where from, not what is computed.
NOT_COMPARED = ("overwrite", "progress", "data.worker_count",
                "data.read_threads", "data.prefetch_batches", "data.data_dir",
                "data.folder_root")


class TrainingError(RuntimeError):
  """A run that cannot go on; the message is one line."""


# --------------------------------------------------------------------------
# Workdir
# --------------------------------------------------------------------------


def _flat(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flat(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _comparable(config, dtype) -> dict:
  flat = dict(_flat(json.loads(config.to_json_best_effort())))
  # 'auto' resolves per backend; a bfloat16 run resumed in float32 would not
  # end as it would have.
  flat["resolved_dtype"] = jnp.dtype(dtype).name
  return {k: v for k, v in flat.items() if k not in NOT_COMPARED}


def prepare_workdir(config, workdir, dtype) -> None:
  """Creates `workdir`, or checks that its checkpointed run has this config.

  Call it only once every input has been checked: it is the first thing
  that writes. A workdir without a checkpoint has nothing to lose and is
  simply reused; one holding a run of another config is refused, or with
  `config.overwrite` emptied.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = _comparable(config, dtype)
  if os.path.exists(path) and checkpoints.latest_epoch(workdir) is not None:
    with open(path) as f:
      previous = json.load(f)
    previous = {k: v for k, v in previous.items() if k not in NOT_COMPARED}
    if previous != current:
      diff = sorted(k for k in previous.keys() | current.keys()
                    if previous.get(k) != current.get(k))
      if not config.overwrite:
        raise TrainingError(
            f"{workdir} holds a run with another config (differs in "
            f"{', '.join(diff[:5])}); use another --workdir, or pass "
            f"--config.overwrite=True to delete that run and start over")
      print(f"overwrite: deleting the run in {workdir} (its config differs "
            f"in {', '.join(diff[:5])})")
      for name in os.listdir(workdir):
        target = os.path.join(workdir, name)
        (shutil.rmtree if os.path.isdir(target) else os.remove)(target)
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(current, f, indent=2)
  os.replace(path + ".tmp", path)


def load_network(config, dtype) -> networks.Network:
  if config.random_network:
    print(f"NOTE: random_network={config.random_network}: a RANDOMLY "
          f"INITIALISED network (smoke run); its results mean nothing.")
    return networks.random_network(config.random_network, config.seed, dtype)
  net = networks.load(config.network_dir, dtype=dtype)
  kind = "dense" if net.meta["dense"] else "ticket"
  if kind != config.network:
    raise TrainingError(
        f"{config.network_dir} is a {kind} network but the config says "
        f"network={config.network!r}; pass --config.network={kind}")
  return net


# --------------------------------------------------------------------------
# One epoch of each kind
# --------------------------------------------------------------------------


def _bar(iterable, total, desc, config):
  return tqdm.tqdm(iterable, total=total, desc=desc, leave=False,
                   dynamic_ncols=True, disable=not config.progress)


# Jitted once per shape, not re-traced every epoch.
_greedy_mapping = jax.jit(label_mapping.greedy_mapping)


def compute_mapping(count_step, state, frozen, loader, epoch, num_classes,
                    config):
  """ILM/FLM: count (source prediction, label) pairs over the training set
  with the current prompt, then match greedily."""
  counts = jnp.zeros((label_mapping.NUM_IMAGENET_CLASSES, num_classes),
                     jnp.int32)
  batches = data.prefetch_to_device(loader.epoch(epoch))
  for batch in _bar(batches, len(loader), f"epoch {epoch} mapping", config):
    counts = count_step(counts, state.params, frozen, batch)
  return np.asarray(_greedy_mapping(counts))


def train_epoch(train_step, state, frozen, mapping, loader, epoch, schedule,
                config):
  losses, sums = [], {"loss_sum": 0.0, "correct": 0, "count": 0}
  bar = _bar(data.prefetch_to_device(loader.epoch(epoch)), len(loader),
             f"epoch {epoch} train", config)
  for i, batch in enumerate(bar):
    state, metrics = train_step(state, frozen, mapping, batch)
    losses.append(metrics["loss"])
    sums = jax.tree.map(jnp.add, sums, {k: metrics[k] for k in sums})
    if config.progress and (i % 10 == 0 or i == len(loader) - 1):
      # A host sync; only as often as a person can read the bar.
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}",
                      acc=f"{float(sums['correct'] / sums['count']):.2%}",
                      lr=f"{float(schedule(int(state.step) - 1)):.1e}")
  losses = np.asarray(jnp.stack(losses))
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept"
            if epoch > 0 else "no checkpoint was written")
    raise TrainingError(
        f"non-finite loss at epoch {epoch} step {bad[0]} (lr "
        f"{float(schedule(epoch * len(loader) + bad[0])):g}); {kept}; "
        f"lower --config.lr")
  sums = jax.device_get(sums)
  return state, {"train_loss": float(sums["loss_sum"] / sums["count"]),
                 "train_acc": float(sums["correct"] / sums["count"])}


def evaluate(eval_step, params, frozen, mapping, loader, epoch, num_classes,
             config):
  """Accuracy and calibration over the whole test split, plus the test
  (source prediction, label) counts for the label-mapping plot (VP) and the
  first few test images (for the picture of prompted inputs)."""
  logits, labels, valid, predictions = [], [], [], []
  examples = None
  # Unshuffled: every epoch is the same pass; asking for consecutive epochs
  # keeps the loader's workers running.
  batches = data.prefetch_to_device(loader.epoch(epoch))
  for batch in _bar(batches, len(loader), "test", config):
    out, source_pred = eval_step(params, frozen, mapping, batch)
    if examples is None:
      examples = batch["image"][:8]
    logits.append(out)
    labels.append(batch["label"])
    valid.append(batch["mask"])
    predictions.append(source_pred)
  logits, labels, valid = (jnp.concatenate(x) for x in (logits, labels, valid))
  metrics = calibration.metrics_from_logits(logits, labels, valid)
  metrics = {f"test_{k}": float(v) for k, v in metrics.items()}
  probs = jax.nn.softmax(logits.astype(jnp.float32))
  bins = calibration.calibration_bins(probs, labels, mask=valid)
  counts = None
  if predictions[0] is not None:
    counts = np.asarray(label_mapping.count_matrix(
        jnp.concatenate(predictions), labels, num_classes, valid,
        num_source=label_mapping.NUM_IMAGENET_CLASSES))
  return metrics, bins, counts, examples


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
  started = time.time()
  run_config.check(config)
  dtype = run_config.compute_dtype(config)
  is_vp = config.method == "ilm_vp"
  image_size = run_config.image_size(config)

  # Network: frozen trees, passed to every step as an argument.
  net = load_network(config, dtype)
  frozen = net.frozen

  # Data.
  train_loader = data.make_loader_from_config(
      config.data, "train", image_size=image_size,
      batch_size=config.batch_size, seed=config.seed)
  test_loader = data.make_loader_from_config(
      config.data, "test", image_size=image_size,
      batch_size=config.eval_batch_size, seed=config.seed, shuffle=False)
  # The mapping pass reads the same (few-shot) training set, in its own
  # loader so the training loader's epochs stay consecutive.
  mapping_loader = data.make_loader_from_config(
      config.data, "train", image_size=image_size,
      batch_size=config.eval_batch_size, seed=config.seed,
      shuffle=False) if is_vp else None
  num_classes = train_loader.num_classes
  if is_vp and num_classes > label_mapping.NUM_IMAGENET_CLASSES:
    raise TrainingError(
        f"{config.data.name} has {num_classes} classes; ILM-VP maps each to "
        f"a distinct ImageNet class, so at most 1000")

  # Method and optimiser.
  if is_vp:
    method = methods.visual_prompt(net.model, image_size,
                                   config.prompt_output_size)
    mapping_kind = label_mapping.get_label_mapping(config.label_mapping)
  else:
    method = methods.linear_probe(net.model, num_classes)
  optimizer, schedule = steps.make_optimizer(
      config.lr, config.epochs, len(train_loader), config.milestone_fractions,
      config.gamma, config.b1, config.b2, config.eps, config.weight_decay)
  rng, init_rng = jax.random.split(jax.random.key(config.seed))
  state = steps.init_state(method, optimizer, init_rng)
  train_step = steps.make_train_step(method, optimizer)
  eval_step = steps.make_eval_step(method)
  count_step = (steps.make_count_step(method, num_classes)
                if is_vp else None)

  # Workdir: every input is checked by now, so this is the first write.
  prepare_workdir(config, workdir, dtype)

  # Restore.
  start_epoch, best_acc, best_epoch = 0, -1.0, -1
  # LP maps nothing; its identity "mapping" only keeps checkpoints uniform.
  mapping = np.arange(num_classes, dtype=np.int32)
  writer = metric_writer.MetricWriter(workdir)
  if checkpoints.latest_epoch(workdir) is not None:
    restored = checkpoints.restore(workdir, checkpoints.pack(
        state, epoch=0, best_acc=0.0, best_epoch=0, mapping_sequence=mapping,
        rng=rng))
    state, rng, mapping = (restored["state"], restored["rng"],
                           restored["mapping_sequence"])
    best_acc, best_epoch = restored["best_acc"], restored["best_epoch"]
    start_epoch = restored["epoch"] + 1
    print(f"resuming {workdir} after epoch {restored['epoch']}")
  # Lines past the last checkpoint (a crash in between) are redone.
  writer.truncate_after(start_epoch - 1)

  # Loop.
  for epoch in range(start_epoch, config.epochs):
    epoch_started = time.time()
    if is_vp and mapping_kind.is_mapping_epoch(epoch, config.mapping_interval):
      if mapping_kind.from_predictions:
        mapping = compute_mapping(count_step, state, frozen, mapping_loader,
                                  epoch, num_classes, config)
      else:
        mapping = np.asarray(label_mapping.rlm(config.seed, num_classes))
    lr = steps.epoch_lr(config.lr, config.epochs, epoch,
                        config.milestone_fractions, config.gamma)
    mapping_on_device = jax.device_put(mapping)  # Once, not every step.
    train_started = time.time()
    state, train_metrics = train_epoch(train_step, state, frozen,
                                       mapping_on_device, train_loader, epoch,
                                       schedule, config)
    train_seconds = time.time() - train_started
    test_metrics, bins, test_counts, examples = evaluate(
        eval_step, state.params, frozen, mapping_on_device, test_loader, epoch,
        num_classes, config)
    improved = test_metrics["test_accuracy"] > best_acc
    if improved:
      best_acc, best_epoch = test_metrics["test_accuracy"], epoch
    record = {"lr": lr, **train_metrics,
              "test_acc": test_metrics.pop("test_accuracy"), **test_metrics,
              "best_test_acc": best_acc, "best_epoch": best_epoch,
              "train_images_per_second": train_loader.num_examples / train_seconds,
              "epoch_seconds": time.time() - epoch_started}
    writer.write(epoch, record)
    _plots(writer, workdir, epoch, method, state.params, bins, test_counts,
           mapping, examples, train_loader.class_names, image_size, config)
    checkpoints.save(workdir, checkpoints.pack(
        state, epoch=epoch, best_acc=best_acc, best_epoch=best_epoch,
        mapping_sequence=mapping, rng=rng), best=improved)
    print(f"epoch {epoch}: train loss {record['train_loss']:.4f} acc "
          f"{record['train_acc']:.2%}  test acc {record['test_acc']:.2%} "
          f"ece {record['test_ece']:.4f}  (best {best_acc:.2%} @ {best_epoch})")
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      if epoch + 1 < config.epochs:
        writer.close()
        print(f"stopped after epoch {epoch}; run the same command to resume")
        return {}
  writer.close()

  # Summary.
  return _write_summary(config, workdir, net, train_loader, test_loader,
                        mapping, started)


def _plots(writer, workdir, epoch, method, params, bins, counts, mapping,
           examples, class_names, image_size, config):
  plot_dir = os.path.join(workdir, "plots")
  plots.plot_reliability(bins, os.path.join(plot_dir, "reliability.png"))
  plots.plot_training_curves(metric_writer.read_metrics(workdir),
                             os.path.join(plot_dir, "curves.png"))
  if config.method == "ilm_vp":
    path = os.path.join(plot_dir, "label_mapping.png")
    plots.plot_label_mapping(counts, mapping, class_names,
                             networks.imagenet_classes(), path)
    writer.image("label_mapping", path, epoch)
    prompt = os.path.join(plot_dir, "prompt.png")
    plots.save_prompt_image(
        np.asarray(params["program"]), image_size, prompt,
        scale=max(1, 224 // config.prompt_output_size))
    writer.image("prompt", prompt, epoch)
    # What the frozen network sees: test images inside the learned frame.
    plots.save_prompted_examples(
        np.asarray(method.network_input(params, examples)),
        os.path.join(plot_dir, "prompted_examples.png"), columns=4,
        scale=max(1, 224 // config.prompt_output_size))


def _write_summary(config, workdir, net, train_loader, test_loader, mapping,
                   started):
  records = metric_writer.read_metrics(workdir)
  best = max(records, key=lambda r: (r["test_acc"], -r["epoch"]))
  timing = ("train_images_per_second", "epoch_seconds")
  sparsity = {k: v for k, v in net.sparsity().items() if k != "layers"}
  summary = {
      "method": config.method,
      "dataset": config.data.name,
      "n_shot": config.n_shot,
      "num_classes": train_loader.num_classes,
      "train_examples": train_loader.num_examples,
      "test_examples": test_loader.num_examples,
      "network": {"dir": config.network_dir, "arch": net.arch,
                  "dense": net.meta["dense"], "ticket": net.meta.get("ticket"),
                  "sources": net.meta["sources"]},
      "sparsity": sparsity,
      "best": {k: v for k, v in best.items() if k not in timing},
      "last": {k: v for k, v in records[-1].items() if k not in timing},
      "mapping_sequence": ([int(i) for i in mapping]
                           if config.method == "ilm_vp" else None),
      "wall_time_seconds": sum(r["epoch_seconds"] for r in records),
      "this_invocation_seconds": time.time() - started,
      "train_images_per_second": float(np.mean(
          [r["train_images_per_second"] for r in records])),
      # Where the numbers come from: timings depend on all of it.
      "platform": {"backend": jax.default_backend(),
                   "devices": [d.device_kind for d in jax.devices()],
                   "compute_dtype": jnp.dtype(net.model.dtype).name,
                   "jax": jax.__version__},
      "config": json.loads(config.to_json_best_effort()),
  }
  path = os.path.join(workdir, "summary.json")
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)
  print(f"best test accuracy {best['test_acc']:.2%} (ECE {best['test_ece']:.4f})"
        f" at epoch {best['epoch']}; results in {workdir}: summary.json, "
        f"metrics.jsonl, plots/, tensorboard/, checkpoints/, best/")
  return summary
