"""Which epochs evaluate the test split, and what an epoch records and says.

In the few-shot regime almost all of a run's compute is the test split,
pushed through the network for every seed. `config.test_every` says how
often it is evaluated:

- 1 (the default): every epoch, as the PyTorch version; `best` (its
  best-test selection) is exact.
- k > 1: every k-th epoch (those with `(epoch + 1) % k == 0`), and
- 0: only where needed; with either, also at every epoch where a seed's
  validation-selected epoch changes (some seed's validation accuracy
  improved: `best.Best.improves_validation`) and at the last epoch. So
  `validation` and `last` are exactly test_every=1's, bit for bit, while
  `best` is the best among the tested epochs (summary.json says so).

Validation, the label mapping and temperature fitting still run every
epoch. The decision depends only on the epoch, the config and checkpointed
state (`best.Best`), so a resumed run tests where an uninterrupted one
does; and every process of a multi-host run decides alike (they all see
the same gathered validation accuracies: `agreed` checks it). Where a job
stops early (`stop_after_epoch`) an untested epoch's test split is also
evaluated, for its epoch line and figures only: it is not recorded, so a
job split in two records exactly what one job does.

An epoch's record (`records`) holds the wall time of each of its phases
(`PHASES`, device work completed): they are timing, not results
(`metric_writer.TIMING_KEYS`).
"""

import contextlib
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from reprog_jax.metrics import metric_writer
from reprog_jax.train import steps

# The phases of an epoch, in order, with their short names in the epoch
# line; each is recorded as `seconds_<phase>` (`metric_writer.PHASE_KEYS`).
PHASES = {"mapping": "map", "train": "train", "validation": "val",
          "test": "test", "checkpoint": "ckpt"}


def note(config, has_validation) -> str | None:
  """The line a run prints at its start when `config.test_every` is not 1:
  where it evaluates the test split and what it then cannot select."""
  every = config.test_every
  if every == 1:
    return None
  where = [f"every {every} epochs"] if every > 1 else []
  if has_validation:
    where.append("where a seed's validation accuracy improves")
  where.append("at the last epoch")
  return (f"NOTE: test_every={every}: the test split is evaluated only "
          f"{', '.join(where[:-1])}{' and ' if len(where) > 1 else ''}"
          f"{where[-1]}; `validation` and `last` are exact, but `best` "
          f"(best test accuracy, the PyTorch version's selection) is the "
          f"best among those tested epochs only: --config.test_every=1 "
          f"selects over every epoch")


def must_test(config, epoch, best, held_out) -> bool:
  """Whether `epoch`'s test split is evaluated and recorded.

  Args:
    config: the run's config.
    epoch: the epoch just trained.
    best: the selections before it (`best.Best`, as checkpointed).
    held_out: its per-seed `passes.validate` metrics (`val_acc` where the
      run has a validation split).
  """
  every = config.test_every
  if every == 1 or epoch + 1 == config.epochs:
    return True
  if every > 1 and (epoch + 1) % every == 0:
    return True
  val_accuracies = ([m["val_acc"] for m in held_out]
                    if held_out and "val_acc" in held_out[0] else None)
  return best.improves_validation(val_accuracies)


def agreed(decision: bool, epoch) -> bool:
  """`decision`, checked to be every process's: one process evaluating
  the test split alone would wait for ever in its collectives."""
  if jax.process_count() > 1:
    multihost_utils.assert_equal(
        np.int32(decision), f"the processes disagree on evaluating epoch "
        f"{epoch}'s test split")
  return decision


class Clock:
  """Wall time per phase of an epoch (`PHASES`)."""

  def __init__(self):
    self.seconds = dict.fromkeys(PHASES, 0.0)

  @contextlib.contextmanager
  def __call__(self, phase):
    started = time.time()
    try:
      yield
    finally:
      self.seconds[phase] += time.time() - started

  def fields(self) -> dict:
    """{'seconds_<phase>': seconds}, as metrics.jsonl records them."""
    fields = {f"seconds_{phase}": value
              for phase, value in self.seconds.items()}
    assert tuple(fields) == metric_writer.PHASE_KEYS
    return fields


def records(config, epoch, train_metrics, held_out, test_metrics, best,
            timing) -> list[dict]:
  """Each seed's metrics.jsonl record of `epoch`.

  Args:
    config: the run's config.
    epoch: the epoch.
    train_metrics: `passes.train_epoch`'s (S,) `train_loss`, `train_acc`.
    held_out: `passes.validate`'s per-seed dicts.
    test_metrics: `passes.evaluate_test`'s per-seed dicts, or None (not tested:
      the records have no `test_*` keys).
    best: the selections after it (`best.Best`).
    timing: the epoch's timing fields.
  """
  lr = steps.epoch_lr(config.lr, config.epochs, epoch,
                      config.milestone_fractions, config.gamma)
  out = []
  for k, seed_held_out in enumerate(held_out):
    record = {"lr": lr, "train_loss": float(train_metrics["train_loss"][k]),
              "train_acc": float(train_metrics["train_acc"][k])}
    if test_metrics is not None:
      tested = dict(test_metrics[k])
      record["test_acc"] = tested.pop("test_accuracy")
      record.update(tested)
    record.update(seed_held_out)
    if best.epoch[k] >= 0:  # None tested yet: no best to name.
      record.update(best_test_acc=float(best.test_acc[k]),
                    best_epoch=int(best.epoch[k]))
    out.append({**record, **timing})
  return out


def epoch_line(epoch, records, best, shown=None) -> str:
  """The line printed after an epoch.

  Args:
    epoch: the epoch.
    records: its records (`records`).
    best: the selections after it.
    shown: per seed, test metrics to show though not recorded (a job's
      last epoch, untested), else None.
  """
  if shown is not None:
    records = [{**r, "test_acc": m["test_accuracy"], **m}
               for r, m in zip(records, shown)]
  tested = "test_acc" in records[0]
  validated = "val_acc" in records[0]
  times = " ".join(f"{short} {records[0][f'seconds_{phase}']:.1f}s"
                   for phase, short in PHASES.items())
  if len(records) == 1:
    r = records[0]
    line = (f"epoch {epoch}: train loss {r['train_loss']:.4f} acc "
            f"{r['train_acc']:.2%}")
    if validated:
      line += f"  val acc {r['val_acc']:.2%}"
    line += (f"  test acc {r['test_acc']:.2%} ece {r['test_ece']:.4f}"
             if tested else "  test not evaluated")
    if best.epoch[0] >= 0:
      line += f"  (best {best.test_acc[0]:.2%} @ {best.epoch[0]})"
  else:
    # Spreads as everywhere else: the seeds' sample std (ddof=1), named.
    def spread(key, form):
      values = np.array([r[key] for r in records])
      return (f"{format(values.mean(), form)} +- "
              f"{format(values.std(ddof=1), form)}")
    parts = []
    if validated:
      parts.append(f"val acc {spread('val_acc', '.2%')}")
    parts += ([f"test acc {spread('test_acc', '.2%')}",
               f"ece {spread('test_ece', '.4f')}"] if tested else [])
    line = (f"epoch {epoch}: {len(records)} seeds, " + "  ".join(parts)
            + (" (std, ddof=1)" if parts else "")
            + ("" if tested else "  test not evaluated"))
    if np.all(best.epoch >= 0):
      line += f"  (best mean {np.mean(best.test_acc):.2%})"
  if shown is not None:
    line += " (test shown where the job stops, not recorded)"
  return f"{line}  [{times}]"
