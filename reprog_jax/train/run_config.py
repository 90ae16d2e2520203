"""The fields every training config has, with the PyTorch version's defaults.

`method_config(method, arg)` is a method's preset (each file of
`reprog_jax/configs/` is one line calling it): the base fields
(`base_config`), then the method's own (`MethodSpec.configure`); `check`
rejects a bad field or combination with one line, asking the method about
its own fields.
"""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from reprog_jax import data
from reprog_jax import errors
from reprog_jax import methods

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PRECISIONS = ("highest", "default")


def method_config(method: str,
                  arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked preset of `method` (a registered name).

  Args:
    method: a registered method's name (`methods.names()`).
    arg: a dataset name (`data.dataset_names()`), 'smoke' (mock CIFAR-10,
      a tiny random ResNet, seconds on a CPU: `shrink_for_smoke`, then the
      method's own shrinking) or None (CIFAR-10).

  Raises:
    errors.ConfigError: an unknown method; `data.DataError`: an unknown
      dataset. Both list the valid names.
  """
  dataset = "cifar10" if arg in (None, "", "smoke") else arg
  data.get_dataset_info(dataset)  # An unknown name fails here, listing all.
  spec = methods.get(method)
  config = base_config(method, dataset)
  spec.configure(config)
  if arg == "smoke":
    shrink_for_smoke(config)
    spec.smoke(config)
  return config.lock()


def base_config(method: str, dataset: str = "cifar10") -> ml_collections.ConfigDict:
  """Defaults shared by every method (PyTorch version, section 5)."""
  config = ml_collections.ConfigDict()
  config.method = method
  config.data = data.default_data_config()
  config.data.name = dataset
  # Training examples per class of the few-shot subset; -1: the full split.
  config.n_shot = -1
  # The frozen network: a `convert` output directory, dense or a ticket.
  config.network_dir = config_dict.placeholder(str)
  config.network = "dense"  # 'dense' or 'ticket': checked against the dir.
  # Smoke runs only: a randomly initialised network of this architecture
  # instead of `network_dir` (its results mean nothing).
  config.random_network = config_dict.placeholder(str)  # '' also unsets.
  # Optimisation: Adam with PyTorch's defaults, MultiStepLR per epoch.
  config.seed = 4
  # Several seeds trained at once in one jitted step, each with its own
  # few-shot subset, order, initial values and label mapping, e.g.
  # --config.seeds='(0, 1, 2, 3, 4)'; None: just `seed`.
  config.seeds = config_dict.placeholder(tuple)
  config.epochs = 100
  config.optimizer = "adam"  # The PyTorch version's only choice.
  config.lr = 0.01
  config.b1 = 0.9
  config.b2 = 0.999
  config.eps = 1e-8
  config.weight_decay = 0.0
  config.milestone_fractions = (0.5, 0.72)
  config.gamma = 0.1
  config.batch_size = 128
  config.eval_batch_size = 128
  # 'auto': bfloat16 on GPU/TPU (float32 master values), float32 on CPU.
  config.dtype = "auto"
  # The label-mapping pass and evaluation, which the PyTorch version runs in
  # float32 outside autocast; 'auto' uses `dtype` (faster, and near-tied
  # argmaxes may then pick other classes).
  config.eval_dtype = "float32"
  # The matmul/convolution precision of that pass and evaluation: 'highest'
  # is true float32 everywhere (on an H100/A100 XLA otherwise runs float32
  # matmuls and convolutions in TF32); 'default' allows TF32 (about 3x
  # faster on those GPUs, ~10 mantissa bits; identical on a CPU).
  config.eval_precision = "highest"
  # Methods with a frozen encoder (linear probing): compute its features
  # once per run and train on them; False recomputes them every step.
  config.cache_features = True
  # Temperature scaling (reported beside the raw figures, never trained on):
  # fitted each epoch on up to this many training examples per class from
  # outside the seed's few-shot subset; 0 turns it off. With n_shot=-1
  # nothing is outside, so there is none unless `calibration_carve_holdout`
  # holds them out of training (which then differs from the PyTorch
  # version's); with n_shot > 0 that switch changes nothing.
  config.calibration_holdout = 20
  config.calibration_carve_holdout = False
  # Model selection: each seed also keeps the epoch with the best accuracy
  # on a validation split of up to this many training examples per class,
  # from outside its few-shot subset and its temperature hold-out (never
  # trained on); 0 turns it off. The PyTorch version selects on the test
  # split (recorded as `best`, optimistic). With n_shot=-1 there is none
  # unless `validation_carve` holds them out of training (which then
  # differs from the PyTorch version's); with n_shot > 0 that switch
  # changes nothing. A switch of its own, so that a full-data run can
  # carve either split without the other.
  config.validation_per_class = 20
  config.validation_carve = False
  # Epochs whose test split is evaluated: 1, every epoch (the PyTorch
  # version; `best` selects over all of them); k, every k-th; 0, only where
  # needed. With k or 0 also every epoch where a seed's validation accuracy
  # improves and the last, so `validation` and `last` are exactly those of
  # 1 while `best` is the best among tested epochs (few-shot runs spend
  # most of their time on the test split: `evaluation.py`).
  config.test_every = 1
  config.progress = True  # tqdm bars.
  # Epochs between pictures (the last always; 0: none, e.g. for a sweep of
  # many cells, whose report draws what it compares): drawing them costs
  # ~2-4 s per seed on a CPU, more than a few-shot epoch's steps
  # (BENCHMARKS.md).
  config.plot_interval = 10
  config.overwrite = False  # Start over in a workdir holding another config.
  # Weights & Biases (the `wandb` extra): off while `project` is unset;
  # see `wandb_log`. E.g. --config.wandb.project=reprog
  # --config.wandb.tags='("lt8", "cifar10")' --config.wandb.mode=offline.
  config.wandb = ml_collections.ConfigDict()
  config.wandb.project = config_dict.placeholder(str)
  config.wandb.entity = config_dict.placeholder(str)  # None: your default.
  config.wandb.name = config_dict.placeholder(str)  # None: W&B picks one.
  config.wandb.group = config_dict.placeholder(str)
  config.wandb.tags = ()
  # 'online', 'offline' (`wandb sync` later); None: $WANDB_MODE, else online.
  config.wandb.mode = config_dict.placeholder(str)
  # The persistent XLA compilation cache (`compile_cache`): None: the
  # default directory under the user's cache; '' turns it off.
  config.compile_cache = config_dict.placeholder(str)
  return config


def shrink_for_smoke(config) -> None:
  """Makes `config` a seconds-long CPU run: mock data, a tiny random ResNet
  (`resnet_mini`: one block per stage at a quarter of ResNet-18's width;
  what a smoke run checks does not depend on the network's size)."""
  config.data.mock = True
  config.data.worker_count = 0
  config.n_shot = 2
  config.random_network = "resnet_mini"
  config.epochs = 2
  config.batch_size = 8
  config.eval_batch_size = 16


def image_size(config) -> int:
  """The loader's image side: `config.image_size`, or when the method leaves
  it unset, the dataset's reprogramming size (32 or 128)."""
  if config.get("image_size"):
    return config.image_size
  return data.get_dataset_info(config.data.name).vp_size


def compute_dtype(config):
  """The jnp dtype `config.dtype` names on this backend."""
  if config.dtype == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return DTYPES[config.dtype]


def seeds(config) -> tuple[int, ...]:
  """The seeds a run trains: `config.seeds`, or just `config.seed`."""
  if config.seeds is None:
    return (config.seed,)
  return tuple(config.seeds)


def eval_dtype(config):
  """The jnp dtype of the label-mapping pass and of evaluation."""
  if config.eval_dtype == "auto":
    return compute_dtype(config)
  return DTYPES[config.eval_dtype]


def to_dict(config) -> dict:
  """`config` as config.json and summary.json hold it: plain JSON."""
  return json.loads(config.to_json_best_effort())


def check(config) -> None:
  """Raises `errors.ConfigError` (one line) on a bad field or combination."""
  def bad(message):
    raise errors.ConfigError(f"config: {message}")

  spec = methods.get(config.method)  # An unknown one, in one line.
  if config.optimizer != "adam":
    bad(f"optimizer {config.optimizer!r} is not supported; the PyTorch "
        f"version uses 'adam'")
  for field in ("dtype", "eval_dtype"):
    if config[field] != "auto" and config[field] not in DTYPES:
      bad(f"{field} {config[field]!r} is not one of auto, "
          f"{', '.join(DTYPES)}")
  if config.seeds is not None:
    chosen = tuple(config.seeds)
    if not chosen:
      bad("seeds is empty; give at least one, e.g. --config.seeds='(0, 1)', "
          "or leave it unset to use --config.seed")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
               for s in chosen):
      bad(f"seeds must be non-negative integers, got {chosen}")
    if len(set(chosen)) != len(chosen):
      duplicated = sorted({s for s in chosen if chosen.count(s) > 1})
      bad(f"seeds {chosen} repeat {duplicated}; each seed would train the "
          f"same run twice")
  if bool(config.network_dir) == bool(config.random_network):
    bad("set exactly one of network_dir (a `python -m convert` output) and "
        "random_network (smoke runs), e.g. --config.network_dir=nets/resnet50")
  if config.eval_precision not in PRECISIONS:
    bad(f"eval_precision {config.eval_precision!r} is not one of "
        f"{', '.join(PRECISIONS)} ('default' allows TF32 on GPUs)")
  if config.data.store_on_device not in ("auto", "yes", "no"):
    bad(f"data.store_on_device {config.data.store_on_device!r} is not "
        f"'auto', 'yes' or 'no'")
  if config.network not in ("dense", "ticket"):
    bad(f"network {config.network!r} is not 'dense' or 'ticket'")
  for field in ("epochs", "batch_size", "eval_batch_size"):
    if config[field] < 1:
      bad(f"{field} must be >= 1, got {config[field]}")
  if config.plot_interval < 0:
    bad(f"plot_interval must be >= 0 (epochs between figures; 0: none), "
        f"got {config.plot_interval}")
  if config.calibration_holdout < 0:
    bad(f"calibration_holdout must be >= 0 (examples per class; 0: no "
        f"temperature scaling), got {config.calibration_holdout}")
  if (not isinstance(config.test_every, int)
      or isinstance(config.test_every, bool) or config.test_every < 0):
    bad(f"test_every must be an integer >= 0 (1: the test split every "
        f"epoch, k: every k-th, 0: only where a selection needs it), got "
        f"{config.test_every!r}")
  if config.validation_per_class < 0:
    bad(f"validation_per_class must be >= 0 (examples per class; 0: no "
        f"validation split), got {config.validation_per_class}")
  # NaN passes every comparison, and infinity turns Adam's step into NaN.
  for field in ("lr", "b1", "b2", "eps", "gamma", "weight_decay"):
    if not math.isfinite(config[field]):
      bad(f"{field} must be a finite number, got {config[field]}")
  if config.lr <= 0:
    bad(f"lr must be > 0, got {config.lr}")
  problem = spec.check(config, image_size(config))
  if problem:
    bad(problem)


def set_field(config, setting: str) -> None:
  """Sets a top-level field from `FIELD=VALUE` text (a command line's),
  the value parsed as the field's type.

  Raises:
    errors.ConfigError: no such field, or a value of another type.
  """
  field, equals, text = setting.partition("=")
  fields = sorted(k for k in config.keys() if not isinstance(config[k], dict))
  if not equals or field not in fields:
    raise errors.ConfigError(
        f"--set {setting!r}: want FIELD=VALUE with FIELD one of the "
        f"method's config fields ({', '.join(fields)})")
  current = config[field]
  # An unset placeholder (BLM++'s top_k) parses as its declared type.
  kind = (type(current) if current is not None
          else config.get_ref(field).get_type())
  try:
    if kind is bool:
      if text not in ("True", "False"):
        raise ValueError(text)
      value = text == "True"
    elif kind in (str, type(None)):
      value = text
    else:
      value = kind(text)
  except ValueError:
    raise errors.ConfigError(f"--set {setting!r}: {text!r} is not a "
                             f"{kind.__name__}") from None
  config[field] = value
