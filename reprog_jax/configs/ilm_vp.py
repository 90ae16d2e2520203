"""ILM-VP: a visual prompt and an iterative label mapping on a frozen net.

  python -m convert torch --arch resnet50 --weights resnet50_v2.pth --out nets/dense
  python -m reprog_jax.main --config=configs/ilm_vp.py:cifar10 \
      --workdir=runs/vp_cifar10 --config.network_dir=nets/dense

The argument is a dataset name (`reprog_jax.data.dataset_names()`) or
`smoke`. Writes metrics.jsonl (one line per epoch), summary.json,
checkpoints/, tensorboard/ and plots/ (label mapping, prompt) under the
workdir. The ILM-VP paper reports 76.6 % best test accuracy on CIFAR-10 with
a dense ResNet-50 (200 epochs, seed 7); this paper's code runs 100 epochs,
seed 4.

Smoke run (mock data, a random ResNet-18, seconds on a CPU):

  python -m reprog_jax.main --config=configs/ilm_vp.py:smoke --workdir=/tmp/vp_smoke
"""

from ml_collections import config_dict

from reprog_jax import data
from reprog_jax.train import run_config


def get_config(arg=None):
  dataset = "cifar10" if arg in (None, "", "smoke") else arg
  data.get_dataset_info(dataset)  # An unknown name fails here, listing all.
  config = run_config.base_config("ilm_vp", dataset)
  # The target image's side inside the frame; None: the dataset's (32 or
  # 128), also after --config.data.name=... overrides.
  config.image_size = config_dict.placeholder(int)
  config.prompt_output_size = 224  # What the frozen network sees.
  config.label_mapping = "ilm"  # 'ilm', 'flm' (once) or 'rlm' (random).
  config.mapping_interval = 1  # ILM: remap every this many epochs.
  if arg == "smoke":
    run_config.shrink_for_smoke(config)
    config.prompt_output_size = 64  # Fully convolutional: any size runs.
  return config.lock()
