"""The persistent compilation cache (`reprog_jax/compile_cache.py`): a
second run of the same shapes compiles nothing."""

import os
import subprocess
import sys

from conftest import save_random_network
from reprog_jax import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs main in-process and prints how many XLA compilations it made: every
# executable JAX asks the backend for, less those the persistent cache
# served (JAX reports a cache hit's retrieval as a backend compile too).
COUNTING = """
import sys
from absl import app
from jax import monitoring
events = {"/jax/core/compile/backend_compile_duration": [],
          "/jax/compilation_cache/cache_hits": []}
def count(event, *args, **kwargs):
  if event in events:
    events[event].append(1)
monitoring.register_event_duration_secs_listener(count)
monitoring.register_event_listener(count)
from reprog_jax import main
sys.argv = ["main"] + sys.argv[1:]
try:
  app.run(main.main, flags_parser=main.parse_flags)
except SystemExit as e:
  assert not e.code, e.code
print("COMPILES", len(events["/jax/core/compile/backend_compile_duration"])
      - len(events["/jax/compilation_cache/cache_hits"]))
"""


def _run(workdir, cache, network):
  env = {k: v for k, v in os.environ.items()
         if k != compile_cache.ENV and not k.startswith("JAX_PERSISTENT")}
  proc = subprocess.run(
      [sys.executable, "-c", COUNTING, f"--workdir={workdir}",
       "--config=configs/linear_probe.py:smoke", "--config.epochs=1",
       "--config.progress=False", "--config.plot_interval=0",
       "--config.random_network=", f"--config.network_dir={network}",
       f"--config.compile_cache={cache}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = [l for l in proc.stdout.splitlines() if l.startswith("COMPILES")]
  return int(line.split()[1])


def test_a_second_run_of_the_same_shapes_compiles_nothing(tmp_path):
  cache = tmp_path / "cache"
  # Loaded, not drawn: flax's compiled random initialisation would be a
  # third of the first run's compilations' time.
  network = save_random_network(tmp_path / "network")
  assert _run(tmp_path / "first", cache, network) > 0
  assert any(cache.iterdir())
  assert _run(tmp_path / "second", cache, network) == 0


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.default_directory() == str(
      tmp_path / "reprog_jax" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compile_cache.default_directory() == os.path.join(
      os.path.expanduser("~"), ".cache", "reprog_jax", "xla")
