"""`python -m convert prune ...`: one-shot pruning of a network directory.

  python -m convert prune --from nets/dense --method magnitude \\
      --scope global --sparsity-state 8 --out nets/dense_mp8

Loads a network directory (dense or a ticket), prunes its masked weights
with `reprog_jax.model.pruning.prune` and writes a network directory in the format
`convert torch` writes. One-shot pruning of a trained network is not a
lottery ticket (no rewinding, no retraining); `meta.json` says so. Tickets
come from iterative magnitude pruning with rewinding
(`pruning.iterative_magnitude_pruning`) or the PyTorch version's files
(`convert torch --lt-dir`).
"""

import argparse
import os

import jax
import numpy as np

from convert import torch_io
from convert.torch_to_flax import ConversionError
from reprog_jax.model import masks as masks_lib
from reprog_jax.model import network_dir
from reprog_jax.model import pruning

NOT_A_TICKET = ("one-shot magnitude pruning of a trained network is not a "
                "lottery ticket (no rewinding, no retraining)")


def add_parser(sub) -> argparse.ArgumentParser:
  """Registers the `prune` subcommand on `sub` (argparse subparsers)."""
  p = sub.add_parser(
      "prune", help="one-shot pruning of a network directory",
      description="Prune a network directory's (already masked) weights "
      "once, by magnitude or at random, and write a new network directory. "
      "This is one-shot pruning, not a lottery ticket.")
  p.add_argument("--from", dest="source", required=True, metavar="DIR",
                 help="the network directory to prune (a `convert` output)")
  p.add_argument("--method", choices=pruning.METHODS, default="magnitude",
                 help="keep the largest |weight| or a random subset "
                 "(default magnitude)")
  p.add_argument("--scope", choices=pruning.SCOPES, default="global",
                 help="rank all pruned layers together, or prune each layer "
                 "to the same fraction (default global)")
  amount = p.add_mutually_exclusive_group(required=True)
  amount.add_argument("--sparsity-state", type=int, metavar="K",
                      help="keep 0.8**K of the prunable weights (the "
                      "paper's sparsity states)")
  amount.add_argument("--remaining", type=float, metavar="F",
                      help="keep the fraction F in (0, 1] of the prunable "
                      "weights")
  p.add_argument("--seed", type=int, default=0,
                 help="with --method random: the generator's seed (default 0)")
  p.add_argument("--no-prune-first-conv", dest="prune_first_conv",
                 action="store_false",
                 help="leave the stem conv1 as it is (its current mask)")
  p.add_argument("--no-prune-fc", dest="prune_fc", action="store_false",
                 help="leave the fc kernel as it is (its current mask)")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="the network directory to write")
  p.add_argument("--force", action="store_true",
                 help="replace --out if it is a network directory")
  p.add_argument("--per-layer", action="store_true",
                 help="print the per-layer sparsity table")
  add_source_accuracy(p)
  return p


def add_source_accuracy(p) -> None:
  """`--source-accuracy PCT` (convert torch and prune): the network's source
  (ImageNet) top-1 in %, recorded as meta.json's `source_top1`."""
  p.add_argument("--source-accuracy", type=_percent, metavar="PCT",
                 help="the network's source (ImageNet) top-1 accuracy in %% "
                 "(e.g. 76.1; a value <= 1 is refused as a fraction), "
                 "recorded in meta.json as source_top1; the "
                 "report's claim 1 compares dense and ticket by it. "
                 "Measure it with python -m reprog_jax.evaluate_source")


def _percent(text) -> float:
  """argparse type: a percentage in (1, 100]; a value <= 1 is refused as a
  fraction given by mistake (0.761 for 76.1 %)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not 0.0 <= value <= 100.0:
    raise argparse.ArgumentTypeError(
        f"{text} is not a percentage in [0, 100] (76.1 means 76.1 %)")
  if value <= 1.0:
    raise argparse.ArgumentTypeError(
        f"{text} looks like a fraction; give percent (76.1 for 76.1 %)")
  return value


def source_accuracy_meta(args) -> dict:
  """meta.json's `source_top1` entries for `--source-accuracy` (none
  without it)."""
  if args.source_accuracy is None:
    return {}
  return {"source_top1": args.source_accuracy,
          "source_top1_from": "given to convert (--source-accuracy)"}


def run(args, parser, check_out) -> None:
  """Prunes `args.source` into `args.out`.

  Args:
    args, parser: the parsed `prune` arguments and their parser.
    check_out: `convert torch`'s refusal of an existing `--out`, called as
      `check_out(args)` before anything is read.
  """
  if args.sparsity_state is not None:
    if args.sparsity_state < 0:
      parser.error("--sparsity-state K needs K >= 0")
    remaining = pruning.remaining_fraction(args.sparsity_state)
  else:
    remaining = args.remaining
  if os.path.abspath(args.out) == os.path.abspath(args.source):
    raise ConversionError(f"{args.out}: --out is the --from directory; write "
                          f"the pruned network elsewhere")
  check_out(args)

  source = network_dir.load(args.source)
  params, batch_stats, masks = jax.device_get(
      (source.params, source.batch_stats, source.masks))
  src_meta = source.meta
  options = {"prune_first_conv": args.prune_first_conv,
             "prune_fc": args.prune_fc}
  masks = pruning.prune(params, masks, remaining=remaining,
                        method=args.method, scope=args.scope, seed=args.seed,
                        **options)
  # The pruned weights are stored as zeros: the files hold the pruned
  # network itself, whichever way a reader combines weights and masks.
  params = jax.tree.map(
      lambda m, w: w if m is None else np.where(m, w, 0).astype(w.dtype),
      masks, params, is_leaf=lambda m: m is None)
  print(f"pruned {args.source} ({args.method}, {args.scope}) to "
        f"{100 * remaining:.2f} % of its prunable weights; note: "
        f"{NOT_A_TICKET}")
  report = masks_lib.sparsity(params, masks)
  print(masks_lib.format_report(report, per_layer=args.per_layer))

  meta_path = os.path.join(args.source, network_dir.META_FILE)
  network_dir.save(args.out, arch=source.arch, params=params,
                batch_stats=batch_stats, masks=masks, overwrite=args.force,
                meta={
                    "num_classes": src_meta["num_classes"],
                    "sources": {
                        "weights": src_meta["sources"]["weights"],
                        "network": {
                            "path": os.path.abspath(args.source),
                            "meta_sha256": torch_io.sha256(meta_path),
                            "dense": src_meta.get("dense"),
                            "ticket": src_meta.get("ticket"),
                        },
                    },
                    "ticket": {
                        "sparsity_state": args.sparsity_state,
                        "expected_remaining_percent": 100 * remaining,
                        "method": args.method,
                        "scope": args.scope,
                        **options,
                        "seed": args.seed if args.method == "random" else None,
                        "lottery_ticket": False,
                        "note": NOT_A_TICKET,
                    },
                    "dense": False,
                    "weights_nonzero_outside_mask": 0,
                    "verification": None,
                    "sparsity": report,
                    **source_accuracy_meta(args),
                })
  print(f"wrote {args.out} ({source.arch}, one-shot pruned); load it with "
        f"reprog_jax.model.network_dir.load({args.out!r})")
