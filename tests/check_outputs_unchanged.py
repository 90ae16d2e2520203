"""Outputs unchanged: every built-in method and variant, run from its smoke
preset with another checkout's code (e.g. main's) and with this one's, gives
the same metrics.jsonl values, checkpoint arrays and exports, bit for bit;
and a run the other checkout stopped after its first epoch resumes with this
one's code and ends as the other's uninterrupted run.

Not a test (too slow for the suite: two dozen smoke runs); a recorded check:

  git worktree add --detach /work/wt/D-base main
  python tests/check_outputs_unchanged.py --base /work/wt/D-base --out /tmp/unchanged

Each run is a fresh process with PYTHONPATH pointing at its checkout. Exits
1 and names every difference if there is one. `--only NAME` runs one
variant; `--stage base` makes only the base checkout's runs (then `--stage
mine` this one's and the comparison), `--stage none` only compares.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

MINE = pathlib.Path(__file__).resolve().parents[1]
# Variant name -> (preset, overrides). BLM++ at explicit lap=0, top_k=3:
# its defaults changed by design (the published experiments' settings).
VARIANTS = {
    "ilm": ("ilm_vp:smoke", ()),
    "flm": ("ilm_vp:smoke", ("--config.label_mapping=flm",)),
    "rlm": ("ilm_vp:smoke", ("--config.label_mapping=rlm",)),
    "blm": ("ilm_vp:smoke", ("--config.label_mapping=blm",)),
    "blmpp": ("ilm_vp:smoke", ("--config.label_mapping=blmpp",
                               "--config.lap=0", "--config.top_k=3")),
    "fullymap": ("ilm_vp:smoke", ("--config.label_mapping=fullymap",)),
    "padding": ("ilm_vp:smoke", ("--config.prompt=padding",)),
    "padding-fullymap": ("ilm_vp:smoke", ("--config.prompt=padding",
                                          "--config.label_mapping=fullymap")),
    "linear_probe": ("linear_probe:smoke", ()),
}
TIMING = ("train_images_per_second", "epoch_seconds")
# Every run on the network the smoke presets used before they took the tiny
# `resnet_mini` (2026-12-07): checkouts of either side run the same network.
NETWORK = ("--config.random_network=resnet18",)


def _run(checkout, *args):
  env = dict(os.environ, PYTHONPATH=str(checkout))
  proc = subprocess.run([sys.executable, "-m", *args], cwd=checkout, env=env,
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    sys.exit(f"{checkout}: {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  return proc


def _train(checkout, workdir, preset, overrides, *extra):
  _run(checkout, "reprog_jax.main", f"--config={preset}",
       f"--workdir={workdir}", "--config.progress=False", *NETWORK,
       *overrides, *extra)


def _export(checkout, workdir, which):
  out = pathlib.Path(f"{workdir}-{which}.pth")
  _run(checkout, "convert", "export", str(workdir), "--out", str(out),
       "--which", which, "--force")
  return out


def run_variant(base, out, name, stages=("base", "mine")):
  """The three runs of a variant: base's, mine, and base stopped after
  epoch 0 then resumed by mine; each exported (best and last). `stages`:
  the base checkout's runs, this one's, or both."""
  preset, overrides = VARIANTS[name]
  dirs = {side: out / name / side for side in ("base", "mine", "resumed")}
  if "base" in stages:
    _train(base, dirs["base"], preset, overrides)
    for which in ("best", "last"):
      _export(base, dirs["base"], which)
    _train(base, dirs["resumed"], preset, overrides, "--stop_after_epoch=0")
  if "mine" in stages:
    _train(MINE, dirs["mine"], preset, overrides)
    _train(MINE, dirs["resumed"], preset, overrides)
    for side in ("mine", "resumed"):
      for which in ("best", "last"):
        _export(MINE, dirs[side], which)
  return dirs


def _metrics(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
          for line in lines]


def _leaves(tree, prefix=""):
  """(path, leaf) of nested dicts (an export)."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _leaves(value, f"{prefix}{key}/")
  else:
    yield prefix.rstrip("/"), tree


def _checkpoint_leaves(run_dir) -> dict:
  """Every array of a run's checkpoint, by its pytree path."""
  import jax  # pylint: disable=g-import-not-at-top
  from reprog_jax.train import checkpoints  # pylint: disable=g-import-not-at-top
  flat, _ = jax.tree_util.tree_flatten_with_path(checkpoints.read(str(run_dir)))
  return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def _same(a, b) -> bool:
  a, b = np.asarray(a), np.asarray(b)
  return (a.dtype == b.dtype and a.shape == b.shape
          and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def compare(reference, other, what) -> tuple[list[str], int]:
  """Every difference between two run directories' outputs, and how many
  values (metrics lines, checkpoint arrays, exported entries) were
  compared."""
  import torch  # pylint: disable=g-import-not-at-top
  problems = []
  compared = len(_metrics(reference))
  if _metrics(reference) != _metrics(other):
    problems.append(f"{what}: metrics.jsonl differs")
  ref_tree = _checkpoint_leaves(reference)
  other_tree = _checkpoint_leaves(other)
  compared += len(ref_tree)
  if ref_tree.keys() != other_tree.keys():
    problems.append(f"{what}: checkpoint leaves differ: "
                    f"{sorted(ref_tree.keys() ^ other_tree.keys())}")
  problems += [f"{what}: checkpoint {key} differs"
               for key in sorted(ref_tree.keys() & other_tree.keys())
               if not _same(ref_tree[key], other_tree[key])]
  for which in ("best", "last"):
    ref_obj, other_obj = (torch.load(f"{d}-{which}.pth", weights_only=True)
                          for d in (reference, other))
    for obj in (ref_obj, other_obj):
      obj.pop("exported_from")  # Its run_dir differs, by design.
    ref_items, other_items = dict(_leaves(ref_obj)), dict(_leaves(other_obj))
    if ref_items.keys() != other_items.keys():
      problems.append(f"{what}: export ({which}) keys differ: "
                      f"{sorted(ref_items)} vs {sorted(other_items)}")
      continue
    compared += len(ref_items)
    for key, value in ref_items.items():
      mine = other_items[key]
      if isinstance(value, torch.Tensor):
        equal = (value.dtype == mine.dtype and value.shape == mine.shape
                 and torch.equal(value, mine))
      else:
        equal = value == mine
      if not equal:
        problems.append(f"{what}: export ({which}) {key} differs")
  return problems, compared


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--base", required=True, type=pathlib.Path,
                      help="the other checkout (e.g. a worktree of main)")
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--only", choices=VARIANTS, action="append")
  parser.add_argument("--stage", choices=("base", "mine", "all", "none"),
                      default="all", help="which runs to make first "
                      "(none: compare what --out holds)")
  args = parser.parse_args(argv)
  problems = []
  for name in args.only or VARIANTS:
    dirs = {side: args.out / name / side
            for side in ("base", "mine", "resumed")}
    if args.stage != "none":
      run_variant(args.base.resolve(), args.out.resolve(), name,
                  ("base", "mine") if args.stage == "all" else (args.stage,))
    if args.stage == "base":
      continue
    found, compared = compare(dirs["base"], dirs["mine"], f"{name} (mine)")
    resumed, _ = compare(dirs["base"], dirs["resumed"], f"{name} (resumed)")
    found += resumed
    print(f"{name}: {'; '.join(found) if found else 'identical'} "
          f"({compared} values: metrics.jsonl lines, checkpoint arrays, best "
          f"and last exports' entries; the base run stopped after epoch 0 "
          f"and resumed by this checkout: "
          f"{'differs' if resumed else 'the same'})", flush=True)
    problems += found
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
