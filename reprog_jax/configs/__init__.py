"""The presets, one module per experiment, each with `get_config(arg)`;
`python -m reprog_jax.main --config=ilm_vp:smoke` loads one by name."""
