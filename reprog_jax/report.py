"""`python -m reprog_jax.report`: runs `reprog_jax.study.report` (see its docstring)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("reprog_jax.study.report", run_name="__main__", alter_sys=True)
