"""An offline miniature of the whole paper, in minutes on a laptop CPU.

    python -m reprog_jax.demo --workdir /tmp/demo [--quick]

No network, no GPU, no download: it trains a small ResNet (`resnet_mini`)
from scratch on procedurally generated images (40 classes: shape x colour,
`source_task.py`), makes real lottery tickets of it by iterative magnitude
pruning with rewinding (20 % per round, as the paper), then runs linear
probing and ILM-VP on the dense network and the tickets, at two few-shot
budgets and several seeds (and ILM-VP with the BLM++ label mapping on the
dense network and one ticket: the report tests claim 1 per mapping), on
scikit-learn's bundled 8x8 handwritten digits (upsampled), and writes the
report (report.md, report.csv, seeds.csv, claims.csv, analyses.csv,
figures), then prints the primary analysis's verdicts with each cell's
minimum detectable effect. Each network's held-out source accuracy is
recorded as its `source_top1`, so claim 1 checks the networks' upstream
similarity.

It is a miniature of the protocol, NOT the paper's experiment: the numbers
describe a toy source task and a toy target, and say nothing about ImageNet
ResNet-50s. Stages (source network and tickets, target data, sweep, report)
write their outputs atomically and leave a marker; re-running with the same
--workdir skips what is done and resumes the sweep where it stopped.
`--quick` shrinks everything for CI (about a minute on 2 cores).
"""

import dataclasses
import hashlib
import json
import os
import time

import jax
from ml_collections import config_dict
import numpy as np
from PIL import Image

from reprog_jax import cli
from reprog_jax import compile_cache
from reprog_jax import errors
from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.model import masks as masks_lib
from reprog_jax.model import network_dir
from reprog_jax.model import pruning
from reprog_jax.study import claims_tables
from reprog_jax.study import report
from reprog_jax.model import resnet
from reprog_jax.tools import source_task
from reprog_jax.study import sweep
from reprog_jax.train import workdir as workdir_lib

DISCLAIMER = (
    "This is a MINIATURE of the paper's protocol (a small ResNet trained on "
    "synthetic shapes, tickets by IMP with rewinding, LP and ILM-VP on "
    "scikit-learn's 8x8 digits), not the paper's experiment or numbers.")
ARCH = "resnet_mini"
SOURCE_SIZE = 32  # the source images' side; LP's input size too
TARGET = "digits"


class DemoError(errors.UserError, RuntimeError):
  """The demo cannot run here (a missing package, an unusable workdir)."""


@dataclasses.dataclass(frozen=True)
class Scale:
  """How big the miniature is.

  Attributes:
    source_classes: classes of the synthetic source task.
    source_per_class: its training images per class (test: a quarter).
    source_epochs: epochs of every IMP round.
    rewind_step: the step the tickets' weights rewind to.
    imp_rounds: IMP rounds after the dense one (20 % pruned per round).
    ticket_states: the sparsity states saved as ticket networks.
    n_shots: the target's few-shot budgets (examples per class).
    seeds: the target runs' seeds (trained at once).
    epochs: epochs of every target run.
    run_figures: whether each target run draws its own figures (at its
      last epoch); the report's are drawn either way.
  """

  source_classes: int
  source_per_class: int
  source_epochs: int
  rewind_step: int
  imp_rounds: int
  ticket_states: tuple[int, ...]
  n_shots: tuple[int, ...]
  seeds: tuple[int, ...]
  epochs: int
  run_figures: bool = True


# 8 seeds (vmapped: they share one compiled step) so that a cell can
# decide something: with 3, one-sided at 0.05 needs an observed mean
# difference of 1.7 standard deviations of the per-seed differences, and
# the sign-flip p cannot go below 0.125. The quick demo's 3 seeds are the
# fewest a cell is tested with.
FULL = Scale(source_classes=40, source_per_class=200, source_epochs=6,
             rewind_step=60, imp_rounds=9, ticket_states=(3, 6, 9),
             n_shots=(10, 50), seeds=tuple(range(8)), epochs=15)
QUICK = Scale(source_classes=20, source_per_class=60, source_epochs=2,
              rewind_step=5, imp_rounds=2, ticket_states=(2,),
              n_shots=(5,), seeds=(0, 1, 2), epochs=2,
              # Each run's figures would be a third of the miniature's
              # time; the report's figures are what it shows.
              run_figures=False)


# --------------------------------------------------------------------------
# Stages and their markers
# --------------------------------------------------------------------------


def _marker(workdir, stage):
  return os.path.join(workdir, "stages", f"{stage}.json")


def _done(workdir, stage):
  """The record a finished stage left, or None."""
  try:
    with open(_marker(workdir, stage)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def _mark(workdir, stage, record):
  path = _marker(workdir, stage)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fileio.write_json(path, record)


def _network_name(k):
  return "dense" if k == 0 else f"ticket_k{k}"


# --------------------------------------------------------------------------
# Stage 1: the source network and its lottery tickets
# --------------------------------------------------------------------------


def _params_sha256(params) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()


def make_source_networks(workdir, scale: Scale, progress=True) -> dict:
  """Trains the source network, makes its tickets, saves them all.

  Returns:
    {network name: {'dir', 'remaining_percent', 'source_test_accuracy'}}.
  """
  names = source_task.class_names(scale.source_classes)
  images, labels = source_task.make_images(
      scale.source_per_class, scale.source_classes, SOURCE_SIZE, seed=0)
  test_images, test_labels = source_task.make_images(
      max(10, scale.source_per_class // 4), scale.source_classes,
      SOURCE_SIZE, seed=1)
  print(f"stage 1/4, source task: {len(labels)} synthetic {SOURCE_SIZE}px "
        f"images of {scale.source_classes} classes (shape x colour); training "
        f"{ARCH} from scratch, then IMP with rewinding to step "
        f"{scale.rewind_step}, {scale.imp_rounds} rounds of 20 %")
  model = resnet.get_architecture(ARCH)(num_classes=scale.source_classes)
  trainer = source_task.Trainer(model, images, labels,
                                epochs=scale.source_epochs, progress=progress)
  started = time.time()
  rounds = pruning.iterative_magnitude_pruning(
      trainer.train, source_task.init_state(model, seed=0, size=SOURCE_SIZE),
      states=range(1, scale.imp_rounds + 1), rewind_step=scale.rewind_step,
      params_of=lambda s: s["params"])
  out = {}
  for r in rounds:
    if r.state != 0 and r.state not in scale.ticket_states:
      continue
    name = _network_name(r.state)
    accuracy = source_task.accuracy(model, r.trained, r.masks, test_images,
                                    test_labels)
    params = masks_lib.apply(r.trained["params"], r.masks)
    directory = os.path.join(workdir, "networks", name)
    ticket = None if r.state == 0 else {
        "sparsity_state": r.state,
        "expected_remaining_percent": 100 * pruning.remaining_fraction(r.state),
        "method": (f"iterative magnitude pruning, 20 % of the remaining "
                   f"weights per round (global, conv1 and fc included), "
                   f"{r.state} rounds, weights rewound to step "
                   f"{scale.rewind_step} of the dense run"),
        "lottery_ticket": True,
        "of": os.path.join(workdir, "networks", "dense")}
    network_dir.save(directory, arch=ARCH, params=params,
                  batch_stats=r.trained["batch_stats"], masks=r.masks,
                  overwrite=True, meta={
                      "num_classes": scale.source_classes,
                      "class_names": names,
                      "sources": {"weights": {
                          "path": directory,
                          "sha256": _params_sha256(params),
                          "trained_by": "python -m reprog_jax.demo",
                          "source_task": (
                              f"synthetic shapes x colours, "
                              f"{scale.source_classes} classes, "
                              f"{len(labels)} training images")}},
                      "ticket": ticket,
                      "dense": r.state == 0,
                      "sparsity": masks_lib.sparsity(params, r.masks),
                      "source_test_accuracy": accuracy,
                      # What claim 1's "similar upstream performance" is
                      # checked against (`report`), in %.
                      "source_top1": 100 * accuracy,
                      "source_top1_from": "the demo's held-out synthetic "
                                          "source test images",
                  })
    out[name] = {"dir": directory, "remaining_percent": 100 * r.remaining,
                 "source_test_accuracy": accuracy}
    print(f"  {name:10s} {100 * r.remaining:6.2f} % of the weights, source "
          f"test accuracy {accuracy:.1%} (chance "
          f"{1 / scale.source_classes:.1%})")
  print(f"  done in {time.time() - started:.0f} s")
  return out


# --------------------------------------------------------------------------
# Stage 2: the target data
# --------------------------------------------------------------------------


def write_digits(root, size=SOURCE_SIZE, test_fraction=0.4, seed=0) -> dict:
  """Writes scikit-learn's digits as `root/{train,test}/<digit>/<i>.png`.

  The 8x8 images (values 0..16) are scaled to 0..255 and upsampled to
  `size` with PIL's bicubic filter; a stratified, seeded `test_fraction` of
  every class is the test split. The tree appears at once (written aside,
  then renamed).

  Returns:
    {'train': count, 'test': count}.
  """
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DemoError("the demo's target data comes from scikit-learn, which "
                    "is not installed; run `pip install scikit-learn`"
                    ) from None

  digits = datasets.load_digits()
  pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
  rng = np.random.default_rng(seed)
  is_test = np.zeros(len(digits.target), bool)
  for label in range(10):
    rows = rng.permutation(np.flatnonzero(digits.target == label))
    is_test[rows[:round(test_fraction * len(rows))]] = True
  # `replace`: a tree left by an interrupted earlier run goes.
  with fileio.atomic_directory(root, replace=True) as tmp:
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
      split = "test" if is_test[i] else "train"
      folder = os.path.join(tmp, split, str(label))
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(image).resize((size, size), Image.BICUBIC).save(
          os.path.join(folder, f"{i:04d}.png"))
  return {"train": int(np.sum(~is_test)), "test": int(np.sum(is_test))}


# --------------------------------------------------------------------------
# Stage 3 and 4: the sweep and the report
# --------------------------------------------------------------------------


def make_study(workdir, scale: Scale, nets: dict):
  """The sweep: every network x {LP, ILM-VP} x budget, all seeds at once."""
  study = config_dict.ConfigDict()
  study.networks = {
      name: {"dir": info["dir"], "random": None,
             "kind": "dense" if name == "dense" else "ticket"}
      for name, info in nets.items()}
  study.methods = ["linear_probe", "ilm_vp"]
  study.datasets = [TARGET]
  study.n_shots = list(scale.n_shots)
  study.seeds = list(scale.seeds)
  study.overrides = {
      "epochs": scale.epochs,
      "batch_size": 32,
      "eval_batch_size": 256,
      "plot_interval": scale.epochs if scale.run_figures else 0,
      "test_every": 0,  # The test split where a selection needs it.
      "data": {"folder_root": os.path.join(workdir, "data", TARGET),
               "worker_count": 0},
  }
  # LP sees the digits at the source network's input size; ILM-VP puts
  # them, at 16 px, inside a learned frame of that size (the paper: 32 or
  # 128 inside 224).
  study.method_overrides = {
      "linear_probe": {"image_size": SOURCE_SIZE},
      "ilm_vp": {"image_size": 16, "prompt_output_size": SOURCE_SIZE},
  }
  return study


# The label mapping run beside ILM (Cai et al.'s BLM++), on the dense
# network and one ticket, in a sweep of its own inside the first's
# directory (`VARIANT_DIR`) so that one report covers both: is the ticket
# gap the ILM mapping's or the ticket's?
VARIANT_MAPPING = "blmpp"
VARIANT_DIR = "blmpp"


def make_variant_study(workdir, scale: Scale, nets: dict):
  """ILM-VP with BLM++ on the dense network and the middle ticket."""
  study = make_study(workdir, scale, nets)
  tickets = [name for name in nets if name != "dense"]
  ticket = tickets[len(tickets) // 2]
  study.networks = {name: study.networks[name] for name in ("dense", ticket)}
  study.methods = ["ilm_vp"]
  study.label_mappings = [VARIANT_MAPPING]
  return study


def _size(scale: Scale) -> dict:
  """What a workdir records of its scale: everything but `run_figures`
  (which changes no result; demos recorded before it existed resume)."""
  size = dataclasses.asdict(scale)
  del size["run_figures"]
  return size


def run(workdir, scale: Scale, progress=True) -> dict:
  """Runs (or resumes) every stage; returns the report's written paths."""
  workdir_lib.check(workdir)
  os.makedirs(workdir, exist_ok=True)
  done = _done(workdir, "networks")
  if done is not None and done["scale"] != json.loads(json.dumps(
      _size(scale))):
    raise DemoError(f"{workdir} holds a demo of another size (--quick or "
                    f"not); use another --workdir, or delete this one")
  if done is None:
    nets = make_source_networks(workdir, scale, progress)
    _mark(workdir, "networks", {"scale": _size(scale),
                                "networks": nets})
  else:
    nets = done["networks"]
    print("stage 1/4, source network and tickets: done earlier, kept")

  if _done(workdir, "target") is None:
    counts = write_digits(os.path.join(workdir, "data", TARGET))
    print(f"stage 2/4, target: scikit-learn digits, {counts['train']} "
          f"train / {counts['test']} test images, upsampled to "
          f"{SOURCE_SIZE}px")
    _mark(workdir, "target", counts)
  else:
    print("stage 2/4, target data: done earlier, kept")

  runs = len(nets) * 2 * len(scale.n_shots)
  print(f"stage 3/4, sweep: {len(nets)} networks x (LP, ILM-VP) x budgets "
        f"{list(scale.n_shots)} = {runs} runs of {len(scale.seeds)} seeds, "
        f"{scale.epochs} epochs each (finished runs are skipped), then "
        f"ILM-VP with BLM++ on the dense network and one ticket")
  sweep_dir = os.path.join(workdir, "sweep")
  outcomes = sweep.run(make_study(workdir, scale, nets), sweep_dir)
  outcomes.update({
      f"{VARIANT_DIR}/{name}": outcome for name, outcome in sweep.run(
          make_variant_study(workdir, scale, nets),
          os.path.join(sweep_dir, VARIANT_DIR)).items()})
  failed = [name for name, o in outcomes.items() if o["status"] == "failed"]
  if failed:
    raise DemoError(f"{len(failed)} sweep run(s) failed ({failed[0]}: "
                    f"{outcomes[failed[0]]['message']}); tracebacks in each "
                    f"run's error.txt under {sweep_dir}")
  print("stage 4/4, report")
  written = report.write(sweep_dir)
  _add_note(written[layout.REPORT_MD], scale, nets)
  return written


def _add_note(path, scale: Scale, nets: dict) -> None:
  """Says at the top of report.md what this report is, and how good the
  source networks are on their own task."""
  with open(path) as f:
    title, rest = f.read().split("\n", 1)
  accuracies = ", ".join(
      f"{name} ({info['remaining_percent']:.1f} % of the weights) "
      f"{info['source_test_accuracy']:.1%}" for name, info in nets.items())
  note = (f"> **{DISCLAIMER}** Source networks ({ARCH}, "
          f"{scale.source_classes} synthetic classes, chance "
          f"{1 / scale.source_classes:.1%}), held-out source accuracy: "
          f"{accuracies}. Written by `python -m reprog_jax.demo`.")
  fileio.write_text(path, f"{title}\n\n{note}\n{rest}")


def _configure_jax(workdir):
  """A compilation cache in the workdir (unless $JAX_COMPILATION_CACHE_DIR
  names one): runs of tickets and resumptions compile each program once."""
  compile_cache.enable(os.environ.get(compile_cache.ENV)
                       or os.path.join(workdir, "xla_cache"))


def main(argv=None) -> int:
  """`python -m reprog_jax.demo --workdir DIR [--quick]`."""
  parser = cli.ArgumentParser(
      prog="python -m reprog_jax.demo",
      description="An offline miniature of the paper's whole protocol. "
      + DISCLAIMER)
  parser.add_argument("--workdir", required=True,
                      help="where everything goes; re-run to resume")
  parser.add_argument("--quick", action="store_true",
                      help="a much smaller run (CI; about a minute)")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bars (logs)")
  args = parser.parse_args(argv)
  workdir = os.path.abspath(args.workdir)
  print(f"NOTE: {DISCLAIMER}")
  started = time.time()

  def demo():
    _configure_jax(workdir)
    written = run(workdir, QUICK if args.quick else FULL,
                  progress=not args.no_progress)
    print(f"wrote, in {time.time() - started:.0f} s:")
    for path in written.values():
      print(f"  {path}")
    # The verdicts, and how small a difference each cell could have shown.
    for line in claims_tables.summary_lines(report.analyse(
        os.path.join(workdir, "sweep"), warn=False)):
      print(line)
    print(f"NOTE: {DISCLAIMER}")

  return cli.run("demo", demo)


if __name__ == "__main__":
  raise SystemExit(main())
