"""Data parallel: 4 simulated CPU devices compute what one device does."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_records_close, per_seed_records, smoke_config
from reprog_jax.train import checkpoints
from reprog_jax.train import sharding
from reprog_jax.train import loop as train

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (method, overrides): 4 seeds split over 4 devices (one each; the images
# kept on the devices), and 2 seeds whose batches of 6 (evaluation 10) are
# split over 4 devices, padded.
#
# The seed-sharded ILM-VP run on ResNet-18, not the smoke preset's tiny
# network: its prompt starts at zero, a constant frame, whose exact ties in
# the max-pool windows a last-bit difference between the devices' and the
# one device's programs breaks either way; through `resnet_mini`'s narrow
# stem that changes whole gradient entries, which Adam turns into steps of
# the learning rate, and the seeds' losses drift apart by more than 1e-5
# within an epoch (`test_seeds` says more).
CASES = {
    "seed_sharded": ("ilm_vp", {"seeds": (0, 1, 2, 3), "epochs": 2,
                                "data__store_on_device": "yes",
                                "random_network": "resnet18"}),
    "batch_sharded": ("linear_probe", {"seeds": (0, 1), "epochs": 2,
                                       "batch_size": 6,
                                       "eval_batch_size": 10}),
}

_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
import numpy as np
from conftest import smoke_config
from test_sharding import one_step_gradients
from reprog_jax.train import loop as train
assert jax.device_count() == 4, jax.devices()
for name, (method, overrides) in json.loads({cases!r}).items():
  overrides = {{k: tuple(v) if isinstance(v, list) else v
               for k, v in overrides.items()}}
  train.train_and_evaluate(smoke_config(method, **overrides),
                           {root!r} + "/" + name)
np.savez({root!r} + "/gradients.npz", **one_step_gradients())
"""


# What the gradients are taken through. How a step's work is split over
# devices does not depend on the network's blocks or widths: the tiny one
# compiles in a fraction of ResNet-18's time, in both processes.
GRADIENT_NETWORK = "resnet_mini"


def one_step_gradients() -> dict:
  """ILM-VP's gradient of one step, every seed, on all devices: (S, B) =
  (4, 8) (seeds split over 4 devices) and (1, 6) (batch split, padded)."""
  import optax
  from reprog_jax import methods
  from reprog_jax.model import network as network_lib
  from reprog_jax.train import steps
  network = network_lib.random_network(GRADIENT_NETWORK)
  method = methods.ilm_vp.visual_prompt(32, 10, 64)
  sgd = optax.sgd(1.0)  # One step: the program minus the gradient.
  out = {}
  for num_seeds, batch_size in ((4, 8), (1, 6)):
    rng = np.random.default_rng(num_seeds)
    layout = sharding.Layout.create(num_seeds)
    padded = -(-batch_size // layout.batch_pad) * layout.batch_pad
    shape = (num_seeds, padded)
    batch = {"image": rng.integers(0, 256, shape + (32, 32, 3), np.uint8),
             "label": rng.integers(0, 10, shape).astype(np.int32),
             "mask": np.broadcast_to(np.arange(padded) < batch_size, shape)}
    # A random program, not the zero one: a constant frame puts exact ties
    # in the max-pool windows, where a 1-ulp change of summation order
    # (4 devices vs 1) may route the subgradient elsewhere on some CPUs.
    state = steps.init_state(method, sgd, range(num_seeds))
    programs = rng.normal(0, 1, state.params["program"].shape).astype(
        np.float32)
    state = layout.put(state.replace(params={"program": programs}),
                       layout.per_seed)
    step = steps.make_train_step(method, sgd, layout)
    state, _ = step(state, layout.put(network, layout.replicated),
                    layout.put(np.tile(np.arange(10), (num_seeds, 1)),
                               layout.per_seed),
                    layout.put(batch, layout.seed_batch))
    out[f"{num_seeds}x{batch_size}"] = programs - layout.to_host(
        state.params["program"])
    out[f"{num_seeds}x{batch_size}_programs"] = programs
    out[f"{num_seeds}x{batch_size}_images"] = batch["image"][:, :batch_size]
    out[f"{num_seeds}x{batch_size}_labels"] = batch["label"][:, :batch_size]
  return out


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  root = tmp_path_factory.mktemp("four")
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  script = _SCRIPT.format(tests=str(ROOT / "tests"), cases=json.dumps(CASES),
                          root=str(root))
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_four_devices_equal_one(case, four_devices, tmp_path):
  method, overrides = CASES[case]
  one = train.train_and_evaluate(smoke_config(method, **overrides),
                                 str(tmp_path))
  four = json.loads((four_devices / case / "summary.json").read_text())
  assert one["platform"]["data_parallel_devices"] == 1
  assert four["platform"]["data_parallel_devices"] == 4
  assert four["platform"]["seed_sharded"] == (case == "seed_sharded")
  assert_records_close(per_seed_records(four_devices / case),
                       per_seed_records(tmp_path), atol=1e-5)
  if method == "linear_probe":
    # A prompt is compared through its gradient below: Adam divides each
    # entry's gradient by its own running scale, so entries whose exact
    # gradient is ~0 take lr-sized steps in the direction of their rounding
    # noise, which any change of summation order changes.
    ours, theirs = (checkpoints.read(w)["state"]["params"]
                    for w in (four_devices / case, tmp_path))
    for name in theirs:
      np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-5)


def test_four_devices_compute_one_devices_gradient(four_devices):
  import jax
  from reprog_jax import methods
  from reprog_jax.model import network as network_lib
  network = network_lib.random_network(GRADIENT_NETWORK)
  method = methods.ilm_vp.visual_prompt(32, 10, 64)
  saved = np.load(four_devices / "gradients.npz")

  # Jitted (one program a batch size): op by op, each primitive compiles.
  @jax.jit
  def gradient(network, params, images, labels):
    def loss(params):
      logits = method.scores(params, network,
                             images.astype(np.float32) / 255)[:, :10]
      return optax_loss(logits, labels)
    return jax.grad(loss)(params)["program"]

  for case in ("4x8", "1x6"):
    images, labels = saved[f"{case}_images"], saved[f"{case}_labels"]
    for k in range(len(images)):  # Each seed on one device, unpadded.
      params = {"program": saved[f"{case}_programs"][k]}
      expected = gradient(network, params, images[k], labels[k])
      np.testing.assert_allclose(saved[case][k], expected, rtol=0, atol=1e-6)
      assert np.abs(expected).max() > 1e-3  # A real gradient.


def optax_loss(logits, labels):
  import optax
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         labels).mean()


def test_layout_shards_seeds_only_where_the_device_count_divides():
  import jax
  devices = jax.devices() * 4  # Stand-ins: only the count matters here.
  assert sharding.Layout.create(8, devices).seed_sharded
  assert not sharding.Layout.create(6, devices).seed_sharded
  assert sharding.Layout.create(6, devices).batch_pad == 4
  assert sharding.Layout.create(1, devices[:1]).batch_pad == 1


def test_batches_gathered_on_the_device_equal_the_hosts():
  from reprog_jax import data
  rng = np.random.default_rng(0)
  store = data.RowStore(rng.integers(0, 256, (9, 4, 4, 3), np.uint8),
                        np.arange(9) % 4, np.arange(9))
  layout = sharding.Layout.create(2)
  index = np.array([[3, 0, -1], [8, -1, -1]])
  on_host = layout.put_rows(store, index, layout.seed_batch)
  assert layout.keep_on_device(store, "yes")
  on_device = layout.put_rows(store, index, layout.seed_batch)
  for key, value in store.gather(index).items():
    np.testing.assert_array_equal(np.asarray(on_host[key]), value)
    np.testing.assert_array_equal(np.asarray(on_device[key]), value)
  # 'auto' leaves a CPU run's images in host memory (they are the device's).
  other = data.RowStore(store.rows, store.labels, store.split_positions)
  assert not layout.keep_on_device(other, "auto")


def test_auto_store_budget_counts_every_store_together(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  from reprog_jax import data
  layout = sharding.Layout.create(1, jax.devices()[:1])

  class Accelerator:  # With 1000 bytes: a quarter is 250.
    def memory_stats(self):
      return {"bytes_limit": 1000}
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "local_devices", lambda: [Accelerator()])

  def store(nbytes):
    return data.RowStore(np.zeros((nbytes, 1), np.uint8),
                         np.zeros(nbytes), np.arange(nbytes))
  # Each fits a quarter alone; together (300 bytes) they do not.
  three = [store(100), store(100), store(100)]
  assert not layout.keep_on_device(three, "auto")
  assert all(s.device_rows is None for s in three)
  two = [store(100), store(150)]  # 250 bytes: exactly the budget.
  assert layout.keep_on_device(two, "auto")
  assert all(s.device_rows is not None for s in two)
