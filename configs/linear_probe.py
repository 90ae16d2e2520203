"""See `reprog_jax/configs/linear_probe.py`: the presets live in the package, so an
installed wheel has them too; this file keeps `--config=configs/linear_probe.py:...`."""

from reprog_jax.configs.linear_probe import get_config  # pylint: disable=unused-import
