"""See `reprog_jax/configs/vp_lp.py`: the presets live in the package, so an
installed wheel has them too; this file keeps `--config=configs/vp_lp.py:...`."""

from reprog_jax.configs.vp_lp import get_config  # pylint: disable=unused-import
