"""The method registry: a method is one module; it refuses a name or short
name twice; and two plug-ins from outside the package, one written by hand
(`toy_method.py`) and one composed from parts (`parts_method.py`), each
registered by its import, run through every entry point with no edit
elsewhere."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import parts_method
import toy_method
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.methods import base
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
  assert spec.name == name and spec.family in base.FAMILIES
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
      16, 2, "resnet_mini")
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


def test_a_name_or_short_name_registered_twice_is_refused(monkeypatch):
  monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
  monkeypatch.setattr(methods, "_SOURCES", dict(methods._SOURCES))
  ilm_vp = methods.get("ilm_vp")
  shadow = dataclasses.replace(ilm_vp, short="vp2", module=None)
  with pytest.raises(errors.ConfigError) as raised:
    methods.register(shadow)
  assert str(raised.value) == (
      "method 'ilm_vp' (module test_methods): its name is 'ilm_vp''s "
      "(module reprog_jax.methods.ilm_vp); choose another, or pass "
      "replace=True to replace 'ilm_vp'")
  clash = dataclasses.replace(toy_method.SPEC, name="toy2", short="lp")
  with pytest.raises(errors.ConfigError, match=r"its short name 'lp' is "
                     r"'linear_probe''s \(module reprog_jax.methods."
                     r"linear_probe\)"):
    methods.register(clash)
  assert methods.get("ilm_vp") is ilm_vp  # Nothing was replaced.
  replaced = methods.register(shadow, replace=True)
  assert methods.get("ilm_vp") is replaced and replaced.short == "vp2"
  assert replaced.module == "test_methods"  # Its registering module.
  with pytest.raises(errors.ConfigError, match="short name 'vp2'"):
    methods.register(dataclasses.replace(toy_method.SPEC, name="toy3",
                                         short="vp2"), replace=True)


def test_a_run_finds_its_method_by_its_recorded_module(monkeypatch):
  monkeypatch.setattr(methods, "METHODS", {
      n: s for n, s in methods.METHODS.items() if n != "logit_head"})
  assert methods.find("logit_head") is None
  assert methods.find("logit_head", "no_such_module") is None
  monkeypatch.setattr(methods, "_SOURCES", dict(methods._SOURCES))
  monkeypatch.delitem(sys.modules, "parts_method")  # Imported anew.
  spec = methods.find("logit_head", "parts_method")
  assert spec.module == "parts_method" and spec.family == "probe"


def test_export_of_an_unknown_method_is_one_line_naming_its_module(
    tmp_path, capsys):
  from convert import cli  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / "ghost_run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text(json.dumps(
      {"method": "ghost", "seed": 4, "seeds": None}))
  (run_dir / "summary.json").write_text(json.dumps(
      {"method": "ghost", "method_module": "ghost_plugin"}))
  assert cli.main(["export", str(run_dir), "--out",
                   str(tmp_path / "x.pth")]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err
  assert (f"{run_dir}: method 'ghost' is not registered and its module "
          f"'ghost_plugin' (recorded by the run) cannot be imported here; "
          f"put its directory on PYTHONPATH, e.g. "
          f"REPROG_JAX_METHODS=ghost_plugin python -m convert export") in err
  (run_dir / "summary.json").unlink()  # An interrupted run of its own.
  assert cli.main(["export", str(run_dir), "--out",
                   str(tmp_path / "x.pth")]) == 1
  assert "the run does not record its module; name it, e.g. " \
      "REPROG_JAX_METHODS=my_package.my_method" in capsys.readouterr().err
  assert not (tmp_path / "x.pth").exists()


def test_a_sweep_imports_the_methods_its_study_recorded(tmp_path,
                                                        monkeypatch):
  monkeypatch.setattr(methods, "METHODS", {
      n: s for n, s in methods.METHODS.items() if n != "logit_head"})
  monkeypatch.setattr(methods, "_SOURCES", dict(methods._SOURCES))
  monkeypatch.delitem(sys.modules, "parts_method")
  (tmp_path / "study.json").write_text(json.dumps(
      {"study": {}, "cells": [],
       "method_modules": {"logit_head": "parts_method",
                          "gone": "no_such_plugin"}}))
  sweep.import_recorded_methods(str(tmp_path))
  assert methods.get("logit_head").module == "parts_method"
  assert "gone" not in methods.names()  # Left for the grid's one line.


def _run(*args, plugin="toy_method"):
  env = dict(os.environ, REPROG_JAX_METHODS=plugin,
             PYTHONPATH=os.pathsep.join(
                 [str(TESTS), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _check_toy_export(exported, best):
  np.testing.assert_array_equal(exported["bias"].numpy(),
                                np.asarray(best["params"]["bias"])[0])
  assert not np.allclose(exported["bias"].numpy(), 0.5)  # It trained.
  np.testing.assert_array_equal(exported["mapping_sequence"].numpy(),
                                np.arange(10))


def _check_parts_export(exported, best):
  # A linear head on the logits: FullyMap's layout, (T, S) and (T,).
  head = exported["output_mapping_dict"]
  np.testing.assert_array_equal(
      head["weight"].numpy(), np.asarray(best["params"]["mapping_kernel"])[0].T)
  np.testing.assert_array_equal(head["bias"].numpy(),
                                np.asarray(best["params"]["mapping_bias"])[0])
  assert set(exported) == {"output_mapping_dict", "epoch", "best_acc",
                           "exported_from"}


@pytest.mark.parametrize("plugin, spec, flags, check_export, label", [
    (toy_method, toy_method.SPEC, ["--config.bias_init=0.5"],
     _check_toy_export, "Toy"),
    (parts_method, parts_method.SPEC, [], _check_parts_export, "LH"),
])
def test_a_plugin_runs_through_main_sweep_report_and_export(
    plugin, spec, flags, check_export, label, tmp_path):
  name = plugin.__name__
  # main: its own module as the config file, in a fresh process.
  run_dir = tmp_path / "run"
  _run("reprog_jax.main", f"--config=tests/{name}.py:smoke",
       f"--workdir={run_dir}", "--config.progress=False",
       "--config.epochs=1", "--config.plot_interval=0", *flags, plugin=name)
  summary = json.loads((run_dir / "summary.json").read_text())
  assert (summary["method"], summary["method_module"]) == (spec.name, name)

  # export: the process imports the module the run recorded (no
  # REPROG_JAX_METHODS).
  out = tmp_path / "plugin.pth"
  _run("convert", "export", str(run_dir), "--out", str(out), plugin="")
  exported = torch.load(out, weights_only=True)
  check_export(exported, checkpoints.read(str(run_dir))["best"])
  assert exported["epoch"] == 0 and exported["exported_from"]["method"] == (
      spec.name)

  # sweep and report, in this process (the test module registered it); a
  # smoke study: the method's own smoke sizes, no overrides of its own.
  study = {"networks": {"dense": {"dir": None, "random": "resnet_mini",
                                  "kind": "dense"}},
           "methods": [spec.name], "datasets": ["cifar10"],
           "n_shots": [2], "seeds": [0, 1], "smoke": True,
           "overrides": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16,
                         "plot_interval": 0,  # Seconds a run; none tested.
                         "data": {"mock": True, "worker_count": 0}}}
  sweep_dir = tmp_path / "sweep"
  outcomes = sweep.run(study, str(sweep_dir))
  cell_name = f"{spec.short}/dense/cifar10/2-shot"
  assert {name: o["status"] for name, o in outcomes.items()} == {
      cell_name: "done"}
  cell = json.loads((sweep_dir / cell_name / "summary.json").read_text())
  smoke = run_config.method_config(spec.name, "smoke")
  assert cell["config"]["image_size"] == smoke.image_size  # Its smoke size.
  assert json.loads((sweep_dir / cell_name / "cell.json").read_text())[
      "method_module"] == name
  assert report.main([str(sweep_dir)]) == 0
  table = (sweep_dir / "report.md").read_text()
  assert f"| {label} | dense |" in table, table
