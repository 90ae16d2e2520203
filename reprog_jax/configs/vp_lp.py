"""VP+LP: ILM-VP's prompt trained jointly with a new linear head on the
frozen network's pooled features (a hybrid: neither reprogramming through
the network's own head nor plain linear probing).

  python -m convert torch --arch resnet50 --weights resnet50_v2.pth --out nets/dense
  python -m reprog_jax.main --config=configs/vp_lp.py:cifar10 \
      --workdir=runs/vplp_cifar10 --config.network_dir=nets/dense

The argument is a dataset name (`reprog_jax.data.dataset_names()`) or
`smoke`. The image at 32 or 128 px inside a learned 224 px frame (or the
padding prompt: --config.prompt=padding), the frozen network's pooled
features, a new head (2048 x T + T) trained with the frame. Writes
metrics.jsonl, summary.json, checkpoints/, tensorboard/ and plots/ (the
prompt, prompted examples) under the workdir; `python -m convert export`
writes its `visual_prompt_dict` and `fc_dict`.

The method's parts and their fields: `reprog_jax/methods/vp_lp.py`.

Smoke run (mock data, a tiny random ResNet, seconds on a CPU):

  python -m reprog_jax.main --config=configs/vp_lp.py:smoke --workdir=/tmp/vplp_smoke
"""

from reprog_jax.train import run_config


def get_config(arg=None):
  return run_config.method_config("vp_lp", arg)
