"""Where arrays live: one 1-D `('data',)` mesh over every device.

The same code runs on one CPU, one GPU, a multi-GPU host or several hosts
(`jax.distributed.initialize`, one process per host). The frozen network is
replicated. A run trains S seeds at once; its per-seed trees (trained state,
mappings) and its `(S, B, ...)` training batches are sharded

- on the seed axis when the device count divides S (each device trains its
  own seeds: no communication at all), otherwise
- on the batch axis B (data parallel; XLA sums the gradients across
  devices), with B padded to a multiple of the device count by blank,
  masked slots, so no example is ever dropped.

Batches shared by all seeds (the test split, feature extraction) are
sharded on their batch axis, or replicated when the seeds are sharded.
Host batches become global arrays through `jax.make_array_from_callback`:
each process gathers only the rows its own devices hold.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
  """The mesh and how a run with S seeds places its arrays.

  Attributes:
    mesh: a 1-D mesh over all devices, axis 'data'.
    seed_sharded: per-seed arrays are split over devices on the seed axis
      (the device count divides S); otherwise batches are split on B.
  """

  mesh: Mesh
  seed_sharded: bool

  @classmethod
  def create(cls, num_seeds: int, devices=None) -> "Layout":
    devices = jax.devices() if devices is None else devices
    mesh = Mesh(np.asarray(devices), ("data",))
    return cls(mesh, len(devices) > 1 and num_seeds % len(devices) == 0)

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def _sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  @property
  def replicated(self) -> NamedSharding:
    return self._sharding(P())

  @property
  def per_seed(self) -> NamedSharding:
    """(S, ...) arrays: trained state, mappings, per-seed sums."""
    return self._sharding(P("data") if self.seed_sharded else P())

  @property
  def seed_batch(self) -> NamedSharding:
    """(S, B, ...) batches: each seed its own examples."""
    return self._sharding(P("data") if self.seed_sharded else P(None, "data"))

  @property
  def shared_batch(self) -> NamedSharding:
    """(B, ...) batches every seed sees (the test split)."""
    return self._sharding(P() if self.seed_sharded else P("data"))

  @property
  def batch(self) -> NamedSharding:
    """(B, ...) batches of a computation without seeds (features)."""
    return self._sharding(P("data"))

  @property
  def batch_pad(self) -> int:
    """What the batch axis of seed and shared batches must be a multiple
    of: the device count when batches are split on it, else 1."""
    return 1 if self.seed_sharded else self.num_devices

  def put(self, tree: Any, sharding: NamedSharding) -> Any:
    """Host (or single-device) arrays -> global arrays with `sharding`."""
    def leaf(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding,
                                          lambda index: x[index])
    return jax.tree.map(leaf, tree)

  def keep_on_device(self, stores, where: str = "auto",
                     budget: float = 0.25) -> bool:
    """Copies the rows of `stores` to every device if `where` says so; then
    every batch is gathered there and only row positions cross from the
    host.

    Args:
      stores: a `data.RowStore`, or a list of those of one run.
      where: 'yes', 'no', or 'auto': yes on an accelerator when the copies
        of all `stores` together take at most `budget` of each device's
        memory (on a CPU the host memory already is the device's).
      budget: the fraction of device memory 'auto' may use.
    Returns:
      Whether the rows are now on the devices.
    """
    stores = stores if isinstance(stores, (list, tuple)) else [stores]
    if where == "auto":
      stats = jax.local_devices()[0].memory_stats() or {}
      total = sum(store.rows.nbytes for store in stores)
      where = "yes" if (jax.default_backend() != "cpu" and total
                        <= budget * stats.get("bytes_limit", 0)) else "no"
    if where == "yes":
      for store in stores:
        store.device_rows = self.put(store.rows, self.replicated)
    return where == "yes"

  def put_rows(self, store, index: np.ndarray,
               sharding: NamedSharding) -> dict:
    """The batch at row positions `index` of `store`, as global arrays.

    Each process gathers only the rows of its own devices' shards (on the
    devices, when `keep_on_device` put the rows there).

    Args:
      store: a `data.RowStore`.
      index: the global batch's row positions, (B,) or (S, B); -1 blank.
      sharding: how the batch is split (on axes of `index` only).

    Returns:
      {'image': rows, 'label', 'mask'} (see `RowStore.gather`).
    """
    lead = index.ndim
    if store.device_rows is not None:
      image = _gather_rows(store.device_rows, self.put(index, sharding))
    else:
      def rows(where):
        return store.rows_at(index[where[:lead]])[
            (slice(None),) * lead + tuple(where[lead:])]
      image = jax.make_array_from_callback(
          index.shape + store.rows.shape[1:], sharding, rows)
    return {"image": image,
            **self.put({"label": store.labels_at(index), "mask": index >= 0},
                       sharding)}

  def to_host(self, x: Any) -> Any:
    """Global arrays -> NumPy on every process."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)

  def constrain(self, tree: Any, sharding: NamedSharding) -> Any:
    """Inside jit: keep `tree` where `sharding` says (donation stays
    in place, nothing is resharded between steps)."""
    return jax.lax.with_sharding_constraint(tree, sharding)


@jax.jit
def _gather_rows(rows, index):
  """`RowStore.rows_at` on the devices: rows at `index`, zeros at -1; the
  result is split as `index` is."""
  picked = jnp.take(rows, jnp.maximum(index, 0), axis=0)
  keep = (index >= 0).reshape(index.shape + (1,) * (rows.ndim - 1))
  return jnp.where(keep, picked, jnp.zeros((), rows.dtype))
