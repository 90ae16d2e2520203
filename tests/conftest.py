"""Shared fixtures: random torchvision checkpoints written with torch.save."""

import os
import tempfile

import numpy as np
import pytest

from convert import torch_io

# torch and torchvision are imported where used: a test's subprocess that
# imports this module for `smoke_config` does not pay their seconds.

# Many tests compile the same small programs (a smoke run's steps, again and
# again): a persistent compilation cache, shared with the subprocesses the
# tests start, compiles each once per machine. With the size limit every
# run sets (`compile_cache.enable`): JAX's size-limited cache cannot write
# at all into a directory holding an entry written without a limit (its
# eviction scan reads every entry's access-time file, which such an entry
# lacks), and then every subprocess compiled everything again. (Older test
# runs left such entries under the directory's old name, `-xla-cache`.)
_COMPILATION_CACHE = os.path.join(tempfile.gettempdir(),
                                  f"reprog-jax-tests-{os.getuid()}-xla-lru")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from reprog_jax import compile_cache  # pylint: disable=g-import-not-at-top,wrong-import-position
jax.config.update("jax_compilation_cache_dir",
                  os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_compilation_cache_max_size", compile_cache.MAX_BYTES)


def torch_reference(arch, state_dict, mask=None, num_classes=1000):
  """torchvision `arch` holding `weight * mask`, built here independently of
  the converter (the PyTorch version's recipe for a ticket)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  model = getattr(torchvision.models, arch)(weights=None,
                                            num_classes=num_classes)
  tensors = {k: torch.as_tensor(v) for k, v in state_dict.items()}
  for key, m in (mask or {}).items():
    tensors[key] = tensors[key] * torch.as_tensor(m, dtype=torch.float32)
  model.load_state_dict(tensors)
  return model.eval()


def run_torch(model, images_nhwc, features=False):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    if features:
      body = torch.nn.Sequential(*list(model.children())[:-1])
      return body(x).flatten(1).numpy()
    return model(x).numpy()


def random_mask(state_dict, keep, seed):
  """0/1 masks on every conv weight and the fc weight (the LT mask file's
  keys), keeping about `keep` of each."""
  rng = np.random.default_rng(seed)
  return {k: (rng.random(v.shape) < keep).astype(np.float32)
          for k, v in state_dict.items()
          if k.endswith("weight") and (v.ndim == 4 or k == "fc.weight")}


def save_pth(path, tensors_or_obj):
  import torch  # pylint: disable=g-import-not-at-top
  obj = tensors_or_obj
  if isinstance(obj, dict):
    obj = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
           for k, v in obj.items()}
  torch.save(obj, path)
  return str(path)


@pytest.fixture(scope="session")
def resnet18_state():
  return torch_io.random_state_dict("resnet18", seed=1)


@pytest.fixture(scope="session")
def resnet18_pth(tmp_path_factory, resnet18_state):
  return save_pth(tmp_path_factory.mktemp("r18") / "resnet18.pth",
                  resnet18_state)


@pytest.fixture(scope="session")
def network_dir(tmp_path_factory, resnet18_pth):
  """`resnet18_pth` converted by `python -m convert torch` (read-only: a
  test that changes a network converts its own)."""
  from convert import cli  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("network") / "net"
  assert cli.main(["torch", "--arch", "resnet18", "--weights", resnet18_pth,
                   "--out", str(out), "--no-verify"]) == 0
  return str(out)


def save_random_network(directory, num_classes=1000, arch="resnet_mini"):
  """A dense `arch` with `random_variables`' values (seed 0), saved as a
  network directory: a run that loads it compiles no random
  initialisation (flax's costs seconds a process)."""
  from reprog_jax.model import masks as masks_lib  # pylint: disable=g-import-not-at-top
  from reprog_jax.model import network_dir  # pylint: disable=g-import-not-at-top
  from reprog_jax.model import resnet  # pylint: disable=g-import-not-at-top
  variables = random_variables(
      resnet.get_architecture(arch)(num_classes=num_classes))
  network_dir.save(directory, arch=arch, params=variables["params"],
                   batch_stats=variables["batch_stats"],
                   masks=masks_lib.dense(variables["params"]),
                   meta={"num_classes": num_classes, "sources": {},
                         "ticket": None, "dense": True})
  return directory


def listing(directory):
  """Everything under `directory`, to check that nothing was written."""
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, dirs, files in os.walk(directory)
                for name in dirs + files)


def smoke_config(name="ilm_vp", **overrides):
  """`configs/<name>.py:smoke`, quiet and drawing no figures (they cost
  seconds a run; a test of figures asks for them: `plot_interval=10`), with
  `overrides` (dotted keys allowed as `data__n_shot`)."""
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"{name}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.progress = False
  config.plot_interval = 0
  for key, value in overrides.items():
    *parents, leaf = key.split("__")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def lp_config(**overrides):
  """The short linear-probing run the resume tests share: the smoke preset,
  2 epochs at 32 px, with `overrides` (as `smoke_config`'s)."""
  return smoke_config("linear_probe", **{"epochs": 2, "image_size": 32,
                                         **overrides})


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """`lp_config()` stopped after epoch 0 (read-only: `copy_stopped_run`
  gives each test its own copy)."""
  from reprog_jax.train import checkpoints  # pylint: disable=g-import-not-at-top
  from reprog_jax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("stopped") / "w"
  loop.train_and_evaluate(lp_config(), str(workdir), stop_after_epoch=0)
  assert checkpoints.latest_epoch(workdir) == 0
  return workdir


def copy_stopped_run(workdir, stopped_run):
  """`workdir` as `lp_config()` stopped after epoch 0 leaves it: a copy of
  `stopped_run` (a workdir records no path of its own)."""
  import shutil  # pylint: disable=g-import-not-at-top
  from reprog_jax.train import checkpoints  # pylint: disable=g-import-not-at-top
  shutil.copytree(stopped_run, workdir, dirs_exist_ok=True)
  assert checkpoints.latest_epoch(workdir) == 0


def random_variables(model, seed: int = 0, random_affine: bool = False,
                     head_scale: float = 1.0) -> dict:
  """`model.init`'s variables (`params`, `batch_stats`), drawn in numpy as
  torchvision initialises its ResNets: convolutions kaiming-normal (fan
  out, ReLU gain), the head normal with variance `head_scale**2 / fan in`,
  zero biases and means, unit BatchNorm scales and variances.

  `random_affine`: random BatchNorm statistics, scales and biases instead
  (variances U(0.5, 2), means N(0, 0.2^2), scales U(0.7, 1.2), biases
  N(0, 0.1^2)), so that a comparison exercises every term of the affine
  maps rather than identities.

  Not flax's `model.init`: compiled, its random number generation costs
  several seconds a network on a CPU (op by op, more), and a test's random
  network needs values of the right scale, nothing else.
  """
  import flax.traverse_util  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(shapes)
  values = {}
  for path in sorted(flat):
    shape, name = flat[path].shape, path[-1]
    if name == "kernel":  # HWIO convolutions, (in, out) dense.
      fan = (np.prod(shape[:-2]) * shape[-1] if len(shape) == 4
             else shape[0])
      gain = 2.0 if len(shape) == 4 else head_scale**2
      # Drawn in float64: numpy's float32 sampler returns exact zeros (one
      # in ~10 million), which would make a dense network look pruned.
      value = rng.standard_normal(shape) * np.sqrt(gain / fan)
    elif not random_affine:
      value = np.ones(shape) if name in ("scale", "var") else np.zeros(shape)
    elif name == "var":
      value = rng.uniform(0.5, 2.0, shape)
    elif name == "scale":  # Moderate activations at any depth.
      value = rng.uniform(0.7, 1.2, shape)
    else:
      assert name in ("mean", "bias"), path
      value = (0.2 if name == "mean" else 0.1) * rng.standard_normal(shape)
    values[path] = value.astype(np.float32)
  return flax.traverse_util.unflatten_dict(values)


def per_seed_records(workdir):
  """metrics.jsonl as {(epoch, seed): record without timings}."""
  from reprog_jax.metrics import metric_writer
  return {(r["epoch"], r["seed"]): {k: v for k, v in r.items()
                                    if k not in metric_writer.TIMING_KEYS}
          for r in metric_writer.read_metrics(workdir)}


# Record fields compared through their inverse: a fitted temperature T
# sits in a flat NLL minimum and may be large (a random network's ~40), so
# T moves by more than `atol` when the logits move by less. 1 / T, what the
# logits are multiplied by, is compared relatively too (`INVERSE_RTOL`): on
# a few held-out examples the fit's optimality condition (the mean softmax
# logit equal to the labels' mean logit) is flat, and a last-bit change of
# logits of size ~50 (a random network's) moves the exact (float64,
# bisected) optimum by ~3e-4 of itself.
INVERSE_FIELDS = ("temperature",)
INVERSE_RTOL = 1e-3


def assert_records_close(ours, theirs, atol):
  """Every (epoch, seed) of `theirs` is in `ours`, floats within `atol`
  (their inverses for `INVERSE_FIELDS`), everything else equal."""
  assert set(theirs) <= set(ours)
  for key, record in theirs.items():
    assert set(ours[key]) == set(record)
    for name, value in record.items():
      if isinstance(value, float):
        mine = ours[key][name]
        rtol = None
        if name in INVERSE_FIELDS:
          mine, value, rtol = 1 / mine, 1 / value, INVERSE_RTOL
        assert mine == pytest.approx(value, abs=atol, rel=rtol), (key, name)
      else:
        assert ours[key][name] == value, (key, name)


@pytest.fixture(autouse=True)
def _runs_trace_afresh_where_a_test_patches(request):
  """A test that patches (`monkeypatch.setattr`) may patch what a run's
  jitted steps trace: every run after a patch traces afresh, reusing no
  steps that runs before it kept in this process (`loop.forget_kept`), and
  the test leaves none of its own to later tests."""
  import sys  # pylint: disable=g-import-not-at-top

  def forget():
    loop = sys.modules.get("reprog_jax.train.loop")
    if loop:
      loop.forget_kept()

  if "monkeypatch" not in request.fixturenames:
    yield
    return
  monkeypatch = request.getfixturevalue("monkeypatch")
  setattr_ = monkeypatch.setattr

  def setattr_and_forget(*args, **kwargs):
    setattr_(*args, **kwargs)
    forget()

  monkeypatch.setattr = setattr_and_forget
  yield
  forget()


def run_main_here(workdir, *flags):
  """`python -m reprog_jax.main --workdir=WORKDIR FLAGS` run in this process
  as `app.run` runs it (its flags parser, then `main`), from the checkout's
  root; its exit status. What it prints goes where this process's output
  goes (`main_in_process` captures it).

  Another process's start (seconds of imports) proves nothing more about
  what `main` prints and returns; tests of what only a process shows (a
  real exit, a plug-in imported at its start, several processes) start one.
  """
  import sys  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from reprog_jax import main  # pylint: disable=g-import-not-at-top
  # Not through `monkeypatch`: runs here patch nothing that they trace, so
  # they may reuse what earlier runs kept (see the fixture above).
  cwd, argv_before = os.getcwd(), sys.argv
  os.chdir(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))  # Config files are named from there.
  argv = ["main", f"--workdir={workdir}", *flags]
  sys.argv = argv  # Where --config finds overrides.
  verbosity = logging.get_verbosity()
  try:
    with warnings.catch_warnings():  # ml_collections loading --config.
      warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
      return main.main(main.parse_flags(argv))
  except SystemExit as e:  # The parser's one line for a bad flag.
    return e.code
  finally:  # Other tests parse no flags, and keep absl's warnings.
    absl_flags.FLAGS.unparse_flags()
    # Each parse of --config defines a flag per override it finds.
    for name in [n for n in absl_flags.FLAGS if n.startswith("config.")]:
      delattr(absl_flags.FLAGS, name)
    logging.set_verbosity(verbosity)
    os.chdir(cwd)
    sys.argv = argv_before


@pytest.fixture
def main_in_process(capfd):
  """`run(W, *FLAGS)`: `run_main_here(W, *FLAGS)`, as a `CompletedProcess`
  of its exit status and what it wrote to stdout and stderr (the file
  descriptors' too)."""
  import subprocess  # pylint: disable=g-import-not-at-top

  def run(workdir, *flags):
    capfd.readouterr()
    status = run_main_here(workdir, *flags)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(
        ["main", f"--workdir={workdir}", *flags], status, out, err)

  return run
