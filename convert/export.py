"""`python -m convert export RUN_DIR --out FILE.pth`: what a training run
learned, as the PyTorch version's checkpoint.

  python -m convert export runs/vp_cifar10 --out vp_cifar10.pth
  python -m convert export runs/lp_cifar10 --out lp.pth --seed 2 --which last

RUN_DIR is a `reprog_jax.main` workdir, finished or interrupted (its latest
checkpoint is read). The file holds what the PyTorch version's `best.pth`
(`--which best`, the default: the seed's best epoch by test accuracy) or
`ckpt.pth` (`--which last`: the last checkpointed epoch) holds, or the epoch
picked on the validation split (`--which validation`), with its key
names and PyTorch's tensor layouts, as the run's method lays them out
(`MethodSpec.to_pytorch`):

  ILM-VP  {'visual_prompt_dict': {'program': (3, H, W) float32,
                                  'mask': (3, H, W) float32},
           'mapping_sequence': (T,) int64 (ILM, FLM, RLM), or
           'mapping_matrix': (S, T) float32 (BLM, BLM++), or
           'output_mapping_dict': {'weight': (T, S), 'bias': (T,)} (FullyMap),
           'epoch': int, 'best_acc': float}
  LP      {'fc_dict': {'weight': (T, F) float32, 'bias': (T,) float32},
           'epoch': int, 'best_acc': float}
  VP+LP   {'visual_prompt_dict': ..., 'fc_dict': ..., 'epoch', 'best_acc'}

(each part of a composed method exports its own keys: `methods/inputs.py`,
`methods/outputs.py`). A plug-in method is imported from the module the
run recorded (`summary.json`'s or a sweep cell's `method_module`), or from
REPROG_JAX_METHODS.

`program` and `mask` load into the PyTorch version's `ExpansiveVisualPrompt`
(`load_state_dict`), `fc_dict` into its `network.fc`; target logits are
`network(prompt(x))[:, mapping_sequence]` (`network(prompt(x)) @
mapping_matrix`, or `output_mapping(network(prompt(x)))` with
`output_mapping = torch.nn.Linear(S, T)` loading `output_mapping_dict`).
The padding prompt's arrays are `padding_prompt_dict` instead, for
`normalize(resize(x)) + program * mask` (bilinear, `align_corners=False`).
`epoch` counts from 0 and `best_acc` is a fraction, as there. There is no
`optimizer_dict`: the best epoch's optimiser state is not kept, and the
file is for using the result, not for resuming PyTorch training.
`exported_from` says where it came from. It loads with
`torch.load(FILE, weights_only=True)`.
"""

import json
import os

import numpy as np

from convert import torch_io
from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax import layout
WHICH = ("best", "last", "validation")


class ExportError(errors.UserError, ValueError):
  """A run directory that cannot be exported, in one line."""


def add_parser(sub):
  """Registers the `export` subcommand on `sub` (argparse subparsers)."""
  p = sub.add_parser(
      "export", help="a training run's prompt or head as a PyTorch checkpoint",
      description="Write the learned prompt (ILM-VP) or head (linear "
      "probing) of a training run, with its label mapping, in the PyTorch "
      "version's best.pth / ckpt.pth layout.")
  p.add_argument("run_dir", metavar="RUN_DIR",
                 help="a training workdir (reprog_jax.main --workdir), "
                 "finished or interrupted")
  p.add_argument("--out", required=True, metavar="FILE.pth",
                 help="the file to write")
  p.add_argument("--seed", type=int, default=None,
                 help="which of the run's seeds (default: its first)")
  p.add_argument("--which", choices=WHICH, default="best",
                 help="the seed's best epoch by test accuracy (best.pth), "
                 "the last checkpointed epoch (ckpt.pth), or its epoch "
                 "picked on the validation split; default best")
  p.add_argument("--force", action="store_true",
                 help="replace --out if it exists")
  return p


def run(args) -> None:
  """`python -m convert export` with parsed `args`."""
  written = export(args.run_dir, args.out, seed=args.seed, which=args.which,
                   force=args.force)
  print(f"wrote {args.out}: {written['method']} seed {written['seed']}, "
        f"{args.which} (epoch {written['epoch']}, best test accuracy "
        f"{written['best_acc']:.2%}); load it with torch.load({args.out!r})")


def _read_config(run_dir) -> dict:
  if not os.path.isdir(run_dir):
    raise ExportError(f"{run_dir}: no such run directory")
  path = os.path.join(run_dir, layout.CONFIG_FILE)
  try:
    with open(path) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise ExportError(
        f"{run_dir}: not a training run (no {layout.CONFIG_FILE}); pass the "
        f"--workdir of a `python -m reprog_jax.main` run") from None
  except ValueError:
    raise ExportError(f"{path}: not valid JSON; is {run_dir} a training "
                      f"run?") from None
  if not isinstance(config, dict) or "method" not in config:
    raise ExportError(f"{path}: not a training run's config (no 'method')")
  return config


def _run_seeds(config) -> list:
  """The run's seeds (`run_config.seeds`, from the flattened config)."""
  seeds = config.get("seeds")
  return [config.get("seed")] if seeds is None else list(seeds)


def _seed_index(run_dir, config, seed) -> tuple[int, int]:
  """(index of the seed in the run, the seed)."""
  seeds = _run_seeds(config)
  if seed is None:
    return 0, seeds[0]
  if seed not in seeds:
    raise ExportError(
        f"{run_dir}: seed {seed} is not one of the run's seeds "
        f"({', '.join(map(str, seeds))}); pass one of them to --seed")
  return seeds.index(seed), seed


def _image_size(config) -> int:
  """The run's image side (`run_config.image_size`, from the flattened
  config.json)."""
  if config.get("image_size"):
    return int(config["image_size"])
  from reprog_jax import data  # Only runs without image_size need it.
  return data.get_dataset_info(config["data.name"]).vp_size


def _tensors(layout):
  """`layout` (nested dicts of NumPy arrays) with torch tensors for arrays,
  each owning a C-contiguous copy (torch refuses read-only memory)."""
  torch, _ = torch_io.import_torch()
  if isinstance(layout, dict):
    return {key: _tensors(value) for key, value in layout.items()}
  return torch.from_numpy(np.array(layout, copy=True, order="C"))


def _recorded_module(run_dir) -> str | None:
  """The module that defines the run's method, as the run recorded it:
  `summary.json`'s `method_module` (a finished run) or a sweep cell's
  `cell.json`; None where neither says (an interrupted run of its own)."""
  for name in (layout.SUMMARY_FILE, layout.CELL_FILE):
    try:
      with open(os.path.join(run_dir, name)) as f:
        record = json.load(f)
    except (OSError, ValueError):
      continue
    if isinstance(record, dict) and record.get("method_module"):
      return str(record["method_module"])
  return None


def _spec(run_dir, method):
  """The method's registry entry, imported from the run's record if need
  be, exportable."""
  from reprog_jax import methods  # JAX and Flax: only export needs them.
  module = _recorded_module(run_dir)
  spec = methods.find(method, module)
  if spec is None:
    where = (f"its module {module!r} (recorded by the run) cannot be "
             f"imported here; put its directory on PYTHONPATH" if module else
             "the run does not record its module; name it")
    raise ExportError(
        f"{run_dir}: method {method!r} is not registered and {where}, e.g. "
        f"{methods.PLUGINS_ENV}={module or 'my_package.my_method'} python -m "
        f"convert export ...")
  if spec.to_pytorch is None:
    raise ExportError(f"{run_dir}: method {method!r} has no PyTorch layout "
                      f"(its MethodSpec.to_pytorch is None)")
  return spec


def export(run_dir, out, seed=None, which="best", force=False) -> dict:
  """Writes one seed's prompt or head of `run_dir` to `out` (atomically).

  Args:
    run_dir: a training workdir with at least one checkpointed epoch.
    out: the `.pth` file to write.
    seed: one of the run's seeds; None: the first.
    which: 'best' (the seed's best epoch by test accuracy), 'last' (the
      last checkpoint) or 'validation' (its epoch picked on the validation
      split).
    force: replace an existing `out`.

  Returns:
    `{'method', 'seed', 'epoch', 'best_acc'}` of what was written.

  Raises:
    ExportError: not a run directory, no checkpoint, an unknown seed or
      method, or `out` exists.
  """
  from reprog_jax.train import checkpoints  # Orbax: heavy, only export needs it.

  if which not in WHICH:
    raise ExportError(f"--which {which!r} is not one of {', '.join(WHICH)}")
  config = _read_config(run_dir)
  method = config["method"]
  spec = _spec(run_dir, method)
  index, seed = _seed_index(run_dir, config, seed)
  if os.path.isdir(out):
    raise ExportError(f"{out}: is a directory; --out names the .pth file")
  if os.path.lexists(out) and not force:
    raise ExportError(f"{out}: exists; pass --force to replace it")
  if checkpoints.latest_epoch(run_dir) is None:
    raise ExportError(f"{run_dir}: no checkpoint yet (one is written after "
                      f"each epoch); export after the first epoch ends")
  tree = checkpoints.read(run_dir)
  best = tree["best"]
  if best["epoch"].shape[0] != len(_run_seeds(config)):
    raise ExportError(
        f"{run_dir}: its checkpoint holds {best['epoch'].shape[0]} seeds, "
        f"{layout.CONFIG_FILE} names {len(_run_seeds(config))}; the run "
        f"directory is inconsistent")
  if which == "best":
    params, mapping = best["params"], best["mapping_sequence"]
    epoch = int(best["epoch"][index])
  elif which == "validation":
    if "val_epoch" not in best or int(best["val_epoch"][index]) < 0:
      raise ExportError(
          f"{run_dir}: seed {seed} has no validation-selected epoch (the "
          f"run had no validation split: see validation_per_class); use "
          f"--which best or --which last")
    params, mapping = best["val_params"], best["val_mapping_sequence"]
    epoch = int(best["val_epoch"][index])
  else:
    params, mapping = tree["state"]["params"], tree["mapping_sequence"]
    epoch = int(tree["epoch"])
  params = {name: np.asarray(value)[index] for name, value in params.items()}
  obj = _tensors(spec.to_pytorch(params, np.asarray(mapping)[index],
                                 _image_size(config), config))
  best_acc = float(best["test_acc"][index])
  obj.update({
      "epoch": epoch, "best_acc": best_acc,
      "exported_from": {"run_dir": os.path.abspath(run_dir), "seed": seed,
                        "which": which, "method": method}})
  _save_atomically(obj, out)
  return {"method": method, "seed": seed, "epoch": epoch,
          "best_acc": best_acc}


def _save_atomically(obj, out) -> None:
  """torch.save to a temporary sibling, renamed into place when complete."""
  torch, _ = torch_io.import_torch()
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise ExportError(f"{out}: its directory {parent} does not exist")
  with fileio.atomic_file(out) as f:
    torch.save(obj, f)
