"""See `reprog_jax/configs/study.py`: the presets live in the package, so an
installed wheel has them too; this file keeps `--config=configs/study.py:...`."""

from reprog_jax.configs.study import get_config  # pylint: disable=unused-import
