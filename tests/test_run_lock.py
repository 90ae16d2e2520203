"""One run per workdir (`train/run_lock.py`): a live holder refuses a second
run in one line; a holder that died (kill -9) leaves nothing in the way."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from reprog_jax import layout
from reprog_jax.train import run_lock

HOLDER = """
import sys, time
from reprog_jax.train import run_lock
with run_lock.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def _start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_live_holder_refuses_a_second_run_in_one_line(tmp_path):
  proc = _start_holder(tmp_path)
  try:
    with pytest.raises(run_lock.WorkdirBusyError) as refused:
      with run_lock.hold(tmp_path):
        pytest.fail("a second run got the lock")
    message = str(refused.value)
    assert "\n" not in message
    assert f"pid {proc.pid} on {socket.gethostname()}" in message
    assert str(tmp_path) in message and "--workdir" in message
  finally:
    proc.kill()
    proc.wait()


def test_the_same_process_cannot_hold_it_twice(tmp_path):
  with run_lock.hold(tmp_path):
    with pytest.raises(run_lock.WorkdirBusyError):
      with run_lock.hold(tmp_path):
        pass


def test_a_killed_holder_is_taken_over(tmp_path):
  proc = _start_holder(tmp_path)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # Its record is still on disk, naming a dead process.
  stale = json.loads((tmp_path / layout.LOCK_FILE).read_text())
  assert stale["pid"] == proc.pid
  with run_lock.hold(tmp_path):
    mine = json.loads((tmp_path / layout.LOCK_FILE).read_text())
    assert mine["pid"] == os.getpid()
  # Released and cleared: the next run takes it at once.
  assert (tmp_path / layout.LOCK_FILE).read_text() == ""
  with run_lock.hold(tmp_path):
    pass


def test_without_flock_a_dead_owner_is_taken_over_and_a_live_one_refused(
    tmp_path, monkeypatch):
  import errno
  import fcntl

  def unsupported(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", unsupported)
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  path = tmp_path / layout.LOCK_FILE
  path.write_text(json.dumps({"host": socket.gethostname(),
                              "pid": int(dead.stdout)}))
  with run_lock.hold(tmp_path):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    path.write_text(json.dumps({"host": socket.gethostname(),
                                "pid": alive.pid}))
    with pytest.raises(run_lock.WorkdirBusyError, match="no record locks"):
      with run_lock.hold(tmp_path):
        pass
  finally:
    alive.kill()
    alive.wait()


# --------------------------------------------------------------------------
# Wired into a run
# --------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_run_on_a_busy_workdir_refuses_and_the_first_finishes(
    tmp_path, monkeypatch):
  import threading
  from conftest import smoke_config
  from reprog_jax.metrics import metric_writer
  from reprog_jax.train import loop
  # The first run, here, holds the workdir in epoch 1 until the second
  # (another process, as a requeued job would be) has been refused.
  refused = threading.Event()
  real_epoch = loop._epoch

  def epoch_waiting_at_1(run, writer, state, mappings, best, epoch,
                         **kwargs):
    if epoch == 1:
      assert refused.wait(timeout=300)
    return real_epoch(run, writer, state, mappings, best, epoch, **kwargs)

  monkeypatch.setattr(loop, "_epoch", epoch_waiting_at_1)
  config = smoke_config("linear_probe", epochs=3, image_size=32)
  first = {}
  thread = threading.Thread(target=lambda: first.update(
      summary=loop.train_and_evaluate(config, str(tmp_path))))
  thread.start()
  try:
    lock = tmp_path / layout.LOCK_FILE
    while thread.is_alive() and not (lock.exists() and lock.read_text()):
      thread.join(timeout=0.1)
    second = subprocess.run(
        [sys.executable, "-m", "reprog_jax.main",
         "--config=configs/linear_probe.py:smoke", f"--workdir={tmp_path}",
         "--config.epochs=3", "--config.image_size=32",
         "--config.progress=False"], cwd=ROOT, env=dict(os.environ),
        capture_output=True, text=True, timeout=300)
  finally:
    refused.set()
    thread.join()
  assert second.returncode == 1, second.stderr[-3000:]
  assert second.stderr.count("\n") == 1, second.stderr[-3000:]
  assert second.stderr.startswith(
      f"reprog_jax.main: error: {tmp_path}: run pid {os.getpid()} on "
      f"{socket.gethostname()}")
  assert "is using this workdir" in second.stderr
  assert first["summary"]["method"] == "linear_probe"
  records = metric_writer.read_metrics(tmp_path)
  assert [r["epoch"] for r in records] == [0, 1, 2]
  # Ended: the lock names nobody, and the next run may take it.
  assert lock.read_text() == ""
  with run_lock.hold(tmp_path):
    pass
