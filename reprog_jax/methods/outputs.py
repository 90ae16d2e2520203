"""Outputs: from what the readout read to the target classes' logits.

- `MAPPING`: a label mapping over the network's own logits
  (`model/label_mapping.py`), `config.label_mapping`: 'ilm' (default),
  'flm', 'rlm' (one source class per target: ILM-VP's), 'blm' or 'blmpp'
  (a (1000, T) matrix of weights, Cai et al. 2024). Nothing is trained; the
  mapping pass before an epoch recomputes the mapping.
- `LINEAR`: a trained linear head with PyTorch's `nn.Linear` init. On
  features it is linear probing's new head (`kernel`, `bias`; exported as
  `fc_dict`); on logits it is AutoVP's FullyMap (`mapping_kernel`,
  `mapping_bias`; exported as `output_mapping_dict`).
- `LABEL_MAPPING`: ILM-VP's output, `config.label_mapping` naming a
  mapping, or 'fullymap' the linear head on the logits.

Defaults are the published ones (README, "Published defaults"): BLM and
BLM++ `lap=1`, BLM++ `k = max(1, int(topk_ratio * T))` with
`topk_ratio=0.15` (the BLM repository's experiment config, `cfg.py`) unless
`top_k` is set.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from reprog_jax import errors
from reprog_jax.methods import parts
from reprog_jax.metrics import mapping_plot
from reprog_jax.metrics import prompt_plots
from reprog_jax.model import label_mapping

# The linear head's trained values: on features (linear probing's fc) and
# on logits (FullyMap: target logits `source_logits @ kernel + bias`).
HEAD_KERNEL, HEAD_BIAS = "kernel", "bias"
FULLYMAP_KERNEL, FULLYMAP_BIAS = "mapping_kernel", "mapping_bias"
# The label mappings `MAPPING` computes (FullyMap is `LINEAR`).
MAPPINGS = ("ilm", "flm", "rlm", "blm", "blmpp")
LAP, TOPK_RATIO = 1.0, 0.15  # The published experiments' (cfg.py).


def _mapping_fields(config):
  # 'ilm', 'flm' (once), 'rlm' (random), 'blm' or 'blmpp'.
  config.label_mapping = "ilm"
  config.mapping_interval = 1  # ILM, BLM, BLM++: remap every this many.
  config.lap = LAP  # BLM, BLM++: the Laplace term of each source's total.
  # BLM++: each example's k most probable sources are counted; None:
  # k = max(1, int(topk_ratio * T)) for T target classes.
  config.top_k = config_dict.placeholder(int)
  config.topk_ratio = TOPK_RATIO


def _check_mapping(config, image_size):
  del image_size  # The mapping works on logits, whatever the images.
  # `get`: a config built before a field existed checks with its default.
  mapping = config.get("label_mapping", "ilm")
  if mapping not in MAPPINGS:
    label_mapping.get_label_mapping(mapping)  # An unknown one lists names.
    raise errors.ConfigError(
        f"config: label_mapping {mapping!r} is a trained head, not a "
        f"mapping; compose outputs.LINEAR instead (as ilm_vp does)")
  interval = config.get("mapping_interval", 1)
  lap = config.get("lap", LAP)
  top_k = config.get("top_k")
  ratio = config.get("topk_ratio", TOPK_RATIO)
  if interval < 1:
    return f"mapping_interval must be >= 1, got {interval}"
  if not lap >= 0:
    return f"lap must be >= 0, got {lap}"
  if top_k is not None and not (
      1 <= top_k <= label_mapping.NUM_IMAGENET_CLASSES):
    return f"top_k must be in [1, 1000], got {top_k}"
  if not 0 < ratio <= 1:
    return f"topk_ratio must be in (0, 1], got {ratio}"
  return None


def _comparable_mapping(flat):
  """Drops what the run's mapping does not use; a config written before
  `topk_ratio` existed (the published defaults) left BLM's and BLM++'s
  `lap` implicit (None: 1 for BLM, 0 for BLM++): made explicit."""
  flat = dict(flat)
  mapping = flat.get("label_mapping", "ilm")
  if "topk_ratio" not in flat and flat.get("lap", 0) is None:
    flat["lap"] = 0.0 if mapping == "blmpp" else 1.0
  if mapping not in ("blm", "blmpp"):
    flat.pop("lap", None)
  if mapping != "blmpp":
    flat.pop("top_k", None)
  if mapping != "blmpp" or flat.get("top_k") is not None:
    flat.pop("topk_ratio", None)
  return flat


def top_k(config, num_classes: int) -> int:
  """BLM++'s k: `config.top_k`, or `max(1, int(topk_ratio * T))`."""
  if config.get("top_k") is not None:
    return config["top_k"]
  return max(1, int(config.get("topk_ratio", TOPK_RATIO) * num_classes))


def _topk_statistic(scores, labels, num_classes, mask, *, k):
  return label_mapping.topk_probability_matrix(scores, labels, num_classes,
                                               mask, top_k=k)


def _schedule(kind, mapping_interval, num_classes, num_source, lap):
  """(epoch_mapping, initial mapping) of a label-mapping kind."""
  if kind.form == "bayesian":
    initial = np.zeros((num_source, num_classes), np.float32)
    blm = jax.jit(jax.vmap(functools.partial(label_mapping.bayesian_matrix,
                                             lap=lap)))
    remap = lambda seeds, count_pass: np.asarray(blm(count_pass()))
  else:
    initial = np.zeros(num_classes, np.int32)
    greedy = jax.jit(jax.vmap(label_mapping.greedy_mapping))

    def remap(seeds, count_pass):
      if kind.from_predictions:
        return np.asarray(greedy(count_pass()))
      return np.stack([np.asarray(label_mapping.rlm(s, num_classes,
                                                    num_source))
                       for s in seeds])

  def epoch_mapping(epoch, current, seeds, count_pass):
    if not kind.is_mapping_epoch(epoch, mapping_interval):
      return current
    return remap(seeds, count_pass)

  return epoch_mapping, initial


def _mapping(config, readout, num_classes) -> parts.BuiltOutput:
  kind = label_mapping.get_label_mapping(config.get("label_mapping", "ilm"))
  num_source = readout.width
  if kind.form == "sequence" and num_classes > num_source:
    raise errors.ConfigError(
        f"{num_classes} classes; ILM-VP maps each to a distinct source "
        f"class, so at most the network's {num_source} (or pass "
        f"--config.label_mapping=blm, blmpp or fullymap)")
  lap = config.get("lap")
  epoch_mapping, initial = _schedule(
      kind, config.get("mapping_interval", 1), num_classes, num_source,
      LAP if lap is None else lap)
  statistic = None
  if kind.statistic == "top_k":
    k = top_k(config, num_classes)
    if k > num_source:
      raise errors.ConfigError(
          f"config: BLM++'s k = {k} (top_k, or topk_ratio * {num_classes} "
          f"classes) exceeds the network's {num_source} source classes; set "
          f"--config.top_k")
    statistic = functools.partial(_topk_statistic, k=k)

  def pictures(plot_dir, trained, test_counts, mapping, class_names, title):
    del trained  # Nothing trained: the mapping is the picture.
    path = os.path.join(plot_dir, "label_mapping.png")
    if label_mapping.is_matrix(mapping):
      mapping_plot.plot_mapping_matrix(
          np.asarray(mapping), class_names, readout.class_names, path,
          title=title, what="BLM weight")
    else:
      prompt_plots.plot_label_mapping(test_counts, mapping, class_names,
                                      readout.class_names, path, title=title)
    return {"label_mapping": path}

  return parts.BuiltOutput(
      apply=lambda trained, logits: logits, num_scores=num_source,
      initial_mapping=initial, epoch_mapping=epoch_mapping,
      mapping_statistic=statistic, pictures=pictures)


def _export_mapping(params, mapping, readout, config):
  """`mapping_sequence` (T,) int64 (`logits[:, seq]`) or `mapping_matrix`
  (S, T) float32 (BLM's key: `logits @ matrix`)."""
  del params, readout, config  # The mapping is all there is.
  if label_mapping.is_matrix(mapping):
    return {"mapping_matrix": np.asarray(mapping, np.float32)}
  return {"mapping_sequence": np.asarray(mapping, np.int64)}


MAPPING = parts.Output(
    name="mapping", needs_logits=True, build=_mapping,
    export=_export_mapping, configure=_mapping_fields, check=_check_mapping,
    comparable=_comparable_mapping)


def _keys(own_head: bool) -> tuple[str, str]:
  return ((FULLYMAP_KERNEL, FULLYMAP_BIAS) if own_head
          else (HEAD_KERNEL, HEAD_BIAS))


def _linear(config, readout, num_classes) -> parts.BuiltOutput:
  del config  # No fields: the readout and the classes decide its shape.
  kernel_key, bias_key = _keys(readout.own_head)
  width = readout.width

  def init(rng):
    # torch.nn.Linear's default init (AutoVP's too): U(+-1/sqrt(fan_in)),
    # the bound in float64 as PyTorch computes it.
    bound = 1.0 / np.sqrt(width)
    kernel_rng, bias_rng = jax.random.split(rng)
    return {kernel_key: jax.random.uniform(kernel_rng, (width, num_classes),
                                           jnp.float32, -bound, bound),
            bias_key: jax.random.uniform(bias_rng, (num_classes,),
                                         jnp.float32, -bound, bound)}

  def apply(trained, values):
    if readout.own_head:  # Logits @ kernel in full float32, as a matrix
      # mapping's (an accelerator's default TF32 would round it).
      return jnp.matmul(values.astype(jnp.float32), trained[kernel_key],
                        precision=jax.lax.Precision.HIGHEST
                        ) + trained[bias_key]
    return values @ trained[kernel_key] + trained[bias_key]

  def pictures(plot_dir, trained, test_counts, mapping, class_names, title):
    del test_counts, mapping  # The kernel is the mapping.
    if not readout.own_head:
      return {}  # Weights on features name no source class to draw.
    path = os.path.join(plot_dir, "label_mapping.png")
    mapping_plot.plot_mapping_matrix(
        np.asarray(trained[kernel_key]), class_names, readout.class_names,
        path, title=title, what="Dense kernel weight")
    return {"label_mapping": path}

  return parts.BuiltOutput(apply=apply, num_scores=num_classes, init=init,
                           pictures=pictures)


def _export_linear(params, mapping, readout, config):
  """On features, the PyTorch version's `fc_dict` (what its `network.fc`
  loads); on logits, `output_mapping_dict` (a `torch.nn.Linear(S, T)` on
  the logits, AutoVP's `output_mapping.layers`): `weight` (T, in) and
  `bias` (T,), float32. The mapping is the identity."""
  del mapping, config  # The head is all there is.
  kernel_key, bias_key = _keys(readout.own_head)
  # Ours is (in, out), as Flax's Dense; torch.nn.Linear's weight is (out, in).
  head = {"weight": np.ascontiguousarray(
              np.asarray(params[kernel_key], np.float32).T),
          "bias": np.asarray(params[bias_key], np.float32)}
  return {"output_mapping_dict" if readout.own_head else "fc_dict": head}


LINEAR = parts.Output(name="linear", build=_linear, export=_export_linear)

# ILM-VP's: `config.label_mapping` names a mapping, or 'fullymap' the head.
LABEL_MAPPING = parts.choice(
    "label_mapping", "ilm",
    {**{name: MAPPING for name in MAPPINGS}, "fullymap": LINEAR},
    unknown=label_mapping.get_label_mapping)
