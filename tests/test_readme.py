"""The README's commands are true."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_command(marker):
  text = (ROOT / "README.md").read_text()
  m = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)\n```", text, re.S)
  assert m, f"no command after <!-- {marker} --> in README.md"
  return m.group(1).strip()


def _steps(command):
  """The command's steps after setting up and installing."""
  steps = [s.strip() for s in command.split("&&")]
  install = max(i for i, s in enumerate(steps) if s.startswith("pip install"))
  return steps[:install + 1], steps[install + 1:]


def test_ci_runs_the_readme_test_command():
  cmd = readme_command("test-command")
  setup, rest = _steps(cmd)
  assert setup[0].startswith("python3 -m venv .venv")
  assert rest == ["python -m pytest -q"]
  # .ci/run extracts the very same text.
  script = (ROOT / ".ci" / "run").read_text()
  assert "<!-- test-command -->" in script


def _run(command, cwd):
  env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}"
             f"{os.pathsep}{os.environ['PATH']}")
  proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc


def test_main_command_is_the_offline_demo():
  # tests/test_demo.py runs this very command with --quick, end to end.
  setup, rest = _steps(readme_command("main-command"))
  assert setup[-1] == "pip install -e ."
  assert rest == ["python -m reprog_jax.demo --workdir runs/demo"]


def test_smoke_command_runs_offline_and_says_the_network_is_random(tmp_path):
  command = readme_command("smoke-command")
  assert command.startswith("python -m reprog_jax.main ")
  # Run from a copy of the checkout's configs, so runs/ lands in tmp_path.
  shutil.copytree(ROOT / "configs", tmp_path / "configs")
  proc = _run(command, tmp_path)
  assert "RANDOMLY INITIALISED" in proc.stdout
  assert "best test accuracy" in proc.stdout
  summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
  assert summary["method"] == "ilm_vp" and summary["dataset"] == "cifar10"
  assert summary["network"]["sources"]["weights"]["random_init"]
