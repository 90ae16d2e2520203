"""End to end through `python -m reprog_jax.main`: files, resume, bad input."""

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import run_main_here, smoke_config
from reprog_jax.train import checkpoints
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.metrics import metric_writer
from reprog_jax.train import loop as train
from reprog_jax.train import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING = metric_writer.TIMING_KEYS
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "test_acc",
               "test_ece", "test_nll", "test_brier", "test_mce",
               "test_ece_adaptive", "test_pytorch_logged_quantity",
               "temperature", "test_ece_ts", "test_ece_adaptive_ts",
               "test_nll_ts"}


def run_main(workdir, *overrides, config="configs/ilm_vp.py:smoke"):
  env = dict(os.environ)  # With conftest's compilation cache.
  return subprocess.run(
      [sys.executable, "-m", "reprog_jax.main", f"--config={config}",
       f"--workdir={workdir}", "--config.progress=False", *overrides],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def without_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def vp_run(tmp_path_factory):
  """The ILM-VP smoke command with 3 epochs, run in this process (the
  README's own smoke command runs in a process of its own: test_readme)."""
  workdir = tmp_path_factory.mktemp("runs") / "vp"
  flags = ("--config=configs/ilm_vp.py:smoke", "--config.progress=False",
           "--config.epochs=3")
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = run_main_here(workdir, *flags)
  assert status == 0, err.getvalue()[-3000:]
  return workdir, subprocess.CompletedProcess(flags, status, out.getvalue(),
                                              err.getvalue())


def test_vp_smoke_run_writes_every_file(vp_run):
  workdir, proc = vp_run
  assert "RANDOMLY INITIALISED" in proc.stdout
  records = metric_writer.read_metrics(workdir)
  assert [r["epoch"] for r in records] == [0, 1, 2]
  assert all(METRIC_KEYS <= set(r) for r in records)
  # MultiStepLR: int(0.5 * 3) = 1 and int(0.72 * 3) = 2.
  assert [r["lr"] for r in records] == pytest.approx([1e-2, 1e-3, 1e-4])
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["best"]["test_acc"] == max(r["test_acc"] for r in records)
  assert summary["last"] == without_timing(records)[-1]
  assert summary["per_seed"][0]["best"] == summary["best"]
  assert summary["seeds"] == [4] and all(r["seed"] == 4 for r in records)
  assert summary["sparsity"]["remaining_percent"] == 100.0
  assert len(summary["mapping_sequence"]) == 10
  assert len(set(summary["mapping_sequence"])) == 10
  assert summary["wall_time_seconds"] > 0 and summary["train_images_per_second"] > 0
  assert summary["config"]["method"] == "ilm_vp"
  assert summary["platform"]["backend"] == "cpu"
  assert summary["platform"]["compute_dtype"] == "float32"  # 'auto' on CPU.
  assert os.listdir(workdir / "tensorboard")
  for name in ("label_mapping", "prompt", "prompted_examples", "reliability",
               "curves"):
    with Image.open(workdir / "plots" / f"{name}.png") as img:
      assert min(img.size) >= 64
  assert checkpoints.latest_epoch(workdir) == 2
  saved = checkpoints.read(workdir)
  assert saved["best"]["epoch"].tolist() == [summary["best"]["epoch"]]
  assert saved["best"]["test_acc"][0] == pytest.approx(
      summary["best"]["test_acc"])
  assert saved["mapping_sequence"][0].tolist() == summary["mapping_sequence"]
  # The best epoch's reliability diagram: every test example in one of 15
  # equal-width bins, whose gaps add up to that epoch's ECE.
  reliability = summary["per_seed"][0]["reliability"]
  np.testing.assert_allclose(reliability["upper"], np.arange(1, 16) / 15)
  counts = np.array(reliability["count"])
  assert counts.sum() == summary["test_examples"]
  gaps = counts * np.abs(np.subtract(reliability["accuracy"],
                                     reliability["confidence"]))
  assert gaps.sum() / counts.sum() == pytest.approx(
      summary["best"]["test_ece"], abs=1e-6)
  assert len({r["test_ece"] for r in records}) > 1  # The epoch matters.
  np.testing.assert_array_equal(saved["best"]["reliability"]["count"][0],
                                counts)


def test_resumed_run_ends_identical_to_an_uninterrupted_one(vp_run, tmp_path,
                                                           main_in_process):
  reference, _ = vp_run  # The command's own process.
  workdir = tmp_path / "vp"
  flags = ("--config=configs/ilm_vp.py:smoke", "--config.progress=False",
           "--config.epochs=3")
  first = main_in_process(workdir, *flags, "--stop_after_epoch=1")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "stopped after epoch 1" in first.stdout
  assert len(metric_writer.read_metrics(workdir)) == 2
  assert not (workdir / "summary.json").exists()
  second = main_in_process(workdir, *flags)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming" in second.stdout
  assert without_timing(metric_writer.read_metrics(workdir)) == \
      without_timing(metric_writer.read_metrics(reference))
  ours, theirs = (json.loads((w / "summary.json").read_text())
                  for w in (workdir, reference))
  for key in ("best", "last", "mapping_sequence"):
    assert ours[key] == theirs[key]
  programs = [_checkpointed_program(w) for w in (workdir, reference)]
  np.testing.assert_array_equal(*programs)
  assert np.abs(programs[0]).max() > 0  # It trained.


def _checkpointed_program(workdir):
  return checkpoints.read(workdir)["state"]["params"]["program"]


def _lp_smoke(**overrides):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "lp_config", ROOT / "configs" / "linear_probe.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.progress = False
  config.epochs = 1
  config.image_size = 32
  for key, value in overrides.items():
    config[key] = value
  return config


def test_linear_probe_smoke_run_in_process(tmp_path):
  summary = train.train_and_evaluate(_lp_smoke(), str(tmp_path))
  # Linear probing's mapping is the identity.
  assert summary["method"] == "linear_probe"
  assert summary["mapping_sequence"] == list(range(10))
  records = metric_writer.read_metrics(tmp_path)
  assert len(records) == 1 and METRIC_KEYS <= set(records[0])
  assert not (tmp_path / "plots" / "label_mapping.png").exists()
  assert (tmp_path / "plots" / "reliability.png").exists()


def test_a_config_run_again_in_one_process_traces_nothing_again(tmp_path):
  # The same config on the same network object: the kept method and jitted
  # steps, the same records; another config: its own, traced; a config
  # holding a value JSON cannot (so no key can say all of it): none kept.
  traced = []

  def count(event, *args, **kwargs):
    if event == "/jax/core/compile/jaxpr_trace_duration":
      traced.append(event)

  def run(name, extra=None, **overrides):
    config = smoke_config("ilm_vp", epochs=1, **overrides)
    if extra is not None:
      with config.unlocked():
        config.extra = extra
    traced.clear()
    train.train_and_evaluate(config, str(tmp_path / name))
    return len(traced), without_timing(
        metric_writer.read_metrics(tmp_path / name))

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    _, first = run("first")
    assert run("again") == (0, first)
    lr_traced, other = run("other", lr=smoke_config("ilm_vp").lr * 10)
    opaque = [run(f"opaque{k}", extra=object())[0] for k in range(2)]
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert lr_traced > 0
  assert other[0]["lr"] == pytest.approx(first[0]["lr"] * 10)
  assert all(opaque)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  config = _lp_smoke(epochs=2)
  train.train_and_evaluate(config, str(tmp_path), stop_after_epoch=0)
  real = methods.linear_probe.linear_probe

  def poisoned(*args, **kwargs):
    method = real(*args, **kwargs)
    return method.__class__(**{**method.__dict__, "scores": lambda *a: (
        method.scores(*a) * np.nan)})

  monkeypatch.setattr(methods.linear_probe, "linear_probe", poisoned)
  with pytest.raises(train.TrainingError,
                     match=r"non-finite loss at epoch 1 step 0 .*checkpoint "
                     r"\(epoch 0\) is kept"):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoints.latest_epoch(tmp_path) == 0
  assert [r["epoch"] for r in metric_writer.read_metrics(tmp_path)] == [0]


def _fake_checkpoint(workdir):
  """A checkpoint of this version's format (it keeps a validation epoch),
  with nothing else in it."""
  checkpoints.save(str(workdir), {"epoch": np.asarray(0, np.int32),
                                  "best": {"val_acc": np.zeros(1)}})


def test_a_blmpp_run_of_the_earlier_defaults_is_told_how_to_resume(tmp_path):
  # What config.json held then: lap None (BLM++ read it as 0), top_k 3,
  # no topk_ratio.
  f32 = np.float32
  config = smoke_config("ilm_vp", label_mapping="blmpp")
  workdir_lib.prepare(config, str(tmp_path), f32)
  path = tmp_path / "config.json"
  old = {k: v for k, v in json.loads(path.read_text()).items()
         if k != "topk_ratio"}
  path.write_text(json.dumps({**old, "lap": None, "top_k": 3}))
  _fake_checkpoint(tmp_path)
  with pytest.raises(train.TrainingError) as error:
    workdir_lib.prepare(config, str(tmp_path), f32)
  assert str(error.value).startswith(
      f"{tmp_path} holds a run with another config (differs in lap, top_k, "
      f"topk_ratio); "
      f"to resume it, pass --config.lap=0.0 --config.top_k=3; use another "
      f"--workdir")
  with config.unlocked():
    config.lap, config.top_k = 0.0, 3
  workdir_lib.prepare(config, str(tmp_path), f32)  # It resumes.


def test_workdir_with_another_config_is_refused_unless_overwrite(tmp_path):
  f32 = np.float32
  workdir_lib.prepare(_lp_smoke(), str(tmp_path), f32)
  # No checkpoint yet: nothing to lose, another config just takes over.
  workdir_lib.prepare(_lp_smoke(lr=0.5), str(tmp_path), f32)
  _fake_checkpoint(tmp_path)
  (tmp_path / "metrics.jsonl").write_text("{\"epoch\": 0}\n")
  with pytest.raises(train.TrainingError,
                     match=r"holds a run with another config \(differs in lr\)"):
    workdir_lib.prepare(_lp_smoke(lr=0.1), str(tmp_path), f32)
  # A run resumed in bfloat16 would not end as it would have in float32.
  with pytest.raises(train.TrainingError, match="differs in resolved_dtype"):
    workdir_lib.prepare(_lp_smoke(lr=0.5), str(tmp_path), jax.numpy.bfloat16)
  assert (tmp_path / "metrics.jsonl").exists()  # Nothing lost.
  # Loader knobs, progress bars and overwrite change nothing computed.
  workdir_lib.prepare(_lp_smoke(lr=0.5, progress=True, overwrite=True),
                        str(tmp_path), f32)
  config = _lp_smoke(lr=0.5)
  config.data.worker_count = 7
  workdir_lib.prepare(config, str(tmp_path), f32)
  assert checkpoints.latest_epoch(tmp_path) == 0
  workdir_lib.prepare(_lp_smoke(lr=0.1, overwrite=True), str(tmp_path), f32)
  assert not (tmp_path / "metrics.jsonl").exists()
  assert checkpoints.latest_epoch(tmp_path) is None


def test_bad_input_writes_nothing_and_overwrite_loses_nothing(tmp_path):
  from reprog_jax import data
  with pytest.raises(data.DataError):
    train.train_and_evaluate(_lp_smoke(n_shot=0), str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()
  old = tmp_path / "old"
  old.mkdir()
  workdir_lib.prepare(_lp_smoke(), str(old), np.float32)
  _fake_checkpoint(old)
  before = sorted(os.listdir(old))
  config = _lp_smoke(overwrite=True, lr=0.5, random_network="",
                     network_dir=str(tmp_path / "typo"))
  from reprog_jax.model import network_dir
  with pytest.raises(network_dir.NetworkDirError):
    train.train_and_evaluate(config, str(old))
  assert sorted(os.listdir(old)) == before
  assert checkpoints.latest_epoch(old) == 0


def test_more_than_1000_classes_is_refused_for_vp(tmp_path, monkeypatch):
  from reprog_jax.train import inputs
  real = inputs.open_run_data

  def many_classes(*args):
    run_data = real(*args)
    return dataclasses.replace(run_data, class_names=("c",) * 1001)

  monkeypatch.setattr(inputs, "open_run_data", many_classes)
  config = _lp_smoke()
  config.unlock()
  config.method = "ilm_vp"
  config.prompt_output_size = 64
  config.label_mapping = "ilm"
  config.mapping_interval = 1
  # A user error (one line from main), not a bug.
  with pytest.raises(errors.ConfigError,
                     match="1001 classes; .* at most .*1000"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("overrides, message", [
    (["--config.random_network=", "--config.network_dir=/nonexistent/net"],
     "/nonexistent/net: no such network directory"),
    (["--config.n_shott=3"], "unknown config field n_shott"),
    (["--config.n_shot=many"], "flag --config.n_shot=many: invalid literal"),
    (["--config.label_mapping=best"], "Unknown label mapping 'best'"),
    (["--config.seeds=(1,2,1)"], "seeds (1, 2, 1) repeat [1]"),
    (["--config.lr=nan"], "config: lr must be a finite number, got nan"),
    (["--distributed"], "--distributed: cannot reach the other processes"),
])
def test_bad_input_is_one_line_and_exit_1(overrides, message, tmp_path,
                                          main_in_process):
  if "--distributed" in overrides:  # Never in this process: it would join.
    proc = run_main(tmp_path / "w", *overrides)
  else:  # `main` as the command runs it: its status and its lines.
    proc = main_in_process(tmp_path / "w", "--config=configs/ilm_vp.py:smoke",
                           "--config.progress=False", *overrides)
  assert not (tmp_path / "w").exists()
  assert proc.returncode == 1
  assert proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stderr.startswith("reprog_jax.main: error: ")
  assert message in proc.stderr


def test_network_dir_that_is_not_a_convert_output(tmp_path):
  (tmp_path / "net").mkdir()
  (tmp_path / "net" / "weights.pth").write_text("x")
  config = _lp_smoke(random_network=None, network_dir=str(tmp_path / "net"))
  from reprog_jax.model import network_dir
  with pytest.raises(network_dir.NetworkDirError, match="not a `convert` output"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
