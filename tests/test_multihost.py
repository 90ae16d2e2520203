"""Two processes x 2 simulated CPU devices (on localhost, gloo collectives,
as `--distributed` sets up) run like one process with 4 devices: fresh,
stopped after epoch 0 and resumed; only the lead prints. A bad input that
one process alone sees (its data root, its network directory) ends both
processes of `main --distributed` at once, each printing the same one line
that names the failed process; a bad workdir, a bug in one process's checks,
the lead's error or a full disk under one of the lead's writes (a
checkpoint's record, the metrics, the cached features) ends both alike, and
they go on together after it."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import portpicker
import pytest

from conftest import assert_records_close, per_seed_records
from reprog_jax import data
from reprog_jax import layout
from reprog_jax.data import sources
from reprog_jax.metrics import metric_writer
from reprog_jax.train import processes

import torchvision_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("ilm_vp", "linear_probe")
# Both processes of a run start together; none may wait for ever (a
# launch takes 1-2 minutes on 2 cores; several on a busy machine).
TIMEOUT = 600
# A process that fails must not wait for the others' runtime to notice: JAX
# gives up on a missing process after 2 minutes (devices) or 5 (shutdown).
FAIL_WITHIN = 30

# Each method's smoke run with 2 seeds (on 4 devices: split on the batch
# axis), in one process per launch. With one process (the reference) a
# whole run; with several: `main --distributed`'s setup, then first the
# failures every process must end alike (each caught, its type and line
# kept in `outcomes<process>.json`), then each run stopped after epoch 0
# and resumed (each a fresh `train_and_evaluate`, as a re-run is), which
# also shows that the processes go on together after those failures.
# Test speed only, first in every process started here: JAX writes its
# persistent compilation cache from process 0 alone, and on CPU the other
# process's keys differ from process 0's (its devices are numbered from
# 2048, and the key holds the device assignment), so process 1 compiled
# every program again in every launch (40 s of CPU a suite). Here each
# process writes what it compiled, under its own keys. Nothing is checked
# through this; a JAX without these internals just compiles.
_EVERY_PROCESS_WRITES_THE_CACHE = """
def _every_process_writes_the_cache():
  try:
    from jax._src import compiler, distributed
    write = compiler._cache_write
  except (ImportError, AttributeError):
    return
  def cache_write(*args, **kwargs):
    state = distributed.global_state
    process_id, state.process_id = state.process_id, 0
    try:
      return write(*args, **kwargs)
    finally:
      state.process_id = process_id
  compiler._cache_write = cache_write
_every_process_writes_the_cache()
"""

_DRIVER = _EVERY_PROCESS_WRITES_THE_CACHE + """
import importlib, json, os, sys
import jax
process_id, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
methods = sys.argv[4].split(",")
if port:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", 2, process_id)
from reprog_jax import errors
from reprog_jax.metrics import metric_writer
from reprog_jax.train import loop
from reprog_jax.train import processes


def config_of(method):
  config = importlib.import_module(
      "reprog_jax.configs." + method).get_config("smoke")
  config.progress = False
  config.plot_interval = 0  # No figures: seconds a run, and none tested here.
  config.seeds = (0, 1)
  # Small images: what is proved is the same with any size.
  config.image_size = 16 if method == "ilm_vp" else 32
  if method == "ilm_vp":
    config.prompt_output_size = 32
    # The processes decide alike where to test (evaluation.agreed).
    config.test_every = 0
  return config


def outcome(fn):
  try:
    return ["returned", fn()]
  except Exception as e:
    return [type(e).__name__, str(e)]


def raise_(error):
  raise error


# `outcome` of a linear-probing run whose disk is full, on process 0 alone,
# under `where`: a checkpoint's record, the metrics or the cached features
# (each the lead's write alone), and how long it took.
def on_a_full_disk(where):
  import errno, time
  from reprog_jax import fileio, layout
  from reprog_jax.train import inputs

  def full(path):
    raise OSError(errno.ENOSPC, "No space left on device", path)

  write_json = fileio.write_json
  owner, name, patched = {
      "record": (fileio, "write_json", lambda path, *a, **k: (
          full(path) if path.endswith(layout.CHECKPOINT_MANIFEST)
          else write_json(path, *a, **k))),
      "metrics": (metric_writer.MetricWriter, "write",
                  lambda self, *a, **k: full(self.path)),
      "features": (inputs, "_save_atomically", lambda path, *a: full(path)),
  }[where]
  real = getattr(owner, name)
  if process_id == 0:
    setattr(owner, name, patched)
  started = time.monotonic()
  try:
    return outcome(lambda: loop.train_and_evaluate(
        config_of("linear_probe"), os.path.join(root, "full_" + where))) + [
            time.monotonic() - started]
  finally:
    setattr(owner, name, real)


if port:
  outcomes = {
      "bad_workdir": outcome(lambda: loop.train_and_evaluate(
          config_of("linear_probe"), os.path.join(root, "not_a_dir"))),
      "bug_on_1": outcome(lambda: processes.each_checks(
          lambda: process_id and raise_(ValueError("boom")))),
      "two_errors": outcome(lambda: processes.each_checks(
          lambda: raise_(errors.ConfigError(f"bad {process_id}")))),
      "lead_refuses": outcome(lambda: processes.lead_decides(
          lambda: raise_(errors.ConfigError("no, says the lead")))),
      "lead_answers": outcome(lambda: processes.lead_decides(
          lambda: 40 + process_id)),
      **{"full_" + where: on_a_full_disk(where)
         for where in ("record", "metrics", "features")},
  }
  with open(os.path.join(root, f"outcomes{process_id}.json"), "w") as f:
    json.dump(outcomes, f)
for method in methods:
  config = config_of(method)
  workdir = os.path.join(root, method)
  if port:
    loop.train_and_evaluate(config, workdir, stop_after_epoch=0)
    if process_id == 0:
      with open(workdir + ".stopped.json", "w") as f:
        json.dump(metric_writer.read_metrics(workdir), f)
  loop.train_and_evaluate(config, workdir)
"""


def _env(devices):
  # With conftest's compilation cache: each program compiles once.
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _start(command, devices):
  process = subprocess.Popen(command, cwd=ROOT, env=_env(devices),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  process.started = time.monotonic()
  return process


def _finish(procs, timeout=TIMEOUT):
  """Each process's (returncode, stdout, stderr, seconds it ran at most);
  none left running."""
  results = []
  try:
    for p in procs:
      out, err = p.communicate(
          timeout=max(1, p.started + timeout - time.monotonic()))
      results.append((p.returncode, out, err, time.monotonic() - p.started))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return results


def _without_gloo(text):
  # Gloo's C++ side prints its connections on stdout; not ours.
  return [l for l in text.splitlines() if not l.startswith("[Gloo]")]


# The pieces of Gloo's line ("[Gloo] Rank 1 is connected to 1 peer ranks.
# Expected number of connected peer ranks is : 1"), which its threads write
# to std::cout piece by piece: on a busy machine two of them interleave,
# and a piece (a bare number) lands on a line of its own.
_GLOO_PIECES = re.compile(r"\[Gloo\] Rank|is connected to|peer ranks\.|"
                          r"Expected number of connected peer ranks is :|"
                          r"\d+|\s+")


def _not_gloo(text):
  """What is left of `text` without any of Gloo's pieces, line by line."""
  return [rest for rest in (_GLOO_PIECES.sub("", line)
                            for line in text.splitlines()) if rest]


def _records(records):
  """{(epoch, seed): record without timings}, as `per_seed_records`."""
  return {(r["epoch"], r["seed"]): {k: v for k, v in r.items()
                                    if k not in metric_writer.TIMING_KEYS}
          for r in records}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Both methods on 1 process x 4 devices ('one', whole runs) and on 2
  processes x 2 devices ('two', after the failures, each stopped after
  epoch 0 and resumed); the two processes' outputs."""
  root = tmp_path_factory.mktemp("multihost")
  (root / "two").mkdir()
  (root / "two" / "not_a_dir").write_text("")
  driver = [sys.executable, "-c", _DRIVER]
  port = str(portpicker.pick_unused_port())
  one = _start(driver + ["0", "", str(root / "one"), ",".join(METHODS)], 4)
  two = [_start(driver + [str(i), port, str(root / "two"),
                          ",".join(METHODS)], 2) for i in range(2)]
  (code, _, err, _), *outputs = _finish([one, *two])
  assert code == 0, err[-3000:]
  for code, _, err, _ in outputs:
    assert code == 0, err[-3000:]
  return root, outputs


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_stop_resume_and_end_like_one(runs, method):
  root = runs[0]
  one = per_seed_records(root / "one" / method)
  stopped = _records(json.loads(
      (root / "two" / f"{method}.stopped.json").read_text()))
  # Fresh: epoch 0 as one process computes it.
  assert sorted(stopped) == [(0, s) for s in (0, 1)]
  assert_records_close(stopped, {k: v for k, v in one.items() if k[0] == 0},
                       atol=1e-5)
  # Resumed: every epoch, and the summary's best and last.
  assert_records_close(per_seed_records(root / "two" / method), one,
                       atol=1e-5)
  summaries = [json.loads((root / w / method / "summary.json").read_text())
               for w in ("one", "two")]
  assert summaries[1]["platform"]["data_parallel_devices"] == 4
  for seed_one, seed_two in zip(*(s["per_seed"] for s in summaries)):
    for which in ("best", "last"):
      for name, value in seed_one[which].items():
        if isinstance(value, float):
          assert seed_two[which][name] == pytest.approx(value, abs=1e-5)


def test_only_the_lead_process_prints(runs):
  (_, lead, _, _), (_, other, _, _) = runs[1]
  lead = _without_gloo(lead)
  # Each method's epoch 0, and the run whose record of epoch 0 fails.
  assert sum(line.startswith("epoch 0:") for line in lead) == (
      len(METHODS) + 1)
  assert sum(line.startswith("resuming") for line in lead) == len(METHODS)
  assert _not_gloo(other) == [], other


def test_failures_end_every_process_alike(runs):
  root = runs[0] / "two"
  lead, other = (json.loads((root / f"outcomes{i}.json").read_text())
                 for i in range(2))
  # Every process checks the workdir it writes its shards to.
  bad_workdir = ["TrainingError", (
      f"processes 0, 1 of 2: --workdir {root / 'not_a_dir'} is not a "
      f"directory; pass a directory")]
  assert lead["bad_workdir"] == other["bad_workdir"] == bad_workdir
  # A bug keeps its own exception where it happened, and stops the others.
  assert other["bug_on_1"] == ["ValueError", "boom"]
  assert lead["bug_on_1"] == [
      "RuntimeError", "process 1 of 2 failed (ValueError: boom); its "
      "traceback says why"]
  assert lead["two_errors"] == other["two_errors"] == [
      "TrainingError", "process 0 of 2: bad 0; process 1 of 2: bad 1"]
  # The lead's decision: its error as raised there, its line elsewhere.
  assert lead["lead_refuses"] == ["ConfigError", "no, says the lead"]
  assert other["lead_refuses"] == ["TrainingError", "no, says the lead"]
  assert lead["lead_answers"] == other["lead_answers"] == ["returned", 40]


@pytest.mark.parametrize("where, parts, kept, lead_error, process", [
    # Found when the lead waits for epoch 0's record, in epoch 1: every
    # process checks that wait, and the line names the process.
    ("record", (layout.CHECKPOINTS_DIR, "0", layout.CHECKPOINT_MANIFEST),
     "the checkpoint of epoch 0 is intact", "TrainingError",
     "process 0 of 2: "),
    # The lead's own writes: its line as it is, on both.
    ("metrics", (layout.METRICS_FILE,), "no epoch had been checkpointed yet",
     "DiskFullError", ""),
    ("features", (layout.FEATURES_DIR, "train.npz"),
     "no epoch had been checkpointed yet", "DiskFullError", ""),
])
def test_a_full_disk_under_a_write_of_the_lead_ends_both_at_once(
    runs, where, parts, kept, lead_error, process):
  # The other process, whose own writes all went well, hears of it at
  # once, instead of waiting in its next collective for a lead that is
  # gone (minutes, then JAX's abort); both then go on together.
  root = runs[0] / "two"
  lead, other = (json.loads((root / f"outcomes{i}.json").read_text())[
      "full_" + where] for i in range(2))
  line = (f"{process}{root.joinpath('full_' + where, *parts)}: writing "
          f"failed: no space left on device; nothing committed was lost "
          f"({kept}); free space and run the same command to resume")
  assert lead[:2] == [lead_error, line]
  assert other[:2] == ["TrainingError", line]
  # At once: a run's own seconds (compiling, on a cold cache) aside.
  assert abs(lead[2] - other[2]) < FAIL_WITHIN


# `python -m reprog_jax.main`, after the cache's patch above.
_MAIN = """
import runpy
runpy.run_module("reprog_jax.main", run_name="__main__", alter_sys=True)
"""


def _main_on_two(tmp_path, flags_of):
  """`main --distributed` as processes 0 and 1 of 2, process i with the
  smoke config, a workdir of its own and `flags_of(i)`; their results."""
  port = portpicker.pick_unused_port()
  return _finish([_start(
      [sys.executable, "-c", _EVERY_PROCESS_WRITES_THE_CACHE + _MAIN,
       "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}", f"--workdir={tmp_path / 'run'}",
       "--config=configs/linear_probe.py:smoke", *flags_of(i)], 2)
                  for i in range(2)], timeout=FAIL_WITHIN)


def _assert_one_line_on_both(results, start, names):
  """Both exited 1 in time, each printing one identical stderr line that
  begins with `start` and names `names`."""
  lines = []
  for code, _, err, seconds in results:
    assert code == 1, err[-3000:]
    assert seconds < FAIL_WITHIN
    assert err.endswith("\n") and err.count("\n") == 1, err[-3000:]
    lines.append(err.strip())
  assert lines[0] == lines[1]
  assert lines[0].startswith(start), lines[0]
  assert names in lines[0]


def test_a_data_root_missing_on_one_process_ends_both_at_once(tmp_path):
  missing = tmp_path / "no_such_root"
  results = _main_on_two(tmp_path, lambda i: [
      "--config.data.mock=False", "--config.data.source=torchvision",
      f"--config.data.data_dir={missing}"] if i == 1 else [])
  _assert_one_line_on_both(
      results, "reprog_jax.main: error: process 1 of 2: cifar10: ",
      f"{missing}/cifar10/")
  assert not (tmp_path / "run").exists()  # Nothing written, by either.


def test_a_corrupt_image_in_one_process_share_ends_both_at_once(tmp_path):
  # Each process decodes (here: encodes, linear probing's feature pass)
  # its own share of a split; the last test image is process 1's alone.
  root = tmp_path / "root"
  torchvision_files.write_eurosat(str(root), per_class=10)
  test = sources.open_split(data.get_dataset_info("eurosat"), "test",
                            data_dir=str(root), source="torchvision")
  bad = test.source.locate(int(test.indices[-1]))
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8junk")
  results = _main_on_two(tmp_path, lambda i: [
      "--config.progress=False", "--config.data.name=eurosat",
      "--config.data.mock=False",
      "--config.data.source=torchvision", f"--config.data.data_dir={root}"])
  _assert_one_line_on_both(
      results, "reprog_jax.main: error: process 1 of 2: eurosat (test "
      "split)", f"cannot read {bad} (")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_network_dir_missing_on_the_lead_ends_both_at_once(
    tmp_path, network_dir):
  # Process 1 reads a good network through Orbax: no barrier there may
  # wait for the lead, which never comes.
  missing = tmp_path / "no_such_net"
  results = _main_on_two(tmp_path, lambda i: [
      "--config.random_network=",
      f"--config.network_dir={missing if i == 0 else network_dir}"])
  _assert_one_line_on_both(
      results, "reprog_jax.main: error: process 0 of 2: ",
      f"{missing}: no such network directory")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("messages, line", [
    ([None, "a", None], "process 1 of 3: a"),
    (["a", "a"], "processes 0, 1 of 2: a"),
    (["a", "a", "a", "b", "a"], "processes 0-2, 4 of 5: a; process 3 of 5: b"),
    (["a", "b", "c", "d", "e", "d"],
     "process 0 of 6: a; process 1 of 6: b; process 2 of 6: c; 2 more "
     "errors on processes 3-5 of 6 (fix these and run again to see them)"),
])
def test_the_failures_line_groups_processes_by_error(monkeypatch, messages,
                                                     line):
  monkeypatch.setattr(jax, "process_count", lambda: len(messages))
  reports = [{"status": "ok"} if m is None else
             {"status": "user error", "message": m} for m in messages]
  assert processes._failures_line(reports) == line
