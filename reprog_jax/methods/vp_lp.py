"""VP+LP (`vp_lp`): ILM-VP's prompt trained jointly with a new linear head
on the frozen network's pooled features: (`inputs.PROMPT`,
`readouts.FEATURES`, `outputs.LINEAR`). A prompt and a new head: family
'hybrid', in tables of its own, never in claim 1. `config.prompt` picks the
expansive frame (default) or the padding prompt; it exports
`visual_prompt_dict` and `fc_dict`."""

from reprog_jax.methods import compose
from reprog_jax.methods import inputs
from reprog_jax.methods import outputs
from reprog_jax.methods import readouts

SPEC = compose.compose(
    name="vp_lp", short="vplp", label="VP+LP",
    parts=compose.Composition(inputs.PROMPT, readouts.FEATURES,
                              outputs.LINEAR))
