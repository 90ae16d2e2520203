"""Pruning: one-shot magnitude/random pruning, and lottery tickets by IMP.

Two things, deliberately kept apart:

* `prune` removes weights from a network once (the smallest magnitudes, or
  uniformly at random). Applied to a trained network, that is one-shot
  pruning: the result is sparse but it is NOT a lottery ticket, since no
  weight is rewound and nothing is retrained.
* `iterative_magnitude_pruning` finds lottery tickets the way the PyTorch
  version's tickets were made (Frankle & Carbin 2019; Frankle et al. 2020,
  "Linear mode connectivity and the lottery ticket hypothesis"): train,
  prune the smallest weights, rewind the survivors to an early training
  step, retrain, and repeat.

Masks are the trees of `masks.py` (bool on every prunable kernel, `None`
elsewhere). Sparsity state k keeps `0.8**k` of the prunable weights (20 %
pruned per round), as in the paper.
"""

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.traverse_util
import jax
import numpy as np

from reprog_jax import errors
from reprog_jax.model import masks as masks_lib

Params = Any
Masks = Any

METHODS = ("magnitude", "random")
SCOPES = ("global", "layerwise")
STEM = ("conv1", "kernel")


class PruningError(errors.UserError, ValueError):
  """A pruning request that cannot be met (too dense, empties a layer...)."""


def remaining_fraction(sparsity_state: int) -> float:
  """The fraction of prunable weights sparsity state k keeps: `0.8**k`."""
  return 0.8 ** sparsity_state


def _pruned_paths(masks_flat, prune_first_conv, prune_fc):
  """The masked leaves this call prunes; the others keep their mask."""
  return [path for path, m in masks_flat.items()
          if m is not None
          and (prune_first_conv or path != STEM)
          and (prune_fc or path[0] != "fc")]


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest scores; ties go to the lower index.

  Selection by threshold (linear time, unlike a full sort of ~25M ResNet-50
  weights), then the tied values at the threshold taken in index order, so
  the result never depends on the sort algorithm.
  """
  if k >= scores.size:
    return np.arange(scores.size)
  threshold = np.partition(scores, scores.size - k)[scores.size - k]
  above = np.flatnonzero(scores > threshold)
  tied = np.flatnonzero(scores == threshold)[:k - above.size]
  return np.concatenate([above, tied])


def _choose(weights, kept, k, method, rng) -> np.ndarray:
  """The new flat mask: k of the weights the flat bool mask `kept` keeps."""
  if method == "magnitude":
    # -1 ranks the weights already pruned below every |weight|; k never
    # exceeds how many are kept, so none of them is picked.
    picked = _top_k(np.where(kept, np.abs(weights), -1), k)
  else:
    picked = rng.choice(np.flatnonzero(kept), size=k, replace=False)
  new = np.zeros(weights.size, bool)
  new[picked] = True
  return new


def prune(params: Params, masks: Masks, *, remaining: float,
          method: str = "magnitude", scope: str = "global",
          prune_first_conv: bool = True, prune_fc: bool = True,
          seed: int = 0) -> Masks:
  """New masks keeping `remaining` of the prunable weights, nested in `masks`.

  Only weights the current masks keep are candidates, so the result is
  nested in `masks`. `remaining` counts against every weight of the pruned
  layers (not against the current mask): `scope="global"` keeps exactly
  `round(remaining * total)` weights over all pruned layers together,
  `scope="layerwise"` keeps `round(remaining * n)` of each layer's `n`.

  Args:
    params: the params tree (a layer's weights are its `kernel`s).
    masks: the current masks (`masks.py`), e.g. `masks.dense(params)`.
    remaining: the fraction to keep, in (0, current fraction].
    method: "magnitude" keeps the largest `|weight|` (ties to the earlier
      weight in flattened order); "random" keeps a uniform random subset of
      the current mask's weights, drawn from `seed`.
    scope: "global" ranks all pruned layers together; "layerwise" prunes each
      layer to the same fraction.
    prune_first_conv: prune the stem `conv1` (else it keeps its mask).
    prune_fc: prune the `fc` kernel (else it keeps its mask).
    seed: the random generator's seed for `method="random"`.

  Returns:
    The new mask tree (numpy bool arrays on the masked leaves).

  Raises:
    PruningError: bad method/scope, `remaining` outside (0, current
      fraction], or a result that would leave a pruned layer empty.
  """
  if method not in METHODS:
    raise PruningError(f"pruning method {method!r} is not one of {METHODS}")
  if scope not in SCOPES:
    raise PruningError(f"pruning scope {scope!r} is not one of {SCOPES}")
  if not 0 < remaining <= 1:
    raise PruningError(f"remaining fraction {remaining!r} is not in (0, 1]")
  masks_flat = flax.traverse_util.flatten_dict(
      jax.device_get(masks), keep_empty_nodes=True)
  params_flat = flax.traverse_util.flatten_dict(jax.device_get(params))
  paths = _pruned_paths(masks_flat, prune_first_conv, prune_fc)
  if not paths:
    raise PruningError("nothing to prune: no masked kernel is left once the "
                       "excluded layers (stem conv1, fc) are set aside")
  weights = {p: np.asarray(params_flat[p]).ravel() for p in paths}
  kept = {p: np.asarray(masks_flat[p], bool).ravel() for p in paths}
  for p in paths:
    if method == "magnitude" and not np.isfinite(weights[p]).all():
      raise PruningError(f"layer {masks_lib.torch_name(p)} has non-finite "
                         f"weights; magnitudes cannot rank them")
  rng = np.random.default_rng(seed)

  chosen = {}
  if scope == "global":
    total = sum(w.size for w in weights.values())
    k = round(remaining * total)
    current = sum(int(np.count_nonzero(m)) for m in kept.values())
    _check_count(k, current, total, remaining, "the pruned layers")
    new = _choose(np.concatenate([weights[p] for p in paths]),
                  np.concatenate([kept[p] for p in paths]), k, method, rng)
    splits = np.cumsum([weights[p].size for p in paths])[:-1]
    chosen = dict(zip(paths, np.split(new, splits)))
  else:
    for p in paths:
      n = weights[p].size
      k = round(remaining * n)
      _check_count(k, int(np.count_nonzero(kept[p])), n, remaining,
                   f"layer {masks_lib.torch_name(p)}")
      chosen[p] = _choose(weights[p], kept[p], k, method, rng)

  for p in paths:
    if not chosen[p].any():
      raise PruningError(
          f"pruning to {100 * remaining:.4g} % ({scope}) would empty layer "
          f"{masks_lib.torch_name(p)}; keep more weights or use "
          f"scope 'layerwise'")
    masks_flat[p] = chosen[p].reshape(np.shape(masks_flat[p]))
  return flax.traverse_util.unflatten_dict(masks_flat)


def _check_count(k, current, total, remaining, where):
  if k == 0:
    raise PruningError(
        f"keeping {100 * remaining:.4g} % of {total:,} weights in {where} "
        f"keeps none; ask for a larger fraction")
  if k > current:
    raise PruningError(
        f"cannot keep {100 * remaining:.4g} % ({k:,} weights) of {where}: "
        f"the current mask keeps only {current:,} of {total:,} "
        f"({100 * current / total:.4g} %); pruning only removes weights")


def kept_fraction(masks: Masks, *, prune_first_conv: bool = True,
                  prune_fc: bool = True) -> float:
  """The fraction of the prunable weights (as `prune` counts them) kept."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(masks))
  paths = _pruned_paths(flat, prune_first_conv, prune_fc)
  return (sum(int(np.count_nonzero(flat[p])) for p in paths)
          / sum(np.size(flat[p]) for p in paths))


def masks_from_zeros(params: Params) -> Masks:
  """The mask a sparse checkpoint implies: `weight != 0` on every kernel.

  Public pruned networks often ship as plain weights whose zeros are the
  pruned ones (the PyTorch version's `sparsezoo` option loads such files).
  """
  params = jax.device_get(params)
  return jax.tree.map(
      lambda m, w: None if m is None else np.asarray(w) != 0,
      masks_lib.dense(params), params, is_leaf=lambda m: m is None)


class Round(NamedTuple):
  """One round of iterative magnitude pruning.

  Attributes:
    state: the sparsity state k (0 for the first, dense round).
    masks: the round's masks (nested in every earlier round's).
    trained: the state `train_fn` returned after training with `masks`.
    remaining: the fraction of the pruned layers' weights `masks` keeps.
  """

  state: int
  masks: Masks
  trained: Any
  remaining: float


def _with_params(state, params_of, params):
  """`state` with the subtree `params_of(state)` replaced by `params`.

  `params_of` only has to select a subtree: applied to a copy of `state`
  whose leaves are their own positions, it says which leaves are params.
  """
  leaves, treedef = jax.tree.flatten(state)
  positions = params_of(jax.tree.unflatten(treedef, range(len(leaves))))
  new_leaves = list(leaves)
  for position, leaf in zip(jax.tree.leaves(positions),
                            jax.tree.leaves(params)):
    new_leaves[position] = leaf
  return jax.tree.unflatten(treedef, new_leaves)


def iterative_magnitude_pruning(
    train_fn: Callable[[Any, Masks, int | None], tuple[Any, Any]],
    state: Any, *, states: Sequence[int], rewind_step: int | None,
    params_of: Callable[[Any], Params] = lambda s: s,
    scope: str = "global", prune_first_conv: bool = True,
    prune_fc: bool = True, masks: Masks | None = None) -> list[Round]:
  """Lottery tickets by iterative magnitude pruning with weight rewinding.

  Unlike one-shot pruning of a trained network (`prune`), this finds real
  lottery tickets (Frankle & Carbin 2019; with rewinding, Frankle et al.
  2020): round 0 trains from `state` with `masks` (dense by default) for
  the full T steps and keeps the rewind point, the whole training state
  after `rewind_step` = k steps. Each later sparsity state prunes the
  previous round's trained weights by magnitude to `remaining_fraction`
  (nested in the previous mask), resets the surviving weights to the rewind
  point (the rest to 0) and resumes training from that point: from step k
  for the remaining T - k steps, with the learning-rate schedule, data order
  and optimiser state of step k, not a fresh schedule from step 0. This is
  open_lth's rewinding (its `train(..., start_step=k)` advances the
  schedule and the data order to k), with the optimiser state of step k
  kept as well; open_lth builds a fresh optimiser there.

  Rounds: sparsity state k keeps `0.8**k` of the prunable weights, and each
  listed state is one round. The published recipe prunes 20 % of the
  remaining weights per round, so `states` must list every round,
  `range(1, K + 1)`, even when only some of them are kept; `states=(2, 4)`
  prunes 36 % per round in two rounds, which is another (cheaper) recipe.

  Args:
    train_fn: `train_fn(state, masks, rewind_step) -> (trained, rewind)`
      trains `state` with `masks` applied (pruned weights must stay 0) from
      the step `state` is at (its step counter, schedule position and
      optimiser state: a fresh state is at step 0, a rewind point at step
      k) to the end of training, and returns the trained state and a copy
      of the whole state after `rewind_step` steps (None when
      `rewind_step` is None). Round 0 is called with `rewind_step`, later
      rounds with None.
    state: the initial state, any pytree `train_fn` understands.
    states: the sparsity states after round 0, increasing; for 20 % per
      round, every one (e.g. range(1, 9) for state 8).
    rewind_step: the step k to rewind to; None rewinds to `state` itself
      (the original lottery ticket recipe, reset to initialisation, then
      training runs all T steps again).
    params_of: selects the params tree (the tree the masks mirror) from a
      state, e.g. `lambda s: s['params']`; it must only select a subtree.
    scope, prune_first_conv, prune_fc: as in `prune`.
    masks: the starting masks (default: dense).

  Returns:
    One `Round` per state: round 0 (`state=0`), then one per `states`.
  """
  states = list(states)
  if any(not isinstance(k, int) or k <= 0 for k in states) or any(
      a >= b for a, b in itertools.pairwise(states)):
    raise PruningError(f"sparsity states {states} are not increasing "
                       f"positive integers (e.g. [2, 4, 6])")
  options = {"prune_first_conv": prune_first_conv, "prune_fc": prune_fc}
  if masks is None:
    masks = masks_lib.dense(jax.device_get(params_of(state)))
  trained, rewind = train_fn(state, masks, rewind_step)
  if rewind_step is None:
    rewind = state
  rounds = [Round(0, masks, trained, kept_fraction(masks, **options))]
  for k in states:
    masks = prune(params_of(trained), masks, remaining=remaining_fraction(k),
                  scope=scope, **options)
    start = _with_params(rewind, params_of,
                         masks_lib.apply(params_of(rewind), masks))
    # `start` is the state of step k: training resumes there.
    trained, _ = train_fn(start, masks, None)
    rounds.append(Round(k, masks, trained, kept_fraction(masks, **options)))
  return rounds
