"""The fields every training config has, with the PyTorch version's defaults.

`configs/ilm_vp.py` and `configs/linear_probe.py` start from `base_config`
and set what differs; `check` rejects a bad combination with one line.
"""

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from reprog_jax import data
from reprog_jax import label_mapping

METHODS = ("ilm_vp", "linear_probe")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def base_config(method: str, dataset: str = "cifar10") -> ml_collections.ConfigDict:
  """Defaults shared by both methods (PyTorch version, section 5)."""
  config = ml_collections.ConfigDict()
  config.method = method
  config.data = data.default_data_config()
  config.data.name = dataset
  config.n_shot = config.data.get_ref("n_shot")  # Top-level alias.
  # The frozen network: a `convert` output directory, dense or a ticket.
  config.network_dir = config_dict.placeholder(str)
  config.network = "dense"  # 'dense' or 'ticket': checked against the dir.
  # Smoke runs only: a randomly initialised network of this architecture
  # instead of `network_dir` (its results mean nothing).
  config.random_network = config_dict.placeholder(str)  # '' also unsets.
  # Optimisation: Adam with PyTorch's defaults, MultiStepLR per epoch.
  config.seed = 4
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
  config.progress = True  # tqdm bars.
  config.overwrite = False  # Start over in a workdir holding another config.
  return config


def shrink_for_smoke(config) -> None:
  """Makes `config` a seconds-long CPU run: mock data, a random ResNet-18."""
  config.data.mock = True
  config.data.worker_count = 0
  config.n_shot = 2
  config.random_network = "resnet18"
  config.epochs = 2
  config.batch_size = 8
  config.eval_batch_size = 16


def image_size(config) -> int:
  """The loader's image side: `config.image_size`, or for ILM-VP when it is
  unset, the dataset's VP size (32 or 128)."""
  if config.image_size:
    return config.image_size
  return data.get_dataset_info(config.data.name).vp_size


def compute_dtype(config):
  """The jnp dtype `config.dtype` names on this backend."""
  if config.dtype == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return DTYPES[config.dtype]


def check(config) -> None:
  """Raises ValueError (one line) on a bad combination of fields."""
  def bad(message):
    raise ValueError(f"config: {message}")

  if config.method not in METHODS:
    bad(f"method {config.method!r} is not one of {', '.join(METHODS)}")
  if config.optimizer != "adam":
    bad(f"optimizer {config.optimizer!r} is not supported; the PyTorch "
        f"version uses 'adam'")
  if config.dtype != "auto" and config.dtype not in DTYPES:
    bad(f"dtype {config.dtype!r} is not one of auto, {', '.join(DTYPES)}")
  if bool(config.network_dir) == bool(config.random_network):
    bad("set exactly one of network_dir (a `python -m convert` output) and "
        "random_network (smoke runs), e.g. --config.network_dir=nets/resnet50")
  if config.network not in ("dense", "ticket"):
    bad(f"network {config.network!r} is not 'dense' or 'ticket'")
  for field in ("epochs", "batch_size", "eval_batch_size"):
    if config[field] < 1:
      bad(f"{field} must be >= 1, got {config[field]}")
  if config.lr <= 0:
    bad(f"lr must be > 0, got {config.lr}")
  if config.method == "ilm_vp":
    label_mapping.get_label_mapping(config.label_mapping)
    if config.mapping_interval < 1:
      bad(f"mapping_interval must be >= 1, got {config.mapping_interval}")
    size = image_size(config)
    if not 0 < size <= config.prompt_output_size:
      bad(f"image_size {size} must be in "
          f"[1, prompt_output_size={config.prompt_output_size}]")
