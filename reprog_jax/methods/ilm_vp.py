"""ILM-VP (`ilm_vp`): a learned prompt in front of the frozen network, read
through its own head, and a label mapping from its 1000 ImageNet classes to
the target's: (`inputs.PROMPT`, `readouts.LOGITS`, `outputs.LABEL_MAPPING`).

Both ends are options of this one method (its name and its sweep directory
`vp` stay those of the paper's ILM-VP), and its sweep variants:

- `config.prompt`: 'expansive' (default: a frame around the downsized image,
  the paper's) or 'padding' (Bahng et al. 2022: the image resized to the
  canvas, a learned border on it); see `methods/inputs.py`.
- `config.label_mapping`: 'ilm' (default), 'flm', 'rlm' (one-to-one
  sequences, the paper's), 'blm', 'blmpp' (Bayesian-guided matrices, Cai et
  al. 2024) or 'fullymap' (a Dense S -> T trained with the prompt, AutoVP:
  `outputs.LINEAR` on the logits); see `methods/outputs.py`.
"""

from typing import Sequence

from reprog_jax.methods import base
from reprog_jax.methods import compose
from reprog_jax.methods import inputs
from reprog_jax.methods import outputs
from reprog_jax.methods import readouts
from reprog_jax.model import network as network_lib

PARTS = compose.Composition(inputs.PROMPT, readouts.LOGITS,
                            outputs.LABEL_MAPPING)
# FullyMap's trained values, beside the prompt's `program`: target logits
# are `source_logits @ kernel + bias`.
KERNEL, BIAS = outputs.FULLYMAP_KERNEL, outputs.FULLYMAP_BIAS


def visual_prompt(image_size: int, num_classes: int, output_size: int = 224,
                  mapping: str = "ilm", mapping_interval: int = 1,
                  source_class_names: Sequence[str] | None = None, *,
                  prompt: str = "expansive", pad: int = 30,
                  lap: float = outputs.LAP, top_k: int | None = None,
                  topk_ratio: float = outputs.TOPK_RATIO) -> base.Method:
  """ILM-VP's `Method` without a network at hand (tests, the demo): the
  same as a run's with these config fields.

  Args:
    image_size: the target images' side (32 or 128 in the paper).
    num_classes: T, the target classes (at most the source classes for a
      one-to-one mapping).
    output_size: the canvas the network sees (224 in the paper).
    mapping: `config.label_mapping`.
    mapping_interval: ILM, BLM and BLM++ remap every this many epochs.
    source_class_names: the network's output classes, in order; None:
      ImageNet's 1000.
    prompt: 'expansive' or 'padding'.
    pad: the padding prompt's border width.
    lap: BLM's and BLM++'s Laplace term.
    top_k: BLM++'s k; None: max(1, int(topk_ratio * num_classes)).
    topk_ratio: see `top_k`.
  """
  fields = {"prompt_output_size": output_size, "label_mapping": mapping,
            "mapping_interval": mapping_interval, "prompt": prompt,
            "pad": pad, "lap": lap, "top_k": top_k, "topk_ratio": topk_ratio}
  if source_class_names is None:
    source_class_names = network_lib.imagenet_classes()
  return compose.assemble("ilm_vp", PARTS, fields,
                          readouts.logits_of(source_class_names),
                          num_classes, image_size)


SPEC = compose.compose(
    name="ilm_vp", short="vp", label="VP", parts=PARTS,
    torch_reference="reprog_jax.tools.torch_reference:build_variant_reference")
