"""pyproject's extras: the ones the README installs exist, and the optional
pieces (GPU with CUDA 12 or 13, TPU, TensorBoard, W&B) each have one; a
wheel, installed away from the checkout, runs a preset by name; and the
README's offline install (a wheelhouse, then `--no-index`) is what
`.ci/offline_install_check.sh` runs (the check itself, slow and needing
PyPI, only when asked)."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement  # pytest's own dependency.

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def extras() -> dict[str, list[str]]:
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]["optional-dependencies"]


def extras_named(text: str) -> set[str]:
  """Every extra of this package a `pip install` in `text` names: `.[a,b]`
  or `reprog-jax[a]`, quoted or not (not other packages' extras)."""
  names = set()
  for command in re.findall(r"pip install[^\n`]*", text):
    for group in re.findall(r"(?:^|[\s'\"])(?:\.|reprog-jax)\[([^\]]*)\]",
                            command):
      names.update(name.strip() for name in group.split(","))
  return names


def test_readme_installs_only_extras_that_exist():
  named = extras_named((ROOT / "README.md").read_text())
  assert named, "the README names no extra at all: is the pattern stale?"
  assert named <= set(extras()), sorted(named - set(extras()))


def test_extras_named_reads_every_form():
  text = ("pip install -e '.[torch,test]' && pip install -e .[gpu]\n"
          "pip install 'reprog-jax[wandb]' && pip install -U 'jax[cuda12]'\n"
          "see '.[nothing]' outside a pip command")
  assert extras_named(text) == {"torch", "test", "gpu", "wandb"}


def test_optional_pieces_have_extras():
  table = extras()
  requirements = {name: [Requirement(r) for r in rs]
                  for name, rs in table.items()}  # Each one valid PEP 508.
  by_name = {name: {(r.name, frozenset(r.extras)) for r in rs}
             for name, rs in requirements.items()}
  assert ("jax", frozenset({"cuda12"})) in by_name["gpu"]
  assert ("jax", frozenset({"cuda12"})) in by_name["cuda12"]
  assert ("jax", frozenset({"cuda13"})) in by_name["cuda13"]
  # `gpu` is `cuda12` under its older name, nothing more or less.
  assert table["gpu"] == table["cuda12"]
  assert ("jax", frozenset({"tpu"})) in by_name["tpu"]
  assert ("tensorboard", frozenset()) in by_name["tensorboard"]
  assert ("wandb", frozenset()) in by_name["wandb"]


# --------------------------------------------------------------------------
# The installed wheel runs a preset by name, away from the checkout
# --------------------------------------------------------------------------

# Not part of the package: what the copy to build from leaves out.
_NOT_BUILT = shutil.ignore_patterns(".git", ".venv", "build", "runs",
                                    "__pycache__", "*.egg-info",
                                    ".pytest_cache", "tests", "docs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
  """The package built as a wheel (offline, from a copy of the checkout, so
  the checkout stays clean) and installed alone into a fresh directory."""
  tmp = tmp_path_factory.mktemp("install")
  source, wheels, site = tmp / "source", tmp / "wheels", tmp / "site"
  shutil.copytree(ROOT, source, ignore=_NOT_BUILT)
  env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

  def pip(*args):
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "-q"],
                          cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

  pip("wheel", "--no-deps", "--no-build-isolation", str(source), "-w",
      str(wheels))
  pip("install", "--no-deps", "--target", str(site),
      *map(str, wheels.glob("*.whl")))
  return site


def _outside(site, tmp_path, *args, timeout=300):
  """Runs python in `tmp_path` with only `site` on the path (the
  environment's own packages supply the dependencies)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_package_data(installed):
  wheel = next((installed.parent / "wheels").glob("*.whl"))
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
  assert "reprog_jax/model/imagenet_classes.txt" in names
  for config in ("ilm_vp", "linear_probe", "study"):
    assert f"reprog_jax/configs/{config}.py" in names
  assert "convert/cli.py" in names
  assert not [n for n in names if n.startswith(("tests/", "configs/"))]


def test_installed_package_runs_a_preset_by_name_outside_the_checkout(
    installed, tmp_path):
  proc = _outside(installed, tmp_path, "-c",
                  "import reprog_jax; print(reprog_jax.__file__)")
  assert proc.returncode == 0, proc.stderr
  assert pathlib.Path(proc.stdout.strip()).is_relative_to(installed)
  workdir = tmp_path / "run"
  proc = _outside(installed, tmp_path, "-m", "reprog_jax.main",
                  "--config=ilm_vp:smoke", f"--workdir={workdir}",
                  "--config.epochs=1",
                  "--config.plot_interval=0")  # 2 s of figures; none read.
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  assert summary["config"]["method"] == "ilm_vp"
  # An unknown name is one line that lists the presets.
  proc = _outside(installed, tmp_path, "-m", "reprog_jax.main",
                  "--config=nonesuch:smoke", f"--workdir={workdir}2")
  assert proc.returncode == 1
  assert proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stderr.startswith("reprog_jax.main: error: --config=nonesuch:"
                                "smoke: no preset module 'nonesuch'; use one "
                                "of ilm_vp, linear_probe, study")


# --------------------------------------------------------------------------
# The offline install (README "On a node without internet")
# --------------------------------------------------------------------------

CHECK = ROOT / ".ci" / "offline_install_check.sh"


def _offline_block() -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(r"<!-- offline-install -->\s*```bash\n(.*?)\n```", text,
                    re.S)
  assert match, "no command after <!-- offline-install --> in README.md"
  return match.group(1)


def test_the_offline_install_builds_a_wheelhouse_and_installs_from_it_alone():
  pips = [line for line in _offline_block().splitlines()
          if line.startswith("pip ")]
  wheel, download, install = pips
  # The project's wheel, and one of tensorflow-datasets' `promise`, which
  # PyPI has only as source (pure Python: built once, fits any node).
  assert wheel == "pip wheel --no-deps -w wheelhouse . promise"
  # Wheels only, for the node's Python and each manylinux tag it runs
  # (jaxlib's wheels are manylinux 2.27), the built ones included.
  for flag in ("-d wheelhouse", "--find-links wheelhouse",
               "--only-binary=:all:",
               "--python-version 3.11", "--platform manylinux2014_x86_64",
               "seq 17 28", "--platform manylinux_2_${minor}_x86_64"):
    assert flag in download, flag
  assert download.endswith('"$(ls wheelhouse/reprog_jax-*.whl)[cuda12]"')
  assert install == ("pip install --no-index --find-links wheelhouse "
                     "'reprog-jax[cuda12]'")
  assert extras_named(_offline_block()) <= set(extras())
  # The manual check runs this very block, less the CUDA extra.
  script = CHECK.read_text()
  assert "<!-- offline-install -->" in script
  assert "${block//\\[cuda12\\]/}" in script


@pytest.mark.skipif(os.environ.get("REPROG_JAX_OFFLINE_INSTALL_CHECK") != "1",
                    reason="slow, needs PyPI: set "
                    "REPROG_JAX_OFFLINE_INSTALL_CHECK=1 to run the offline "
                    "install check")
def test_offline_install_check_passes(tmp_path):
  proc = subprocess.run(["bash", str(CHECK), str(tmp_path / "check")],
                        capture_output=True, text=True, timeout=3600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "offline install check passed" in proc.stdout
