"""Two processes x 2 simulated CPU devices (`--distributed` on localhost,
gloo collectives) run like one process with 4 devices: fresh, stopped after
epoch 0 and resumed, and a bad workdir ends both with the same one line."""

import json
import os
import pathlib
import subprocess
import sys

import portpicker
import pytest

from conftest import assert_records_close, per_seed_records

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEEDS = "--config.seeds=(0, 1, 2)"
CONFIGS = {"linear_probe": ["--config=configs/linear_probe.py:smoke",
                            "--config.image_size=32"],
           "ilm_vp": ["--config=configs/ilm_vp.py:smoke"]}
# Both processes of a run start together; none may wait for ever.
TIMEOUT = 240


def _env(devices):
  # With conftest's compilation cache: each program compiles once.
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _two_processes(workdir, *flags):
  """Runs main as processes 0 and 1 of one run; their (returncode, stdout,
  stderr)."""
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "reprog_jax.main", "--distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}", f"--workdir={workdir}", *flags,
       "--config.progress=False"], cwd=ROOT, env=_env(2),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
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


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def runs(request, tmp_path_factory):
  """One method's 1-process 4-device run and its 2-process run stopped
  after epoch 0 (then resumed)."""
  method = request.param
  flags = [*CONFIGS[method], SEEDS]
  root = tmp_path_factory.mktemp(method)
  reference = subprocess.run(
      [sys.executable, "-m", "reprog_jax.main", f"--workdir={root / 'one'}",
       *flags, "--config.progress=False"], cwd=ROOT, env=_env(4),
      capture_output=True, text=True, timeout=TIMEOUT)
  assert reference.returncode == 0, reference.stderr[-3000:]
  stopped = _two_processes(root / "two", *flags, "--stop_after_epoch=0")
  after_stop = per_seed_records(root / "two")
  resumed = _two_processes(root / "two", *flags)
  return root, stopped, after_stop, resumed


def test_two_processes_run_fresh_like_one(runs):
  root, stopped, after_stop, _ = runs
  for code, _, err in stopped:
    assert code == 0, err[-3000:]
  one = per_seed_records(root / "one")
  assert sorted(after_stop) == [(0, s) for s in (0, 1, 2)]
  assert_records_close(after_stop, {k: v for k, v in one.items()
                                    if k[0] == 0}, atol=1e-5)
  # Only the lead prints: its notes and epoch lines once, not twice.
  lead, other = (_without_gloo(out) for _, out, _ in stopped)
  assert any(line.startswith("epoch 0:") for line in lead)
  assert other == []


def test_two_processes_resume_and_end_like_one(runs):
  root, _, _, resumed = runs
  for code, _, err in resumed:
    assert code == 0, err[-3000:]
  assert any(line.startswith("resuming") for line in
             _without_gloo(resumed[0][1]))
  assert_records_close(per_seed_records(root / "two"),
                       per_seed_records(root / "one"), atol=1e-5)
  one, two = (json.loads((root / w / "summary.json").read_text())
              for w in ("one", "two"))
  for seed_one, seed_two in zip(one["per_seed"], two["per_seed"]):
    for which in ("best", "last"):
      for name, value in seed_one[which].items():
        if isinstance(value, float):
          assert seed_two[which][name] == pytest.approx(value, abs=1e-5)


def test_a_bad_workdir_ends_both_processes_with_one_line(tmp_path):
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("")
  results = _two_processes(not_a_dir, *CONFIGS["linear_probe"])
  lines = []
  for code, _, err in results:
    assert code == 1
    lines.append(err.strip())
  assert lines[0] == lines[1]
  assert "\n" not in lines[0]
  assert lines[0] == (f"reprog_jax.main: error: --workdir {not_a_dir} is not "
                      f"a directory; pass a directory")
