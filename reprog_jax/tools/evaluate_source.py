"""Measures a network's source (ImageNet) top-1 accuracy and records it.

  python -m reprog_jax.evaluate_source NETWORK_DIR --data_dir DIR

DIR is an ImageNet validation set in torchvision's ImageFolder layout: one
folder per class (e.g. `n01440764/`), with as many folders as the network
has classes. Classes are the folders' sorted names (ImageFolder's rule, and
for ImageNet the wnid order of the network's 1000 outputs); images are read
in ImageFolder's order. Each image gets torchvision's standard evaluation
transform: resize the shorter side to 256 (bilinear, antialiased), centre
crop 224, scale to [0, 1], ImageNet normalisation. The top-1 (in %) is
written atomically into the network's meta.json as `source_top1`
(`network_dir.record_source_accuracy`): the report's claim 1 compares a dense
network and its ticket by it ("their upstream performance is similar"). A
measurement <= 1 % is refused, not recorded: the report would read it as a
fraction recorded by mistake, and a network that far down on its own task
means a --data_dir whose classes are not the network's.

Every matmul and convolution runs at `--eval-precision` (default
'highest': true float32, as a run's evaluation at its default
`eval_precision`; 'default' lets XLA use TF32 on Ampere and Hopper GPUs),
and the record says which.
"""


import os
import sys

import jax
import numpy as np
from PIL import Image

from reprog_jax import cli
from reprog_jax import errors
from reprog_jax.data import folder
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.model import prompts
from reprog_jax.train import run_config

RESIZE, CROP = 256, 224


class SourceDataError(errors.UserError, ValueError):
  """A --data_dir that is not an ImageFolder tree matching the network."""


def list_image_folder(root) -> tuple[list[str], np.ndarray, list[str]]:
  """(paths, labels, class names) in torchvision ImageFolder's order:
  classes sorted, then each class's files by sorted walk, images only."""
  if not os.path.isdir(root):
    raise SourceDataError(f"{root}: no such directory; give --data_dir an "
                          f"ImageFolder tree (one folder per class)")
  classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
  paths, labels = [], []
  for label, name in enumerate(classes):
    for where, _, files in sorted(os.walk(os.path.join(root, name),
                                          followlinks=True)):
      for file in sorted(files):
        if file.lower().endswith(folder.IMAGE_EXTENSIONS):
          paths.append(os.path.join(where, file))
          labels.append(label)
  return paths, np.asarray(labels, np.int64), classes


def load_image(path) -> np.ndarray:
  """torchvision's Resize(256), CenterCrop(224), ToTensor, Normalize, as a
  (224, 224, 3) float32 array."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    width, height = image.size
    # Resize(256): the shorter side to 256, the longer one scaled (int()).
    if width <= height:
      size = (RESIZE, int(RESIZE * height / width))
    else:
      size = (int(RESIZE * width / height), RESIZE)
    image = image.resize(size, Image.BILINEAR)
  array = np.asarray(image, np.float32) / 255.0
  top = int(round((array.shape[0] - CROP) / 2.0))
  left = int(round((array.shape[1] - CROP) / 2.0))
  array = array[top:top + CROP, left:left + CROP]
  mean = np.asarray(prompts.IMAGENET_MEAN, np.float32)
  std = np.asarray(prompts.IMAGENET_STD, np.float32)
  return (array - mean) / std


def make_logits(precision: str):
  """`(network, images) -> logits`, jitted, with every matmul and
  convolution at `precision` ('highest', 'default')."""

  def logits(network, images):
    with jax.default_matmul_precision(precision):
      return network_lib.forward(network, images)

  return jax.jit(logits)


def top1(network, paths, labels, batch_size=64, progress=True,
         precision="highest") -> float:
  """The network's top-1 accuracy (in %) on the listed images, computed at
  `precision`."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  logits = make_logits(precision)
  correct = 0
  bar = tqdm(total=len(paths), unit="img", disable=not progress,
             desc="source top-1")
  for start in range(0, len(paths), batch_size):
    batch = np.stack([load_image(p) for p in paths[start:start + batch_size]])
    predicted = np.asarray(logits(network, batch)).argmax(-1)
    correct += int((predicted == labels[start:start + batch_size]).sum())
    bar.update(len(batch))
    bar.set_postfix(top1=f"{100 * correct / (start + len(batch)):.2f} %")
  bar.close()
  return 100.0 * correct / len(paths)


def evaluate(directory, data_dir, batch_size=64, progress=True,
             precision="highest") -> float:
  """Measures and records the source top-1 (%) of the network in
  `directory`, at matmul/convolution `precision`; returns it."""
  network = network_dir.load(directory)
  paths, labels, classes = list_image_folder(data_dir)
  expected = network.meta.get("num_classes", 1000)
  if len(classes) != expected:
    raise SourceDataError(
        f"{data_dir}: {len(classes)} class folders, the network has "
        f"{expected} classes; give the source task's validation set (one "
        f"folder per class)")
  if not paths:
    raise SourceDataError(f"{data_dir}: no images under its class folders "
                          f"({', '.join(folder.IMAGE_EXTENSIONS)})")
  accuracy = top1(network, paths, labels, batch_size, progress, precision)
  if accuracy <= 1.0:
    # A report reads a source_top1 <= 1 as a fraction recorded by mistake;
    # a network this far down on its own task is a wrong --data_dir.
    raise SourceDataError(
        f"{data_dir}: measured source top-1 {accuracy:.2f} % is <= 1 %, "
        f"which looks like a fraction (the report wants percent), so it is "
        f"not recorded; check that its class folders are the network's "
        f"classes, in order")
  network_dir.record_source_accuracy(
      directory, accuracy,
      f"python -m reprog_jax.evaluate_source on {os.path.abspath(data_dir)} "
      f"({len(paths)} images, resize {RESIZE}, centre crop {CROP}, "
      f"precision {precision})")
  return accuracy


def main(argv=None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m reprog_jax.evaluate_source",
      description="Measures a network directory's source (ImageNet) top-1 on "
      "an ImageFolder validation set and records it in its meta.json "
      "(source_top1).")
  parser.add_argument("network_dir", metavar="NETWORK_DIR",
                      help="a `python -m convert` output")
  parser.add_argument("--data_dir", required=True, metavar="DIR",
                      help="ImageFolder-layout validation set, one folder "
                      "per class (sorted names = the network's classes)")
  parser.add_argument("--batch_size", type=cli.positive_int, default=64)
  parser.add_argument("--eval-precision", "--eval_precision",
                      dest="eval_precision", default="highest",
                      choices=run_config.PRECISIONS,
                      help="matmul/convolution precision (default highest: "
                      "true float32; 'default' allows TF32 on GPUs)")
  parser.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bar")
  args = parser.parse_args(argv)

  def measure():
    accuracy = evaluate(args.network_dir, args.data_dir, args.batch_size,
                        args.progress, args.eval_precision)
    print(f"source top-1 {accuracy:.2f} %, recorded in "
          f"{os.path.join(args.network_dir, network_dir.META_FILE)} "
          f"(source_top1)")

  return cli.run("reprog_jax.evaluate_source", measure)


if __name__ == "__main__":
  sys.exit(main())
