"""What a long training run needs besides the right numbers: divergence
reported where it happens, bad input in one line before the slow work,
readable results, and a summary that records how to reproduce it."""

import importlib.metadata
import json
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import copy_stopped_run, lp_config, smoke_config
from reprog_jax import layout
from reprog_jax.train import checkpoints
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.metrics import metric_writer
from reprog_jax.train import run_config
from reprog_jax.train import loop as train
from reprog_jax.train import passes
from reprog_jax.train import workdir as workdir_lib
from reprog_jax.data import prepare

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The same run as `lp_config()`, on the command line.
LP_FLAGS = ("--config=configs/linear_probe.py:smoke", "--config.progress=False",
            "--config.epochs=2", "--config.image_size=32")


def _main(workdir, *flags):
  """`python -m reprog_jax.main` on the linear-probing smoke run: the real
  command, for what only its process shows (its exit status, and all of
  its stderr up to its end)."""
  return subprocess.run(
      [sys.executable, "-m", "reprog_jax.main", f"--workdir={workdir}",
       *LP_FLAGS, *flags],
      cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
      timeout=300)


def _assert_one_line_error(proc, *fragments):
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.count("\n") == 1, proc.stderr[-3000:]
  assert proc.stderr.startswith("reprog_jax.main: error: ")
  for fragment in fragments:
    assert fragment in proc.stderr


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
  """`lp_config()` run to its end: (summary, workdir; read-only)."""
  workdir = tmp_path_factory.mktemp("whole") / "w"
  return train.train_and_evaluate(lp_config(), str(workdir)), workdir


# --------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------


class _Batches:
  """A sampler of `steps` batches for one seed."""

  seeds = (7,)

  def __init__(self, steps):
    self.steps = steps

  def __len__(self):
    return self.steps

  def epoch(self, epoch):
    del epoch
    return iter(range(self.steps))


class _Layout:

  seed_batch = None

  def put_rows(self, store, index, sharding):
    del store, sharding
    return index

  def to_host(self, tree):
    return tree


def test_epoch_sums_of_large_finite_losses_do_not_overflow():
  # Three steps of 8 examples with a mean loss of 3e37: each step's sum
  # (2.4e38) is a float32, their total (7.2e38) is not.
  def train_step(state, network, mappings, step):
    del network, mappings
    loss = np.float32([3e37])
    return state, {"loss": loss, "loss_sum": loss * np.float32(8),
                   "correct": np.int32([step]), "count": np.float32([8])}

  run = types.SimpleNamespace(
      train_step=train_step, encode_step=None, network=None, layout=_Layout(),
      schedule=None,
      inputs=types.SimpleNamespace(train_batches=_Batches(3), train=None),
      config=types.SimpleNamespace(progress=False),
      bar=lambda iterable, total, desc: iterable)
  _, metrics = passes.train_epoch(run, None, None, 0)
  assert metrics["train_loss"] == pytest.approx([3e37], rel=1e-6)
  assert metrics["train_acc"] == pytest.approx([(0 + 1 + 2) / 24])


# With the smoke preset's network, every step's loss is a finite float32,
# but the epoch's test NLL is not (1e35 keeps it finite; 7e35 already
# makes a step's loss infinite).
OVERFLOWING_LR = 3.5e35


def test_overflowing_metrics_are_divergence_not_infinity(tmp_path):
  with pytest.raises(train.TrainingError,
                     match=r"epoch 0\b.*\(seed 4\b.*; no checkpoint was "
                     r"written; lower --config.lr$"):
    train.train_and_evaluate(lp_config(lr=OVERFLOWING_LR), str(tmp_path))
  assert metric_writer.read_metrics(tmp_path) == []
  assert checkpoints.latest_epoch(tmp_path) is None
  assert not (tmp_path / "summary.json").exists()


def test_a_non_finite_test_metric_keeps_the_last_good_epoch(
    tmp_path, monkeypatch, stopped_run):
  copy_stopped_run(tmp_path, stopped_run)
  real = passes.evaluate_test

  def overflowing(*args, **kwargs):
    metrics, bins, counts = real(*args, **kwargs)
    metrics[0]["test_nll"] = float("inf")
    return metrics, bins, counts

  monkeypatch.setattr(passes, "evaluate_test", overflowing)
  with pytest.raises(train.TrainingError,
                     match=r"^the run diverged: test_nll is inf at epoch 1 "
                     r"\(seed 4\); the last good checkpoint \(epoch 0\) is "
                     r"kept; lower --config.lr$"):
    train.train_and_evaluate(lp_config(), str(tmp_path))
  assert checkpoints.latest_epoch(tmp_path) == 0
  assert [r["epoch"] for r in metric_writer.read_metrics(tmp_path)] == [0]
  assert not (tmp_path / "summary.json").exists()


def test_divergence_on_the_command_line_is_one_line(tmp_path,
                                                    main_in_process):
  proc = main_in_process(tmp_path / "w", *LP_FLAGS,
                         f"--config.lr={OVERFLOWING_LR}")
  _assert_one_line_error(proc, "epoch 0", "seed 4", "lower --config.lr")


def test_another_config_on_a_run_names_the_flags_that_resume_it(
    tmp_path, main_in_process, stopped_run):
  workdir = tmp_path / "w"
  copy_stopped_run(workdir, stopped_run)
  recorded = json.loads((workdir / layout.CONFIG_FILE).read_text())
  changed = ("--config.lr=0.5", "--config.n_shot=3", "--config.b1=0.8",
             "--config.data.name=eurosat")
  proc = main_in_process(workdir, *LP_FLAGS, *changed)
  resume = (f"--config.b1={recorded['b1']!r} "
            f"--config.data.name={recorded['data.name']} "
            f"--config.lr={recorded['lr']!r} "
            f"--config.n_shot={recorded['n_shot']!r}")
  _assert_one_line_error(
      proc, f"{workdir} holds a run with another config (differs in b1, "
      f"data.name, lr, n_shot); to resume it, pass {resume}; use another "
      f"--workdir, or pass --config.overwrite=True")
  # Those flags after the others: the run resumes, and ends.
  proc = main_in_process(workdir, *LP_FLAGS, *changed, *resume.split())
  assert proc.returncode == 0, proc.stderr
  assert "resuming" in proc.stdout and (workdir / "summary.json").exists()
  # A field recorded as None (seeds: the one `seed`) no flag sets back.
  proc = main_in_process(workdir, *LP_FLAGS, "--config.seeds=(0,1)")
  _assert_one_line_error(proc, "another config (differs in seeds); use "
                         "another --workdir")


@pytest.mark.parametrize("field", ["lr", "b1", "b2", "eps", "gamma",
                                   "weight_decay"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_optimiser_settings_are_refused(field, value):
  with pytest.raises(errors.ConfigError,
                     match=rf"config: {field} must be a finite number, got "
                     rf"{value}"):
    run_config.check(lp_config(**{field: value}))


# --------------------------------------------------------------------------
# Bad input: one line, before the slow work
# --------------------------------------------------------------------------


def test_workdir_that_is_a_file_is_refused_before_the_network_loads(
    tmp_path, main_in_process):
  afile = tmp_path / "results.txt"
  afile.write_text("not a directory")
  for workdir, where in ((afile, "is not a directory"),
                         (afile / "run",
                          f"is inside {afile}, which is not a directory")):
    proc = main_in_process(workdir, *LP_FLAGS)
    _assert_one_line_error(proc, f"--workdir {workdir} {where}")
    assert "RANDOMLY INITIALISED" not in proc.stdout  # Not loaded.
  assert afile.read_text() == "not a directory"


def test_unwritable_workdir_is_refused_before_the_network_loads(
    tmp_path, monkeypatch):
  # Tests may run as root, whom no permission bit stops: the check's own
  # question to the system is answered "no" instead.
  parent = tmp_path / "shared"
  parent.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda path, mode: (
      str(path) != str(parent) and real_access(path, mode)))
  monkeypatch.setattr(train, "load_network", lambda *a: pytest.fail(
      "the network loaded before the workdir was checked"))
  with pytest.raises(train.TrainingError,
                     match=f"{parent} is not writable by this user"):
    train.train_and_evaluate(lp_config(), str(parent / "run"))
  assert os.listdir(parent) == []


def test_corrupted_checkpoint_is_one_line_saying_how_to_recover(tmp_path,
                                                                stopped_run):
  workdir = tmp_path / "w"
  copy_stopped_run(workdir, stopped_run)
  data_files = sorted((workdir / "checkpoints" / "0").rglob("d/*"),
                      key=lambda p: p.stat().st_size)
  with open(data_files[-1], "r+b") as f:  # The largest: the trained values.
    f.truncate(100)
  proc = _main(workdir)
  # All of stderr: no asyncio "Task exception was never retrieved" either.
  _assert_one_line_error(proc, f"{workdir}/checkpoints/0: the checkpoint of "
                         f"epoch 0 cannot be read", "delete that directory")
  assert "resuming" not in proc.stdout


def test_altered_checkpoint_bytes_are_refused_before_orbax_reads(tmp_path,
                                                                stopped_run):
  workdir = tmp_path / "w"
  copy_stopped_run(workdir, stopped_run)
  victim = max((workdir / "checkpoints" / "0").rglob("d/*"),
               key=lambda p: p.stat().st_size)
  with open(victim, "r+b") as f:  # Same size, other bytes.
    f.seek(victim.stat().st_size // 2)
    f.write(b"\xa5" * 64)
  with pytest.raises(checkpoints.CheckpointError,
                     match=rf"{victim}: content differs"):
    train.train_and_evaluate(lp_config(), str(workdir))
  with pytest.raises(checkpoints.CheckpointError):  # The exporter's path.
    checkpoints.read(workdir)


def test_checkpoint_killed_before_its_file_record_resumes_exactly(
    tmp_path, stopped_run, whole_run):
  # kill -9 after Orbax committed epoch 0 but before its record was written.
  whole, _ = whole_run
  workdir = tmp_path / "w"
  copy_stopped_run(workdir, stopped_run)
  (workdir / "checkpoints" / "0" / layout.CHECKPOINT_MANIFEST).unlink()
  resumed = train.train_and_evaluate(lp_config(), str(workdir))
  assert resumed["per_seed"][0]["last"] == whole["per_seed"][0]["last"]
  assert (workdir / "checkpoints" / "1" / layout.CHECKPOINT_MANIFEST).exists()


def test_killed_after_the_last_checkpoint_before_the_summary(tmp_path,
                                                            whole_run):
  # kill -9 between the last epoch's checkpoint and summary.json: the re-run
  # trains nothing and writes the same summary.
  whole, finished = whole_run
  shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
  (tmp_path / "summary.json").unlink()
  again = train.train_and_evaluate(lp_config(), str(tmp_path))
  assert [r["epoch"] for r in metric_writer.read_metrics(tmp_path)] == [0, 1]
  for key in ("per_seed", "seeds_mean_std", "config"):
    assert again[key] == whole[key]


def test_workdir_with_checkpoints_but_no_config_is_refused(tmp_path,
                                                          stopped_run):
  copy_stopped_run(tmp_path, stopped_run)
  (tmp_path / layout.CONFIG_FILE).unlink()
  with pytest.raises(train.TrainingError,
                     match=r"holds a run with checkpoints but no config.json; "
                     r".*--config.overwrite=True"):
    train.train_and_evaluate(lp_config(), str(tmp_path))
  assert checkpoints.latest_epoch(tmp_path) == 0  # Nothing lost.
  summary = train.train_and_evaluate(lp_config(overwrite=True),
                                     str(tmp_path))
  assert [r["epoch"] for r in metric_writer.read_metrics(tmp_path)] == [0, 1]
  assert summary["config"]["overwrite"] is True


def test_a_bug_inside_training_keeps_its_traceback(tmp_path, monkeypatch,
                                                  capfd, main_in_process):
  # Only `errors.UserError` becomes one line; a ValueError from deep inside
  # (JAX, NumPy, our own code) is a bug and must show where it came from:
  # it leaves `main` as it was raised, which `app.run` (Python's own
  # handling) prints with its traceback and a non-zero exit status.
  def broken(*args, **kwargs):
    raise ValueError("deep inside an XLA kernel")

  monkeypatch.setattr(passes, "train_epoch", broken)
  with pytest.raises(ValueError, match="^deep inside an XLA kernel$") as bug:
    main_in_process(tmp_path / "w", *LP_FLAGS)
  from reprog_jax import main  # pylint: disable=g-import-not-at-top
  assert bug.traceback[-1].name == "broken"
  assert any(entry.name == "main" and str(entry.path) == main.__file__
             for entry in bug.traceback)
  assert "reprog_jax.main: error" not in capfd.readouterr().err


def test_metric_files_are_closed_when_training_fails(tmp_path, monkeypatch):
  opened = []
  real_init = metric_writer.MetricWriter.__init__

  def recording_init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    opened.append(self)

  def broken(*args, **kwargs):
    raise RuntimeError("a bug")

  monkeypatch.setattr(metric_writer.MetricWriter, "__init__", recording_init)
  monkeypatch.setattr(passes, "train_epoch", broken)
  with pytest.raises(RuntimeError, match="a bug"):
    train.train_and_evaluate(lp_config(), str(tmp_path))
  assert len(opened) == 1 and opened[0]._file.closed


def test_unknown_label_mapping_and_method_are_config_errors():
  config = smoke_config("ilm_vp", label_mapping="best")
  with pytest.raises(errors.ConfigError, match="Unknown label mapping 'best'"):
    run_config.check(config)
  config = smoke_config("ilm_vp", method="ilm_pv")
  with pytest.raises(errors.ConfigError, match="method 'ilm_pv' is not one"):
    methods.build(config, None, 10, 32)


# --------------------------------------------------------------------------
# prepare: bad split files and no network
# --------------------------------------------------------------------------


@pytest.mark.parametrize("splits, message", [
    ([["a.png", 0, "c"]], "has no 'train' list"),
    ({"train": {"a.png": 0}, "test": []}, "has no 'train' list"),
    ({"train": [["a.png", 0]], "test": []},
     "train entry 0 is ['a.png', 0], not [image path, label, class name]"),
    ({"train": [["a.png", 0, "c"]], "test": [["b.png", "3", "c"]]},
     "test entry 0 is ['b.png', '3', 'c']"),
    ({"train": [["a.png", 0, "c"], ["b.png", 101, "c"]], "test": []},
     "train entry 1 is ['b.png', 101, 'c'], not [image path, label, class "
     "name] with a label in [0, 101)"),
])
def test_prepare_malformed_split_json_is_one_line(splits, message, tmp_path,
                                                  capsys):
  split_json = tmp_path / "split_zhou_UCF101.json"
  split_json.write_text(json.dumps(splits))
  out = tmp_path / "out"
  assert prepare.main(["ucf101", f"--split_json={split_json}",
                       f"--image_dir={tmp_path}", f"--out={out}"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert err.startswith("reprog_jax.data.prepare: error: ucf101: ")
  assert message in err
  assert not out.exists()


def test_prepare_without_network_fails_at_once_saying_what_to_do(
    tmp_path, monkeypatch, capsys):
  def no_network(host, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME,
                          f"Name or service not known: {host}")

  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY",
                   "all_proxy", "ALL_PROXY"):  # Else it does not ask.
    monkeypatch.delenv(variable, raising=False)
  data_dir = tmp_path / "tfds"
  assert prepare.main(["cifar10", f"--data_dir={data_dir}"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err
  assert err.startswith("reprog_jax.data.prepare: error: cifar10: cannot "
                        "reach www.cs.toronto.edu:443")
  assert f"then copy its <data_dir>/cifar10 folder to {data_dir}/cifar10" in err


# --------------------------------------------------------------------------
# What a finished run leaves: readable files, a reproducible record
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A one-epoch linear-probing run under umask 022, with --config.n_shot=3."""
  workdir = tmp_path_factory.mktemp("run")
  previous = os.umask(0o022)
  try:
    summary = train.train_and_evaluate(lp_config(epochs=1, n_shot=3),
                                       str(workdir))
  finally:
    os.umask(previous)
  return workdir, summary


def test_results_are_readable_by_collaborators(finished_run):
  workdir, _ = finished_run
  results = [workdir / name for name in ("metrics.jsonl", "summary.json",
                                         layout.CONFIG_FILE)]
  results += sorted((workdir / "plots").rglob("*.png"))
  results += [p for p in (workdir / "checkpoints").rglob("*") if p.is_file()]
  features = sorted((workdir / "features").glob("*.npz"))  # Linear probing.
  assert features
  results += features
  assert len(results) > 5
  for path in results:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o044 == 0o044, f"{path}: {oct(mode)}"
  for directory in [workdir / "checkpoints", *(
      p for p in (workdir / "checkpoints").rglob("*") if p.is_dir())]:
    assert stat.S_IMODE(directory.stat().st_mode) & 0o055 == 0o055, directory


def test_summary_records_every_package_that_changes_numbers(finished_run):
  workdir, summary = finished_run
  written = json.loads((workdir / "summary.json").read_text())
  assert written == json.loads(json.dumps(summary))
  packages = written["platform"]["packages"]
  assert set(packages) == {"jax", "jaxlib", "flax", "optax",
                           "orbax-checkpoint", "grain", "tensorflow-datasets",
                           "numpy", "Pillow"}
  for name, version in packages.items():
    assert version == importlib.metadata.version(name)


def test_n_shot_is_written_once(finished_run):
  workdir, summary = finished_run
  assert summary["train_examples"] == 3 * 10  # --config.n_shot=3 worked.
  assert summary["config"]["n_shot"] == 3
  assert "n_shot" not in summary["config"]["data"]
  assert "n_shot" not in lp_config().data  # One field, at the top.
  recorded = json.loads((workdir / layout.CONFIG_FILE).read_text())
  assert recorded["n_shot"] == 3 and "data.n_shot" not in recorded


def test_a_run_recorded_with_n_shot_twice_still_resumes(tmp_path):
  config = lp_config()
  workdir_lib.prepare(config, str(tmp_path), np.float32)
  # A checkpoint of this version's format (it keeps a validation epoch).
  checkpoints.save(str(tmp_path), {"epoch": np.asarray(0, np.int32),
                                   "best": {"val_acc": np.zeros(1)}})
  path = tmp_path / layout.CONFIG_FILE
  # What config.json held before: `data.n_shot` next to `n_shot`.
  old = {**json.loads(path.read_text()), "data.n_shot": config.n_shot}
  path.write_text(json.dumps(old))
  workdir_lib.prepare(config, str(tmp_path), np.float32)  # No error.
  del old["n_shot"]  # Under its old name alone, it is still the same.
  path.write_text(json.dumps(old))
  workdir_lib.prepare(config, str(tmp_path), np.float32)
  old["data.n_shot"] = 5  # But a real difference is still one.
  old["n_shot"] = 5
  path.write_text(json.dumps(old))
  with pytest.raises(train.TrainingError, match=r"differs in n_shot\)"):
    workdir_lib.prepare(config, str(tmp_path), np.float32)


def test_a_run_recorded_before_test_every_resumes_as_testing_every_epoch(
    tmp_path):
  config = lp_config()
  workdir_lib.prepare(config, str(tmp_path), np.float32)
  checkpoints.save(str(tmp_path), {"epoch": np.asarray(0, np.int32),
                                   "best": {"val_acc": np.zeros(1)}})
  path = tmp_path / layout.CONFIG_FILE
  old = json.loads(path.read_text())
  del old["test_every"]  # What config.json held before the field existed.
  path.write_text(json.dumps(old))
  workdir_lib.prepare(config, str(tmp_path), np.float32)  # Every epoch: 1.
  with config.unlocked():
    config.test_every = 0  # That run tested every epoch; this would not.
  with pytest.raises(train.TrainingError, match=r"differs in test_every\)"):
    workdir_lib.prepare(config, str(tmp_path), np.float32)
