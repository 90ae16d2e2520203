"""Two processes x 2 simulated CPU devices (on localhost, gloo collectives,
as `--distributed` sets up) run like one process with 4 devices: fresh,
stopped after epoch 0 and resumed; only the lead prints; and a bad workdir
ends both processes of `main --distributed` with the same one line."""

import json
import os
import pathlib
import subprocess
import sys

import portpicker
import pytest

from conftest import assert_records_close, per_seed_records

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("ilm_vp", "linear_probe")
# Both processes of a run start together; none may wait for ever.
TIMEOUT = 300

# Each method's smoke run with 3 seeds (on 4 devices: split on the batch
# axis), in one process per launch: stopped after epoch 0, then resumed
# (each a fresh `train_and_evaluate`, as a re-run is). With several
# processes: `main --distributed`'s setup, then the same.
_DRIVER = """
import importlib, json, os, sys
import jax
process_id, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if port:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{{port}}", 2, process_id)
from reprog_jax.metrics import metric_writer
from reprog_jax.train import loop
for method in {methods}:
  config = importlib.import_module(
      "reprog_jax.configs." + method).get_config("smoke")
  config.progress = False
  config.seeds = (0, 1, 2)
  if method == "linear_probe":
    config.image_size = 32
  else:  # The processes decide alike where to test (evaluation.agreed).
    config.test_every = 0
  workdir = os.path.join(root, method)
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
  return subprocess.Popen(command, cwd=ROOT, env=_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _finish(procs):
  """Each process's (returncode, stdout, stderr); none left running."""
  try:
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def _without_gloo(text):
  # Gloo's C++ side prints its connections on stdout; not ours.
  return [l for l in text.splitlines() if not l.startswith("[Gloo]")]


def _records(records):
  """{(epoch, seed): record without timings}, as `per_seed_records`."""
  from reprog_jax.metrics import metric_writer
  return {(r["epoch"], r["seed"]): {k: v for k, v in r.items()
                                    if k not in metric_writer.TIMING_KEYS}
          for r in records}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Both methods on 1 process x 4 devices ('one') and on 2 processes x 2
  devices ('two'), each stopped after epoch 0 and resumed; the two
  processes' outputs."""
  root = tmp_path_factory.mktemp("multihost")
  driver = _DRIVER.format(methods=METHODS)
  port = str(portpicker.pick_unused_port())
  one = _start([sys.executable, "-c", driver, "0", "", str(root / "one")], 4)
  two = [_start([sys.executable, "-c", driver, str(i), port,
                 str(root / "two")], 2) for i in range(2)]
  (code, _, err), *outputs = _finish([one, *two])
  assert code == 0, err[-3000:]
  for code, _, err in outputs:
    assert code == 0, err[-3000:]
  return root, outputs


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_stop_resume_and_end_like_one(runs, method):
  root = runs[0]
  one = per_seed_records(root / "one" / method)
  stopped = _records(json.loads(
      (root / "two" / f"{method}.stopped.json").read_text()))
  # Fresh: epoch 0 as one process computes it.
  assert sorted(stopped) == [(0, s) for s in (0, 1, 2)]
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
  (_, lead, _), (_, other, _) = runs[1]
  lead = _without_gloo(lead)
  assert sum(line.startswith("epoch 0:") for line in lead) == len(METHODS)
  assert sum(line.startswith("resuming") for line in lead) == len(METHODS)
  assert _without_gloo(other) == []


def test_a_bad_workdir_ends_both_processes_with_one_line(tmp_path):
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("")
  port = portpicker.pick_unused_port()
  results = _finish([_start(
      [sys.executable, "-m", "reprog_jax.main", "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}", f"--workdir={not_a_dir}",
       "--config=configs/linear_probe.py:smoke"], 2) for i in range(2)])
  lines = []
  for code, _, err in results:
    assert code == 1
    lines.append(err.strip())
  assert lines[0] == lines[1]
  assert "\n" not in lines[0]
  assert lines[0] == (f"reprog_jax.main: error: --workdir {not_a_dir} is not "
                      f"a directory; pass a directory")
