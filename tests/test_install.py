"""pyproject's extras: the ones the README installs exist, and the optional
pieces (GPU, TPU, TensorBoard, W&B) each have one."""

import pathlib
import re

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
  assert ("jax", frozenset({"tpu"})) in by_name["tpu"]
  assert ("tensorboard", frozenset()) in by_name["tensorboard"]
  assert ("wandb", frozenset()) in by_name["wandb"]
