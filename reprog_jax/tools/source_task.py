"""The offline demo's source task: procedural images, a network trained on it.

Each class is a shape (disc, ring, square, ...) in a colour; every image
draws its own position, scale, small rotation, background shade and pixel
noise from a seeded generator, so the task has real structure (a network
must find the shape wherever it is) and is generated in NumPy in a blink:

    images, labels = source_task.make_images(100, seed=0)  # uint8 NHWC
    trainer = source_task.Trainer(model, images, labels, epochs=4)
    state, rewind = trainer.train(state, masks, rewind_step=20)

`Trainer.train` is the `train_fn` of `pruning.iterative_magnitude_pruning`:
BatchNorm in training mode, Adam, the masks applied in every forward pass so
pruned weights stay out of the network and get no gradient.
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from reprog_jax.model import masks as masks_lib
from reprog_jax.model import prompts

# Shape name -> inside test on the shape's own coordinates (u, v), unit size.
_SHAPES = {
    "disc": lambda u, v: u * u + v * v < 0.8,
    "ring": lambda u, v: np.abs(np.sqrt(u * u + v * v) - 0.75) < 0.22,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) < 0.75,
    "diamond": lambda u, v: np.abs(u) + np.abs(v) < 0.95,
    "triangle": lambda u, v: (v < 0.7) & (v > 1.8 * np.abs(u) - 0.95),
    "plus": lambda u, v: ((np.abs(u) < 0.28) | (np.abs(v) < 0.28))
                         & (np.maximum(np.abs(u), np.abs(v)) < 0.95),
    "x": lambda u, v: ((np.abs(u - v) < 0.38) | (np.abs(u + v) < 0.38))
                      & (np.maximum(np.abs(u), np.abs(v)) < 0.85),
    "hstripes": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) < 0.9)
                             & (np.cos(3.5 * np.pi * v) > 0),
    "vstripes": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) < 0.9)
                             & (np.cos(3.5 * np.pi * u) > 0),
    "checker": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) < 0.9)
                            & (np.sin(2.2 * np.pi * u)
                               * np.sin(2.2 * np.pi * v) > 0),
}
_COLOURS = {
    "red": (0.95, 0.2, 0.15), "green": (0.2, 0.85, 0.25),
    "blue": (0.2, 0.35, 0.95), "yellow": (0.95, 0.9, 0.2),
}
MAX_CLASSES = len(_SHAPES) * len(_COLOURS)


def class_names(num_classes: int = MAX_CLASSES) -> list[str]:
  """Class names ('red disc', ...): colour varies fastest."""
  if not 1 <= num_classes <= MAX_CLASSES:
    raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got "
                     f"{num_classes}")
  return [f"{colour} {shape}" for shape in _SHAPES for colour in _COLOURS
          ][:num_classes]


def make_images(per_class: int, num_classes: int = MAX_CLASSES,
                size: int = 32, seed: int = 0):
  """Draws `per_class` images of each class, deterministically.

  Args:
    per_class: images per class.
    num_classes: the first `num_classes` of `class_names()`.
    size: the images' side in pixels.
    seed: everything random derives from it.

  Returns:
    (uint8 images (N, size, size, 3), int32 labels (N,)), classes
    interleaved (0, 1, ..., 0, 1, ...).
  """
  class_names(num_classes)  # checks the range
  rng = np.random.default_rng(seed)
  labels = np.tile(np.arange(num_classes, dtype=np.int32), per_class)
  n = len(labels)
  grid = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
  yy, xx = np.meshgrid(grid, grid, indexing="ij")
  centre = rng.uniform(-0.35, 0.35, (n, 2, 1, 1))
  scale = rng.uniform(0.4, 0.65, (n, 1, 1))
  angle = rng.uniform(-0.25, 0.25, (n, 1, 1))  # small: stripes keep their
  dx, dy = xx - centre[:, 0], yy - centre[:, 1]  # orientation
  u = (np.cos(angle) * dx + np.sin(angle) * dy) / scale
  v = (-np.sin(angle) * dx + np.cos(angle) * dy) / scale
  inside = np.zeros((n, size, size), bool)
  shapes = list(_SHAPES.values())
  colours = np.array(list(_COLOURS.values()), np.float32)
  shape_of = labels // len(_COLOURS)
  for s in np.unique(shape_of):
    rows = shape_of == s
    inside[rows] = shapes[s](u[rows], v[rows])
  colour = colours[labels % len(_COLOURS)] * rng.uniform(0.7, 1.0, (n, 1))
  background = rng.uniform(0.05, 0.55, (n, 1, 1, 1)) * rng.uniform(
      0.8, 1.2, (n, 1, 1, 3))
  images = np.where(inside[..., None], colour[:, None, None], background)
  images = images + rng.normal(0, 0.08, images.shape)
  return (np.clip(images * 255 + 0.5, 0, 255).astype(np.uint8), labels)


def _inputs(images_uint8):
  return prompts.imagenet_normalize(
      jnp.asarray(images_uint8, jnp.float32) / 255.0)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def _train_step(model_and_tx, state, opt_state, masks, images, labels):
  model, tx = model_and_tx

  def loss_fn(params):
    logits, updates = model.apply(
        {"params": masks_lib.apply(params, masks),
         "batch_stats": state["batch_stats"]},
        _inputs(images), train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss.mean(), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"])
  updates, opt_state = tx.update(grads, opt_state, state["params"])
  params = optax.apply_updates(state["params"], updates)
  return {"params": params, "batch_stats": batch_stats}, opt_state, loss


@functools.partial(jax.jit, static_argnums=0)
def _predict(model, state, masks, images):
  logits = model.apply({"params": masks_lib.apply(state["params"], masks),
                        "batch_stats": state["batch_stats"]}, _inputs(images))
  return jnp.argmax(logits, -1)


def init_state(model, seed: int = 0, size: int = 32) -> dict:
  """Fresh `{'params', 'batch_stats'}` of `model` (flax's initialisers)."""
  variables = jax.jit(model.init)(jax.random.key(seed),
                                  jnp.zeros((1, size, size, 3)))
  return {"params": variables["params"],
          "batch_stats": variables["batch_stats"]}


def accuracy(model, state, masks, images, labels, batch_size=500) -> float:
  """Top-1 accuracy of the masked network (BatchNorm running statistics)."""
  correct = 0
  for start in range(0, len(labels), batch_size):
    predicted = _predict(model, state, masks,
                         images[start:start + batch_size])
    correct += int(jnp.sum(predicted == labels[start:start + batch_size]))
  return correct / len(labels)


class Trainer:
  """Trains the source network from a state under masks (IMP's `train_fn`).

  A fresh state (`init_state`) trains all `epochs` from step 0 with a fresh
  Adam. A rewind point (what `train` returns as `rewind`: the state, the
  optimiser state and the step count k) resumes at step k for the
  remaining steps, with the learning-rate schedule, Adam's moments and the
  data order of step k, as the rewinding recipe asks. The order of the
  examples follows `seed`, the same in every round.
  """

  def __init__(self, model: nn.Module, images, labels, *, epochs: int,
               batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
               progress: bool = True):
    self.model, self.images, self.labels = model, images, labels
    self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
    self.steps_per_epoch = len(labels) // batch_size
    total = epochs * self.steps_per_epoch
    self.tx = optax.adamw(optax.cosine_decay_schedule(lr, total),
                          weight_decay=1e-4)
    self.progress, self.round = progress, 0

  def train(self, state, masks, rewind_step):
    """Trains `state` under `masks` to the end of training.

    Args:
      state: `{'params', 'batch_stats'}` to start from at step 0, or a
        rewind point `{'params', 'batch_stats', 'opt_state', 'step'}` to
        resume at its step.
      masks: the mask tree (all ones for the dense network).
      rewind_step: if not None, also return the rewind point after this
        many steps (what a ticket rewinds to).

    Returns:
      (trained `{'params', 'batch_stats'}` with the masks applied to its
      params, the rewind point at `rewind_step` or None).
    """
    state = jax.tree.map(jnp.array, state)  # fresh buffers: steps donate
    masks = jax.device_put(masks)
    start = int(state.pop("step", 0))
    opt_state = state.pop("opt_state", None)
    if opt_state is None:
      opt_state = self.tx.init(state["params"])
    order_rng = np.random.default_rng(self.seed)

    def point(step):
      return jax.tree.map(jnp.copy, {**state, "opt_state": opt_state,
                                     "step": step})

    rewind = point(0) if rewind_step == 0 else None
    step, loss, started = 0, float("nan"), time.time()
    bar = tqdm.tqdm(total=self.epochs * self.steps_per_epoch,
                    desc=f"source training, round {self.round}",
                    leave=False, dynamic_ncols=True,
                    disable=not self.progress)
    for _ in range(self.epochs):
      order = order_rng.permutation(len(self.labels))
      for i in range(self.steps_per_epoch):
        if step < start:  # Resuming: the data order of the steps done.
          step += 1
          bar.update()
          continue
        index = order[i * self.batch_size:(i + 1) * self.batch_size]
        state, opt_state, loss = _train_step(
            (self.model, self.tx), state, opt_state, masks,
            self.images[index], self.labels[index])
        step += 1
        if rewind_step is not None and step == rewind_step:
          rewind = point(step)
        bar.update()
        if step % 20 == 0:
          bar.set_postfix(loss=f"{float(loss):.3f}")
    bar.close()
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"source training diverged (loss {loss})")
    print(f"  IMP round {self.round}: steps {start} to {step}, last loss "
          f"{float(loss):.3f}, {time.time() - started:.0f} s", flush=True)
    self.round += 1
    state = {"params": masks_lib.apply(state["params"], masks),
             "batch_stats": state["batch_stats"]}
    return state, rewind
