"""`python -m reprog_jax.bench`: runs `reprog_jax.tools.bench` (see its docstring)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("reprog_jax.tools.bench", run_name="__main__", alter_sys=True)
