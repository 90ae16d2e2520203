"""The package's wings import only downwards, and no module grows past ~450
lines.

Layers, lowest first (a module may import its own layer and those below):
base (errors, fileio, layout, cli) < data < model < metrics < methods <
train < configs < study < tools < entry points (main and the
`python -m` shims). `convert` sits beside the library: it may import any of
it but the study, the tools and the entry points, and nothing in
`reprog_jax` imports it. Every import counts, lazy ones inside functions
too.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = (
    ("errors", "fileio", "layout", "cli", "compile_cache"),
    ("data",),
    ("model",),
    ("metrics",),
    ("methods",),
    ("train",),
    ("configs",),
    ("study",),
    ("tools",),
    ("main", "sweep", "report", "demo", "bench", "evaluate_source"),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
CONVERT_MAY_NOT = ("study", "tools", "main", "sweep", "report", "demo",
                   "evaluate_source",
                   "bench")
MAX_LINES = 450


def modules():
  return sorted(p for folder in ("reprog_jax", "convert")
                for p in (ROOT / folder).rglob("*.py"))


def dotted(path, root=ROOT) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path, root=ROOT) -> set[str]:
  """Every module `path` imports, as dotted names (`from a import b` gives
  `a.b`, which is `a`'s submodule or a name in `a`)."""
  names = set()
  package = dotted(path, root).split(".")
  if path.name != "__init__.py":
    package = package[:-1]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: resolved against the package.
        base = ".".join(package[:len(package) - node.level + 1]
                        + ([base] if base else []))
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def wing(name) -> str | None:
  """The wing (`data`, `model`, `cli`, ...) of a dotted name inside
  `reprog_jax`, or None outside it (or for the package itself)."""
  parts = name.split(".")
  if parts[0] != "reprog_jax" or len(parts) < 2:
    return None
  return parts[1]


def test_every_wing_is_in_a_layer():
  wings = {wing(dotted(p)) for p in modules()} - {None}
  assert wings <= set(RANK), sorted(wings - set(RANK))


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_imports_only_downwards(path):
  me = dotted(path)
  mine = wing(me)
  for name in sorted(imported(path)):
    theirs = wing(name)
    if name.split(".")[0] == "convert" and me.split(".")[0] == "reprog_jax":
      raise AssertionError(f"{me} imports {name}: the library never "
                           f"imports convert")
    if theirs is None or theirs not in RANK:
      continue
    if me.split(".")[0] == "convert":
      assert theirs not in CONVERT_MAY_NOT, f"{me} imports {name}"
    elif mine is not None:
      assert RANK[theirs] <= RANK[mine], (
          f"{me} ({mine}) imports {name} ({theirs}), a higher layer")


def test_the_check_sees_lazy_relative_and_from_imports(tmp_path):
  package = tmp_path / "reprog_jax" / "data"
  package.mkdir(parents=True)
  path = package / "example.py"
  path.write_text("import os\nfrom reprog_jax.model import network\n"
                  "from . import store\n"
                  "def f():\n  from reprog_jax import study\n")
  names = imported(path, root=tmp_path)
  assert names == {"os", "reprog_jax.model.network", "reprog_jax.data.store",
                   "reprog_jax.study"}
  assert RANK[wing("reprog_jax.study")] > RANK["data"]  # Would be refused.


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_no_module_is_over_450_lines(path):
  relative = str(path.relative_to(ROOT))
  lines = len(path.read_text().splitlines())
  assert lines <= MAX_LINES, f"{relative}: {lines} lines; split it by topic"
