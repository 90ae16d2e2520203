"""Jitted steps shared by linear probing and ILM-VP, every seed at once.

`make_train_step` builds the one train step of a `methods.Method`: per
seed, mean cross-entropy over the valid examples of a (possibly padded)
batch and one Adam update of the trained values only, `jax.vmap`ped over the
seeds of a run. The frozen network comes in as an argument; the train state
is donated. The evaluation, label-count and feature steps follow the same
pattern, and all keep their outputs where a `sharding.Layout` says.
"""

import contextlib
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reprog_jax.model import label_mapping


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


def init_state(method, optimizer, seeds: Sequence[int]) -> TrainState:
  """The initial state of every seed, stacked on a leading seed axis.

  Seed s initialises from the second half of `split(key(s))`, so seed s of
  a run with several seeds starts exactly as a run with that seed alone.
  """
  rngs = jnp.stack([jax.random.split(jax.random.key(s))[1] for s in seeds])
  params = jax.vmap(method.init)(rngs)
  return TrainState(step=jnp.zeros((len(seeds),), jnp.int32), params=params,
                    opt_state=jax.vmap(optimizer.init)(params))


# ToTensor's `x / 255` for every uint8 value. XLA turns a division by a
# constant into a multiplication by its reciprocal, which is 1 ulp off for
# half the values; a table lookup is exact.
_UNIT_INTERVAL = np.arange(256, dtype=np.float32) / np.float32(255)


def network_inputs(method, network, images, encoded: bool):
  """What a method's `scores` takes, from a batch's 'image' leaf.

  Args:
    method: the `methods.Method`.
    network: the frozen `Network`.
    images: uint8 pixels (scaled to [0, 1] here, exactly as the loaders'
      float path), float [0, 1] images, or already encoded inputs.
    encoded: the batch holds `method.encode`'s outputs (cached features).
  """
  if images.dtype == jnp.uint8:
    images = jnp.take(jnp.asarray(_UNIT_INTERVAL), images.astype(jnp.int32))
  if encoded or method.encode is None:
    return images
  return method.encode(network, images)


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


def make_train_step(method, optimizer, layout, encoded: bool = False):
  """`(state, network, mappings, batch) -> (state, metrics)`, jitted.

  Every seed's step at once: `state` and `mappings` ((S, T) sequences or
  (S, K, T) matrices) carry a leading seed axis, and so does `batch`
  ((S, B, ...): each seed its own examples).
  `metrics` holds per-seed (S,) `loss` and the sums `loss_sum`, `correct`,
  `count`, so that epochs aggregate exactly whatever the batch padding.
  """

  def one_seed(state, network, mapping, batch):
    inputs = network_inputs(method, network, batch["image"], encoded)

    def loss_fn(params):
      logits = label_mapping.apply_mapping(
          method.scores(params, network, inputs), mapping)
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

  def train_step(state, network, mappings, batch):
    state, metrics = jax.vmap(one_seed, in_axes=(0, None, 0, 0))(
        state, network, mappings, batch)
    return layout.constrain(state, layout.per_seed), metrics

  # Donating the state lets XLA update the programs/heads and Adam's moments
  # in place; the caller never reuses the old state.
  return jax.jit(train_step, donate_argnums=0)


def _scores_and_counts(method, encoded, counts, params, network, batch,
                       statistic=None):
  """One seed's scores of a batch, and `counts` plus its (argmax score,
  label) pairs, or plus `statistic(scores, labels, T, mask)`."""
  scores = method.scores(params, network, network_inputs(
      method, network, batch["image"], encoded))
  statistic = statistic or label_mapping.count_matrix
  return counts + statistic(scores, batch["label"], counts.shape[-1],
                            batch["mask"]), scores


def _at_precision(precision: str | None):
  """The matmul/convolution precision of what is traced inside: 'highest'
  is true float32 (on an H100 the default runs float32 matmuls as TF32);
  None leaves XLA's default."""
  if precision is None:
    return contextlib.nullcontext()
  return jax.default_matmul_precision(precision)


def make_eval_step(method, layout, encoded: bool = False,
                   precision: str | None = None, per_seed: bool = False):
  """`(counts, params, network, mappings, batch) -> (counts, logits)`, jitted.

  One batch shared by every seed ((B, ...)), or with `per_seed` each
  seed's own batch ((S, B, ...): its held-out or validation rows, not the
  union of every seed's): `logits` (S, B, T) are each seed's target logits,
  and `counts` (S, K, T) accumulates each seed's (argmax score, label)
  pairs (ILM-VP's label-mapping picture). `precision` ('highest',
  'default', ...; None: XLA's default) is the matmul and convolution
  precision of the whole step.
  """

  def one_seed(counts, params, network, mapping, batch):
    counts, scores = _scores_and_counts(method, encoded, counts, params,
                                        network, batch)
    return counts, label_mapping.apply_mapping(scores, mapping)

  def eval_step(counts, params, network, mappings, batch):
    with _at_precision(precision):
      counts, logits = jax.vmap(
          one_seed, in_axes=(0, 0, None, 0, 0 if per_seed else None))(
              counts, params, network, mappings, batch)
    return layout.constrain(counts, layout.per_seed), logits

  return jax.jit(eval_step, donate_argnums=0)


def make_count_step(method, layout, encoded: bool = False,
                    precision: str | None = None):
  """`(counts, params, network, batch) -> counts`, jitted: adds each seed's
  (argmax score, label) counts (or the method's `mapping_statistic`) over
  its own batch ((S, B, ...)), the input of label mapping; `precision` as
  in `make_eval_step`."""

  def one_seed(counts, params, network, batch):
    return _scores_and_counts(method, encoded, counts, params, network,
                              batch, method.mapping_statistic)[0]

  def count_step(counts, params, network, batch):
    with _at_precision(precision):
      counts = jax.vmap(one_seed, in_axes=(0, 0, None, 0))(
          counts, params, network, batch)
    return layout.constrain(counts, layout.per_seed)

  return jax.jit(count_step, donate_argnums=0)


def make_encode_step(method, layout, precision: str | None = None):
  """`(network, images) -> inputs`, jitted: `method.encode` of a (B, ...)
  batch split over the devices (features to cache).

  `precision` as in `make_eval_step`. The encode is a frozen forward pass
  (no gradient reaches it), and one program serves every split: the cached
  training and test features alike, and the per-step encode of a run that
  does not cache them (`cache_features=False`), which must run the cache's
  program to train the same head to the bit. So a run gives it its
  `eval_precision` everywhere: then the head trains and is evaluated on
  features computed at one precision (each split at its network's dtype),
  and the cost of 'highest' is paid once per split where features are
  cached (every step only where they are not).
  """

  def encode_step(network, images):
    with _at_precision(precision):
      inputs = network_inputs(method, network, images, encoded=False)
    return layout.constrain(inputs, layout.batch)

  return jax.jit(encode_step)
