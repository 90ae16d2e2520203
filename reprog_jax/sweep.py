"""`python -m reprog_jax.sweep`: runs `reprog_jax.study.sweep` (see its docstring)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("reprog_jax.study.sweep", run_name="__main__", alter_sys=True)
