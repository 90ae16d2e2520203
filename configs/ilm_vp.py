"""See `reprog_jax/configs/ilm_vp.py`: the presets live in the package, so an
installed wheel has them too; this file keeps `--config=configs/ilm_vp.py:...`."""

from reprog_jax.configs.ilm_vp import get_config  # pylint: disable=unused-import
