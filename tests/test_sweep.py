"""`reprog_jax.sweep`: a tiny real sweep (the smoke runs' random
`resnet_mini` and a ticket of it on mock data), resuming, failures, job
arrays and changed grids."""

import contextlib
import csv
import importlib.util
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest

from reprog_jax import errors
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.study import report
from reprog_jax.study import grid as grid_lib
from reprog_jax.study import sweep
from test_report import fake_summary

ROOT = pathlib.Path(__file__).resolve().parents[1]


def study_preset(preset):
  spec = importlib.util.spec_from_file_location("study_config",
                                                ROOT / "configs" / "study.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def tiny_study(**networks_):
  """The smoke preset (mock data, 1 epoch, 2 seeds, tiny images; no
  figures of each run: seconds a cell) with `networks_` as {name: (kind,
  dir)}, the random dense `resnet_mini` too."""
  study = grid_lib.plain_study(study_preset("smoke"))
  study["overrides"]["plot_interval"] = 0
  for name, (kind, directory) in networks_.items():
    study["networks"][name] = {"dir": str(directory), "random": None,
                               "kind": kind}
  return study


def save_ticket(directory):
  """The random `resnet_mini` the smoke runs use, half of each kernel
  masked."""
  net = network_lib.random_network("resnet_mini", 0)
  rng = np.random.default_rng(0)
  masks = jax.tree.map(lambda m: rng.random(m.shape) < 0.5, net.masks)
  network_dir.save(directory, arch="resnet_mini",
                   params=jax.device_get(net.params),
                   batch_stats=jax.device_get(net.batch_stats), masks=masks,
                   meta={"num_classes": 1000, "dense": False,
                         "ticket": {"made_by": "test_sweep"},
                         "sources": {"weights": {"random_init": True}}})
  return directory


def files_and_mtimes(directory):
  return {os.path.join(root, name):
          os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  nets = tmp_path_factory.mktemp("nets")
  study = tiny_study(lt=("ticket", save_ticket(nets / "lt")),
                     gone=("ticket", nets / "no-such-network"))
  # Enough mock examples per class (6) for a validation split beside the
  # 2-shot subset and a 1-example temperature hold-out.
  study["overrides"].update(calibration_holdout=1, validation_per_class=2)
  study["overrides"]["data"]["mock_num_examples"] = 60
  workdir = tmp_path_factory.mktemp("sweep") / "study"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    outcomes = sweep.run(study, str(workdir))
  return workdir, study, outcomes, out.getvalue()


def test_tiny_sweep_runs_every_cell_and_records_failures(swept):
  workdir, study, outcomes, stdout = swept
  grid = grid_lib.cells(study)
  assert [c.name for c in grid] == list(outcomes)
  assert len(grid) == 6  # 3 networks x 2 methods, 1 dataset, 1 n_shot.
  recorded = json.loads((workdir / "study.json").read_text())
  assert recorded["cells"] == [c.name for c in grid]
  assert recorded["study"] == study
  for k, cell in enumerate(grid, 1):
    cell_dir = workdir / cell.workdir_rel
    if cell.network == "gone":
      # A network directory that does not exist: the cell fails, the
      # sweep goes on, and the traceback is kept.
      assert outcomes[cell.name]["status"] == "failed"
      assert not (cell_dir / "summary.json").exists()
      error = (cell_dir / "error.txt").read_text()
      assert "Traceback" in error and "NetworkDirError" in error
      assert f"[{k}/6] {cell.name} ... FAILED after" in stdout
      continue
    assert outcomes[cell.name]["status"] == "done", outcomes[cell.name]
    assert f"[{k}/6] {cell.name} ... done in" in stdout
    summary = json.loads((cell_dir / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]  # Both seeds in one run.
    assert summary["method"] == cell.config.method
    assert summary["network"]["dense"] == (cell.network == "dense")
    remaining = summary["sparsity"]["global_remaining_percent"]
    if cell.network == "dense":
      assert remaining == 100.0
    else:  # Half of each kernel masked.
      assert 45 < remaining < 55
    assert not (cell_dir / "error.txt").exists()
  assert "sweep: 4 done, 0 finished before, 2 failed" in stdout
  assert not [p for p in workdir.rglob("*.tmp-*")]


def test_report_of_the_sweep_equals_its_summaries(swept, tmp_path):
  workdir, study, _, _ = swept
  copy = tmp_path / "study"
  shutil.copytree(workdir, copy)
  written = report.write(str(copy))
  with open(written["report.csv"]) as f:
    rows = {row["cell"]: row for row in csv.DictReader(f)}
  summaries = {}
  for cell in grid_lib.cells(study):
    row = rows[cell.workdir_rel]
    if cell.network == "gone":
      assert row["status"] == "failed" and "NetworkDirError" in row["error"]
      continue
    summary = json.loads((copy / cell.workdir_rel / "summary.json").read_text())
    summaries[cell.name] = summary
    assert row["network"] == cell.network and row["status"] == "done"
    # The table is at the study's primary selection: validation.
    assert row["selection"] == "validation"
    for key in ("test_acc", "test_ece"):
      stat = summary["seeds_mean_std"]["validation"][key]
      assert float(row[f"{key}_mean"]) == pytest.approx(stat["mean"])
      assert float(row[f"{key}_std"]) == pytest.approx(stat["std"])
    assert float(row["remaining_percent"]) == (
        summary["sparsity"]["global_remaining_percent"])
  # The VP-gap analysis (VP gap - LP gap) for the ticket, from the
  # summaries: every seed paired, so the gaps are differences of means.
  acc = {name: s["seeds_mean_std"]["best"]["test_acc"]["mean"]
         for name, s in summaries.items()}
  result = report.analyse(str(copy), warn=False)
  gaps = {(c["ticket"], c["selection"]): c for c in result.cells
          if c["claim"] == "gap"}
  one = gaps[("lt", "best_test")]
  assert one["dense_mean"] == pytest.approx(
      100 * (acc["vp/dense/cifar10/2-shot"] - acc["vp/lt/cifar10/2-shot"]))
  assert one["ticket_mean"] == pytest.approx(
      100 * (acc["lp/dense/cifar10/2-shot"] - acc["lp/lt/cifar10/2-shot"]))
  assert gaps[("gone", "best_test")]["verdict"] == "not testable"
  text = open(written["report.md"]).read()
  assert "**FAILED** `vp/gone/cifar10/2-shot`" in text
  # The primary analysis first, then the others.
  assert text.index("## Primary analysis") < text.index(
      "## Sensitivity analyses")
  for name in ("claims.csv", "seeds.csv", "analyses.csv"):
    assert (copy / name).exists()
  assert all("validation" in s["seeds_mean_std"] for s in summaries.values())
  # study.json records what each cell runs and the declared analysis.
  recorded = json.loads((copy / "study.json").read_text())
  assert {r["cell"] for r in recorded["runs"]} == set(recorded["cells"])
  assert recorded["study"]["primary"]["quantity"] == "test_ece"
  assert report.main([str(copy)]) == 0


def test_rerun_skips_finished_cells_and_resumes_the_rest(swept, tmp_path,
                                                         monkeypatch, capsys):
  workdir, study, _, _ = swept
  copy = tmp_path / "study"
  shutil.copytree(workdir, copy)
  # Killed after its last checkpoint, before its summary: it resumes.
  resumed = copy / "vp/lt/cifar10/2-shot"
  before = json.loads((resumed / "summary.json").read_text())
  (resumed / "summary.json").unlink()
  finished = [copy / c.workdir_rel for c in grid_lib.cells(study)
              if c.network != "gone" and c.name != "vp/lt/cifar10/2-shot"]
  mtimes = {d: files_and_mtimes(d) for d in finished}
  calls = []
  real = sweep.train.train_and_evaluate

  def spy(config, cell_dir, stop_after_epoch=None):
    calls.append(os.path.relpath(cell_dir, copy))
    return real(config, cell_dir, stop_after_epoch)

  monkeypatch.setattr(sweep.train, "train_and_evaluate", spy)
  outcomes = sweep.run(study, str(copy))
  # The finished cells are not run again, nor touched; the failed ones are
  # retried.
  assert sorted(calls) == ["lp/gone/cifar10/2-shot", "vp/gone/cifar10/2-shot",
                           "vp/lt/cifar10/2-shot"]
  assert {d: files_and_mtimes(d) for d in finished} == mtimes
  assert [o["status"] for o in outcomes.values()].count("skipped") == 3
  after = json.loads((resumed / "summary.json").read_text())
  assert [p["best"] for p in after["per_seed"]] == [
      p["best"] for p in before["per_seed"]]
  assert "resuming" in capsys.readouterr().out

  # The command line's exit status: 1 while a cell fails, in one line.
  flags = [types.SimpleNamespace(value=v) for v in
           (ml_collections.ConfigDict(study), str(copy), False, None, None)]
  assert sweep.main(flags) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "2 of 6 cells failed" in err


# --------------------------------------------------------------------------
# The bookkeeping, with a stand-in for training
# --------------------------------------------------------------------------


@pytest.fixture
def fake_training(monkeypatch):
  """Replaces training by writing a summary; records the workdirs run and
  fails the cells whose workdir ends with one of `fail`."""
  state = types.SimpleNamespace(calls=[], fail=set())

  def train_and_evaluate(config, workdir, stop_after_epoch=None):
    del stop_after_epoch
    state.calls.append(workdir)
    if any(workdir.endswith(f) for f in state.fail):
      raise RuntimeError("boom")
    summary = fake_summary(config.method, "net", config.network, 100.0,
                           config.data.name, config.n_shot,
                           [(0.5, 0.1), (0.6, 0.2)])
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
    return summary

  monkeypatch.setattr(sweep.train, "train_and_evaluate", train_and_evaluate)
  return state


def grid_study():
  """2 networks x 2 methods x 2 datasets x 3 n_shots = 24 cells."""
  study = tiny_study(lt=("ticket", "nets/lt"))  # Never loaded here.
  study["datasets"] = ["cifar10", "svhn"]
  study["n_shots"] = [1, 5, -1]
  return study


def quietly(function, *args, **kwargs):
  with contextlib.redirect_stdout(io.StringIO()):
    return function(*args, **kwargs)


def test_job_array_tasks_cover_every_cell_exactly_once(tmp_path,
                                                       fake_training):
  study = grid_study()
  names = [c.name for c in grid_lib.cells(study)]
  assert len(names) == 24
  shares = []
  for task in range(5):  # 24 cells over 5 tasks: 5, 5, 5, 5, 4.
    fake_training.calls.clear()
    outcomes = quietly(sweep.run, study, str(tmp_path), task, 5)
    shares.append([os.path.relpath(w, tmp_path) for w in fake_training.calls])
    assert list(outcomes) == shares[-1]
  assert sorted(sum(shares, [])) == sorted(names)  # Each once.
  assert [len(s) for s in shares] == [5, 5, 5, 5, 4]
  assert shares[1] == names[1::5]  # Deterministic: cell i to task i % 5.
  fake_training.calls.clear()
  for task in range(5):
    quietly(sweep.run, study, str(tmp_path), task, 5)
  assert fake_training.calls == []  # All finished: nothing runs again.


def test_task_index_from_slurm_and_out_of_range(tmp_path):
  assert sweep.task_from_environment({}) == (None, None)
  # SLURM numbers as --array says: here 1-3.
  assert sweep.task_from_environment({
      "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_COUNT": "3"}) == (2, 3)
  # --array=1-9:4 runs 1, 5, 9.
  assert sweep.task_from_environment({
      "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_STEP": "4", "SLURM_ARRAY_TASK_COUNT": "3"}) == (1, 3)
  with pytest.raises(grid_lib.SweepError,
                     match=r"task index 3 is not in \[0, 3\)"):
    sweep.run(grid_study(), str(tmp_path / "d"), 3, 3)
  with pytest.raises(grid_lib.SweepError, match="task index -1"):
    sweep.run(grid_study(), str(tmp_path / "d"), -1, 3)
  assert not (tmp_path / "d").exists()  # Refused before writing anything.


def test_failed_cell_is_recorded_and_retried(tmp_path, fake_training):
  study = grid_study()
  fake_training.fail = {"vp/lt/cifar10/5-shot"}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    outcomes = sweep.run(study, str(tmp_path))
  assert len(fake_training.calls) == 24  # The cells after it ran.
  failed = {n: o for n, o in outcomes.items() if o["status"] == "failed"}
  assert list(failed) == ["vp/lt/cifar10/5-shot"]
  assert failed["vp/lt/cifar10/5-shot"]["message"] == "RuntimeError: boom"
  cell_dir = tmp_path / "vp/lt/cifar10/5-shot"
  error = (cell_dir / "error.txt").read_text()
  assert error.startswith("Traceback")
  assert error.endswith("RuntimeError: boom\n")
  assert not (cell_dir / "summary.json").exists()
  assert json.loads((cell_dir / "cell.json").read_text())["network"] == "lt"
  assert "vp/lt/cifar10/5-shot ... FAILED after" in out.getvalue()
  assert "23 done, 0 finished before, 1 failed" in out.getvalue()
  # The report marks it.
  text = open(report.write(str(tmp_path))["report.md"]).read()
  assert "**FAILED** `vp/lt/cifar10/5-shot`: RuntimeError: boom" in text

  # Fixed: only that cell runs, and its error.txt goes.
  fake_training.fail, fake_training.calls[:] = set(), []
  outcomes = quietly(sweep.run, study, str(tmp_path))
  assert fake_training.calls == [str(cell_dir)]
  assert outcomes["vp/lt/cifar10/5-shot"]["status"] == "done"
  assert not (cell_dir / "error.txt").exists()


def test_changed_grid_is_refused_or_extended(tmp_path, fake_training):
  study = tiny_study()
  quietly(sweep.run, study, str(tmp_path))
  assert len(fake_training.calls) == 2
  fake_training.calls.clear()
  recorded = (tmp_path / "study.json").read_text()

  bigger = json.loads(json.dumps(study))
  bigger["n_shots"] = [2, 4]
  with pytest.raises(grid_lib.SweepError, match="adds 2 cell.*--extend"):
    sweep.run(bigger, str(tmp_path))
  other = json.loads(json.dumps(study))
  other["overrides"]["epochs"] = 3
  for extend in (False, True):
    with pytest.raises(grid_lib.SweepError,
                       match="changes cell lp/dense/cifar10/2-shot.*epochs"):
      sweep.run(other, str(tmp_path), extend=extend)
  fewer = json.loads(json.dumps(study))
  fewer["methods"] = ["ilm_vp"]
  with pytest.raises(grid_lib.SweepError, match="drops 1 of its cells"):
    sweep.run(fewer, str(tmp_path), extend=True)
  assert fake_training.calls == []
  assert (tmp_path / "study.json").read_text() == recorded

  # Only the new cells run.
  outcomes = quietly(sweep.run, bigger, str(tmp_path), extend=True)
  assert sorted(os.path.relpath(w, tmp_path) for w in fake_training.calls) == [
      "lp/dense/cifar10/4-shot", "vp/dense/cifar10/4-shot"]
  assert [o["status"] for o in outcomes.values()].count("skipped") == 2
  assert json.loads((tmp_path / "study.json").read_text())["study"] == bigger
  # What changes no result (workdir.NOT_COMPARED) is no other grid.
  faster = json.loads(json.dumps(bigger))
  faster["overrides"]["data"]["worker_count"] = 2
  fake_training.calls.clear()
  quietly(sweep.run, faster, str(tmp_path))
  assert fake_training.calls == []


def test_study_presets_and_bad_studies():
  smoke = grid_lib.cells(study_preset("smoke"))
  assert [c.name for c in smoke] == ["lp/dense/cifar10/2-shot",
                                     "vp/dense/cifar10/2-shot"]
  assert smoke[0].config.seeds == (0, 1) and smoke[0].config.data.mock
  with pytest.raises(grid_lib.SweepError, match="networks.dense needs exactly "
                     "one of dir"):
    grid_lib.cells(study_preset("grid"))
  # The old name overclaimed: refused in one line that names the new one.
  with pytest.raises(ValueError, match="preset 'paper' is now 'grid'"):
    study_preset("paper")
  paper = grid_lib.plain_study(study_preset("grid"))
  for name, entry in paper["networks"].items():
    entry["dir"] = f"nets/{name}"
  grid = grid_lib.cells(paper)
  assert len(grid) == 6 * 2 * 9 * 4
  assert {c.config.network for c in grid if "/lt8/" in c.name} == {"ticket"}
  bad = tiny_study()
  bad["overrides"]["n_shot"] = 5
  with pytest.raises(grid_lib.SweepError, match="overrides sets n_shot"):
    grid_lib.cells(bad)
  bad = tiny_study()
  bad["overrides"]["data"]["mok"] = True
  with pytest.raises(grid_lib.SweepError, match="data.mok is not a field"):
    grid_lib.cells(bad)


def test_cells_use_the_package_presets_of_each_method():
  # A sweep cell starts from the same preset `--config=<method>:<dataset>`
  # loads (the package's `reprog_jax.configs.<method>`), then sets its grid.
  import importlib  # pylint: disable=g-import-not-at-top
  study = tiny_study()
  for cell in grid_lib.cells(study):
    method, dataset = cell.config.method, cell.config.data.name
    preset = importlib.import_module(
        f"reprog_jax.configs.{method}").get_config(dataset)
    for field in ("lr", "epochs", "batch_size", "optimizer"):
      expected = study["overrides"].get(field, preset[field])
      assert cell.config[field] == expected, (cell.name, field)
    assert set(preset.keys()) == set(cell.config.keys())


def test_command_line_task_out_of_range_is_one_line(tmp_path):
  env = dict(os.environ, SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_TASK_MIN="1",
             SLURM_ARRAY_TASK_COUNT="2")
  proc = subprocess.run(
      # The preset by name, from outside the checkout.
      [sys.executable, "-m", "reprog_jax.sweep", "--config=study:smoke",
       f"--workdir={tmp_path / 'd'}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.startswith(
      "reprog_jax.sweep: error: task index 4 is not in [0, 2)")
  assert proc.stderr.count("\n") == 1
  assert not (tmp_path / "d").exists()


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
  path = tmp_path / "a_file"
  path.write_text("not a directory")
  with pytest.raises(errors.UserError, match="is not a directory"):
    sweep.run(study_preset("smoke"), str(path))
  assert path.read_text() == "not a directory"


def test_a_cell_another_task_runs_is_reported_busy(tmp_path, fake_training,
                                                   monkeypatch):
  from reprog_jax.train import run_lock
  fake = sweep.train.train_and_evaluate

  def locking(config, workdir, stop_after_epoch=None):
    with run_lock.hold(workdir):  # As the real run does.
      return fake(config, workdir, stop_after_epoch)

  monkeypatch.setattr(sweep.train, "train_and_evaluate", locking)
  study = grid_study()
  cell_dir = tmp_path / "vp/lt/cifar10/5-shot"
  out = io.StringIO()
  with run_lock.hold(cell_dir), contextlib.redirect_stdout(out):
    outcomes = sweep.run(study, str(tmp_path))
  busy = {n: o for n, o in outcomes.items() if o["status"] == "busy"}
  assert list(busy) == ["vp/lt/cifar10/5-shot"]
  assert "is using this workdir" in busy["vp/lt/cifar10/5-shot"]["message"]
  assert not (cell_dir / "error.txt").exists()  # Not ours to write in.
  assert "vp/lt/cifar10/5-shot ... busy: " in out.getvalue()
  assert ("23 done, 0 finished before, 1 run by another task now, 0 failed"
          in out.getvalue())
