"""The method registry: a method is one module, and a toy method from
outside the package (`toy_method.py`, registered by its import) runs
through every entry point with no edit elsewhere."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import toy_method
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.model import network as network_lib
from reprog_jax.study import report
from reprog_jax.study import sweep
from reprog_jax.train import checkpoints
from reprog_jax.train import run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def network():
  return network_lib.random_network("resnet18")


@pytest.mark.parametrize("name", methods.names())
def test_every_spec_agrees_with_what_it_builds(name, network):
  spec = methods.get(name)
  assert spec.name == name and spec.family in ("prompt", "probe")
  config = run_config.method_config(name, "smoke")
  run_config.check(config)  # A smoke preset runs as it is.
  size = run_config.image_size(config)
  method = methods.build(config, network, 10, size)
  # The benchmark reads `encodes` before anything is built.
  assert spec.encodes == (method.encode is not None)
  trained = method.init(jax.random.key(0))
  layout = spec.to_pytorch(trained, method.initial_mapping, size)

  def arrays(tree):
    return [leaf for value in tree.values()
            for leaf in (arrays(value) if isinstance(value, dict) else [value])]
  assert all(isinstance(a, np.ndarray) for a in arrays(layout)), layout
  if spec.torch_reference:  # A name: it must resolve to a builder.
    assert callable(spec.torch_reference_builder())
  else:
    with pytest.raises(errors.ConfigError, match="no PyTorch reference"):
      spec.torch_reference_builder()


def test_a_method_adds_checks_and_shrinks_its_own_fields():
  full = run_config.method_config(toy_method.NAME, "flowers102")
  smoke = run_config.method_config(toy_method.NAME, "smoke")
  assert (full.image_size, full.bias_init, full.data.name) == (
      32, 0.0, "flowers102")
  # The base fields shrink for every method; its own as it says.
  assert (smoke.image_size, smoke.epochs, smoke.random_network) == (
      16, 2, "resnet18")
  smoke.bias_init = float("nan")
  with pytest.raises(errors.ConfigError,
                     match=r"^config: bias_init must be a finite number"):
    run_config.check(smoke)


def test_an_unknown_method_is_one_line_naming_the_plugin_variable():
  with pytest.raises(errors.ConfigError) as raised:
    run_config.method_config("prompt_tuning", "smoke")
  message = str(raised.value)
  assert "\n" not in message and "'prompt_tuning'" in message
  assert all(name in message for name in methods.names())
  assert methods.PLUGINS_ENV in message


def test_plugins_named_in_the_environment_are_imported(tmp_path,
                                                       monkeypatch):
  (tmp_path / "plugin_method.py").write_text(
      "from reprog_jax import methods\n"
      "from reprog_jax.methods.base import MethodSpec\n"
      "methods.register(MethodSpec(name='plugged', short='pl', label='PL',\n"
      "                            family='probe', build=None))\n")
  (tmp_path / "broken_plugin.py").write_text("import no_such_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
  monkeypatch.setenv(methods.PLUGINS_ENV, " plugin_method , ")
  assert methods.get("plugged").short == "pl"
  assert methods.names()[-1] == "plugged"
  monkeypatch.setenv(methods.PLUGINS_ENV, "plugin_methods")
  with pytest.raises(errors.ConfigError,
                     match=r"REPROG_JAX_METHODS: no module 'plugin_methods'"):
    methods.names()
  # A plug-in that fails to import its own dependency is its bug: the
  # traceback stays.
  monkeypatch.setenv(methods.PLUGINS_ENV, "broken_plugin")
  with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
    methods.names()


def _run(*args):
  env = dict(os.environ, REPROG_JAX_METHODS="toy_method",
             PYTHONPATH=os.pathsep.join(
                 [str(TESTS), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_a_toy_method_runs_through_main_sweep_report_and_export(tmp_path):
  # main: its own module as the config file, in a fresh process.
  run_dir = tmp_path / "run"
  _run("reprog_jax.main", "--config=tests/toy_method.py:smoke",
       f"--workdir={run_dir}", "--config.progress=False",
       "--config.epochs=1", "--config.bias_init=0.5")
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["method"] == toy_method.NAME

  # export: the process finds the method through REPROG_JAX_METHODS.
  out = tmp_path / "toy.pth"
  _run("convert", "export", str(run_dir), "--out", str(out))
  exported = torch.load(out, weights_only=True)
  best = checkpoints.read(str(run_dir))["best"]
  np.testing.assert_array_equal(exported["bias"].numpy(),
                                np.asarray(best["params"]["bias"])[0])
  assert not np.allclose(exported["bias"].numpy(), 0.5)  # It trained.
  np.testing.assert_array_equal(exported["mapping_sequence"].numpy(),
                                np.arange(10))
  assert exported["epoch"] == 0 and exported["exported_from"]["method"] == (
      toy_method.NAME)

  # sweep and report, in this process (the test module registered it).
  study = {"networks": {"dense": {"dir": None, "random": "resnet18",
                                  "kind": "dense"}},
           "methods": [toy_method.NAME], "datasets": ["cifar10"],
           "n_shots": [2], "seeds": [0, 1],
           "overrides": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16,
                         "data": {"mock": True, "worker_count": 0}},
           "method_overrides": {toy_method.NAME: {"image_size": 16}}}
  sweep_dir = tmp_path / "sweep"
  outcomes = sweep.run(study, str(sweep_dir))
  assert {name: o["status"] for name, o in outcomes.items()} == {
      "toy/dense/cifar10/2-shot": "done"}
  cell = json.loads(
      (sweep_dir / "toy/dense/cifar10/2-shot/summary.json").read_text())
  assert cell["config"]["image_size"] == 16
  assert report.main([str(sweep_dir)]) == 0
  table = (sweep_dir / "report.md").read_text()
  assert "| Toy | dense |" in table, table
