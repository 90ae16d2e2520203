"""`python -m convert torch ...`: a PyTorch ResNet (and ticket mask) -> a
reprog-jax network directory.

  python -m convert torch --arch resnet50 --weights W.pth [--mask M.pth] --out DIR
  python -m convert torch --arch resnet50 --lt-dir LT --sparsity-state 8 --out DIR
  python -m convert torch --arch resnet50 --random-init --out DIR   # smoke runs
  python -m convert torch --arch resnet50 --weights SPARSE.pth --mask-from-zeros --out DIR
  python -m convert prune --from DIR --sparsity-state 8 --out DIR2   # convert/prune.py
  python -m convert export RUN_DIR --out prompt.pth   # convert/export.py
  python -m convert inspect DIR [--image PATH]   # convert/inspect_network.py

The output directory is written only once everything has been read,
checked and (unless --no-verify) shown to reproduce PyTorch's logits; on any
error nothing is written and the exit status is 1.
"""

import argparse
import os

import jax
import numpy as np

from convert import export
from convert import inspect_network
from convert import prune
from convert import torch_io
from convert.torch_to_flax import ConversionError, convert_masks, convert_state_dict
from reprog_jax import cli
from reprog_jax.model import masks as masks_lib
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.model import pruning
from reprog_jax.model import resnet

LT_WEIGHTS = "{arch}_dyn4_{k}_checkpoint.pth"
LT_MASK = "{arch}_dyn4_{k}_mask.pth"


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
      prog="python -m convert",
      description="Convert PyTorch checkpoints into reprog-jax networks.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser(
      "torch", help="a torchvision ResNet state dict (+ lottery-ticket mask)",
      description="Convert a torchvision ResNet state dict, optionally with "
      "a lottery-ticket mask, into a reprog-jax network directory.")
  p.add_argument("--arch", required=True,
                 choices=resnet.TORCHVISION_ARCHITECTURES)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--weights", metavar="W.pth",
                   help="a state dict, bare or under 'state_dict'/'model'")
  src.add_argument("--lt-dir", metavar="DIR",
                   help="a folder with the PyTorch version's ticket pair "
                   f"{LT_WEIGHTS} + {LT_MASK}")
  src.add_argument("--random-init", action="store_true",
                   help="convert a randomly initialised torchvision network "
                   "(random BatchNorm statistics too): for smoke runs only")
  p.add_argument("--mask", metavar="M.pth",
                 help="a lottery-ticket mask dict (0/1 per conv/fc weight)")
  p.add_argument("--sparsity-state", type=int, metavar="K",
                 help="with --lt-dir: the pruning round k (keeps 0.8**k)")
  p.add_argument("--mask-from-zeros", action="store_true",
                 help="with --weights: a sparse checkpoint whose zeros are "
                 "its mask (mask = weight != 0 on every conv/fc kernel)")
  p.add_argument("--seed", type=int, default=0,
                 help="with --random-init: the torch seed (default 0)")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="the network directory to write")
  p.add_argument("--force", action="store_true",
                 help="replace --out if it is a network directory (a "
                 "`convert` output; nothing else is ever deleted)")
  p.add_argument("--no-verify", dest="verify", action="store_false",
                 help="skip running both networks on a random batch")
  p.add_argument("--verify-size", type=cli.positive_int, default=224,
                 metavar="PX",
                 help="image size of the verification batch (default 224)")
  p.add_argument("--verify-tol", type=float, default=1e-3, metavar="TOL",
                 help="largest logit difference accepted (default 1e-3)")
  p.add_argument("--per-layer", action="store_true",
                 help="print the per-layer sparsity table")
  prune.add_source_accuracy(p)
  prune.add_parser(sub)
  export.add_parser(sub)
  inspect_network.add_parser(sub)
  return parser


def _resolve_sources(args, parser):
  """(weights path or None, mask path or None, ticket meta or None)."""
  if args.mask_from_zeros and (args.weights is None or args.mask is not None):
    parser.error("--mask-from-zeros takes the mask from --weights' zeros: "
                 "not with --mask, --lt-dir or --random-init")
  if args.lt_dir is not None:
    if args.sparsity_state is None or args.mask is not None:
      parser.error("--lt-dir needs --sparsity-state K and takes no --mask")
    names = {"arch": args.arch, "k": args.sparsity_state}
    return (os.path.join(args.lt_dir, LT_WEIGHTS.format(**names)),
            os.path.join(args.lt_dir, LT_MASK.format(**names)),
            {"sparsity_state": args.sparsity_state,
             "expected_remaining_percent": 100 * 0.8 ** args.sparsity_state})
  if args.sparsity_state is not None:
    parser.error("--sparsity-state goes with --lt-dir")
  if args.random_init and args.mask is not None:
    parser.error("--random-init takes no --mask")
  return args.weights, args.mask, None


def check_out(args) -> None:
  """Refuses an existing `--out` before anything is read: without --force
  always, with --force unless it is a network directory (`convert`'s own
  output; never a workdir or a file)."""
  if os.path.lexists(args.out):
    if not args.force:
      raise ConversionError(f"{args.out}: exists; pass --force to replace it")
    network_dir.check_replaceable(args.out)


def run(args, parser) -> None:
  weights_path, mask_path, ticket = _resolve_sources(args, parser)
  out = os.path.abspath(args.out)
  check_out(args)

  sources = {}
  if args.random_init:
    print(f"NOTE: no checkpoint given: converting a RANDOMLY INITIALISED "
          f"torchvision {args.arch} (seed {args.seed}). Its predictions mean "
          f"nothing; pass --weights W.pth to convert a real network.")
    state_dict = torch_io.random_state_dict(args.arch, seed=args.seed)
    sources["weights"] = {"random_init": True, "seed": args.seed}
  else:
    print(f"reading {weights_path}")
    state_dict = torch_io.read_state_dict(weights_path, "weights")
    sources["weights"] = {"path": os.path.abspath(weights_path),
                          "sha256": torch_io.sha256(weights_path)}
  fc = next((v for k, v in state_dict.items() if k.endswith("fc.weight")), None)
  num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 1000
  tree = convert_state_dict(state_dict, args.arch, num_classes,
                            source=weights_path or "random init")

  mask_dict, outside = None, 0
  if mask_path is not None:
    print(f"reading {mask_path}")
    mask_dict = torch_io.read_state_dict(mask_path, "mask")
    masks, unmasked = convert_masks(mask_dict, tree["params"], source=mask_path)
    sources["mask"] = {"path": os.path.abspath(mask_path),
                       "sha256": torch_io.sha256(mask_path)}
    outside = masks_lib.nonzero_outside(tree["params"], masks)
    if outside:
      # The PyTorch version's loader (get_pruned_model) re-copies every
      # `model.`-prefixed checkpoint weight after masking, so with such a
      # file it ran the raw weights, not mask * weight.
      print(f"note: {weights_path} has {outside:,} nonzero weights where the "
            f"mask is 0; we use mask * weight (the ticket), whereas the "
            f"PyTorch version's loader, given `model.`-prefixed keys, keeps "
            f"the raw weights")
    if unmasked:
      print(f"note: {mask_path} has no mask for {len(unmasked)} prunable "
            f"weight(s), kept dense: {', '.join(unmasked[:5])}"
            f"{' ...' if len(unmasked) > 5 else ''}")
  elif args.mask_from_zeros:
    masks = pruning.masks_from_zeros(tree["params"])
    if all(m.all() for m in jax.tree.leaves(masks)):
      print(f"warning: {weights_path} has no zeros in its conv/fc weights, "
            f"nothing to mask: written as a dense network")
    else:
      ticket = {"sparsity_state": None, "expected_remaining_percent": None,
                "mask_from_zeros": True,
                "note": "mask = (weight != 0) on every conv/fc kernel of "
                        "the weights file"}
  else:
    masks = masks_lib.dense(tree["params"])
  dense = mask_path is None and ticket is None

  report = masks_lib.sparsity(tree["params"], masks)
  print(masks_lib.format_report(report, per_layer=args.per_layer))

  verification = None
  if args.verify:
    verification = verify(args.arch, state_dict, mask_dict, tree, masks,
                          num_classes, args.verify_size, args.verify_tol)

  network_dir.save(out, arch=args.arch, params=tree["params"],
                batch_stats=tree["batch_stats"], masks=masks,
                overwrite=args.force, meta={
                    "num_classes": num_classes,
                    "sources": sources,
                    "ticket": ticket,
                    "dense": dense,
                    "weights_nonzero_outside_mask": (
                        None if dense else outside),
                    "verification": verification,
                    "sparsity": report,
                    **prune.source_accuracy_meta(args),
                })
  print(f"wrote {args.out} ({args.arch}, "
        f"{'dense' if dense else 'ticket'}); load it with "
        f"reprog_jax.model.network_dir.load({args.out!r})")


def verify(arch, state_dict, mask_dict, tree, masks, num_classes, size, tol):
  """Runs torchvision and the converted network on one random batch."""

  images = np.random.default_rng(0).standard_normal(
      (2, size, size, 3)).astype(np.float32)
  expected = torch_io.torch_logits(
      torch_io.torchvision_model(arch, state_dict, mask_dict, num_classes),
      images)
  model = resnet.get_architecture(arch)(num_classes=num_classes)
  network = network_lib.make_network(model, tree["params"],
                                     tree["batch_stats"], masks,
                                     {"arch": arch})
  got = np.asarray(network.logits(images))
  diff = float(np.max(np.abs(got - expected)))
  print(f"verified against torchvision on a random {size}px batch: "
        f"max |logit difference| = {diff:.2e}")
  if not diff <= tol:
    raise ConversionError(
        f"converted {arch} differs from torchvision by {diff:.2e} > "
        f"--verify-tol {tol:g}; nothing written")
  return {"image_size": size, "batch": 2, "max_abs_logit_diff": diff}


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  commands = {"export": export.run, "inspect": inspect_network.run,
              "prune": lambda args: prune.run(args, parser, check_out),
              "torch": lambda args: run(args, parser)}
  # OSError too: every file here is the user's (a checkpoint, --out).
  return cli.run("convert", commands[args.command], args, catch=(OSError,))
