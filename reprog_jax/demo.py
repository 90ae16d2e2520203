"""`python -m reprog_jax.demo`: runs `reprog_jax.tools.demo` (see its docstring)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("reprog_jax.tools.demo", run_name="__main__", alter_sys=True)
