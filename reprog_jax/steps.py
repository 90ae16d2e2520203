"""Jitted steps shared by linear probing and ILM-VP.

`make_train_step` builds the one train step of a `methods.Method`: mean
cross-entropy over the valid examples of a (possibly padded) batch, one Adam
update of the trained values only. The frozen network comes in as an
argument; the train state is donated.
"""

from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from reprog_jax import label_mapping


@flax.struct.dataclass
class TrainState:
  """Exactly what is trained: its values, the optimiser state, the step."""

  step: jax.Array
  params: Any
  opt_state: Any


def milestones(epochs: int, fractions: Sequence[float]) -> list[int]:
  """The PyTorch version's MultiStepLR milestones: `int(f * epochs)`."""
  return [int(f * epochs) for f in fractions]


def epoch_lr(lr: float, epochs: int, epoch: int,
             milestone_fractions: Sequence[float] = (0.5, 0.72),
             gamma: float = 0.1) -> float:
  """The learning rate of `epoch` (0-based), as PyTorch's MultiStepLR.

  Multiplied by `gamma` once per milestone passed, in turn, as PyTorch
  does, so the float is the one its `get_last_lr()` reports.
  """
  for m in milestones(epochs, milestone_fractions):
    if m <= epoch:
      lr *= gamma
  return lr


def make_optimizer(lr: float, epochs: int, steps_per_epoch: int,
                   milestone_fractions: Sequence[float] = (0.5, 0.72),
                   gamma: float = 0.1, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0):
  """Adam with PyTorch's defaults and MultiStepLR stepped per epoch.

  PyTorch steps the scheduler after each epoch, so epoch `m` (0-based) and
  later train at `lr * gamma` for each milestone `<= m`; as an optax
  schedule of the update count, that is a boundary at `m * steps_per_epoch`.
  `weight_decay` is PyTorch Adam's L2 term (added to the gradient).

  Returns:
    (optimizer, schedule), the schedule mapping update count to lr.
  """
  boundaries = {}
  for m in milestones(epochs, milestone_fractions):
    boundary = m * steps_per_epoch
    boundaries[boundary] = boundaries.get(boundary, 1.0) * gamma
  schedule = optax.piecewise_constant_schedule(lr, boundaries)
  adam = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  if weight_decay:
    adam = optax.chain(optax.add_decayed_weights(weight_decay), adam)
  return adam, schedule


def init_state(method, optimizer, rng) -> TrainState:
  params = method.init(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def masked_cross_entropy(logits, labels, mask):
  """Mean cross-entropy over valid examples, and their count.

  A padded last batch thus gives the gradient PyTorch's smaller last batch
  gives.
  """
  weights = mask.astype(jnp.float32)
  count = jnp.sum(weights)
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)
  return jnp.sum(per_example * weights) / jnp.maximum(count, 1.0), count


def make_train_step(method, optimizer):
  """`(state, frozen, mapping_sequence, batch) -> (state, metrics)`, jitted.

  `metrics` holds sums (`loss_sum`, `correct`, `count`) so that epochs
  aggregate exactly whatever the batch padding.
  """

  def train_step(state, frozen, mapping_sequence, batch):
    def loss_fn(params):
      logits = method.logits(params, frozen, batch["image"], mapping_sequence)
      loss, count = masked_cross_entropy(logits, batch["label"],
                                         batch["mask"])
      return loss, (logits, count)

    (loss, (logits, count)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) & batch["mask"])
    metrics = {"loss": loss, "loss_sum": loss * count, "correct": correct,
               "count": count}
    return TrainState(state.step + 1, params, opt_state), metrics

  # Donating the state lets XLA update the program/head and Adam's moments
  # in place; the caller never reuses the old state.
  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(method):
  """`(params, frozen, mapping_sequence, batch) -> (target logits, source
  argmax or None)`, jitted; the source predictions (VP) feed the
  label-mapping plot."""

  def eval_step(params, frozen, mapping_sequence, batch):
    if not method.uses_label_mapping:
      return method.logits(params, frozen, batch["image"], None), None
    source = method.source_logits(params, frozen, batch["image"])
    return (label_mapping.apply_mapping(source, mapping_sequence),
            jnp.argmax(source, axis=-1))

  return jax.jit(eval_step)


def make_count_step(method, num_classes):
  """`(counts, params, frozen, batch) -> counts`, jitted: adds one batch's
  (source prediction, target label) counts, the input of label mapping."""

  def count_step(counts, params, frozen, batch):
    source = method.source_logits(params, frozen, batch["image"])
    return counts + label_mapping.count_matrix(
        source, batch["label"], num_classes, batch["mask"])

  return jax.jit(count_step, donate_argnums=0)
