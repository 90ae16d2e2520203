"""Linear probing: a new linear head on a frozen network's pooled features.

  python -m convert torch --arch resnet50 --weights resnet50_v2.pth --out nets/dense
  python -m reprog_jax.main --config=configs/linear_probe.py:cifar10 \
      --workdir=runs/lp_cifar10 --config.network_dir=nets/dense

The argument is a dataset name (`reprog_jax.data.dataset_names()`) or
`smoke`. Images are resized to 224 and ImageNet-normalised, no augmentation;
only the head (2048 x T + T) is trained. Writes metrics.jsonl,
summary.json, checkpoints/, tensorboard/ and plots/ under the workdir. The
ILM-VP paper reports 90.1 % on CIFAR-10 with a dense ResNet-50.

The method's own fields and their defaults: `reprog_jax/methods/linear_probe.py`.

Smoke run (mock data, a tiny random ResNet, seconds on a CPU):

  python -m reprog_jax.main --config=configs/linear_probe.py:smoke --workdir=/tmp/lp_smoke
"""

from reprog_jax.train import run_config


def get_config(arg=None):
  return run_config.method_config("linear_probe", arg)
