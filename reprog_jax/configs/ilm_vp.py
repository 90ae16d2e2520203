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

The method's parts, and their fields and defaults:
`reprog_jax/methods/ilm_vp.py` (`inputs.py`, `outputs.py`).

Smoke run (mock data, a tiny random ResNet, seconds on a CPU):

  python -m reprog_jax.main --config=configs/ilm_vp.py:smoke --workdir=/tmp/vp_smoke
"""

from reprog_jax.train import run_config


def get_config(arg=None):
  return run_config.method_config("ilm_vp", arg)
