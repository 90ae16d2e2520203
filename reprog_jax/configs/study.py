"""A study: the grid of runs behind the paper's figures, for `reprog_jax.sweep`.

  python -m reprog_jax.sweep --config=configs/study.py:smoke --workdir=runs/study_smoke
  python -m reprog_jax.report runs/study_smoke

One cell per network x method x dataset x n_shot, each in its own
sub-workdir (`<lp|vp>/<network>/<dataset>/<n>-shot|full`); all `seeds` of a
cell train in one run (`config.seeds`). Then `reprog_jax.report` writes
report.md, report.csv and figures, and tests the paper's two claims.

Fields:
  networks: {name: {dir, random, kind}}: `dir` a `python -m convert` output,
    or (smoke only) `random` an architecture to initialise randomly;
    `kind` 'dense' or 'ticket' (checked against the directory).
  methods: registered method names (`reprog_jax.methods.names()`); each
    cell starts from its preset, `run_config.method_config(method, dataset)`.
  datasets: `reprog_jax.data.dataset_names()`.
  n_shots: training examples per class; -1 is the full split.
  seeds: trained together in each cell.
  overrides: a partial nested dict of the training config, applied to
    every cell, e.g. {'epochs': 2, 'data': {'mock': True}}.
  method_overrides: {method: partial nested dict}, applied after.
  smoke: True: every cell first gets its method's own smoke sizes
    (`MethodSpec.smoke`: tiny images, a small canvas), before the
    overrides; a new method then runs at smoke size with nothing here.
  label_mappings, prompts: optional; ILM-VP's label mappings ('ilm', 'flm',
    'rlm', 'blm', 'blmpp', 'fullymap') and prompts ('expansive', 'padding')
    to run, each a cell of its own (`vp-blmpp/...`; the defaults ilm and
    expansive keep the plain `vp/...`); unset: the method's config's.
    E.g. --config.label_mappings="('ilm', 'blmpp')" asks whether the
    ticket gap survives BLM++; the report tests claim 1 per variant.

The analysis the report runs, declared before the runs (recorded in the
sweep's study.json with the grid, so that anyone can recompute the
verdicts; `reprog_jax.study.design`):
  primary: the primary analysis; every other one is a sensitivity
    analysis. `method` and `variant`: the reprogramming method of claim 1
    and claim 2 (ILM-VP, '' its default label mapping and prompt);
    `probe`: the linear-probing method of claim 2; `selection`: the model
    selection ('validation': the epoch picked on a validation split, the
    last epoch for cells without one); `quantity`: claim 2's calibration
    quantity (`test_ece`).
  alpha: the significance level of every verdict.
  similar_source_pp: claim 1 is about a dense network and a ticket of
    similar source (ImageNet) top-1: at most this many percentage points
    apart (after rounding to 0.01 pp); other cells are "not applicable".
  power_effect: per quantity, the effect a study should be able to detect
    (accuracy in percentage points, the others in their own units); the
    report states the seeds each cell would need for 80 % power at it.
    E.g. --config.power_effect.test_acc=2.0.

Presets:
  smoke: mock CIFAR-10, a tiny random ResNet (`resnet_mini`), LP and
    ILM-VP, 2 shots, 2 seeds, 1 epoch, each method at its smoke sizes:
    seconds per cell on a CPU; its numbers mean nothing. Add a method with
    --config.methods="('linear_probe', 'ilm_vp', 'vp_lp')".
    (Random networks are dense: a smoke study has no ticket, so the
    report's claims say "not testable".)
  grid: a grid around the paper's setting: a dense ResNet-50 and its
    lottery tickets at several sparsity states, LP and ILM-VP, few-shot
    budgets and full data, 3 seeds. Fill in the network directories, e.g.
    --config.networks.dense.dir=nets/dense --config.networks.lt8.dir=nets/lt8;
    a network left without a directory is refused in one line. It was
    called `paper`, which overclaimed: only some of its values are the
    paper's (`GRID_PROVENANCE` says where each comes from), so `paper` is
    now refused with a line naming `grid`.

Where the `grid` values come from (`GRID_PROVENANCE`):
  paper: ResNet-50 ImageNet dense network and lottery tickets (iterative
    magnitude pruning, 20 % per round), sparsity state 8 (16.8 % of the
    weights), LP and ILM-VP, batch size 128, full training data
    (n_shot -1).
  PyTorch code's defaults (the training configs' defaults, no override):
    100 epochs, Adam lr 0.01, MultiStepLR at 50 % and 72 % of the epochs,
    ILM label mapping every epoch; its `--sparsity` default is state 9.
  our choice: the other sparsity states (2, 4, 6), the few-shot budgets
    1, 5 and 10, the 9 datasets (of the PyTorch code's 13 targets), and 3
    seeds (0, 1, 2; the PyTorch code runs one, seed 4).
"""

from ml_collections import config_dict

# The tickets of the paper's grid: iterative magnitude pruning keeps 0.8**k
# of the weights at sparsity state k (k=8: 16.8 %, k=9: 13.4 %).
PAPER_SPARSITY_STATES = (2, 4, 6, 8, 9)
PAPER_DATASETS = ("cifar10", "cifar100", "svhn", "gtsrb", "dtd", "flowers102",
                  "oxfordpets", "eurosat", "food101")


# The `grid` preset's fields -> where their values come from.
GRID_PROVENANCE = {
    "networks.dense": "paper (ResNet-50, ImageNet)",
    "networks.lt8": "paper (sparsity state 8)",
    "networks.lt9": "PyTorch code's default --sparsity",
    "networks.lt2, lt4, lt6": "our choice",
    "methods": "paper (LP and ILM-VP)",
    "datasets": "our choice (9 of the PyTorch code's 13 targets)",
    "n_shots": "-1 (full data): paper; 1, 5, 10: our choice",
    "seeds": "our choice (the PyTorch code runs seed 4 only)",
    "overrides": "test_every=0 (ours: the test split where a selection "
                 "needs it); else the PyTorch code's defaults (batch 128 as "
                 "the paper, 100 epochs, Adam lr 0.01, MultiStepLR)",
}


# The analysis fields' defaults (every preset's); a study.json written
# before they existed is read with these.
ANALYSIS = {
    "primary": {"method": "ilm_vp", "variant": "", "probe": "linear_probe",
                "selection": "validation", "quantity": "test_ece"},
    "alpha": 0.05,
    "similar_source_pp": 1.0,
    # None: no effect of interest is declared (the PyTorch version's logged
    # quantity has no natural scale).
    "power_effect": {"test_acc": 1.0, "test_ece": 0.01,
                     "test_ece_adaptive": 0.01, "test_ece_ts": 0.01,
                     "test_nll": 0.05, "test_brier": 0.01,
                     "test_pytorch_logged_quantity": None},
}


def _analysis(study):
  """Sets the analysis fields (`ANALYSIS`) of `study`."""
  study.primary = dict(ANALYSIS["primary"])
  study.alpha = ANALYSIS["alpha"]
  study.similar_source_pp = ANALYSIS["similar_source_pp"]
  study.power_effect = {
      k: config_dict.placeholder(float) if v is None else v
      for k, v in ANALYSIS["power_effect"].items()}


def _network(kind, random=None):
  return {"dir": config_dict.placeholder(str),
          "random": config_dict.placeholder(str) if random is None else random,
          "kind": kind}


def get_config(preset=None):
  preset = preset or "smoke"
  study = config_dict.ConfigDict()
  if preset == "smoke":
    study.networks = {"dense": _network("dense", random="resnet_mini")}
    study.methods = ("linear_probe", "ilm_vp")
    study.datasets = ("cifar10",)
    study.n_shots = (2,)
    study.seeds = (0, 1)
    # What `run_config.shrink_for_smoke` does, with 1 epoch.
    study.overrides = {"epochs": 1, "batch_size": 8, "eval_batch_size": 16,
                       "data": {"mock": True, "worker_count": 0}}
    study.method_overrides = {}
    study.smoke = True  # Each method's own sizes (`MethodSpec.smoke`).
    study.label_mappings = config_dict.placeholder(tuple)
    study.prompts = config_dict.placeholder(tuple)
  elif preset == "paper":
    raise ValueError("configs/study.py: preset 'paper' is now 'grid' (only "
                     "some of its values are the paper's: see "
                     "GRID_PROVENANCE); use --config=configs/study.py:grid")
  elif preset == "grid":
    study.networks = {"dense": _network("dense"),
                      **{f"lt{k}": _network("ticket")
                         for k in PAPER_SPARSITY_STATES}}
    study.methods = ("linear_probe", "ilm_vp")
    study.datasets = PAPER_DATASETS
    study.n_shots = (1, 5, 10, -1)
    study.seeds = (0, 1, 2)
    study.overrides = {"test_every": 0}  # Else the PyTorch defaults.
    study.method_overrides = {}
    study.smoke = False
    study.label_mappings = config_dict.placeholder(tuple)  # ILM only.
    study.prompts = config_dict.placeholder(tuple)
  else:
    raise ValueError(f"configs/study.py: unknown preset {preset!r}; use "
                     f"smoke or grid")
  _analysis(study)
  return study.lock()
