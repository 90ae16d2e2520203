"""Every file name of a run's workdir and of a sweep's directory.

One place owns them, so that the loop, the summary, the workdir checks, the
exporter, the sweep and the report agree on where things are.

A run's workdir (`python -m reprog_jax.main --workdir=DIR`)::

  config.json        the run's config (checked on resume)
  run.lock           held while a run uses the workdir
  metrics.jsonl      one line per epoch and seed
  summary.json       written once the last epoch is done
  checkpoints/<epoch>/  one per epoch, with reprog_jax_files.json
  features/*.npz     cached frozen features (linear probing)
  plots/[seed_<s>/]*.png, tensorboard/

A sweep's directory (`python -m reprog_jax.sweep --workdir=DIR`)::

  study.json         the grid
  <lp|vp>/<network>/<dataset>/<n>-shot|full/   one run workdir per cell,
                     with cell.json (what the sweep says it is) and, if it
                     failed, error.txt
  report.md, report.csv, seeds.csv, claims.csv, analyses.csv, figures/
                     the report
"""

import os

# A run's workdir.
CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_MANIFEST = "reprog_jax_files.json"
FEATURES_DIR = "features"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
WANDB_FILE = "wandb_run.json"
# In plots/ (each seed's in plots/seed_<s>/ when a run has several).
CURVES_PLOT = "curves.png"
RELIABILITY_PLOT = "reliability.png"

# A sweep's directory.
STUDY_FILE = "study.json"
CELL_FILE = "cell.json"
ERROR_FILE = "error.txt"
REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
SEEDS_CSV = "seeds.csv"
CLAIMS_CSV = "claims.csv"
ANALYSES_CSV = "analyses.csv"
FIGURES_DIR = "figures"

# What a run keeps beside its summary: never searched for other runs.
RUN_SUBDIRS = frozenset({CHECKPOINTS_DIR, TENSORBOARD_DIR, PLOTS_DIR,
                         FEATURES_DIR, FIGURES_DIR})


def seed_prefix(seeds, seed, separator="/") -> str:
  """Where a seed's outputs go inside a run: nowhere special when it is the
  run's only seed, else `seed_<s>` and `separator`."""
  return "" if len(seeds) == 1 else f"seed_{seed}{separator}"


def plot_dir(workdir, seeds, seed) -> str:
  """The directory of one seed's figures."""
  return os.path.join(workdir, PLOTS_DIR, seed_prefix(seeds, seed, ""))
