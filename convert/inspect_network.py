"""`python -m convert inspect DIR [--image PATH]`: what a network directory
holds (architecture, sources, sparsity) and its top-5 prediction for an
image, to check a conversion by eye."""

import argparse

import jax
import numpy as np

from reprog_jax.model import masks as masks_lib
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.model import prompts


def add_parser(sub) -> argparse.ArgumentParser:
  """Registers the `inspect` subcommand on `sub` (argparse subparsers)."""
  p = sub.add_parser(
      "inspect", help="summarise a network directory and show a prediction",
      description="Summarise a converted network and show a prediction.")
  p.add_argument("directory", help="a directory written by `convert`")
  p.add_argument("--image", help="an image file (default: a synthetic "
                 "test pattern)")
  p.add_argument("--per-layer", action="store_true",
                 help="print the per-layer sparsity table")
  return p


def run(args) -> None:
  """Prints the summary and the prediction (`add_parser`'s arguments)."""
  net = network_dir.load(args.directory)
  image, what = _demo_image(args.image)
  meta = net.meta
  weights = meta["sources"]["weights"]
  print(f"{args.directory}: {net.arch}, {meta['num_classes']} classes, "
        f"{_kind(meta)}")
  if weights.get("random_init"):
    print("  weights: RANDOMLY INITIALISED (smoke-run network; predictions "
          "mean nothing)")
  else:
    print(f"  weights: {weights['path']} (sha256 {weights['sha256'][:12]}...)")
  if "mask" in meta["sources"]:
    print(f"  mask:    {meta['sources']['mask']['path']}")
  print(masks_lib.format_report(net.sparsity(), per_layer=args.per_layer))
  logits = net.logits(prompts.imagenet_normalize(image))
  probs = np.asarray(jax.nn.softmax(logits))[0]
  names = network_lib.class_names(net)
  print(f"top-5 prediction for {what}:")
  for i in np.argsort(-probs)[:5]:
    print(f"  {probs[i]:7.2%}  {i:4d} {names[i]}")


def _demo_image(path, size=224) -> tuple[np.ndarray, str]:
  """An image as a (1, size, size, 3) [0, 1] array, and what it is."""
  if path is None:
    # A fixed synthetic picture, so the command needs no file or network.
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    image = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * np.pi * xx * yy)], -1)
    return image[None].astype(np.float32), "a synthetic test pattern"
  from PIL import Image  # Only this command reads image files.
  # torchvision's ImageNet evaluation transform: resize the short side to
  # 256 (bilinear), centre-crop 224.
  with Image.open(path) as img:
    img = img.convert("RGB")
    scale = 256 / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)),
                     Image.BILINEAR)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return (np.asarray(img, np.float32) / 255.0)[None], path


def _kind(meta) -> str:
  """What a directory holds, in words: one-shot pruning is no lottery
  ticket."""
  if meta["dense"]:
    return "dense"
  if (meta.get("ticket") or {}).get("lottery_ticket") is False:
    return "pruned (one-shot; not a lottery ticket)"
  return "lottery ticket"
